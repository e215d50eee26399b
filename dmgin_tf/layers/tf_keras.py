"""tf.keras (Keras 2, `TF_USE_LEGACY_KERAS=1`) adapters over the Keras 3 layers.

TFRS, TFT and many existing ranking stacks are tf.keras (tf_keras 2.16); our math is
Keras 3. Rather than a second copy of the math, `KerasLayerAdapter` is a
`tf_keras.layers.Layer` that *runs a Keras 3 layer instance* (TF backend) in its `call`
and reports that layer's variables as its own weights:

- every Keras 3 variable on the TF backend wraps a real `tf.Variable` (`v.value`); the
  adapter lists those, so tf.keras optimizers update them and `GradientTape` records
  them (they are read inside `call`);
- the Keras 3 layer is a trackable child of the adapter, so tf.keras checkpoints
  (`model.save_weights`) and `tf.saved_model.save` include its variables;
- the layer is built eagerly in `build()` from the input shapes, so no variable is ever
  created inside a tf.keras functional graph.

Why not re-implement the layers in tf.keras: one math, tested once, and weights that
move unchanged between Keras 3 (TF or JAX backend) and tf.keras. The one weights format
is the Keras 3 `.weights.h5` of the Keras 3 object the adapter wraps
(`adapter.inner.save_weights` / `load_weights` when it is a `keras.Model`, or
`save_keras3_weights` / `load_keras3_weights` below for a single layer).

Requires KERAS_BACKEND=tensorflow (the default) in this process.
"""
from __future__ import annotations

import os
import sys
import warnings

# The adapters are tf_keras layers; to put them into `tf.keras` models (TFRS, TFT, users'
# rankers) `tf.keras` must be Keras 2, which TensorFlow decides from TF_USE_LEGACY_KERAS
# when it is first imported. `import dmgin_tf` leaves the environment alone, so this
# module sets the variable if TensorFlow is not loaded yet, and otherwise checks it
# (`warn_if_tf_keras_is_keras3` below). The `dmgin` CLI sets it at start-up.
if "tensorflow" not in sys.modules:
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras  # noqa: E402

from dmgin_tf.layers import group_interest_encoder as _gie
from dmgin_tf.layers import variable_tree
from dmgin_tf.ops._backend import current_executor


def tf_keras_is_keras2() -> bool:
    """True when `tf.keras` in this process is Keras 2 (tf_keras), as TFRS/TFT need."""
    return getattr(tf.keras, "__name__", "").startswith("tf_keras")


def warn_if_tf_keras_is_keras3() -> None:
    """The adapters work with `tf_keras` models either way; `tf.keras` models need Keras 2."""
    if not tf_keras_is_keras2():
        warnings.warn("tf.keras is Keras 3 in this process (TensorFlow was imported without "
                      "TF_USE_LEGACY_KERAS=1): KerasLayerAdapter works in tf_keras models, but "
                      "tf.keras / TFRS models need TF_USE_LEGACY_KERAS=1 set before TensorFlow "
                      "is imported", RuntimeWarning, stacklevel=3)


warn_if_tf_keras_is_keras3()


@tf.custom_gradient
def _dense_gradient(x):
    """Identity whose gradient is a dense tensor (`IndexedSlices` are summed up)."""
    def grad(dy):
        return tf.convert_to_tensor(dy)
    return tf.identity(x), grad


def _check_backend():
    if keras.backend.backend() != "tensorflow":
        raise RuntimeError("dmgin_tf.layers.tf_keras needs KERAS_BACKEND=tensorflow, "
                           f"got {keras.backend.backend()!r}")


def _dummy_from_shapes(shapes, dtypes):
    """Zeros (batch 1) for a possibly nested dict of TensorShapes."""
    if isinstance(shapes, dict):
        return {k: _dummy_from_shapes(shapes[k], dtypes.get(k) if dtypes else None)
                for k in shapes}
    dims = [1 if d is None else int(d) for d in list(shapes)]
    if dims:
        dims[0] = 1
    return np.zeros(dims, dtypes or "float32")


