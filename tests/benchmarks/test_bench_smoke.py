"""Smoke tests of the benchmark entry points on tiny sizes (not timed)."""
import json
import os

import numpy as np
import pytest

from tests.training.tiny import tiny_model_fn


@pytest.fixture()
def tiny_models(monkeypatch):
    """Every row trains the tiny model: the smoke test checks the benchmark plumbing, the
    model tests live with the models."""
    pytest.importorskip("keras")
    import dmgin_tf.training.trainer as trainer
    monkeypatch.setattr(trainer, "default_model_fn", tiny_model_fn)


def test_bench_quality_quick(tmp_path, tiny_models):
    from dmgin_tf.cli.main import main
    out = tmp_path / "q"
    docs = tmp_path / "benchmarks.md"
    docs.write_text("# Benchmarks\n\n## Efficiency\n\nkept as is\n")
    argv = ["bench", "quality", "--dataset", "taobao", "--quick", "--output", str(out),
            "--docs", str(docs)]
    assert main(argv) == 0
    results = json.load(open(out / "quality_taobao.json"))
    names = [r["variant"] for r in results["rows"]]
    assert names == ["dmgin", "dmgin -stats", "item popularity"]
    for row in results["rows"]:
        assert 0.0 <= row["auc"]["mean"] <= 1.0 and row["runs"] == 1
    assert os.path.exists(out / "quality_taobao.png")
    assert "| dmgin -stats |" in open(out / "quality_taobao.md").read()
    text = docs.read_text()
    assert "## Efficiency\n\nkept as is" in text and "## Quality" in text
    assert "LightGBM on past-only history features | 0.929 | 0.926" in text
    assert "dmgin bench quality --dataset taobao --quick" in text
    assert text.count("<!-- quality:taobao:start -->") == 1


def test_popularity_matches_pandas_reference(tmp_path):
    import pandas as pd
    from dmgin_tf.config import Config
    from dmgin_tf.data.examples import ExampleSet
    from dmgin_tf.training.data_source import prepare_example_dir
    from dmgin_tf.bench.popularity import popularity_counts, popularity_scores
    cfg = Config.from_dict({"data": {"dataset": "taobao"}, "grouping": {"key": "item_id"}})
    es = ExampleSet.load(prepare_example_dir(cfg, None, str(tmp_path), progress=False,
                                             log=lambda *a: None))
    df = pd.DataFrame({"item": es.ex_cand_item, "label": es.ex_label, "split": es.ex_split})
    ref = df[(df.split == 0) & (df.label == 1)].item.value_counts()
    counts = popularity_counts(es)
    for item, n in ref.items():
        assert counts[item] == n
    assert counts.sum() == ref.sum()
    test = es.split_indices("test")
    s = popularity_scores(es, "test")
    want = ref.reindex(es.ex_cand_item[test]).fillna(0).to_numpy()
    np.testing.assert_allclose(s, want / (want + 1))


def test_benchmarks_doc_block_replaced_in_place(tmp_path):
    from dmgin_tf.bench.quality import update_benchmarks_doc
    path = str(tmp_path / "b.md")
    update_benchmarks_doc(path, "movielens", "table ML 1")
    update_benchmarks_doc(path, "taobao", "table TB 1")
    with open(path, "a") as f:
        f.write("\n## Serving\n\nother section\n")
    update_benchmarks_doc(path, "movielens", "table ML 2")
    text = open(path).read()
    assert "table ML 1" not in text and "table ML 2" in text and "table TB 1" in text
    assert text.index("table ML 2") < text.index("table TB 1") < text.index("## Serving")
    assert text.count("## Quality") == 1


def _table(*rows):
    head = ["| row | grouping | test AUC |", "|---|---|---|"]
    return "\n".join(head + [f"| {r} | category | 0.9 |" for r in rows]) + "\n\nfooter"


def test_benchmarks_doc_block_kept_when_a_run_lacks_its_rows(tmp_path, capsys):
    """A run of one row must not replace a published table assembled from several runs."""
    from dmgin_tf.bench.quality import table_rows, update_benchmarks_doc
    path = str(tmp_path / "b.md")
    assert update_benchmarks_doc(path, "movielens", _table("dmgin", "din (partial: 1/3 seeds)")) is None
    assert table_rows(open(path).read()) == ["dmgin", "din"]
    kept = update_benchmarks_doc(path, "movielens", _table("dmgin key=cluster"))
    assert "dmgin, din" in kept and "movielens" in kept
    assert "dmgin key=cluster" not in open(path).read()
    # Every published row present (here with one more): the block is rewritten.
    assert update_benchmarks_doc(path, "movielens", _table("dmgin", "din", "sim")) is None
    assert table_rows(open(path).read()) == ["dmgin", "din", "sim"]
