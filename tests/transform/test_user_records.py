"""Per-user sequence records (transform.examples.build_user_records) expanded on the fly
(tfx_pipeline.records + dmgin_tf.data.batches.densify) == the per-example builders.

Three builders, one protocol: the old flat builder (`build_examples`, one tf.Example per
example with its history copied in), the numpy builder the JAX / quality path trains on
(`build_example_set`), and the pipeline's user records read through tf.data. Compared
order-independently, per split, on real sample slices with two cumulative spans, users
with < 5 labelled events and behaviors sharing a timestamp with the example.
"""
import os

import numpy as np
import pandas as pd
import pytest

from dmgin_tf import features as F
from dmgin_tf.config import DataConfig
from dmgin_tf.data.batches import densify
from dmgin_tf.data.datasets import get_spec
from dmgin_tf.data.examples import SPLIT_NAMES, build_example_set
from dmgin_tf.data.item_index import ItemIndex
from test_beam_examples import DIRECT, make_slice  # same directory (rootdir on sys.path)
from transform import beam_io
from transform import examples as X

L = 16


def _vocab_file(index: ItemIndex, tmp):
    """A vocabulary file laid out like the Transform's ("item|group", line k -> id k + 2)."""
    pair_file = str(tmp / "item_group_vocab")
    names = [str(v) for v in index.item_ids]
    groups = index.groups_of(np.arange(len(names)) + 2)
    with open(pair_file, "w") as f:
        f.write("".join(f"{n}|{int(g)}\n" for n, g in zip(names, groups)))
    return pair_file


def _rows(batch, users):
    """Dense batch -> sorted tuples (user, time, cand, group, label, history...)."""
    out = []
    for j in range(len(batch[F.LABEL])):
        n = int((batch[F.HIST_ITEM][j] != 0).sum())
        out.append((str(users[j]), int(batch[F.REQUEST_TIME][j]), int(batch[F.CAND_ITEM][j]),
                    int(batch[F.CAND_GROUP][j]), int(batch[F.LABEL][j]),
                    tuple(batch[F.HIST_ITEM][j][:n]), tuple(batch[F.HIST_GROUP][j][:n]),
                    tuple(batch[F.HIST_BEHAVIOR_ID][j][:n]), tuple(batch[F.HIST_TIME][j][:n])))
    return sorted(out)


def _expand(es, split):
    idx = es.split_indices(split)
    return _rows(densify(es, idx, L), es.user_ids[es.ex_user[idx]])


def _flat_rows(source, index, spec, window):
    """Flat examples (a split directory of the old builder, or serialized records), mapped
    to ids and cut to the newest `window`."""
    out = []
    beh = {b: i + 1 for i, b in enumerate(spec.behavior_types)}
    rows = X.read_examples(source) if isinstance(source, str) else \
        [X.from_tf_example(r) for r in source]
    for r in rows:
        h = slice(-window, None)
        items = index.lookup(np.asarray(r[F.HIST_ITEM_ID][h], dtype=object))
        cand = int(index.lookup(np.asarray([r[F.ITEM_ID]], dtype=object))[0])
        out.append((r[F.USER_ID], r[F.TIMESTAMP], cand, int(index.groups_of(np.array([cand]))[0]),
                    r[F.LABEL], tuple(items), tuple(index.groups_of(items)),
                    tuple(beh[b] for b in r[F.HIST_BEHAVIOR][h]), tuple(r[F.HIST_TIMESTAMP][h])))
    return sorted(out)


@pytest.fixture(scope="module")
def spans(tmp_path_factory):
    """MovieLens slice cut into two cumulative spans (70% / 100% of its time range)."""
    from tfx_pipeline.runner import split_into_spans
    root = tmp_path_factory.mktemp("user_records")
    converted = make_slice(root, "movielens", 12)
    # Two users cut to their first 3 and 1 behaviors (< 5 labelled events: train only).
    path = converted / "behaviors.parquet"
    b = pd.read_parquet(path)
    short = sorted(b[F.USER_ID].unique())[:2]
    keep = ~b[F.USER_ID].isin(short) | (b.groupby(F.USER_ID).cumcount()
                                        < b[F.USER_ID].map({short[0]: 3, short[1]: 1}).fillna(0))
    b[keep].to_parquet(path, index=False, row_group_size=700)
    return split_into_spans(str(converted), str(root / "spans"), [0.7, 1.0])


