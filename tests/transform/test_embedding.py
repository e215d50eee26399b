"""Catalog embedding in Beam (DirectRunner) and the external-embeddings reader."""
import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dmgin_tf.config import BeamConfig
from dmgin_tf.errors import DataError
from tests.transform.encoder_fixtures import bad_items, shared_encoder, tiny_items
from transform.embedding import (embed_catalog, embedding_schema, import_external_embeddings,
                                 read_embeddings, read_external_embeddings, write_embeddings,
                                 write_tfrecord_embeddings)
from transform.encoder import embed_items
from transform.encoder.io import save_encoder


@pytest.fixture(scope="module")
def saved_encoder(tmp_path_factory):
    enc = shared_encoder()
    return enc, save_encoder(enc, tmp_path_factory.mktemp("encoder"))


def test_beam_embedding_equals_in_process(saved_encoder, tmp_path, capsys):
    enc, vdir = saved_encoder
    items = pd.concat([tiny_items(), bad_items(tmp_path)], ignore_index=True)
    items_path = tmp_path / "items.parquet"
    items.to_parquet(items_path)
    beam_cfg = BeamConfig(runner="direct", direct_running_mode="in_memory")
    # Small Beam batches: several RunInference batches with different compositions.
    report = embed_catalog(str(items_path), str(vdir.parent), str(tmp_path / "out"), beam_cfg,
                           batch_size=4, max_batch_size=5, log=print)
    # Progress: a line each time another tenth of the catalog is embedded, the last at all rows.
    progress = [l for l in capsys.readouterr().out.splitlines() if l.startswith("embedded ")]
    assert progress and progress[-1].startswith(f"embedded {len(items)}/{len(items)} rows in ")
    ids, vecs = read_embeddings(str(tmp_path / "out"))
    ref_ids, ref = embed_items(enc, items, batch_size=16)
    order = np.argsort(ids)
    ref_order = np.argsort(ref_ids)
    assert ids[order].tolist() == ref_ids[ref_order].tolist()
    np.testing.assert_allclose(vecs[order], ref[ref_order], atol=1e-5)
    assert report["embedded"] == len(items) - 1 and report["rows"] == len(items)
    assert report["counts"] == {"no_item_id": 1, "no_text": 1, "truncated_text": 1,
                                "bad_image": 2}
    assert report["encoder_version"] == int(vdir.name)
    on_disk = json.loads((tmp_path / "out" / "report.json").read_text())
    assert on_disk["counts"] == report["counts"]
    # exact table schema (the k-means stage reads it)
    table = pq.read_table(str(next((tmp_path / "out" / "embeddings").glob("part-*.parquet"))))
    assert table.schema.equals(embedding_schema())


def test_write_then_read_table_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    ids = [f"m{i}" for i in range(5)]
    vecs = rng.normal(size=(5, 3)).astype(np.float32)
    write_embeddings(str(tmp_path / "t"), ids, vecs)
    got_ids, got = read_embeddings(str(tmp_path / "t"))
    assert got_ids.tolist() == ids
    np.testing.assert_array_equal(got, vecs)


def _parquet(path, ids, vecs):
    pq.write_table(pa.table({"item_id": ids, "embedding": [list(map(float, v)) for v in vecs]}),
                   str(path))


