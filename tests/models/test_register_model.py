"""`register_model`: an own model class under `model.model`, one list of names everywhere."""
import pytest

from dmgin_tf import config as C
from dmgin_tf.config import ConfigError, ModelConfig


@pytest.fixture
def registry():
    """Restores the registries a test extends."""
    from dmgin_tf.models import MODELS
    models, names = dict(MODELS), list(C._REGISTERED_MODELS)
    yield MODELS
    MODELS.clear()
    MODELS.update(models)
    C._REGISTERED_MODELS[:] = names


def test_a_registered_model_is_built_from_its_config(registry):
    from dmgin_tf.models import DIN, build_model, register_model

    class MeanDIN(DIN):
        pass

    with pytest.raises(ConfigError, match=r"model.model='meandin': must be one of dmgin, "
                                          r"dgin, din, sim, bst, transformer \(own models: "
                                          r"dmgin_tf.models.register_model\)"):
        ModelConfig(model="meandin").validate()
    register_model("meandin", MeanDIN)
    cfg = ModelConfig.from_dict({"model": "meandin", "item_vocab_size": 12,
                                 "group_vocab_size": 5, "embedding_dim": 4})
    model = build_model(cfg)
    assert type(model) is MeanDIN and model.name == "meandin" and model.weights
    assert C.model_names()[-1] == "meandin"
    with pytest.raises(ConfigError, match=r"must be one of .*transformer, meandin "):
        ModelConfig(model="other").validate()


@pytest.mark.parametrize("name, cls, message", [
    ("din", "other", "'din' is a built-in model"),
    ("My Model", None, "must be a lower-case identifier"),
    ("mine", "instance", "expected a model class, got"),
])
def test_register_model_refuses_bad_names_and_non_classes(registry, name, cls, message):
    from dmgin_tf.models import DIN, register_model

    class Other(DIN):
        pass

    arg = {"other": Other, None: Other, "instance": object()}[cls]
    with pytest.raises(ValueError, match=message):
        register_model(name, arg)


def test_the_builtin_names_are_one_list():
    """The CLI choices and the benchmark's rows read the config's list of models."""
    from dmgin_tf.bench import quality
    from dmgin_tf.cli import train as train_cli
    from dmgin_tf.models import MODELS
    assert tuple(MODELS)[:len(C.BUILTIN_MODELS)] == C.BUILTIN_MODELS
    assert train_cli.MODELS == quality.MODEL_NAMES == C.BUILTIN_MODELS
