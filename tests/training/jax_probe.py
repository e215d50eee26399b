"""Run as a subprocess: the JAX training path with `import tensorflow` made impossible.

Usage: python -m tests.training.jax_probe OUTPUT_DIR

Blocks tensorflow (and Beam / TFX, absent on the GPU host too) with a meta-path hook,
asks XLA for 2 host devices so `train.distribute=auto` takes the keras.distribution
DataParallel path, imports every module the GPU host imports, trains the tiny model for
one epoch and prints a JSON line with what happened.
"""
import importlib.abc
import json
import os
import sys

BLOCKED = ("tensorflow", "tf_keras", "apache_beam", "tfx", "tensorflow_transform")


class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is blocked: the JAX path must not import it")
        return None


def main(out_dir: str) -> None:
    sys.meta_path.insert(0, _Block())
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    from dmgin_tf.training.backend import select_backend
    select_backend("jax")
    # What `python -m dmgin_tf.cli.main train --backend jax` imports on the GPU host.
    from dmgin_tf.cli.main import build_parser
    build_parser()
    import dmgin_tf.data.batches  # noqa: F401
    import dmgin_tf.data.examples  # noqa: F401
    import dmgin_tf.training.data_source  # noqa: F401
    import dmgin_tf.training.parity  # noqa: F401
    from dmgin_tf.training.trainer import train
    models_importable = True
    try:
        import dmgin_tf.models  # noqa: F401
    except ModuleNotFoundError as e:  # a dmgin_tf module still being written; blocked
        if not (e.name or "").startswith("dmgin_tf"):  # imports raise ImportError, not this
            raise
        models_importable = False
    from tests.training.tiny import tiny_config, tiny_data, tiny_model_fn
    result = train(tiny_config("jax"), tiny_data(), out_dir, model_fn=tiny_model_fn, verbose=0)
    leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    print(json.dumps({"placement": result.metrics["placement"], "leaked": leaked,
                      "models_importable": models_importable,
                      "test_auc": result.metrics["test"]["auc"]}))


if __name__ == "__main__":
    main(sys.argv[1])
