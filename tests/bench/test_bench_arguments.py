"""`dmgin bench` refuses sizes that would run something else than asked: a 0 used to be
replaced by the default (the results then claimed the default while the recorded
command showed 0), `--seeds 0` ran nothing and still rendered a table, and
`--quick --seeds 3` ran one seed."""
import pytest

from dmgin_tf.cli.main import main


@pytest.mark.parametrize("args, words", [
    (["--seeds", "0"], "argument --seeds: must be > 0, got 0"),
    (["--seeds", "-1"], "argument --seeds: must be > 0, got -1"),
    (["--epochs", "0"], "argument --epochs: must be > 0, got 0"),
    (["--batch-size", "0"], "argument --batch-size: must be > 0, got 0"),
    (["--history-length", "0"], "argument --history-length: must be > 0, got 0"),
    (["--steps-per-epoch", "-2"], "argument --steps-per-epoch: must be >= 0, got -2"),
    (["--k-values", "16", "0"], "argument --k-values: must be > 0, got 0"),
])
def test_bench_quality_refuses_nonsense_sizes(capsys, args, words):
    with pytest.raises(SystemExit) as info:
        main(["bench", "quality", "--dataset", "taobao", "--quick", "--docs", ""] + args)
    assert info.value.code == 2
    assert words in capsys.readouterr().err


def test_quick_runs_the_seeds_asked_for(monkeypatch, tmp_path):
    """`--quick` defaults to one seed; an explicit `--seeds N` is honoured and recorded."""
    from dmgin_tf.bench import quality
    seen = {}

    def fake_run(cfg, data, out, seeds, **kw):
        seen["seeds"] = list(seeds)
        raise SystemExit(0)
    monkeypatch.setattr(quality, "run_quality", fake_run)
    base = ["bench", "quality", "--dataset", "taobao", "--quick", "--docs", "",
            "--output", str(tmp_path)]
    for extra, want in (([], [0]), (["--seeds", "3"], [0, 1, 2])):
        with pytest.raises(SystemExit):
            main(base + extra)
        assert seen["seeds"] == want


@pytest.mark.parametrize("args, words", [
    (["--stages", "foo"], "--stages foo: unknown stage(s) ['foo']"),
    (["--stages", "pipeline,kmeans"], "'pipeline' runs alone"),
    (["--runners", "direct,foo"], "'foo' is not a runner; use direct or daskN"),
    (["--runners", "dask0"], "'dask0' is not a runner"),
])
def test_bench_scale_refuses_unknown_stages_and_runners(capsys, tmp_path, args, words):
    """Checked before any data is read: an unknown stage produced an empty table and
    `pipeline,kmeans` dropped the pipeline silently."""
    assert main(["bench", "scale", "--data", str(tmp_path / "absent"), "--docs", "",
                 "--output", str(tmp_path / "out")] + args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and words in err, err


def test_benchmark_scripts_report_errors_in_one_line(capsys, monkeypatch):
    """The scripts under benchmarks/ run their main through `run_script`: one line and
    exit 2 instead of a traceback; DMGIN_DEBUG=1 shows the traceback."""
    from dmgin_tf.cli.main import run_script

    def failing(argv):
        raise ValueError("--lengths: [0] must be >= 1")
    monkeypatch.setattr("sys.argv", ["bench_efficiency.py"])
    assert run_script(failing) == 2
    assert capsys.readouterr().err.strip() == \
        "bench_efficiency.py: error: --lengths: [0] must be >= 1"
    monkeypatch.setenv("DMGIN_DEBUG", "1")
    with pytest.raises(ValueError):
        run_script(failing)


def test_tune_select_refuses_files_without_trials(capsys, tmp_path):
    """A plain quality results file gave `"hparams": {}` and exit 0; `{}` a KeyError."""
    import json
    plain = tmp_path / "quality_taobao.json"
    plain.write_text(json.dumps({"dataset": "taobao", "runs": [
        {"variant": "dmgin", "seed": 0, "val": {"gauc": 0.9}}]}))
    empty = tmp_path / "empty.json"
    empty.write_text("{}")
    for path, words in ((plain, "no finished tuning trial"),
                        (empty, "not a quality results file")):
        assert main(["bench", "tune-select", str(path), "--output", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err
        assert words in err and str(path) in err, err
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())