def test_external_parquet_and_tfrecord_agree(tmp_path):
    rng = np.random.default_rng(2)
    ids = ["a", "b", "c", "d"]
    vecs = rng.normal(size=(4, 6)).astype(np.float32)
    _parquet(tmp_path / "e.parquet", ids, vecs)
    write_tfrecord_embeddings(str(tmp_path / "e.tfrecord"), ids, vecs)
    for path in (tmp_path / "e.parquet", tmp_path / "e.tfrecord"):
        got_ids, got = read_external_embeddings(str(path))
        assert got_ids.tolist() == ids
        np.testing.assert_allclose(got, vecs, rtol=1e-6)
    report = import_external_embeddings(str(tmp_path / "e.tfrecord"), str(tmp_path / "imp"),
                                        normalize=True)
    assert report["rows"] == 4 and report["embedding_dim"] == 6
    _, imported = read_embeddings(str(tmp_path / "imp"))
    np.testing.assert_allclose(imported, vecs / np.linalg.norm(vecs, axis=1, keepdims=True),
                               rtol=1e-5)
    # A zero vector cannot be normalised (it was kept as zeros among unit vectors).
    vecs[2] = 0.0
    _parquet(tmp_path / "z.parquet", ids, vecs)
    with pytest.raises(DataError, match=r"--normalize: 1 all-zero embedding\(s\), e.g. item 'c'"):
        import_external_embeddings(str(tmp_path / "z.parquet"), str(tmp_path / "z"), normalize=True)
    import_external_embeddings(str(tmp_path / "z.parquet"), str(tmp_path / "z2"))   # as is: fine


def test_external_bad_dimension_names_the_item(tmp_path):
    vecs = [[0.1, 0.2, 0.3], [0.4, 0.5, 0.6], [0.7, 0.8]]
    pq.write_table(pa.table({"item_id": ["x", "y", "shorty"], "embedding": vecs}),
                   str(tmp_path / "bad.parquet"))
    with pytest.raises(DataError, match=r"row 2 \(item 'shorty'\): embedding has 2 values, expected 3"):
        read_external_embeddings(str(tmp_path / "bad.parquet"))
    write_tfrecord_embeddings(str(tmp_path / "bad.tfrecord"), ["x", "y", "shorty"],
                              np.zeros((3, 3)))
    import tensorflow as tf
    with tf.io.TFRecordWriter(str(tmp_path / "bad2.tfrecord")) as w:
        for iid, v in (("x", [1.0, 2.0]), ("long", [1.0, 2.0, 3.0])):
            w.write(tf.train.Example(features=tf.train.Features(feature={
                "item_id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[iid.encode()])),
                "embedding": tf.train.Feature(float_list=tf.train.FloatList(value=v))})
            ).SerializeToString())
    with pytest.raises(DataError, match=r"record 1 \(item 'long'\): embedding has 3 values"):
        read_external_embeddings(str(tmp_path / "bad2.tfrecord"))


def test_external_duplicates_missing_columns_and_nan(tmp_path):
    _parquet(tmp_path / "dup.parquet", ["a", "b", "a"], np.ones((3, 2)))
    with pytest.raises(DataError, match=r"row 2: duplicate item_id 'a' \(first at .*row 0\)"):
        read_external_embeddings(str(tmp_path / "dup.parquet"))
    pq.write_table(pa.table({"item_id": ["a"], "vector": [[1.0]]}), str(tmp_path / "col.parquet"))
    with pytest.raises(DataError, match=r"lacks column\(s\) \['embedding'\]"):
        read_external_embeddings(str(tmp_path / "col.parquet"))
    _parquet(tmp_path / "nan.parquet", ["a", "b"], [[1.0, 2.0], [float("nan"), 1.0]])
    with pytest.raises(DataError, match=r"row 1 \(item 'b'\): non-finite"):
        read_external_embeddings(str(tmp_path / "nan.parquet"))
    # Vectors written as text (was numpy's ValueError naming no file, row or item).
    pq.write_table(pa.table({"item_id": ["a", "b"], "embedding": ["1,2", "3,4"]}),
                   str(tmp_path / "text.parquet"))
    with pytest.raises(DataError, match=r"row 0 \(item 'a'\): embedding must be a list of "
                                        r"numbers, got str holding text '1,2'"):
        read_external_embeddings(str(tmp_path / "text.parquet"))
    # Numbers stored as strings were parsed silently.
    pq.write_table(pa.table({"item_id": ["a", "b"], "embedding": [["1", "2"], ["3", "4"]]}),
                   str(tmp_path / "strings.parquet"))
    with pytest.raises(DataError, match=r"row 0 \(item 'a'\): embedding must be a list of "
                                        r"numbers, got list holding text '1'"):
        read_external_embeddings(str(tmp_path / "strings.parquet"))


