"""Beam runner selection in one place: config → pipeline options → a running pipeline.

Every Beam stage of the project (catalog embedding, k-means grouping, example
building) builds its pipeline through `beam_pipeline(beam_cfg)`, so one set of flags
(`--beam-runner`, `--dask-address`, `--dask-local-workers`, `--beam-arg`, see
`dmgin_tf.cli.common.add_beam_args`) selects the engine for all of them:

* ``direct``   – Beam's DirectRunner, ``multi_processing`` mode with
  ``direct_num_workers`` processes (0 = one per core) by default.
* ``dask``     – Beam's DaskRunner on a dask.distributed cluster: an existing scheduler
  (``dask_address``) or a `LocalCluster` of ``dask_local_workers`` processes started for
  the run and always shut down afterwards (also on failure and Ctrl-C).
* ``flink`` / ``spark`` – Beam's portable runner path (``job_endpoint`` of a running
  job server, or ``flink_master`` / ``spark_master``); documented in docs/scale-out.md,
  not runnable on this machine.
* ``dataflow`` – ``DataflowRunner``; project, region, temp_location come through
  ``extra_args``.

``extra_args`` are appended last and win over anything derived here.

DaskRunner caveats that shape our stages (Beam 2.74, read from its source and
verified in tests/transform/test_dask.py):

1. It computes only the Dask bag of the *last applied* leaf transform; any branch not
   upstream of it silently never runs (why ``WriteToText`` wrote nothing). Our
   pipelines therefore end in exactly one terminal transform (`beam_io.WriteOutputs`
   joins several sinks into one), and `run_pipeline` refuses a Dask pipeline with more
   than one terminal leaf instead of producing silently empty output.
2. ``beam.io.Read``-based sources translate to a no-op: read files with a ParDo over
   a `beam.Create` of file/row-group specs (`beam_io.ReadParquet`).
3. Parallelism comes only from how `Create` partitions its elements; we pass
   ``--dask_npartitions`` (default: 2 × local workers, at least 2; 8 on an existing
   scheduler).
4. ``DoFn.setup`` runs per bundle (= Dask partition), not once per worker: cache
   expensive objects (models) in module-level state keyed by their path.
"""
from __future__ import annotations

import contextlib
import logging
import os
from typing import Iterator, List, Optional

from dmgin_tf.config import BeamConfig
from dmgin_tf.errors import DmginError

_LOG = logging.getLogger(__name__)

DASK_RUNNER = "apache_beam.runners.dask.dask_runner.DaskRunner"

_RUNNER_NAMES = {
    "direct": "DirectRunner",
    "dask": DASK_RUNNER,
    "flink": "FlinkRunner",
    "spark": "SparkRunner",
    "dataflow": "DataflowRunner",
}


def pipeline_args(beam_cfg: BeamConfig, dask_address: Optional[str] = None) -> List[str]:
    """Beam pipeline arguments (``--runner=...`` etc.) for `beam_cfg`.

    Args:
      beam_cfg: the ``beam`` config section.
      dask_address: scheduler address overriding ``beam_cfg.dask_address`` (used by
        `beam_pipeline` once it started a LocalCluster).

    Returns:
      A list of ``--flag=value`` strings, suitable for `PipelineOptions(args)` and for
      TFX's ``beam_pipeline_args``. ``beam_cfg.extra_args`` come last.

    Raises:
      DmginError: runner ``dask`` with neither an address nor local workers.
    """
    runner = beam_cfg.runner
    args = [f"--runner={_RUNNER_NAMES[runner]}"]
    if runner == "direct":
        # in_memory runs in this process: one worker (Beam warns on any other count).
        workers = 1 if beam_cfg.direct_running_mode == "in_memory" else beam_cfg.direct_num_workers
        args += [f"--direct_running_mode={beam_cfg.direct_running_mode}",
                 f"--direct_num_workers={workers}"]
    elif runner == "dask":
        address = dask_address or beam_cfg.dask_address
        if not address:
            raise DmginError("beam.runner=dask needs beam.dask_address (--dask-address "
                             "tcp://HOST:PORT) or beam.dask_local_workers > 0 "
                             "(--dask-local-workers N)")
        args.append(f"--dask_client_address={address}")
        args.append(f"--dask_npartitions={dask_npartitions(beam_cfg)}")
    elif runner in ("flink", "spark"):
        if beam_cfg.job_endpoint:
            # A job server that is already running (Flink/Spark job server container):
            # the generic portable runner talks to it; this is the documented way to
            # reach a cluster without downloading job-server jars at submit time.
            args = ["--runner=PortableRunner", f"--job_endpoint={beam_cfg.job_endpoint}"]
        elif runner == "flink" and beam_cfg.flink_master:
            args.append(f"--flink_master={beam_cfg.flink_master}")
        elif runner == "spark" and beam_cfg.spark_master:
            args.append(f"--spark_master_url={beam_cfg.spark_master}")
        if beam_cfg.environment_type:
            args.append(f"--environment_type={beam_cfg.environment_type}")
    # dataflow: project/region/temp_location/... are site-specific → extra_args.
    return args + list(beam_cfg.extra_args)