@tf_keras.saving.register_keras_serializable(package="dmgin_tf")
class KerasLayerAdapter(tf_keras.layers.Layer):
    """A tf.keras layer that runs a Keras 3 layer (or model) and owns its weights.

    Args:
        inner: a Keras 3 `keras.layers.Layer` / `keras.Model` (TF backend), built or not.
        input_dtypes: optional dict key → dtype (or one dtype) of the inputs, used for
            the dummy call that builds `inner`; default: each input's dtype as seen at
            `build` time is unknown to tf.keras, so ints must be declared here when
            `inner` cannot be built from float zeros.

    Call arguments:
        inputs: whatever `inner` takes as its first argument (tensor or dict).
        training: bool, forwarded.

    Returns:
        `inner`'s output.

    Example:

    ```python
    dense3 = keras.layers.Dense(4)                      # a Keras 3 layer
    x = tf_keras.Input((3,))
    y = KerasLayerAdapter(dense3)(x)
    model = tf_keras.Model(x, y)                        # trains with tf.keras
    ```
    """

    def __init__(self, inner, input_dtypes=None, **kwargs):
        _check_backend()
        super().__init__(**kwargs)
        self.inner = inner
        self.input_dtypes = input_dtypes
        if inner.built:
            self._track_inner_variables()

    def build(self, input_shape):
        if not self.inner.built:
            # A dummy eager call creates the Keras 3 variables outside any tf.keras
            # graph (tf.keras would otherwise trace `call` in a scratch FuncGraph).
            self.inner(_dummy_from_shapes(input_shape, self.input_dtypes))
        self._track_inner_variables()
        super().build(input_shape)

    def _track_inner_variables(self):
        # Keras 3 (TF backend) tracks layers held in Python lists for SavedModel but not
        # for tf.train.Checkpoint, so tf.keras `save_weights` would silently skip e.g.
        # the Transformer blocks. Every variable is tracked here under its *structural*
        # path (attribute names, `variable_tree.structural_variables`), never under the
        # generated layer names, which depend on what the process built before; the
        # tree's manifest makes restoring a checkpoint of other variables raise.
        variable_tree.attach_checkpoint_tree(self, self.inner, name="_inner_variables")

    def _trackable_children(self, save_type="checkpoint", **kwargs):
        # The variables are reached through `_inner_variables` only. The Keras 3 object
        # itself stays out of the object graph: its own tracking differs between
        # checkpoints and SavedModels (list-held blocks), and tf.keras' SavedModel
        # loader would overwrite such attributes of the revived layer.
        children = super()._trackable_children(save_type, **kwargs)
        children.pop("inner", None)
        return children

    # tf.keras asks its layers for weights through these properties.
    @property
    def trainable_weights(self):
        if not self.trainable:
            return []
        return [v.value for v in self.inner.trainable_variables]

    @property
    def non_trainable_weights(self):
        frozen = [] if self.trainable else list(self.inner.trainable_variables)
        return [v.value for v in frozen + list(self.inner.non_trainable_variables)]

    @property
    def weights(self):
        return self.trainable_weights + self.non_trainable_weights

    @property
    def losses(self):
        return list(self.inner.losses)

    def call(self, inputs, training=None):
        if not current_executor().xla:
            return self.inner(inputs, training=training)
        # Under XLA (compile(jit_compile=True)) every variable is read through an
        # identity whose gradient is dense. Embedding lookups otherwise give
        # `IndexedSlices` gradients, which tf.keras optimizers deduplicate with
        # `tf.unique` — quadratic in the number of looked-up ids under XLA: a train step
        # went from ~50 ms to ~2 s at B=32, L=64 (7-10 s at B=256, L=256). A dense
        # gradient costs one table-sized add, which Adam's dense moment update pays anyway.
        variables = list(self.inner.variables)
        mapping = [(v, _dense_gradient(tf.convert_to_tensor(v.value))) for v in variables
                   if v.trainable]
        mapped = {id(v) for v, _ in mapping}
        with keras.StatelessScope(state_mapping=mapping, initialize_variables=False) as scope:
            outputs = self.inner(inputs, training=training)
        for v in variables:          # state the layer updated (e.g. dropout seeds)
            value = scope.get_current_value(v)
            if value is not None and id(v) not in mapped:
                v.assign(value)
        return outputs

    # tf.keras `.keras` files: the layer's own weights store, keyed by structural path
    # (the Keras 3 layer is not a tf.keras trackable, so tf.keras would not visit it).
    def save_own_variables(self, store):
        for path, v in variable_tree.structural_variables(self.inner).items():
            store[path.replace("/", ".")] = np.asarray(v.numpy())

    def load_own_variables(self, store):
        variables = {p.replace("/", "."): v for p, v in
                     variable_tree.structural_variables(self.inner).items()}
        saved = set(store.keys())
        if saved != set(variables):
            missing, extra = sorted(set(variables) - saved), sorted(saved - set(variables))
            raise variable_tree.CheckpointMismatchError(
                f"{self.name}: the saved weights do not match this layer's variables "
                f"(missing: {missing[:5]}, unexpected: {extra[:5]})")
        for key, v in variables.items():
            v.assign(store[key])

    def save_keras3_weights(self, path):
        """Writes `inner`'s weights as a Keras 3 `.weights.h5` file."""
        save_keras3_weights(self.inner, path)

    def load_keras3_weights(self, path):
        """Loads a Keras 3 `.weights.h5` file (TF or JAX backend) into `inner` (built:
        call the adapter once first; `CheckpointMismatchError` otherwise)."""
        load_keras3_weights(self.inner, path)

    def get_config(self):
        config = super().get_config()
        config.update(inner=keras.saving.serialize_keras_object(self.inner),
                      input_dtypes=self.input_dtypes)
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["inner"] = keras.saving.deserialize_keras_object(config["inner"])
        return cls(**config)