@pytest.fixture(scope="module")
def taobao_slice(tmp_path_factory):
    """Taobao slice: sampled negatives, stored once each beside the positions."""
    return str(make_slice(tmp_path_factory.mktemp("user_records_taobao"), "taobao", 15))


@pytest.mark.parametrize("dataset,span", [("movielens", 0), ("movielens", 1), ("taobao", 0)])
def test_records_expand_to_the_per_example_builders(spans, taobao_slice, tmp_path, dataset, span):
    from tfx_pipeline.records import Lookups, read_user_records
    data = spans[span] if dataset == "movielens" else taobao_slice
    cfg = DataConfig.from_dict({"dataset": dataset, "max_history": 10, "seed": 3})
    beh = pd.read_parquet(os.path.join(data, "behaviors.parquet"))
    items = pd.read_parquet(os.path.join(data, "items.parquet"))
    spec = get_spec(dataset, cfg, observed_behaviors=beh[F.BEHAVIOR].unique())
    index = ItemIndex.build(items, "category")
    groups = dict(zip(index.item_ids, index.groups_of(np.arange(len(index.item_ids)) + 2)))
    # The slice must exercise the edge cases: a user with < 5 labelled events and
    # behaviors at the same second as a later one of the same user.
    per_user = beh.groupby(F.USER_ID).size()
    assert dataset == "taobao" or (per_user < 5).any(), per_user.min()
    assert beh.duplicated([F.USER_ID, F.TIMESTAMP]).any()

    counts = X.build_user_records(data, str(tmp_path / "rec"), cfg, DIRECT, item_groups=groups,
                                  window=L, splits=3)
    X.build_examples(data, str(tmp_path / "flat"), cfg, DIRECT, splits=3, item_groups=groups)
    es_ref = build_example_set(beh, items, spec, index, cfg, progress=False)
    lookups = Lookups(_vocab_file(index, tmp_path), spec.behavior_types)
    window = min(L, cfg.max_history)
    for split in SPLIT_NAMES:
        files = beam_io.output_files(str(tmp_path / "rec" / split))
        assert all(f.endswith(".tfrecord.gz") for f in files)
        es = read_user_records(files, lookups, split, cfg.max_history)
        assert counts[split] == es.num_users      # one record per user with examples
        assert len(set(es.user_ids)) == es.num_users
        got = _expand(es, split)
        assert got == _expand(es_ref, split), split                     # == numpy / JAX path
        flat = _flat_rows(str(tmp_path / "flat" / split), index, spec, window)
        assert got == flat, split                                        # == old flat builder
        assert len(got) > 0
        # Negatives (Taobao) are stored once each, not as positions of their own.
        stored = [X.from_sequence_example(r)[1] for r in beam_io.read_tfrecords(
            str(tmp_path / "rec" / split))]
        sampled = sum(len(lists[X.SAMPLED_ITEM]) for lists in stored)
        assert (sampled > 0) == spec.sample_negatives, (split, sampled)
        assert sampled == int((es.ex_label[es.split_indices(split)] == 0).sum()) \
            or not spec.sample_negatives
    # The strict-before rule at equal timestamps: no history behavior at the request second.
    es = read_user_records(beam_io.output_files(str(tmp_path / "rec" / "train")), lookups,
                           "train", cfg.max_history)
    dense = densify(es, np.arange(len(es)), L)
    held = dense[F.HIST_TIME] != 0
    assert (dense[F.HIST_TIME][held] < np.broadcast_to(
        dense[F.REQUEST_TIME][:, None], held.shape)[held]).all()
    same_second = [(u, t) for u, t in zip(es.ex_user, es.ex_request_time)
                   if (es.beh_time[es.user_offsets[u]:es.user_offsets[u + 1]] == t).any()]
    assert same_second, "slice has no behavior sharing its example's second"
    # The Evaluator's expansion of the test records (tfx_pipeline.eval_records) is the old
    # builder's test examples, histories cut at the window (max_history 10 < L = 16 here).
    from tfx_pipeline.eval_records import expand_records
    expanded = expand_records(beam_io.read_tfrecords(str(tmp_path / "rec" / "test")), window)
    assert max(len(X.from_tf_example(r)[F.HIST_ITEM_ID]) for r in expanded) == window
    assert _flat_rows(expanded, index, spec, window) == \
        _flat_rows(str(tmp_path / "flat" / "test"), index, spec, window)
    assert sorted(os.listdir(tmp_path / "rec")) == sorted(SPLIT_NAMES)   # nothing per example


