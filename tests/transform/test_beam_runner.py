"""Runner selection (transform/beam_runner.py) and the count-checked sinks (beam_io.py)
on DirectRunner. The same sinks on a live Dask cluster: tests/transform/test_dask.py."""
import json
import os

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pytest

from dmgin_tf.config import BeamConfig, ConfigError
from dmgin_tf.errors import DmginError
from transform import beam_io, beam_runner

DIRECT = BeamConfig.from_dict({"runner": "direct", "direct_running_mode": "in_memory"})
SCHEMA = pa.schema([("k", pa.int64()), ("v", pa.list_(pa.float32()))])


# ------------------------------------------------------------------ options


def test_direct_options_default_multiprocessing():
    args = beam_runner.pipeline_args(BeamConfig.from_dict({"direct_num_workers": 3}))
    assert args == ["--runner=DirectRunner", "--direct_running_mode=multi_processing",
                    "--direct_num_workers=3"]
    opts = beam_runner.pipeline_options(BeamConfig()).get_all_options()
    assert opts["direct_running_mode"] == "multi_processing"


def test_dask_options_address_and_partitions():
    cfg = BeamConfig.from_dict({"runner": "dask", "dask_address": "tcp://h:8786"})
    args = beam_runner.pipeline_args(cfg)
    assert args[0] == f"--runner={beam_runner.DASK_RUNNER}"
    assert "--dask_client_address=tcp://h:8786" in args
    assert "--dask_npartitions=8" in args
    # A LocalCluster's address wins over the config; partitions follow local workers.
    cfg = BeamConfig.from_dict({"runner": "dask", "dask_local_workers": 3})
    args = beam_runner.pipeline_args(cfg, dask_address="tcp://127.0.0.1:1")
    assert "--dask_client_address=tcp://127.0.0.1:1" in args and "--dask_npartitions=6" in args
    # DaskRunner's own option parser accepts what we produce.
    from apache_beam.runners.dask.dask_runner import DaskOptions
    o = beam_runner.pipeline_options(cfg, "tcp://127.0.0.1:1").view_as(DaskOptions)
    assert o.get_all_options()["address"] == "tcp://127.0.0.1:1"


def test_dask_without_address_is_a_clear_error():
    """Refused when the config is read (it failed only in the first Beam step, after the
    span was written)."""
    from dmgin_tf.config import ConfigError
    with pytest.raises(ConfigError, match="dask needs beam.dask_address=tcp://HOST:PORT .* or "
                                          "beam.dask_local_workers=N"):
        BeamConfig.from_dict({"runner": "dask"})
    # The runner's own check stays for configs built without validation.
    with pytest.raises(DmginError, match="dask_address"):
        beam_runner.pipeline_args(BeamConfig(runner="dask"))


def test_dataflow_options_with_empty_values_are_refused():
    from dmgin_tf.config import ConfigError
    with pytest.raises(ConfigError, match="--project and --temp_location"):
        BeamConfig.from_dict({"runner": "dataflow",
                              "extra_args": ["--project=", "--temp_location= "]})


def test_portable_and_dataflow_options_and_passthrough():
    flink = BeamConfig.from_dict({"runner": "flink", "job_endpoint": "js:8099",
                                  "environment_type": "LOOPBACK"})
    assert beam_runner.pipeline_args(flink) == [
        "--runner=PortableRunner", "--job_endpoint=js:8099", "--environment_type=LOOPBACK"]
    flink = BeamConfig.from_dict({"runner": "flink", "flink_master": "fm:8081"})
    assert beam_runner.pipeline_args(flink) == ["--runner=FlinkRunner", "--flink_master=fm:8081"]
    spark = BeamConfig.from_dict({"runner": "spark", "spark_master": "spark://s:7077"})
    assert beam_runner.pipeline_args(spark) == ["--runner=SparkRunner",
                                                "--spark_master_url=spark://s:7077"]
    df = BeamConfig.from_dict({"runner": "dataflow",
                               "extra_args": ["--project=p", "--temp_location=gs://b/t"]})
    assert beam_runner.pipeline_args(df) == ["--runner=DataflowRunner", "--project=p",
                                             "--temp_location=gs://b/t"]
    # extra_args come last, so they override derived flags.
    d = BeamConfig.from_dict({"extra_args": "--direct_num_workers=5"})
    assert beam_runner.pipeline_args(d)[-1] == "--direct_num_workers=5"