def test_cli_import_writes_the_table(tmp_path, capsys):
    from dmgin_tf.cli.main import main
    ids, vecs = ["p", "q"], np.arange(6, dtype=np.float32).reshape(2, 3)
    write_tfrecord_embeddings(str(tmp_path / "x.tfrecord"), ids, vecs)
    (tmp_path / "out" / "bad_rows").mkdir(parents=True)     # an earlier `embed` into out/
    assert main(["encoder", "import", "--embeddings", str(tmp_path / "x.tfrecord"),
                 "--output", str(tmp_path / "out")]) == 0
    assert "imported 2 embeddings (D=3)" in capsys.readouterr().out
    assert not (tmp_path / "out" / "bad_rows").exists()      # it described another table
    got_ids, got = read_embeddings(str(tmp_path / "out"))
    assert got_ids.tolist() == ids
    np.testing.assert_array_equal(got, vecs)
    # bad input: one-line error, exit code 2
    _parquet(tmp_path / "bad.parquet", ["a", "b"], [[1.0], [1.0, 2.0]])
    assert main(["encoder", "import", "--embeddings", str(tmp_path / "bad.parquet"),
                 "--output", str(tmp_path / "o2")]) == 2
    assert "item 'b'" in capsys.readouterr().err
    # The import's output dir (not only its embeddings/ table) feeds `grouping fit`.
    import pandas as pd
    pd.DataFrame({"item_id": ids, "category": ["c1", "c2"]}).to_parquet(tmp_path / "items.parquet")
    assert main(["grouping", "fit", "--items", str(tmp_path / "items.parquet"),
                 "--embeddings", str(tmp_path / "out"), "--key", "cluster",
                 "--num-groups", "2", "--output", str(tmp_path / "groups")]) == 0
    assert "group vocabulary 4" in capsys.readouterr().out


def test_embed_refuses_a_catalog_listing_an_item_twice(tmp_path):
    """`dmgin encoder embed` embedded a duplicated id twice and exited 0; the duplicate
    surfaced only at the end of a later k-means fit."""
    items = pd.concat([tiny_items(), tiny_items().head(1)])
    items.to_parquet(tmp_path / "items.parquet")
    with pytest.raises(DataError, match=r"items.parquet: duplicate item_id 'i0' \(rows 0 and 8\)"):
        embed_catalog(str(tmp_path / "items.parquet"), str(tmp_path / "no_encoder_needed"),
                      str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_a_folder_mixing_parquet_and_tfrecord_is_named(tmp_path, capsys):
    """A directory holding both formats gave pyarrow's "Parquet magic bytes not found"
    without a file name; an --eval-fraction of 1 left no catalog to train on and blamed
    the rows."""
    from dmgin_tf.cli.main import main
    (tmp_path / "emb").mkdir()
    _parquet(tmp_path / "emb" / "a.parquet", ["a"], [[1.0, 2.0]])
    write_tfrecord_embeddings(str(tmp_path / "emb" / "b.tfrecord"), ["b"],
                              np.ones((1, 2), np.float32))
    assert main(["encoder", "import", "--embeddings", str(tmp_path / "emb"),
                 "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "mix Parquet" in err and "a.parquet" in err and "b.tfrecord" in err, err
    tiny_items().to_parquet(tmp_path / "items.parquet")
    assert main(["encoder", "train", "--items", str(tmp_path / "items.parquet"), "--output",
                 str(tmp_path / "enc"), "--eval-fraction", "1"]) == 2
    assert "--eval-fraction 1.0: the held-out share" in capsys.readouterr().err
