"""Checkpoint keys from a layer's *structure*, not from generated layer names.

Keras names layers `group_interest_encoder`, `group_interest_encoder_1`, ... in creation
order, so a key built from `variable.path` depends on what the process built before.
`structural_variables` instead walks the layer tree by attribute name (list items by
index) — the same in every process for the same constructor arguments:

    embedding/item_table/embeddings
    inter/blocks/1/uvqk/kernel

`attach_checkpoint_tree` (TensorFlow backend) hangs those variables under one tracked
child of a TF trackable (a Keras 3 layer, or the tf.keras adapter) so `tf.train.Checkpoint`
and tf.keras `save_weights` / `load_weights` key them by these paths, plus a *manifest*
(the sorted paths, shapes and dtypes): restoring a checkpoint written from a layer with
other variables raises `CheckpointMismatchError` naming what differs, instead of
silently leaving some variables at their initial values.
"""
from __future__ import annotations

import re

import keras

_SAFE = re.compile(r"[^A-Za-z0-9_\-]")
#: Name of the tracked child holding the tree (the checkpoint key prefix).
TREE_NAME = "structured_variables"
_MANIFEST = "_manifest"


class CheckpointMismatchError(ValueError):
    """A checkpoint's variables for a layer differ from the layer's own variables."""


def _own_variables(layer):
    return list(getattr(layer, "_trainable_variables", ())) + \
        list(getattr(layer, "_non_trainable_variables", ()))


def structural_variables(layer) -> dict:
    """`{path: keras.Variable}` for every variable of a built Keras 3 layer.

    Paths are `/`-joined attribute names from `layer` (sub-layers in lists by index,
    a layer's own variables by their `name`), so they depend only on how the layer is
    constructed. A variable reached twice is listed once (first path in sorted order).
    Variables not reachable through public attributes (e.g. seed-generator states) get
    `other/<path relative to layer>`.
    """
    out, seen_vars, seen_layers = {}, set(), set()

    def safe(part):
        return _SAFE.sub("_", str(part))

    def add(path, v):
        if id(v) in seen_vars:
            return
        seen_vars.add(id(v))
        key, n = path, 1
        while key in out:
            key, n = f"{path}_{n}", n + 1
        out[key] = v

    def visit(obj, prefix):
        if id(obj) in seen_layers:
            return
        seen_layers.add(id(obj))
        for v in _own_variables(obj):
            add(prefix + safe(v.name), v)
        children = []
        for attr in sorted(vars(obj)):
            if attr.startswith("_"):
                continue
            value = vars(obj)[attr]
            if isinstance(value, keras.layers.Layer):
                children.append((safe(attr), value))
            elif isinstance(value, (list, tuple)):
                children += [(f"{safe(attr)}/{i}", x) for i, x in enumerate(value)
                             if isinstance(x, keras.layers.Layer)]
            elif isinstance(value, dict):
                children += [(f"{safe(attr)}/{safe(k)}", value[k]) for k in sorted(value)
                             if isinstance(value[k], keras.layers.Layer)]
        # Layers held only privately (e.g. a functional model's `_layers`): by position.
        children += [(f"layers/{i}", x) for i, x in
                     enumerate(getattr(obj, "_layers", ()) or ())
                     if isinstance(x, keras.layers.Layer)]
        for name, child in children:
            visit(child, f"{prefix}{name}/")

    visit(layer, "")
    root = layer.name + "/"
    for v in layer.variables:
        if id(v) not in seen_vars:
            rel = v.path[len(root):] if v.path.startswith(root) else v.path
            add("other/" + "/".join(safe(p) for p in rel.split("/")), v)
    return out


def manifest(variables: dict) -> str:
    """One line per variable: `path shape dtype`, sorted."""
    return "\n".join(f"{p} {tuple(v.shape)} {v.dtype}" for p, v in sorted(variables.items()))


def attach_checkpoint_tree(owner, layer, name=TREE_NAME):
    """Tracks `layer`'s variables (TF backend) under `owner.<name>/<structural path>`.

    `owner` is any TF trackable (the Keras 3 layer itself or a tf.keras layer wrapping
    it); call once, after `layer` is built. Returns the tree node.
    """
    import tensorflow as tf
    # Plain Python (it defines classes): when a tf.function builds the layer, AutoGraph
    # must call it as it is rather than try to convert it (and warn that it could not).
    make_tree = tf.autograph.experimental.do_not_convert(_make_tree)
    node = make_tree(structural_variables(layer), getattr(layer, "name", "layer"))
    owner._track_trackable(node, name=name, overwrite=True)
    return node


def _make_tree(variables, layer_name):
    """A tracked node per path prefix; leaves are the `tf.Variable`s."""
    import tensorflow as tf

    class Manifest(tf.__internal__.tracking.Trackable):
        """The variable list, saved as one string tensor and checked on an eager
        restore. (Not a `PythonState`: that one warns on every SavedModel export.)"""

        def __init__(self, text):
            self.text = text

        def _serialize_to_tensors(self):
            return {"manifest": tf.constant(self.text)}

        def _restore_from_tensors(self, restored_tensors):
            value = restored_tensors["manifest"]
            if not hasattr(value, "numpy") or not tf.executing_eagerly():
                return tf.no_op()        # traced for a SavedModel: nothing to compare
            self.check(value.numpy())
            return None

        def check(self, string_value):
            saved = string_value.decode() if isinstance(string_value, bytes) \
                else str(string_value)
            if saved == self.text:
                return
            saved_lines, own_lines = set(saved.splitlines()), set(self.text.splitlines())
            missing = sorted(own_lines - saved_lines)
            extra = sorted(saved_lines - own_lines)

            def listing(lines):
                return "; ".join(lines[:5]) + (" ..." if len(lines) > 5 else "")
            parts = []
            if missing:
                parts.append(f"{len(missing)} of its variables are not in the checkpoint "
                             f"({listing(missing)})")
            if extra:
                parts.append(f"the checkpoint has {len(extra)} variables it does not have "
                             f"({listing(extra)})")
            raise CheckpointMismatchError(
                f"checkpoint does not match the variables of layer {layer_name!r}: "
                + ", and ".join(parts) + ". Build the layer with the same arguments as "
                "the one that was saved.")

    class Node(tf.__internal__.tracking.Trackable):
        def __init__(self):
            self.children = {}

        def _trackable_children(self, save_type="checkpoint", **kwargs):
            return dict(self.children)

        def _lookup_dependency(self, name, cached_dependencies=None):
            return self.children.get(name)

    root = Node()
    for path, v in variables.items():
        node, parts = root, path.split("/")
        for part in parts[:-1]:
            node = node.children.setdefault(part, Node())
        node.children[parts[-1]] = getattr(v, "value", v)
    root.children[_MANIFEST] = Manifest(manifest(variables))
    return root
