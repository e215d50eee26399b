"""Beam example builder (transform/examples.py) == the in-process numpy builder
(dmgin_tf.data.examples.build_example_set), order-independent, on real sample slices."""
import os

import numpy as np
import pandas as pd
import pytest

from dmgin_tf import features as F
from dmgin_tf.config import BeamConfig, DataConfig
from dmgin_tf.data.converters import convert
from dmgin_tf.data.datasets import get_spec
from dmgin_tf.data.examples import SPLIT_NAMES, build_example_set
from dmgin_tf.data.item_index import ItemIndex
from transform import beam_io
from transform import examples as beam_examples

DIRECT = BeamConfig.from_dict({"direct_running_mode": "in_memory"})


def make_slice(root, dataset, n_users):
    """Converted embedded sample, cut to its first `n_users` users (all items kept)."""
    full = root / f"{dataset}-full"
    convert(dataset, "", str(full), DataConfig.from_dict({"dataset": dataset}), show_progress=False)
    b = pd.read_parquet(full / "behaviors.parquet")
    users = sorted(b[F.USER_ID].unique())[:n_users]
    out = root / dataset
    out.mkdir()
    b[b[F.USER_ID].isin(users)].to_parquet(out / "behaviors.parquet", index=False,
                                           row_group_size=700)
    os.link(full / "items.parquet", out / "items.parquet")
    return out


def reference_examples(data_dir, cfg):
    """Examples of the numpy builder, as the same tuples the Beam side is read into."""
    b = pd.read_parquet(data_dir / "behaviors.parquet")
    items = pd.read_parquet(data_dir / "items.parquet")
    spec = get_spec(cfg.dataset, cfg, observed_behaviors=b[F.BEHAVIOR].unique())
    index = ItemIndex.build(items, "item_id")
    es = build_example_set(b, items, spec, index, cfg, progress=False)
    cat = dict(zip(items[F.ITEM_ID].astype(str), items[F.CATEGORY].fillna("")))
    names = np.asarray(index.item_ids, dtype=object)
    assert (es.beh_item >= 2).all(), "test slice must have every history item in the catalog"
    out = {s: [] for s in SPLIT_NAMES}
    for j in range(len(es)):
        u = es.ex_user[j]
        off, h = es.user_offsets[u], es.ex_hist_end[j]
        sl = slice(off + max(0, h - cfg.max_history), off + h)
        cand = names[es.ex_cand_item[j] - 2]
        out[SPLIT_NAMES[es.ex_split[j]]].append((
            str(es.user_ids[u]), cand, cat.get(cand, ""), int(es.ex_label[j]),
            int(es.ex_request_time[j]), tuple(names[es.beh_item[sl] - 2]),
            tuple(spec.behavior_types[k - 1] for k in es.beh_behavior[sl]),
            tuple(int(t) for t in es.beh_time[sl])))
    return {s: sorted(v) for s, v in out.items()}


def as_tuples(rows):
    return sorted((r[F.USER_ID], r[F.ITEM_ID], r[F.CATEGORY], r[F.LABEL], r[F.TIMESTAMP],
                   tuple(r[F.HIST_ITEM_ID]), tuple(r[F.HIST_BEHAVIOR]), tuple(r[F.HIST_TIMESTAMP]))
                  for r in rows)


@pytest.fixture(scope="module")
def slices(tmp_path_factory):
    root = tmp_path_factory.mktemp("beam_examples")
    return {"taobao": make_slice(root, "taobao", 15), "movielens": make_slice(root, "movielens", 12)}


@pytest.mark.parametrize("dataset,max_history", [("taobao", 10000), ("movielens", 7)])
def test_beam_examples_equal_numpy_builder(slices, tmp_path, dataset, max_history):
    cfg = DataConfig.from_dict({"dataset": dataset, "max_history": max_history, "seed": 3})
    counts = beam_examples.build_examples(str(slices[dataset]), str(tmp_path / "ex"), cfg, DIRECT,
                                          splits=3)
    ref = reference_examples(slices[dataset], cfg)
    for split in SPLIT_NAMES:
        got = as_tuples(beam_examples.read_examples(str(tmp_path / "ex" / split)))
        assert counts[split] == len(ref[split]) == len(got)
        assert got == ref[split], split
    assert counts["test"] > 0 and counts["val"] > 0
    if dataset == "taobao":  # sampled negatives present and identical (seeded per user)
        assert sum(1 for r in ref["train"] if r[3] == 0) > 0
    else:  # truncation at max_history happened and matched
        assert max(len(r[5]) for r in ref["train"]) == max_history


def test_examples_have_no_future_history(slices, tmp_path):
    cfg = DataConfig.from_dict({"dataset": "movielens"})
    beam_examples.build_examples(str(slices["movielens"]), str(tmp_path / "ex"), cfg, DIRECT,
                                 splits=2)
    rows = beam_examples.read_examples(str(tmp_path / "ex" / "train"))
    assert rows
    for r in rows:
        assert all(t < r[F.TIMESTAMP] for t in r[F.HIST_TIMESTAMP])
        assert r[F.HIST_TIMESTAMP] == sorted(r[F.HIST_TIMESTAMP])


def test_tf_example_round_trip_and_feature_spec():
    import tensorflow as tf
    row = {F.USER_ID: "u", F.ITEM_ID: "i", F.CATEGORY: "c", F.LABEL: 1, F.TIMESTAMP: 9,
           F.HIST_ITEM_ID: ["a", "b"], F.HIST_BEHAVIOR: ["pv", "buy"], F.HIST_TIMESTAMP: [1, 2]}
    rec = beam_examples.to_tf_example(row)
    assert beam_examples.from_tf_example(rec) == row
    # Hand-written wire format == TensorFlow's own encoding of the same Example.
    ref = tf.train.Example.FromString(rec)
    assert tf.train.Example.FromString(ref.SerializeToString()) == ref
    big = dict(row, **{F.TIMESTAMP: 2 ** 40, F.LABEL: 0, F.HIST_TIMESTAMP: [-5, 0, 300],
                       F.HIST_ITEM_ID: ["é", ""], F.HIST_BEHAVIOR: []})
    big[F.HIST_ITEM_ID] = ["é", "", "x"]
    assert beam_examples.from_tf_example(beam_examples.to_tf_example(big)) == big
    empty = dict(row, **{F.HIST_ITEM_ID: [], F.HIST_BEHAVIOR: [], F.HIST_TIMESTAMP: []})
    assert beam_examples.from_tf_example(beam_examples.to_tf_example(empty)) == empty
    expected = tf.train.Example(features=tf.train.Features(feature={
        F.LABEL: tf.train.Feature(int64_list=tf.train.Int64List(value=[1])),
        F.HIST_TIMESTAMP: tf.train.Feature(int64_list=tf.train.Int64List(value=[1, 2])),
        F.HIST_ITEM_ID: tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"a", b"b"]))}))
    got = tf.train.Example.FromString(rec)
    for k in (F.LABEL, F.HIST_TIMESTAMP, F.HIST_ITEM_ID):
        assert got.features.feature[k] == expected.features.feature[k]
    parsed = tf.io.parse_single_example(rec, beam_examples.feature_spec())
    assert parsed[F.LABEL].numpy() == 1
    assert tf.sparse.to_dense(parsed[F.HIST_TIMESTAMP]).numpy().tolist() == [1, 2]


def test_missing_input_is_a_clear_error(tmp_path):
    with pytest.raises(Exception, match="behaviors.parquet not found"):
        beam_examples.build_examples(str(tmp_path), str(tmp_path / "o"), DataConfig(), DIRECT)
