"""tf.keras adapter and Keras 3 encoder: checkpoints keyed by structure, `load_model` in
both tf.keras formats, and a partial restore that raises.

The restoring side runs in a fresh Python process that builds *other* encoders first, so
generated layer names (`group_interest_encoder_2`, ...) differ from the saving process —
exactly the situation in which name-keyed checkpoints restored the wrong weights.
"""
import json
import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras  # noqa: E402

from dmgin_tf import features as F  # noqa: E402
from dmgin_tf.layers import GroupInterestEncoder as Keras3Encoder  # noqa: E402
from dmgin_tf.layers.tf_keras import GroupInterestEncoder  # noqa: E402
from dmgin_tf.layers.variable_tree import CheckpointMismatchError, structural_variables  # noqa: E402

from .synthetic import synthetic_inputs  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[2]
L = 12
KW = dict(item_vocab_size=40, group_vocab_size=8, num_behavior_types=2, max_groups=3,
          max_per_group=2, embedding_dim=8)

# Shared by this process and the fresh one (exec'd there).
RANKER_SRC = textwrap.dedent('''
    def make_ranker(**overrides):
        """A small existing-style tf.keras ranker: the encoder + a user feature + MLP."""
        inputs = {k: tf_keras.Input((L,) if k in F.HISTORY_INPUT_KEYS else (),
                                    dtype="int64" if k in (F.HIST_TIME, F.REQUEST_TIME)
                                    else "int32", name=k)
                  for k in F.MODEL_INPUT_KEYS}
        interest = GroupInterestEncoder(**dict(KW, **overrides))(inputs)
        h = tf_keras.layers.Dense(8, activation="relu")(interest)
        ctr = tf_keras.layers.Dense(1, activation="sigmoid")(h)
        return tf_keras.Model(inputs, ctr)
''')
exec(RANKER_SRC)  # noqa: S102  defines make_ranker


def _x():
    return synthetic_inputs(batch=6, length=L, seed=5)


def _perturb(model, seed):
    """Moves every weight away from its initial value, so a restore that silently
    skips a variable cannot give the same predictions by chance."""
    rng = np.random.default_rng(seed)
    for v in model.weights:
        v.assign(v.numpy() + rng.normal(0, 0.3, v.shape).astype(v.dtype.as_numpy_dtype))


FRESH = textwrap.dedent('''
    import json, os, sys
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    import numpy as np, keras, tensorflow as tf, tf_keras
    sys.path.insert(0, {root!r})
    sys.path.insert(0, os.path.join({root!r}, "tests", "layers"))
    from dmgin_tf import features as F
    from dmgin_tf.layers import GroupInterestEncoder as Keras3Encoder
    from dmgin_tf.layers.tf_keras import GroupInterestEncoder
    from synthetic import synthetic_inputs
    L, KW = {L}, {KW!r}
    exec({ranker!r})
    d = {d!r}
    x = synthetic_inputs(batch=6, length=L, seed=5)
    expected = np.load(os.path.join(d, "pred.npy"))
    out = {{}}

    # Other encoders first: every generated layer name in this process differs.
    for _ in range(3):
        Keras3Encoder(**KW).build()
        GroupInterestEncoder(**KW).build({{k: (None, L) for k in F.MODEL_INPUT_KEYS}})
    ranker = make_ranker()
    status = ranker.load_weights(os.path.join(d, "ckpt"))
    status.assert_existing_objects_matched()
    out["load_weights"] = float(np.abs(ranker.predict(x, verbose=0) - expected).max())

    enc3 = Keras3Encoder(**KW); enc3.build()
    tf.train.Checkpoint(encoder=enc3).read(os.path.join(d, "k3ckpt")).assert_existing_objects_matched()
    out["keras3_checkpoint"] = float(np.abs(np.asarray(enc3(x))
                                            - np.load(os.path.join(d, "k3.npy"))).max())

    for fmt, path in (("savedmodel", "ranker_sm"), ("keras", "ranker.keras")):
        for custom in (False, True):
            co = {{"GroupInterestEncoder": GroupInterestEncoder}} if custom else None
            model = tf_keras.models.load_model(os.path.join(d, path), custom_objects=co)
            enc = [l for l in model.layers if isinstance(l, GroupInterestEncoder)]
            state = enc[0].inner.encode_user(x) if enc else None
            out[f"{{fmt}}_custom={{custom}}"] = dict(
                real_layer=len(enc) == 1 and hasattr(enc[0], "inner"),
                output_dim=enc[0].output_dim if enc else None,
                user_state=sorted(state) if state else None,
                diff=float(np.abs(model.predict(x, verbose=0) - expected).max()))
    print("RESULT", json.dumps(out))
''')