def test_storage_is_linear_in_behaviors(spans, tmp_path):
    """Records hold each behavior at most once per split (+ the window), unlike the
    flat examples whose size grows with history length × examples."""
    data = spans[1]
    cfg = DataConfig.from_dict({"dataset": "movielens", "seed": 3})
    X.build_user_records(data, str(tmp_path / "rec"), cfg, DIRECT, item_groups={}, window=L,
                         splits=2, compression="")
    n_beh = len(pd.read_parquet(os.path.join(data, "behaviors.parquet")))
    steps = 0
    for split in SPLIT_NAMES:
        for rec in beam_io.read_tfrecords(str(tmp_path / "rec" / split)):
            _, lists = X.from_sequence_example(rec)
            steps += len(lists[X.SEQ_ITEM])
    users = pd.read_parquet(os.path.join(data, "behaviors.parquet"))[F.USER_ID].nunique()
    assert n_beh <= steps <= n_beh * 1.5 + 2 * L * users


def test_sequence_example_round_trip():
    import tensorflow as tf
    lists = {X.SEQ_ITEM: ["a", "é"], X.SEQ_BEHAVIOR: ["pv", "buy"], X.SEQ_TIME: [5, 2 ** 40],
             X.SEQ_GROUP: [2, 3], X.POS_HIST_END: [0, 1, 1], X.POS_EVENT: [0, 1, 1],
             X.POS_LABEL: [1, 0, 0], X.POS_SAMPLED: [0, 1, 1], X.SAMPLED_ITEM: ["x", "y"],
             X.SAMPLED_GROUP: [1, 1]}
    rec = X.to_sequence_example("u1", lists)
    assert X.from_sequence_example(rec) == ("u1", {k: list(v) for k, v in lists.items()})
    ref = tf.train.SequenceExample.FromString(rec)      # TensorFlow's own parser agrees
    assert tf.train.SequenceExample.FromString(ref.SerializeToString()) == ref
    ctx, seq = X.sequence_feature_spec()
    c, s, _ = tf.io.parse_sequence_example(tf.constant([rec]), context_features=ctx,
                                           sequence_features=seq)
    # [records, (steps), (1 value)]
    assert s[X.POS_HIST_END].to_list() == [[[0], [1], [1]]]
    assert s[X.SEQ_ITEM].to_list() == [[[b"a"], ["é".encode()]]]


def test_serving_tensorizer_equals_training_batches(spans, tmp_path):
    """`serving_default`'s tensorizer on the Evaluator's expansion of the test records ==
    the trainer's batches from the same records: one mapping for training and serving."""
    import tensorflow as tf
    from tfx_pipeline.module import FlatTensorizer
    from tfx_pipeline.records import Lookups, read_user_records
    data = spans[1]
    cfg = DataConfig.from_dict({"dataset": "movielens", "max_history": 10, "seed": 3})
    items = pd.read_parquet(os.path.join(data, "items.parquet"))
    beh = pd.read_parquet(os.path.join(data, "behaviors.parquet"))
    spec = get_spec("movielens", cfg, observed_behaviors=beh[F.BEHAVIOR].unique())
    # Drop a few catalog items from the vocabulary: unknown items must map to OOV alike.
    index = ItemIndex.build(items.iloc[: len(items) - 40], "category")
    groups = dict(zip(index.item_ids, index.groups_of(np.arange(len(index.item_ids)) + 2)))
    X.build_user_records(data, str(tmp_path / "rec"), cfg, DIRECT, item_groups=groups,
                         window=L, splits=2)
    lookups = Lookups(_vocab_file(index, tmp_path), spec.behavior_types)
    es = read_user_records(beam_io.output_files(str(tmp_path / "rec" / "test")), lookups,
                           "test", cfg.max_history)
    from tfx_pipeline.eval_records import expand_records
    records = expand_records(beam_io.read_tfrecords(str(tmp_path / "rec" / "test")),
                             min(L, cfg.max_history))
    served = {k: v.numpy() for k, v in FlatTensorizer(lookups, L)(tf.constant(records)).items()}
    users = [X.from_tf_example(r)[F.USER_ID] for r in records]
    served[F.LABEL] = np.array([X.from_tf_example(r)[F.LABEL] for r in records])
    assert (served[F.HIST_ITEM] == F.OOV_ID).any() or (served[F.CAND_ITEM] == F.OOV_ID).any()
    assert _rows(served, users) == _expand(es, "test")


