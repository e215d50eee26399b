"""tf.keras adapter + TFRS model: gradients reach the Keras 3 variables, the loss goes down,
and weights survive tf.keras checkpoints and the Keras 3 `.weights.h5` hand-off."""
import numpy as np
import tensorflow as tf
import tf_keras

from dmgin_tf import features as F
from dmgin_tf.config import ModelConfig
from dmgin_tf.models.tfrs_model import TFRSRankingModel

from .synthetic import synthetic_inputs

CFG = ModelConfig(item_vocab_size=40, group_vocab_size=8, num_behavior_types=2,
                  history_length=12, max_groups=3, max_per_group=2, embedding_dim=8,
                  num_heads=2, mlp_units=(8,), attention_units=(8,), dropout=0.0)


def _synthetic_task(n=64):
    """SYNTHETIC data: label = 1 iff the candidate's group occurs in the history, so
    only a model that reads the history can fit it."""
    x = synthetic_inputs(batch=n, length=12, seed=3)
    present = (x[F.HIST_GROUP] == x[F.CAND_GROUP][:, None]).any(axis=1)
    x[F.LABEL] = present.astype("float32")
    return x


def test_tfrs_dmgin_trains_and_weights_round_trip(tmp_path):
    x = _synthetic_task()
    model = TFRSRankingModel(CFG)
    # Eager steps: a handful of tiny steps is cheaper than tracing the train function.
    model.compile(optimizer=tf_keras.optimizers.Adam(3e-2), run_eagerly=True)
    before = [v.numpy().copy() for v in model.trainable_variables]
    assert len(before) == len(model.keras3_model.trainable_variables) > 20
    ds = tf.data.Dataset.from_tensor_slices(x).batch(32)
    hist = model.fit(ds, epochs=4, verbose=0).history
    assert hist["loss"][-1] < hist["loss"][0], hist
    changed = [not np.allclose(a, v.numpy()) for a, v in zip(before, model.trainable_variables)]
    assert sum(changed) > 0.8 * len(changed)      # gradients reach the Keras 3 variables
    pred = model(x).numpy()

    model.save_weights(str(tmp_path / "ckpt"))    # tf.keras checkpoint
    restored = TFRSRankingModel(CFG)
    restored.load_weights(str(tmp_path / "ckpt")).expect_partial()
    np.testing.assert_allclose(restored(x).numpy(), pred, atol=1e-6)

    model.save_keras3_weights(str(tmp_path / "m.weights.h5"))   # the one shared format
    from_h5 = TFRSRankingModel(CFG)
    from_h5.load_keras3_weights(str(tmp_path / "m.weights.h5"))
    np.testing.assert_allclose(from_h5(x).numpy(), pred, atol=1e-6)
    np.testing.assert_allclose(np.asarray(from_h5.keras3_model(x)), pred, atol=1e-6)


def test_adapter_output_shape_and_no_autograph_warning_when_built_in_a_tf_function(caplog):
    """The adapter's compute_output_shape follows the Keras 3 layer's for [B, N]
    candidates (it said (B, D)); building it inside a tf.function (as tfrs.Model.fit
    does) printed an AutoGraph 'could not transform' warning."""
    import logging

    from dmgin_tf.layers.tf_keras import GroupInterestEncoder
    kw = dict(item_vocab_size=40, group_vocab_size=8, num_behavior_types=2, max_groups=3,
              max_per_group=2, embedding_dim=8)
    x = synthetic_inputs(length=12)
    adapter = GroupInterestEncoder(**kw)
    logging.getLogger("tensorflow").addHandler(caplog.handler)
    try:
        out = tf.function(lambda d: adapter(d))({k: tf.constant(v) for k, v in x.items()})
    finally:
        logging.getLogger("tensorflow").removeHandler(caplog.handler)
    assert "could not transform" not in caplog.text
    shapes = {k: tf.TensorShape((None,) + v.shape[1:]) for k, v in x.items()}
    assert adapter.compute_output_shape(shapes).as_list() == [None, adapter.output_dim] \
        == [None, out.shape[-1]]
    shapes.update({F.CAND_ITEM: tf.TensorShape((None, 5)), F.CAND_GROUP: tf.TensorShape((None, 5))})
    assert adapter.compute_output_shape(shapes).as_list() == [None, 5, adapter.output_dim]


def test_adapter_computes_in_the_tf_keras_precision_policy():
    """A tf.keras mixed-precision policy (the layer's `dtype` or the global policy)
    reaches the encoder inside the adapter; it used to stay float32 without a word."""
    from dmgin_tf.layers.tf_keras import GroupInterestEncoder
    kw = dict(item_vocab_size=40, group_vocab_size=8, num_behavior_types=2, max_groups=3,
              max_per_group=2, embedding_dim=8)
    x = {k: tf.constant(v) for k, v in synthetic_inputs(length=12).items()}
    own = GroupInterestEncoder(dtype="mixed_float16", **kw)
    assert own.inner.dtype_policy.name == "mixed_float16" and own(x).dtype == tf.float16
    tf_keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        from_global = GroupInterestEncoder(**kw)
    finally:
        tf_keras.mixed_precision.set_global_policy("float32")
    assert from_global.inner.dtype_policy.name == "mixed_float16"
    assert from_global(x).dtype == tf.float16
    assert GroupInterestEncoder(**kw).inner.dtype_policy.name == "float32"