class _Holder(keras.Model):
    """A Keras 3 model around one layer, only to use Model.save_weights/load_weights."""

    def __init__(self, layer, **kwargs):
        super().__init__(**kwargs)
        self.layer = layer
        self.built = True

    def call(self, inputs):
        return self.layer(inputs)


def _as_model(obj):
    return obj if isinstance(obj, keras.Model) else _Holder(obj)


def _built_keras3_layer(layer, action: str):
    """The Keras 3 layer behind `layer` (an adapter's `.inner`), which must be built:
    an unbuilt layer has no variables yet, and Keras would load nothing into it (its
    random initial weights would then be used without a word)."""
    if isinstance(layer, KerasLayerAdapter):
        layer = layer.inner
    if not layer.built:
        raise variable_tree.CheckpointMismatchError(
            f"cannot {action} the weights of {type(layer).__name__} {layer.name!r}: it is not "
            f"built yet. Call it (or the model that uses it) once on a batch of inputs first")
    return layer


def save_keras3_weights(layer, path):
    """Saves a (Keras 3) layer's weights as `.weights.h5` — the format all variants load.
    `layer`: a built Keras 3 layer or a tf.keras adapter (its `.inner` is saved)."""
    _as_model(_built_keras3_layer(layer, "save")).save_weights(path)


def load_keras3_weights(layer, path):
    """Loads a `.weights.h5` written by `save_keras3_weights` (any backend) into `layer`
    (a built Keras 3 layer or a tf.keras adapter).

    Raises:
      CheckpointMismatchError: `layer` is not built (nothing would be loaded), or the
        file's variables are not exactly the layer's (before anything is assigned).
    """
    model = _as_model(_built_keras3_layer(layer, "load"))
    _check_same_variables(model, path)
    model.load_weights(path)


def _h5_variables(path) -> dict:
    """`{dataset path: shape}` of a Keras 3 `.weights.h5` file, optimizer state left out."""
    import h5py
    found = {}

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset) and not name.startswith("optimizer/"):
            found[name] = tuple(obj.shape)
    with h5py.File(path, "r") as f:
        f.visititems(visit)
    return found