def test_user_records_on_dask_equal_direct(spans, tmp_path):
    """The records builder on a 2-worker Dask cluster writes DirectRunner's records."""
    from dmgin_tf.config import BeamConfig
    from transform import beam_runner
    dask = BeamConfig.from_dict({"runner": "dask", "dask_local_workers": 2, "dask_npartitions": 4})
    cfg = DataConfig.from_dict({"dataset": "movielens", "max_history": 10, "seed": 3})
    out = {}
    with beam_runner.local_dask_cluster(2) as address:
        for name, beam_cfg, addr in (("d", DIRECT, None), ("k", dask, address)):
            counts = X.build_user_records(spans[1], str(tmp_path / name), cfg, beam_cfg,
                                          item_groups={}, window=L, splits=3, dask_address=addr)
            out[name] = (counts, {s: sorted(beam_io.read_tfrecords(str(tmp_path / name / s)))
                                  for s in SPLIT_NAMES})
    assert out["d"] == out["k"] and out["d"][0]["train"] > 0


def test_expand_record_cuts_each_position_at_the_window(tmp_path):
    """The Evaluator's expansion: newest `window` behaviors strictly before each position,
    every position (negatives included) in record order; bad records and models named."""
    import tensorflow as tf
    from dmgin_tf.errors import DataError
    from tfx_pipeline.eval_records import expand_record, history_window
    lists = {X.SEQ_ITEM: ["a", "b", "c", "d"], X.SEQ_BEHAVIOR: ["pv", "cart", "pv", "pv"],
             X.SEQ_TIME: [5, 6, 7, 9], X.SEQ_GROUP: [2, 3, 2, 1], X.POS_HIST_END: [0, 2, 3, 3],
             X.POS_EVENT: [0, 2, 3, 3], X.POS_LABEL: [1, 1, 1, 0], X.POS_SAMPLED: [0, 0, 0, 1],
             X.SAMPLED_ITEM: ["e"], X.SAMPLED_GROUP: [4]}
    rows = [X.from_tf_example(r) for r in expand_record(X.to_sequence_example("u1", lists), 2)]
    assert [r[F.HIST_ITEM_ID] for r in rows] == [[], ["a", "b"], ["b", "c"], ["b", "c"]]
    assert [r[F.HIST_GROUP_ID] for r in rows] == [[], [2, 3], [3, 2], [3, 2]]
    assert [(r[F.ITEM_ID], r[F.GROUP_ID], r[F.LABEL], r[F.TIMESTAMP]) for r in rows] == \
        [("a", 2, 1, 5), ("c", 2, 1, 7), ("d", 1, 1, 9), ("e", 4, 0, 9)]
    assert rows[1][F.HIST_BEHAVIOR] == ["pv", "cart"] and rows[1][F.HIST_TIMESTAMP] == [5, 6]
    assert {r[F.USER_ID] for r in rows} == {"u1"} and F.CATEGORY not in rows[0]
    bad = dict(lists, **{X.POS_HIST_END: [0, 2, 3, 5]})
    with pytest.raises(DataError,
                       match=r"position 3: pos_event = 3 is not in \[pos_hist_end = 5, 4"):
        expand_record(X.to_sequence_example("u1", bad), 2)
    # The labelled event must be in the record, at or after its history's end.
    for events, what in (([0, 2, 3, 4], r"pos_event = 4 is not in \[pos_hist_end = 3, 4"),
                         ([0, 1, 3, 3], r"position 1: pos_event = 1 is not in \[pos_hist_end = 2")):
        with pytest.raises(DataError, match=what):
            expand_record(X.to_sequence_example("u1", dict(lists, **{X.POS_EVENT: events})), 2)
    with pytest.raises(DataError, match=r"2 positions have pos_sampled = 1 .* 1 sampled"):
        expand_record(X.to_sequence_example("u1", dict(lists, **{X.POS_SAMPLED: [0, 1, 0, 1]})), 2)
    for change, what in (({X.POS_EVENT: [0, 2, 3]}, r"'u1': pos_event has 3 steps, pos_hist_end 4"),
                         ({X.SAMPLED_GROUP: []},
                          r"'u1': sampled_group_id has 0 steps, sampled_item_id 1")):
        with pytest.raises(DataError, match=what):
            expand_record(X.to_sequence_example("u1", dict(lists, **change)), 2)
    # A history that reaches the event's second (a leak the builder never writes).
    same_second = dict(lists, **{X.SEQ_TIME: [5, 6, 7, 7]})
    with pytest.raises(DataError, match=r"'u1': position 2: pos_hist_end = 3 puts a behavior at "
                                        r"timestamp 7 into the history of an event at 7"):
        expand_record(X.to_sequence_example("u1", same_second), 2)
    with pytest.raises(DataError, match=r"'u1': position 0: pos_hist_end = -1 is negative"):
        expand_record(X.to_sequence_example("u1", dict(lists, **{X.POS_HIST_END: [-1, 2, 3, 3]})),
                      2)
    with pytest.raises(DataError, match=r"'u1': timestamp of behavior 1 \(4\) is before"):
        expand_record(X.to_sequence_example("u1", dict(lists, **{X.SEQ_TIME: [5, 4, 7, 9]})), 2)
    two = tf.train.SequenceExample.FromString(X.to_sequence_example("u1", lists))
    two.feature_lists.feature_list[X.SEQ_TIME].feature[2].int64_list.value.append(8)
    with pytest.raises(DataError, match=r"'u1': timestamp step 2 has 2 int64_list values"):
        expand_record(two.SerializeToString(), 2)
    with pytest.raises(DataError, match=r"pos_sampled = 2 \(must be 0 or 1\)"):
        expand_record(X.to_sequence_example("u1", dict(lists, **{X.POS_SAMPLED: [0, 0, 2, 0]})), 2)
    with pytest.raises(ValueError, match="window"):
        expand_record(X.to_sequence_example("u1", lists), 0)
    with pytest.raises(DataError, match="max_history"):
        history_window(str(tmp_path))
    cfg = tmp_path / "assets.extra" / "dmgin_warmstart"
    cfg.mkdir(parents=True)
    (cfg / "config.json").write_text('{"data": {"max_history": 200}, "model": {"history_length": 64}}')
    assert history_window(str(tmp_path)) == 64