@pytest.mark.parametrize("section,words", [
    ({"runner": "flink"}, r"beam.runner='flink': needs beam.job_endpoint.*beam.flink_master"),
    ({"runner": "spark"}, r"needs beam.job_endpoint.*beam.spark_master=spark://"),
    ({"runner": "dataflow"}, r"needs --project and --temp_location in beam.extra_args"),
    ({"runner": "dataflow", "extra_args": ["--project=p"]}, r"needs --temp_location"),
])
def test_a_cluster_runner_without_a_cluster_is_refused_when_the_config_loads(section, words):
    """Without a target, Beam's FlinkRunner started an embedded cluster and tried to
    download a job-server jar in the first Beam step, after the span was written."""
    with pytest.raises(ConfigError, match=words):
        BeamConfig.from_dict(section)
    BeamConfig.from_dict({"runner": "flink", "flink_master": "[local]"})   # asked for


def test_bad_beam_config_names_field():
    with pytest.raises(ConfigError, match="beam.direct_running_mode"):
        BeamConfig.from_dict({"direct_running_mode": "turbo"})
    with pytest.raises(ConfigError, match="beam.dask_local_workers"):
        BeamConfig.from_dict({"dask_local_workers": -1})


class _FakeCluster:
    instances = []

    def __init__(self, **kwargs):
        self.kwargs, self.closed = kwargs, False
        self.scheduler_address = "tcp://127.0.0.1:9"
        _FakeCluster.instances.append(self)

    def close(self):
        self.closed = True


@pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyboardInterrupt()])
def test_local_cluster_always_shut_down(monkeypatch, exc):
    import dask.distributed
    monkeypatch.setattr(dask.distributed, "LocalCluster", _FakeCluster)
    _FakeCluster.instances.clear()
    cfg = BeamConfig.from_dict({"runner": "dask", "dask_local_workers": 2})
    with pytest.raises(type(exc)):
        with beam_runner.beam_pipeline(cfg) as p:
            from apache_beam.runners.dask.dask_runner import DaskOptions
            assert p.options.view_as(DaskOptions).get_all_options()["address"] == \
                "tcp://127.0.0.1:9"
            raise exc
    (cluster,) = _FakeCluster.instances
    assert cluster.closed
    assert cluster.kwargs == dict(n_workers=2, processes=True, threads_per_worker=1,
                                  dashboard_address=None, memory_limit="auto")


def test_dask_refuses_pipeline_with_two_terminal_branches():
    p = beam.Pipeline()
    src = p | beam.Create([1, 2])
    _ = src | "A" >> beam.Map(str)
    _ = src | "B" >> beam.Map(repr)
    assert len(beam_runner.terminal_transforms(p)) == 2
    with pytest.raises(DmginError, match="terminal"):
        beam_runner.run_pipeline(p, "dask")


# ------------------------------------------------------------------ sinks on DirectRunner


def _rows(n):
    return [{"k": i, "v": np.full(3, i, np.float32)} for i in range(n)]


def test_write_outputs_multi_sink_commits_and_counts(tmp_path):
    with beam_runner.beam_pipeline(DIRECT) as p:
        a = p | "A" >> beam.Create(_rows(300))
        b = p | "B" >> beam.Create([str(i).encode() for i in range(77)])
        empty = p | "E" >> beam.Create([]) | beam.Map(lambda x: x)
        {"a": a, "b": b, "e": empty} | beam_io.WriteOutputs({
            "a": beam_io.ParquetSink(str(tmp_path / "a"), SCHEMA, batch_rows=50),
            "b": beam_io.TFRecordSink(str(tmp_path / "b")),
            "e": beam_io.TFRecordSink(str(tmp_path / "e"))})
        assert len(beam_runner.terminal_transforms(p)) == 1  # one terminal: Dask-safe
    table = beam_io.read_parquet_table(str(tmp_path / "a")).to_pydict()
    assert sorted(table["k"]) == list(range(300))
    assert all(v == [k] * 3 for k, v in zip(table["k"], table["v"]))
    assert sorted(beam_io.read_tfrecords(str(tmp_path / "b"))) == sorted(
        str(i).encode() for i in range(77))
    assert beam_io.output_rows(str(tmp_path / "a")) == 300
    assert beam_io.output_rows(str(tmp_path / "e")) == 0  # empty output still committed
    empty_parquet = tmp_path / "ep"
    with beam_runner.beam_pipeline(DIRECT) as p:
        (p | beam.Create([]) | beam.Map(lambda x: x)
         | beam_io.WriteOutputs({"o": beam_io.ParquetSink(str(empty_parquet), SCHEMA)}))
    t = beam_io.read_parquet_table(str(empty_parquet))
    assert t.num_rows == 0 and t.schema.equals(SCHEMA)  # readable, with its schema
    assert sorted(os.listdir(tmp_path)) == ["a", "b", "e", "ep"]  # no temp dirs left
    info = json.load(open(tmp_path / "a" / beam_io.SUCCESS_FILE))
    assert all(s.startswith("part-") for s in info["shards"])


