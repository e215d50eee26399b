"""`dmgin gpu bundle` without downloading: layout, data shards, configs, run.sh."""
import json
import os
import subprocess

from dmgin_tf.config import Config
from dmgin_tf.bench.gpu_bundle import build_bundle, download_command


def _fake_downloader(dest):
    os.makedirs(dest, exist_ok=True)
    names = ["keras-3.12.4-py3-none-any.whl", "numpy-2.1.0-cp312-cp312-manylinux_2_28_x86_64.whl",
             "ml_dtypes-0.5.1-cp312-cp312-manylinux_2_28_x86_64.whl",
             "pandas-2.2.3-cp312-cp312-manylinux_2_17_x86_64.manylinux2014_x86_64.whl"]
    for n in names:
        open(os.path.join(dest, n), "wb").write(b"x")
    return names


def test_bundle_dry_run(tmp_path):
    from dmgin_tf.data.examples import ExampleSet
    out = str(tmp_path / "bundle")
    cfg = Config.from_dict({"model": {"history_length": 32}, "train": {"epochs": 1}})
    manifest = build_bundle(cfg, ["taobao"], out, downloader=_fake_downloader, log=lambda *a: None)
    # Host-provided wheels are pruned, ours kept.
    assert manifest["wheels"] == ["keras-3.12.4-py3-none-any.whl",
                                  "pandas-2.2.3-cp312-cp312-manylinux_2_17_x86_64.manylinux2014_x86_64.whl"]
    es = ExampleSet.load(os.path.join(out, "data", "taobao"))
    assert len(es) > 1000 and es.metadata["spec"]["name"] == "taobao"
    assert os.path.exists(os.path.join(out, "data", "taobao", "item_index.parquet"))
    run_cfg = json.load(open(os.path.join(out, "config_taobao.json")))
    assert run_cfg["train"]["backend"] == "jax" and run_cfg["train"]["mixed_precision"] is True
    assert run_cfg["model"]["history_length"] == 32 and run_cfg["data"]["dataset"] == "taobao"
    assert os.path.exists(os.path.join(out, "src", "dmgin_tf", "training", "trainer.py"))
    assert not os.path.exists(os.path.join(out, "src", "dmgin_tf", "sample_data"))
    assert not os.path.exists(os.path.join(out, ".work"))
    run_sh = open(os.path.join(out, "run.sh")).read()
    assert "train --backend jax --dataset taobao" in run_sh and "KERAS_BACKEND=jax" in run_sh
    assert subprocess.run(["bash", "-n", os.path.join(out, "run.sh")]).returncode == 0
    assert manifest["within_size_limit"] and manifest["total_bytes"] < 16 * 2**20
    assert json.load(open(os.path.join(out, "MANIFEST.json")))["datasets"]["taobao"]["bytes"] > 0


def test_download_command_targets_cp312_manylinux():
    cmd = download_command("/tmp/w", ["keras==3.12.4"])
    joined = " ".join(cmd)
    assert "--python-version 3.12" in joined and "--only-binary=:all:" in joined
    assert "--platform manylinux_2_28_x86_64" in joined and cmd[-1] == "keras==3.12.4"


def test_group_table_flag_is_per_dataset():
    """--group-table NAME=PATH per dataset; a bare PATH only with one dataset."""
    import pytest
    from dmgin_tf.cli.gpu import per_dataset_paths
    from dmgin_tf.errors import DmginError
    both = ["taobao", "movielens"]
    assert per_dataset_paths(["movielens"], ["g/item_groups"], "--group-table") == \
        {"movielens": "g/item_groups"}
    assert per_dataset_paths(both, ["movielens=g/item_groups"], "--group-table") == \
        {"movielens": "g/item_groups"}
    assert per_dataset_paths(both, None, "--group-table") == {}
    with pytest.raises(DmginError, match=r"--group-table 'g/item_groups': with several datasets"
                                         r".*movielens=g/item_groups"):
        per_dataset_paths(both, ["g/item_groups"], "--group-table")
    with pytest.raises(DmginError, match=r"--group-table 'generic=x': 'generic' is not a bundled"):
        per_dataset_paths(both, ["generic=x"], "--group-table")
    with pytest.raises(DmginError, match="given twice"):
        per_dataset_paths(both, ["movielens=a", "movielens=b"], "--group-table")