def test_trainer_refuses_malformed_records_by_user_and_field(tmp_path):
    """Imported records whose lists disagree reach the Trainer's reader with a DataError
    naming the user and the feature list, not a numpy or TensorFlow error."""
    import tensorflow as tf
    from dmgin_tf.errors import DataError
    from tfx_pipeline.records import Lookups, read_user_records
    vocab = tmp_path / "item_group_vocab"
    vocab.write_text("a|2\nb|3\nx|4\n")
    lookups = Lookups(str(vocab), ["pv", "buy"])
    good = {X.SEQ_ITEM: ["a", "b"], X.SEQ_BEHAVIOR: ["pv", "buy"], X.SEQ_TIME: [5, 9],
            X.SEQ_GROUP: [2, 3], X.POS_HIST_END: [1, 1], X.POS_EVENT: [1, 1],
            X.POS_LABEL: [1, 0], X.POS_SAMPLED: [0, 1], X.SAMPLED_ITEM: ["x"],
            X.SAMPLED_GROUP: [4]}

    def read(two_values=None, **change):
        path = str(tmp_path / "r.tfrecord")
        bad = tf.train.SequenceExample.FromString(X.to_sequence_example("u7", dict(good, **change)))
        if two_values:              # a step with two values (schema: one per step)
            bad.feature_lists.feature_list[two_values].feature[0].int64_list.value.append(3)
        with tf.io.TFRecordWriter(path) as w:
            w.write(X.to_sequence_example("u0", good))
            w.write(bad.SerializeToString())
        return read_user_records([path], lookups, "train", 10)

    empty = str(tmp_path / "empty.tfrecord")
    tf.io.TFRecordWriter(empty).close()
    for files in ([], [empty]):                           # a split without records
        assert len(read_user_records(files, lookups, "val", 10)) == 0
    es = read()
    assert es.ex_cand_item.tolist() == [3, 4, 3, 4]          # b (the event), x (sampled)
    assert es.ex_cand_group.tolist() == [3, 4, 3, 4]
    assert es.ex_request_time.tolist() == [9, 9, 9, 9]
    for change, what in (({X.POS_LABEL: [1]}, r"'u7': pos_label has 1 steps, pos_hist_end 2"),
                         ({X.SEQ_TIME: [5]}, r"'u7': timestamp has 1 steps, item_id 2"),
                         ({X.POS_EVENT: [1, 2]}, r"'u7': position 1: pos_event = 2 is not in"),
                         ({X.POS_SAMPLED: [0, 0]}, r"'u7': 0 positions have pos_sampled = 1"),
                         ({X.SAMPLED_GROUP: []}, r"'u7': sampled_group_id has 0 steps"),
                         ({X.SEQ_GROUP: [2]}, r"'u7': group_id has 1 steps, item_id 2"),
                         ({X.SEQ_TIME: [9, 9]}, r"'u7': position 0: pos_hist_end = 1 puts a "
                                                r"behavior at timestamp 9"),
                         ({X.SEQ_TIME: [9, 5]}, r"'u7': timestamp of behavior 1 \(5\) is before"),
                         ({"two_values": X.POS_EVENT}, r"'u7': pos_event does not hold one value")):
        with pytest.raises(DataError, match=what):
            read(**change)


