"""Keras conventions of the ranking models: keyword construction, config round trip,
the dtype policy reaching every sublayer, `.keras` files."""
import numpy as np
import pytest

from dmgin_tf.config import ModelConfig
from dmgin_tf.models import MODELS, dummy_inputs

SMALL = dict(item_vocab_size=30, group_vocab_size=6, num_behavior_types=3, history_length=8,
             max_groups=3, max_per_group=2, embedding_dim=8, mlp_units=(8,), recent_window=4)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_keywords_config_round_trip_and_weights(name):
    cls = MODELS[name]
    model = cls(**SMALL, name=f"my_{name}")
    assert model.model_cfg.model == name and model.model_cfg.embedding_dim == 8
    inputs = dummy_inputs(model.model_cfg, batch_size=2)
    out = np.asarray(model(inputs))
    config = model.get_config()
    assert config["name"] == f"my_{name}" and config["embedding_dim"] == 8 and "dtype" in config
    clone = cls.from_config(config)
    assert clone.model_cfg == model.model_cfg and clone.name == model.name
    clone(inputs)
    clone.set_weights(model.get_weights())
    np.testing.assert_allclose(np.asarray(clone(inputs)), out, atol=1e-6)


def test_model_cfg_and_keywords_combine_and_old_configs_load():
    from dmgin_tf.models import DIN, DMGIN
    base = ModelConfig(model="din", **SMALL)
    m = DIN(base, dropout=0.3)
    assert m.model_cfg.dropout == 0.3 and m.model_cfg.embedding_dim == 8
    old = {"model_cfg": ModelConfig(model="dmgin", **SMALL).to_dict(), "name": "dmgin"}
    assert DMGIN.from_config(old).model_cfg.max_groups == 3
    with pytest.raises(Exception, match="embedding_dim"):
        DIN(**dict(SMALL, embedding_dim=7, num_heads=2))      # validated like a config file


@pytest.mark.parametrize("name", ["dmgin", "din"])
def test_dtype_policy_reaches_every_sublayer(name):
    model = MODELS[name](**SMALL, dtype="mixed_bfloat16")
    model(dummy_inputs(model.model_cfg, batch_size=2))
    direct = [model.head, model.context] + model.head.hidden + [model.head.logit]
    direct.append(model.encoder if name == "dmgin" else model.embedding)
    policies = {layer.name: layer.dtype_policy.name for layer in direct}
    assert set(policies.values()) == {"mixed_bfloat16"}, policies
    every = {f"{type(layer).__name__}:{layer.name}": layer.dtype_policy.name
             for layer in model._flatten_layers() if layer is not model}
    assert set(every.values()) == {"mixed_bfloat16"}, every
    assert np.asarray(model(dummy_inputs(model.model_cfg, batch_size=2))).dtype == np.float32


def test_keras_file_round_trip(tmp_path):
    import keras
    from dmgin_tf.models import DMGIN
    model = DMGIN(**SMALL)
    inputs = dummy_inputs(model.model_cfg, batch_size=2)
    out = np.asarray(model(inputs))
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded) is DMGIN and loaded.model_cfg == model.model_cfg
    np.testing.assert_allclose(np.asarray(loaded(inputs)), out, atol=1e-6)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_takes_the_same_input_contract_and_exports_named_inputs(name, tmp_path):
    """The baselines used to cast float ids silently, fail with raw gather errors (or
    score item 1000 as the last item under XLA) and crash on [B, 1] candidates; and
    `model.export(path)` guessed float32 positional inputs (DMGIN's failed)."""
    import tensorflow as tf

    from dmgin_tf import features as F
    from dmgin_tf.layers import InputContractError
    from dmgin_tf.models import build_model
    from layers.synthetic import synthetic_inputs
    model = build_model(ModelConfig(model=name, **dict(SMALL, history_length=12)))
    x = synthetic_inputs(length=12, item_vocab=30, group_vocab=6, num_types=3)
    want = np.asarray(model(x))
    one = {F.CAND_ITEM: x[F.CAND_ITEM][:, None], F.CAND_GROUP: x[F.CAND_GROUP][:, None]}
    np.testing.assert_allclose(np.asarray(model(dict(x, **one))), want, atol=1e-6)
    unknown = dict(x, **{F.CAND_ITEM: np.full(4, 1000, "int32")})
    with pytest.raises(InputContractError, match="'cand_item'.*1000"):
        model(unknown)
    # A missing input is the same contract error as the layer's, naming the model.
    partial = {k: v for k, v in x.items() if k != F.HIST_TIME}
    with pytest.raises(InputContractError, match=rf"missing input.*hist_time.*{type(model).__name__} needs"):
        model(partial)
    oov = dict(x, **{F.CAND_ITEM: np.full(4, 1, "int32")})
    compiled = tf.function(lambda d: model(d), jit_compile=True)
    np.testing.assert_allclose(np.asarray(compiled(unknown)), np.asarray(model(oov)), atol=1e-5)
    model.export(str(tmp_path / "m"), verbose=False)
    loaded = tf.saved_model.load(str(tmp_path / "m"))
    served = loaded.serve({k: tf.constant(v) for k, v in x.items()})
    np.testing.assert_allclose(np.asarray(served).reshape(-1), want.reshape(-1), atol=1e-5)