@pytest.fixture(scope="module")
def fresh_process_results(tmp_path_factory):
    """Saves in this process, restores in a fresh one; returns what it measured."""
    d = tmp_path_factory.mktemp("saving")
    tf_keras.utils.set_random_seed(0)
    ranker = make_ranker()  # noqa: F821
    _perturb(ranker, 0)
    x = _x()
    np.save(d / "pred.npy", ranker.predict(x, verbose=0))
    ranker.save_weights(str(d / "ckpt"))
    ranker.save(str(d / "ranker_sm"))
    ranker.save(str(d / "ranker.keras"))
    enc3 = Keras3Encoder(**KW)
    enc3.build()
    np.save(d / "k3.npy", np.asarray(enc3(x)))
    tf.train.Checkpoint(encoder=enc3).write(str(d / "k3ckpt"))
    code = FRESH.format(root=str(ROOT), L=L, KW=KW, ranker=RANKER_SRC, d=str(d))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=str(ROOT), timeout=600,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-4000:]
    return json.loads(lines[-1][len("RESULT "):])


def test_save_weights_restore_exactly_in_fresh_process(fresh_process_results):
    assert fresh_process_results["load_weights"] == 0.0


def test_keras3_encoder_tf_checkpoint_restores_in_fresh_process(fresh_process_results):
    assert fresh_process_results["keras3_checkpoint"] == 0.0


@pytest.mark.parametrize("fmt", ["savedmodel", "keras"])
@pytest.mark.parametrize("custom", [False, True])
def test_tf_keras_load_model_restores_the_real_layer(fresh_process_results, fmt, custom):
    r = fresh_process_results[f"{fmt}_custom={custom}"]
    assert r["real_layer"], r
    assert r["output_dim"] == Keras3Encoder(**KW).output_dim
    assert r["user_state"] == ["group_ids", "group_mask", "group_vectors"]
    assert r["diff"] == 0.0, r


def test_checkpoint_paths_are_structural_not_generated_names():
    first, second = Keras3Encoder(**KW), Keras3Encoder(**KW)
    first.build()
    second.build()
    assert first.name != second.name
    assert list(structural_variables(first)) == list(structural_variables(second))
    paths = structural_variables(first)
    assert len(paths) == len(first.variables)
    assert "inter/blocks/1/uvqk/kernel" in paths and "embedding/item_table/embeddings" in paths


def test_partial_restore_raises(tmp_path):
    """A checkpoint of an encoder with other variables (here one inter layer fewer)
    must not load half the weights silently."""
    saved = make_ranker(inter_layers=1)  # noqa: F821
    saved.save_weights(str(tmp_path / "ckpt"))
    other = make_ranker()  # noqa: F821
    with pytest.raises(CheckpointMismatchError, match=r"inter/blocks/1/"):
        other.load_weights(str(tmp_path / "ckpt"))

    enc = Keras3Encoder(**dict(KW, inter_layers=1))
    enc.build()
    tf.train.Checkpoint(encoder=enc).write(str(tmp_path / "k3"))
    bigger = Keras3Encoder(**KW)
    bigger.build()
    with pytest.raises(CheckpointMismatchError, match="not in the checkpoint"):
        tf.train.Checkpoint(encoder=bigger).read(str(tmp_path / "k3"))


def test_keras3_weights_need_a_built_layer(tmp_path):
    """Loading into a layer that was never called loaded nothing (its random initial
    weights were then used, off by up to 5 from the saved layer, without a word)."""
    from dmgin_tf.layers.tf_keras import load_keras3_weights, save_keras3_weights
    x = synthetic_inputs(length=L)
    source = Keras3Encoder(**KW)
    want = np.asarray(source(x))
    path = str(tmp_path / "enc.weights.h5")
    save_keras3_weights(source, path)
    adapter = GroupInterestEncoder(**KW)
    with pytest.raises(CheckpointMismatchError, match="not built yet. Call it"):
        load_keras3_weights(adapter.inner, path)
    with pytest.raises(CheckpointMismatchError, match="not built yet"):
        save_keras3_weights(Keras3Encoder(**KW), path)
    adapter(x)
    load_keras3_weights(adapter, path)                        # the adapter itself, built
    np.testing.assert_allclose(adapter(x).numpy(), want, atol=1e-6)


@pytest.mark.parametrize("other", [dict(inter_layers=1), dict(use_candidate_group=False),
                                   dict(embedding_dim=4)])