def test_transform_counts_each_behavior_and_candidate_once(monkeypatch):
    """The Transform's item|group vocabulary counts every candidate (an event's own item or
    a sampled one) and the behaviors before the record's last history end — the labelled
    events that close a record count once, as candidates, as in the per-example format.
    Lists of different lengths (imported records) do not crash the Transform."""
    import tensorflow as tf
    from tfx_pipeline import module as M
    counted = {}

    def vocabulary(x, vocab_filename=None, **_):
        counted["pairs"] = sorted(v.decode() for v in x.numpy())
        return vocab_filename

    monkeypatch.setattr(M.tft, "vocabulary", vocabulary)

    def ragged(rows, dtype):
        return tf.RaggedTensor.from_nested_row_lengths(
            tf.constant([v for r in rows for v in r], dtype),
            [[len(r) for r in rows], [1] * sum(map(len, rows))])

    def count(*records):
        inputs = {F.USER_ID: tf.constant([[b"u"]] * len(records))}
        for k in X.SEQUENCE_BYTES + X.SEQUENCE_INTS:
            inputs[k] = ragged([r.get(k, []) for r in records],
                               tf.string if k in X.SEQUENCE_BYTES else tf.int64)
        M.preprocessing_fn(inputs)
        return counted["pairs"]

    r1 = {X.SEQ_ITEM: ["a", "b"], X.SEQ_GROUP: [2, 3], X.POS_HIST_END: [1, 1],
          X.POS_EVENT: [1, 1], X.POS_SAMPLED: [0, 1], X.SAMPLED_ITEM: ["x"], X.SAMPLED_GROUP: [4]}
    r2 = {X.SEQ_ITEM: ["c", "d", "e"], X.SEQ_GROUP: [5, 5, 6], X.POS_HIST_END: [0, 2],
          X.POS_EVENT: [0, 2], X.POS_SAMPLED: [0, 0]}
    assert count(r1, r2) == ["a|2", "b|3", "c|5", "c|5", "d|5", "e|6", "x|4"]
    assert count(dict(r1, **{X.SAMPLED_GROUP: []}), r2)[-1] == f"x|{F.OOV_ID}"
    # Flags that do not match the positions: no event candidates, the rest still counts.
    assert count(r1, dict(r2, **{X.POS_SAMPLED: [0]})) == ["a|2", "c|5", "d|5", "x|4"]