def _fail_at(x, n):
    if x["k"] == n:
        raise ValueError("injected failure")
    return x


def test_failed_run_leaves_previous_output_untouched(tmp_path):
    dest = tmp_path / "out"
    with beam_runner.beam_pipeline(DIRECT) as p:
        p | beam.Create(_rows(10)) | beam_io.WriteOutputs({"o": beam_io.ParquetSink(str(dest), SCHEMA)})
    with pytest.raises(Exception, match="injected failure"):
        with beam_runner.beam_pipeline(DIRECT) as p:
            (p | beam.Create(_rows(50)) | beam.Map(_fail_at, 40)
             | beam_io.WriteOutputs({"o": beam_io.ParquetSink(str(dest), SCHEMA)}))
    assert beam_io.output_rows(str(dest)) == 10
    assert beam_io.read_parquet_table(str(dest)).num_rows == 10


def test_count_mismatch_raises_and_commits_nothing(tmp_path):
    sink = beam_io.TFRecordSink(str(tmp_path / "dest"))
    tmp = str(tmp_path / "dest.tmp-x")
    os.makedirs(tmp)
    writer = sink.open(os.path.join(tmp, "shard-1.tfrecord"))
    for r in (b"a", b"b"):
        writer.write(r)
    writer.close()
    with pytest.raises(beam_io.SinkCountError, match="holds 2 rows, writers counted 3"):
        beam_io.commit_outputs({"o": sink}, {"o": tmp}, {"o": {"shard-1.tfrecord": 3}})
    with pytest.raises(beam_io.SinkCountError, match="missing on disk"):
        beam_io.commit_outputs({"o": sink}, {"o": tmp}, {"o": {"shard-2.tfrecord": 1}})
    with pytest.raises(beam_io.SinkCountError, match="stage expected 5; nothing committed"):
        beam_io.commit_outputs({"o": sink}, {"o": tmp}, {"o": {"shard-1.tfrecord": 2}},
                               expected_rows={"o": 5})
    assert not (tmp_path / "dest").exists()
    # Truncated file (a writer killed mid-record) is detected by the framing check.
    with open(os.path.join(tmp, "shard-1.tfrecord"), "ab") as f:
        f.write(b"\x10\x00\x00\x00\x00\x00\x00\x00\x00")
    with pytest.raises(beam_io.SinkCountError, match="truncated"):
        beam_io.count_tfrecords(os.path.join(tmp, "shard-1.tfrecord"))


def test_incomplete_directory_is_refused(tmp_path):
    (tmp_path / "d").mkdir()
    with pytest.raises(Exception, match="_SUCCESS.json"):
        beam_io.output_files(str(tmp_path / "d"))


def test_read_parquet_splits_single_row_group(tmp_path):
    import pyarrow.parquet as pq
    n = 103
    pq.write_table(pa.table({"k": np.arange(n)}), tmp_path / "x.parquet")
    work = beam_io.parquet_work_items(str(tmp_path / "x.parquet"), min_splits=4)
    assert len(work) == 4 and sum(stop - start for _, _, start, stop in work) == n
    out = tmp_path / "copy"
    schema = pa.schema([("k", pa.int64())])
    with beam_runner.beam_pipeline(DIRECT) as p:
        (p | beam_io.ReadParquet(str(tmp_path / "x.parquet"), min_splits=4)
         | beam_io.WriteOutputs({"o": beam_io.ParquetSink(str(out), schema)}))
    assert sorted(beam_io.read_parquet_table(str(out)).column("k").to_pylist()) == list(range(n))
