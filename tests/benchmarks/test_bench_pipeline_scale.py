"""The synthetic scale sets of `dmgin bench scale --stages pipeline` (fast: pandas only)."""
import os

import numpy as np
import pandas as pd
import pytest

from dmgin_tf import features as F


@pytest.fixture()
def bench_scale(monkeypatch):
    from dmgin_tf.bench import scale
    return scale


@pytest.fixture()
def data(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(0)
    users = np.repeat(["a", "b", "c"], [5, 7, 3])
    pd.DataFrame({F.USER_ID: users, F.ITEM_ID: rng.integers(0, 9, len(users)).astype(str),
                  F.BEHAVIOR: "pv", F.TIMESTAMP: 100 + np.arange(len(users))}).to_parquet(
        src / "behaviors.parquet")
    pd.DataFrame({F.ITEM_ID: [str(i) for i in range(9)], F.CATEGORY: "x"}).to_parquet(
        src / "items.parquet")
    return str(src)


def test_replicate_adds_new_users_with_the_real_sequences(bench_scale, data, tmp_path):
    out = bench_scale.replicate(data, str(tmp_path / "x3"), 3)
    src = pd.read_parquet(os.path.join(data, "behaviors.parquet"))
    rep = pd.read_parquet(os.path.join(out, "behaviors.parquet"))
    assert len(rep) == 3 * len(src) and rep[F.USER_ID].nunique() == 9
    copy = rep[rep[F.USER_ID] == "b~r2"]
    real = src[src[F.USER_ID] == "b"]
    assert copy[F.ITEM_ID].tolist() == real[F.ITEM_ID].tolist()
    assert copy[F.TIMESTAMP].tolist() == real[F.TIMESTAMP].tolist()
    assert bench_scale.replicate(data, str(tmp_path / "x1"), 1) == data


def test_lifelong_users_chain_real_users_in_time(bench_scale, data, tmp_path):
    out = bench_scale.lifelong(data, str(tmp_path / "life"), events=12, users=2)
    life = pd.read_parquet(os.path.join(out, "behaviors.parquet"))
    assert life.groupby(F.USER_ID).size().to_dict() == {"life0": 12, "life1": 12}
    for _, g in life.groupby(F.USER_ID):
        assert (np.diff(g[F.TIMESTAMP].to_numpy()) > 0).all()   # one user's years, in order


def test_pipeline_markdown_names_synthetic_rows(bench_scale):
    comp = {"seconds": 2.0, "peak_rss_bytes": 1.5e9, "artifact_bytes": 3e6}
    runs = [{"factor": f, "synthetic": f != 1, "behaviors": 10, "behavior_bytes": 1e6,
             "components": {"ExampleBuilder": comp}, "ratio": 3.0, "seconds": 9.0}
            for f in (1, 10, "life")]
    md = bench_scale.pipeline_markdown({"runs": runs, "dataset": "taobao", "config": "c.yaml",
                                        "host": "h"}, "dmgin bench scale")
    assert "| 1× |" in md and "10× (synthetic)" in md and "10⁴ events/user (synthetic)" in md
    assert md.startswith("<!-- pipeline-scale:taobao:start -->")