def dask_npartitions(beam_cfg: BeamConfig) -> int:
    """Dask bag partitions for `Create`s: the config value, else 2 × local workers (≥ 2),
    or 8 on a scheduler we did not start (its worker count is not known here)."""
    if beam_cfg.dask_npartitions > 0:
        return beam_cfg.dask_npartitions
    return max(2, 2 * beam_cfg.dask_local_workers) if beam_cfg.dask_local_workers else 8


def pipeline_options(beam_cfg: BeamConfig, dask_address: Optional[str] = None):
    """`apache_beam.options.pipeline_options.PipelineOptions` for `beam_cfg`.

    ``save_main_session`` stays off: our DoFns live in importable modules.
    """
    from apache_beam.options.pipeline_options import PipelineOptions
    return PipelineOptions(pipeline_args(beam_cfg, dask_address))


@contextlib.contextmanager
def local_dask_cluster(n_workers: int, memory_limit: str | int = "auto") -> Iterator[str]:
    """Starts a `dask.distributed.LocalCluster` of `n_workers` processes; yields its address.

    One thread per worker process (Beam DoFns are not all thread-safe, and processes
    are what a real cluster gives). The cluster is closed on every exit path,
    including exceptions and KeyboardInterrupt.
    """
    from dask.distributed import LocalCluster
    cluster = LocalCluster(n_workers=n_workers, processes=True, threads_per_worker=1,
                           dashboard_address=None, memory_limit=memory_limit)
    try:
        _LOG.info("started dask LocalCluster %s with %d workers", cluster.scheduler_address,
                  n_workers)
        yield cluster.scheduler_address
    finally:
        try:
            cluster.close()
        except Exception:  # noqa: BLE001 - never mask the original error on shutdown
            _LOG.warning("dask LocalCluster did not close cleanly", exc_info=True)


@contextlib.contextmanager
def beam_pipeline(beam_cfg: BeamConfig, dask_address: Optional[str] = None):
    """Yields a `beam.Pipeline` for `beam_cfg`; runs it (and waits) on normal exit.

    With ``runner=dask`` and ``dask_local_workers > 0`` (and no address), a LocalCluster
    lives exactly as long as the ``with`` block plus the run, and is shut down also on
    exceptions and KeyboardInterrupt. On an exception inside the block the pipeline is
    not run.

    Example::

        with beam_pipeline(cfg.beam) as p:
            p | beam.Create([...]) | beam_io.WriteOutputs(...)
    """
    import apache_beam as beam
    with contextlib.ExitStack() as stack:
        address = dask_address or beam_cfg.dask_address
        if beam_cfg.runner == "dask" and not address and beam_cfg.dask_local_workers > 0:
            address = stack.enter_context(local_dask_cluster(beam_cfg.dask_local_workers))
        options = pipeline_options(beam_cfg, address)
        pipeline = beam.Pipeline(options=options)
        yield pipeline
        run_pipeline(pipeline, beam_cfg.runner)


def run_pipeline(pipeline, runner: str) -> None:
    """Runs `pipeline` to completion; raises DmginError when it did not finish.

    For Dask: refuses pipelines with several terminal transforms (see module doc) and
    closes the dask client the runner opened.
    """
    if runner == "dask":
        terminals = terminal_transforms(pipeline)
        if len(terminals) > 1:
            raise DmginError(
                "DaskRunner runs only the branch that ends at the last transform, but this "
                f"pipeline has {len(terminals)} terminal transforms {terminals}; join the "
                "outputs into one terminal step (transform.beam_io.WriteOutputs)")
    result = pipeline.run()
    try:
        state = result.wait_until_finish()
    finally:
        client = getattr(result, "client", None)
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()
    if str(state) not in ("DONE", "PipelineState.DONE"):
        raise DmginError(f"Beam pipeline ended in state {state}")


def terminal_transforms(pipeline) -> List[str]:
    """Full labels of leaf transforms whose outputs nothing consumes (sinks/ends)."""
    from apache_beam.pipeline import PipelineVisitor

    class _Visitor(PipelineVisitor):
        def __init__(self):
            self.leaves = []
            self.consumed = set()

        def visit_transform(self, node):
            self.leaves.append(node)
            for pc in node.inputs:
                self.consumed.add(id(pc))
            for side in node.side_inputs:
                self.consumed.add(id(side.pvalue))

    v = _Visitor()
    pipeline.visit(v)
    out = []
    for node in v.leaves:
        outputs = list(node.outputs.values())
        if not outputs or not any(id(pc) in v.consumed for pc in outputs):
            out.append(node.full_label)
    return out


def default_workers() -> int:
    """Cores available to this process (what DirectRunner's 0 means)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