def test_bundle_cli_variants_need_known_rows_and_quality(tmp_path, capsys):
    """`--variants` is checked against the quality rows before anything is built."""
    from dmgin_tf.cli.main import main
    base = ["gpu", "bundle", "--dataset", "movielens", "--no-wheels",
            "--output", str(tmp_path / "b")]
    assert main(base + ["--variants", "dmgin"]) == 2                # rows need --quality
    assert "add --quality" in capsys.readouterr().err
    # No --group-table: there is no cluster row, and the error lists the rows there are.
    assert main(base + ["--quality", "--variants", "dmgin key=cluster"]) == 2
    err = capsys.readouterr().err
    assert "--variants: unknown row(s) ['dmgin key=cluster']" in err and "'dmgin -stats'" in err
    assert not os.path.exists(tmp_path / "b")
    # A missing --data path is named with its dataset, and nothing is written.
    assert main(base + ["--data", f"movielens={tmp_path / 'nowhere'}"]) == 2
    assert f"--data movielens={tmp_path / 'nowhere'}: no such file" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "b")


def test_run_sh_refuses_wheels_of_another_python(tmp_path):
    """The wheels were always cp312: on a host with another Python, pip failed with "not
    a supported wheel on this platform". The bundle now names its Python and run.sh
    says what to rebuild."""
    import sys
    assert "--python-version 3.10" in " ".join(download_command("/w", ["x"], "3.10"))
    out = str(tmp_path / "bundle")
    manifest = build_bundle(Config(), ["taobao"], out, downloader=_fake_downloader,
                            log=lambda *a: None, host_python="9.9")
    assert manifest["host_python"] == "9.9"
    env = dict(os.environ, PYTHON=sys.executable, RUN_OUT=str(tmp_path / "o"),
               DMGIN_SITE=str(tmp_path / "site"))
    p = subprocess.run(["bash", os.path.join(out, "run.sh")], env=env, capture_output=True,
                       text=True, timeout=300)
    here = "%d.%d" % sys.version_info[:2]
    assert p.returncode == 2, p.stderr
    assert f"for Python 9.9, {sys.executable} is Python {here}" in p.stderr
    assert f"--host-python {here}" in p.stderr
    assert not os.path.exists(tmp_path / "site" / "keras")


def test_quality_run_sh_fails_when_its_driver_fails(tmp_path):
    """`|| true` after the driver made run.sh exit 0 (with an empty results archive)
    whatever happened; the archives are still written, the status is the driver's."""
    import sys
    from dmgin_tf.bench import quality
    from dmgin_tf.bench.gpu_bundle import QualitySpec
    spec = QualitySpec((quality.Variant("dmgin", "dmgin"),), (0,), quality.QUICK_BUDGET)
    out = str(tmp_path / "bundle")
    build_bundle(Config(), ["taobao"], out, wheels=False, quality=spec, log=lambda *a: None)
    env = dict(os.environ, PYTHON=sys.executable, RUN_OUT=str(tmp_path / "o"),
               DMGIN_NO_INSTALL="1")
    p = subprocess.run(["bash", os.path.join(out, "run.sh"), "--no-such-flag"], env=env,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode != 0 and "the quality driver failed" in p.stderr, p.stderr[-2000:]
    assert os.path.exists(tmp_path / "o" / "quality" / "driver.log")


def test_run_sh_again_skips_the_runs_that_finished(tmp_path):
    """After an interruption, run.sh trained every finished dataset again (hours on a
    GPU) and overwrote its log; a finished run (its metrics.json) is now skipped unless
    FORCE=1."""
    import sys
    out = str(tmp_path / "bundle")
    build_bundle(Config(), ["taobao"], out, wheels=False, log=lambda *a: None)
    run_out = tmp_path / "o"
    (run_out / "taobao_dmgin").mkdir(parents=True)
    (run_out / "taobao_dmgin" / "metrics.json").write_text("{}")
    (run_out / "taobao_dmgin.log").write_text("the first attempt\n")
    env = dict(os.environ, PYTHON=sys.executable, RUN_OUT=str(run_out), DMGIN_NO_INSTALL="1")
    p = subprocess.run(["bash", os.path.join(out, "run.sh")], env=env, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "taobao_dmgin: finished earlier" in p.stdout and "FORCE=1" in p.stdout
    assert (run_out / "taobao_dmgin.log").read_text() == "the first attempt\n"
    assert "tee -a" in open(os.path.join(out, "run.sh")).read()
    # --help prints the header (usage, environment) and runs nothing.
    p = subprocess.run(["bash", os.path.join(out, "run.sh"), "--help"], env=env,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and "Usage: bash run.sh" in p.stdout and "FORCE=1" in p.stdout
    assert not p.stderr and "taobao_dmgin: finished earlier" not in p.stdout