def _check_same_variables(model, path) -> None:
    """Keras 3 `load_weights` ignores variables of the file that the model does not
    have: weights saved from an encoder with more blocks (other `inter_layers`, with
    `use_candidate_group`, ...) loaded into a smaller one without a word, the rest left
    as initialised. Compares the file's variables with the model's own (written to a
    temporary file, so both follow Keras' layout: a load writes the layer's size once
    more to local disk) and raises naming the differences."""
    import tempfile
    path = os.fspath(path)
    if not path.endswith(".h5"):      # another format Keras reads (e.g. sharded .json)
        return
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(f"{path}: no such weights file")
    with tempfile.TemporaryDirectory() as tmp:
        mine = os.path.join(tmp, "layer.weights.h5")
        model.save_weights(mine)
        expected = _h5_variables(mine)
        if "://" in path:             # gs://, s3://, ...: h5py reads local files only
            tf.io.gfile.copy(path, os.path.join(tmp, "saved.weights.h5"))
            saved = _h5_variables(os.path.join(tmp, "saved.weights.h5"))
        else:
            saved = _h5_variables(path)
    if saved == expected:
        return
    missing = sorted(set(expected) - set(saved))
    extra = sorted(set(saved) - set(expected))
    shapes = sorted(f"{k} {list(saved[k])} != {list(expected[k])}"
                    for k in set(saved) & set(expected) if saved[k] != expected[k])
    raise variable_tree.CheckpointMismatchError(
        f"{path}: its {len(saved)} variables are not this layer's {len(expected)} "
        f"(saved from a layer with other arguments, e.g. inter_layers, embedding_dim, "
        f"vocabulary sizes?); missing: {missing[:5]}, unexpected: {extra[:5]}, "
        f"other shapes: {shapes[:5]}; nothing was loaded")


@tf_keras.saving.register_keras_serializable(package="dmgin_tf")
class GroupInterestEncoder(KerasLayerAdapter):
    """tf.keras version of `dmgin_tf.layers.GroupInterestEncoder` (same math, same args).

    Takes the same constructor arguments as the Keras 3 layer and the same dict of
    inputs; returns `[B, output_dim]`. `encode_user` / `score_candidates` of the Keras 3
    layer are on `.inner`.

    Example (tf.keras functional ranking model):

    ```python
    inputs = {k: tf_keras.Input((L,), dtype=...) ...}      # see docs/layers.md
    interest = GroupInterestEncoder(item_vocab_size=..., group_vocab_size=...,
                                    num_behavior_types=4)(inputs)
    ctr = tf_keras.layers.Dense(1, activation="sigmoid")(interest)
    ```
    """

    def __init__(self, inner=None, input_dtypes=None, **encoder_kwargs):
        layer_kwargs = {k: encoder_kwargs.pop(k) for k in ("name", "trainable", "dtype")
                        if k in encoder_kwargs}
        if inner is None:
            # The encoder computes in the adapter's precision: its own `dtype` (a policy
            # name or a tf.keras Policy) or tf.keras' global policy (`mixed_float16` …).
            policy = layer_kwargs.get("dtype") or tf_keras.mixed_precision.global_policy()
            name = getattr(policy, "name", policy)
            if isinstance(name, str) and name != "float32":
                encoder_kwargs["dtype"] = name
            inner = _gie.GroupInterestEncoder(**encoder_kwargs)
        elif encoder_kwargs:
            raise TypeError(f"GroupInterestEncoder: pass either inner or encoder "
                            f"arguments, not both (got {sorted(encoder_kwargs)})")
        super().__init__(inner, input_dtypes=input_dtypes, **layer_kwargs)

    @property
    def output_dim(self):
        return self.inner.output_dim

    def build(self, input_shape):
        if not self.inner.built:
            self.inner.build(input_shape)   # the encoder builds from its config alone
        super().build(input_shape)   # KerasLayerAdapter.build tracks the variables

    def compute_output_shape(self, input_shape):
        """The Keras 3 layer's rule: `[B]` / `[B, 1]` candidates → `(B, output_dim)`,
        `[U, N]` → `(U, N, output_dim)`."""
        shapes = {k: tuple(tf.TensorShape(v).as_list()) for k, v in input_shape.items()}
        return tf.TensorShape(self.inner.compute_output_shape(shapes))