def test_records_without_sampled_candidates_pass_the_schema(spans, tmp_path):
    """MovieLens samples no negatives: its records must still satisfy the pipeline's
    schema (no anomaly for the sampled lists), as StatisticsGen + ExampleValidator see them."""
    import apache_beam as beam
    import tensorflow_data_validation as tfdv
    from google.protobuf import text_format
    from tensorflow_metadata.proto.v0 import schema_pb2
    from tfx_bsl.public import tfxio
    from tfx_pipeline.pipeline import SCHEMA_FILE
    cfg = DataConfig.from_dict({"dataset": "movielens", "max_history": 10, "seed": 3})
    X.build_user_records(spans[1], str(tmp_path / "rec"), cfg, DIRECT, item_groups={"1": 2},
                         window=L, splits=2)
    with open(SCHEMA_FILE) as f:
        schema = text_format.Parse(f.read(), schema_pb2.Schema())
    source = tfxio.TFSequenceExampleRecord(
        file_pattern=str(tmp_path / "rec" / "train" / "*.tfrecord.gz"),
        telemetry_descriptors=["test"])
    out = str(tmp_path / "stats")
    with beam.Pipeline() as p:
        _ = (p | source.BeamSource() | tfdv.GenerateStatistics(tfdv.StatsOptions())
             | tfdv.WriteStatisticsToBinaryFile(out))
    anomalies = tfdv.validate_statistics(tfdv.load_stats_binary(out), schema)
    assert not anomalies.anomaly_info, {k: v.description for k, v in anomalies.anomaly_info.items()}


def test_transform_reads_the_records_through_the_schema(taobao_slice, tmp_path):
    """TFX's Transform path: TFXIO reads the records with the pipeline schema's tensor
    representations, `preprocessing_fn` writes the vocabulary: every behavior's and every
    candidate's (sampled negatives included) item|group, most frequent first."""
    import tempfile
    import apache_beam as beam
    import tensorflow_transform as tft
    import tensorflow_transform.beam as tft_beam
    from google.protobuf import text_format
    from tensorflow_metadata.proto.v0 import schema_pb2
    from tfx_bsl.public import tfxio
    from tfx_pipeline.module import ITEM_GROUP_VOCAB, preprocessing_fn
    from tfx_pipeline.pipeline import SCHEMA_FILE
    cfg = DataConfig.from_dict({"dataset": "taobao", "max_history": 10, "seed": 3})
    items = pd.read_parquet(os.path.join(taobao_slice, "items.parquet"))
    groups = {str(i): 2 + k % 7 for k, i in enumerate(items[F.ITEM_ID])}
    X.build_user_records(taobao_slice, str(tmp_path / "rec"), cfg, DIRECT, item_groups=groups,
                         window=L, splits=2)
    with open(SCHEMA_FILE) as f:
        schema = text_format.Parse(f.read(), schema_pb2.Schema())
    source = tfxio.TFSequenceExampleRecord(
        file_pattern=str(tmp_path / "rec" / "train" / "*.tfrecord.gz"),
        telemetry_descriptors=["test"], schema=schema)
    with beam.Pipeline() as p, tft_beam.Context(temp_dir=tempfile.mkdtemp(dir=tmp_path)):
        fn = ((p | source.BeamSource(), source.TensorAdapterConfig())
              | tft_beam.AnalyzeDataset(preprocessing_fn))
        _ = fn | tft_beam.WriteTransformFn(str(tmp_path / "tft"))
    vocab_file = tft.TFTransformOutput(str(tmp_path / "tft")).vocabulary_file_by_name(
        ITEM_GROUP_VOCAB)
    with open(vocab_file) as f:
        lines = f.read().split()
    expected = set()
    for rec in beam_io.read_tfrecords(str(tmp_path / "rec" / "train")):
        _, lists = X.from_sequence_example(rec)
        expected |= {f"{i}|{groups.get(i, F.OOV_ID)}" for i in lists[X.SAMPLED_ITEM]}
        expected |= {f"{i}|{groups.get(i, F.OOV_ID)}"
                     for i in lists[X.SEQ_ITEM][:max(lists[X.POS_EVENT]) + 1]}
    assert len(lines) == len(set(lines)) and set(lines) == expected


def test_resolve_positions_keeps_longer_sampled_ids():
    """Fixed-width string arrays from the caller do not cut a longer sampled id."""
    from dmgin_tf.data.sequences import resolve_positions
    out = resolve_positions(["u"], [1], [2], [1], {"item": np.array(["a"]), "time": np.array([1])},
                            [0, 0], [0, 0], [0, 1], {"item": np.array(["longer_item"])})
    assert list(out["item"]) == ["a", "longer_item"] and list(out["time"]) == [1, 1]