def test_keras3_weights_of_another_layer_raise_and_load_nothing(tmp_path, other):
    """A `.weights.h5` from an encoder with more variables (another `inter_layers`, the
    candidate-group path) loaded silently into a smaller one — Keras 3 skips what the
    layer lacks — leaving its other variables as initialised."""
    from dmgin_tf.layers.tf_keras import load_keras3_weights, save_keras3_weights
    x = synthetic_inputs(length=L)
    source = Keras3Encoder(**dict(KW, inter_layers=2))
    source(x)
    path = str(tmp_path / "enc.weights.h5")
    save_keras3_weights(source, path)
    adapter = GroupInterestEncoder(**dict(KW, **dict(dict(inter_layers=2), **other)))
    adapter(x)
    before = [w.numpy().copy() for w in adapter.inner.weights]
    with pytest.raises(CheckpointMismatchError, match="nothing was loaded"):
        load_keras3_weights(adapter, path)
    assert all(np.array_equal(a, w.numpy()) for a, w in zip(before, adapter.inner.weights))
    with pytest.raises(FileNotFoundError, match="no such weights file"):
        load_keras3_weights(adapter, str(tmp_path / "missing.weights.h5"))


def test_tf_keras_file_of_other_variables_raises():
    """The `.keras` weights store of the adapter is checked like a checkpoint."""
    def encoder(model):
        return [l for l in model.layers if isinstance(l, GroupInterestEncoder)][0]
    store = {}
    encoder(make_ranker(inter_layers=1)).save_own_variables(store)  # noqa: F821
    with pytest.raises(CheckpointMismatchError, match=r"missing: \['inter\.blocks\.1\."):
        encoder(make_ranker()).load_own_variables(store)  # noqa: F821


def test_keras3_file_needs_the_layers_imported(tmp_path):
    """Keras 3 imports only its own packages when loading: the `.keras` file names our
    class, and the loading process must import `dmgin_tf.layers` (documented)."""
    enc = Keras3Encoder(**KW)
    inputs = {k: keras.Input((L,) if k in F.HISTORY_INPUT_KEYS else (),
                             dtype="int64" if k in (F.HIST_TIME, F.REQUEST_TIME) else "int32",
                             name=k) for k in F.MODEL_INPUT_KEYS}
    model = keras.Model(inputs, enc(inputs))
    model.save(tmp_path / "m.keras")
    code = textwrap.dedent(f'''
        import keras
        try:
            keras.saving.load_model({str(tmp_path / "m.keras")!r})
            print("LOADED WITHOUT IMPORT")
        except Exception as e:
            print("NEEDS IMPORT", "GroupInterestEncoder" in str(e))
        import dmgin_tf.layers
        m = keras.saving.load_model({str(tmp_path / "m.keras")!r})
        enc = [l for l in m.layers if isinstance(l, dmgin_tf.layers.GroupInterestEncoder)]
        print("LOADED", len(enc))
    ''')
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=600, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert "NEEDS IMPORT True" in proc.stdout and "LOADED 1" in proc.stdout, \
        proc.stdout + proc.stderr[-3000:]


def test_tfrs_ranking_model_saves_and_loads_with_the_real_layer(tmp_path):
    """The adapter inside a tfrs.Model + tfrs.tasks.Ranking: SavedModel → load_model
    gives the real layer and the same predictions; save_weights → load_weights exact."""
    import tensorflow_recommenders as tfrs

    class Ranker(tfrs.Model):
        def __init__(self):
            super().__init__()
            self.encoder = GroupInterestEncoder(**KW)
            self.head = tf_keras.layers.Dense(1, activation="sigmoid")
            self.task = tfrs.tasks.Ranking(loss=tf_keras.losses.BinaryCrossentropy())

        def call(self, features):
            return self.head(self.encoder({k: features[k] for k in F.MODEL_INPUT_KEYS}))

        def compute_loss(self, features, training=False):
            return self.task(labels=features[F.LABEL], predictions=self(features)[:, 0])

    x = _x()
    x[F.LABEL] = np.arange(len(x[F.CAND_ITEM])) % 2 == 0
    x[F.LABEL] = x[F.LABEL].astype("float32")
    model = Ranker()
    model.compile(optimizer="adam")
    model.fit(tf.data.Dataset.from_tensor_slices(x).batch(3), epochs=1, verbose=0)
    expected = model.predict(x, verbose=0)
    model.save(str(tmp_path / "sm"))
    loaded = tf_keras.models.load_model(str(tmp_path / "sm"))
    encoders = [layer for layer in loaded.layers if isinstance(layer, GroupInterestEncoder)]
    assert len(encoders) == 1 and encoders[0].output_dim == Keras3Encoder(**KW).output_dim
    np.testing.assert_allclose(loaded.predict(x, verbose=0), expected, atol=1e-6)

    model.save_weights(str(tmp_path / "ckpt"))
    other = Ranker()
    other(x)
    other.load_weights(str(tmp_path / "ckpt")).assert_existing_objects_matched()
    np.testing.assert_array_equal(other.predict(x, verbose=0), expected)
