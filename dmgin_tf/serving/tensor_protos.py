"""numpy ⇄ `TensorProto` for the request path, without TensorFlow's Python helpers.

`tf.make_tensor_proto` / `tf.make_ndarray` are general (lists, strings, every field
layout) and cost ~25–100 µs per call in Python; a `rank` request has seven tensors of
10k values each way. Numeric request arrays travel as `tensor_content` (raw little-endian
bytes, what TF Serving's own clients send), so they convert with one
`np.frombuffer` / `tobytes`; responses carry their values in the typed `*_val` fields,
as TF Serving's do (`write_typed`), read back with one `np.array`. Anything else
(strings, half floats, protos that rely on a repeated last value) falls back to
TensorFlow's helpers — same results, just slower.
"""
from __future__ import annotations

import math
import sys

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, types_pb2

# DataType enum → numpy dtype, numeric types only (those sent as raw bytes).
_NUMPY = {types_pb2.DT_FLOAT: np.float32, types_pb2.DT_DOUBLE: np.float64,
          types_pb2.DT_INT32: np.int32, types_pb2.DT_INT64: np.int64,
          types_pb2.DT_INT16: np.int16, types_pb2.DT_INT8: np.int8,
          types_pb2.DT_UINT8: np.uint8, types_pb2.DT_UINT16: np.uint16,
          types_pb2.DT_UINT32: np.uint32, types_pb2.DT_UINT64: np.uint64,
          types_pb2.DT_BOOL: np.bool_, types_pb2.DT_HALF: np.float16}
_ENUM = {np.dtype(v): k for k, v in _NUMPY.items()}
_RAW_OK = sys.byteorder == "little"  # tensor_content is little-endian on every TF host
# The typed field a TensorProto carries its values in when not in `tensor_content`.
_VALUE_FIELD = {types_pb2.DT_FLOAT: "float_val", types_pb2.DT_DOUBLE: "double_val",
                types_pb2.DT_INT32: "int_val", types_pb2.DT_INT16: "int_val",
                types_pb2.DT_INT8: "int_val", types_pb2.DT_UINT8: "int_val",
                types_pb2.DT_UINT16: "int_val", types_pb2.DT_INT64: "int64_val",
                types_pb2.DT_UINT32: "uint32_val", types_pb2.DT_UINT64: "uint64_val",
                types_pb2.DT_BOOL: "bool_val", types_pb2.DT_HALF: "half_val",
                types_pb2.DT_STRING: "string_val"}
# TensorFlow repeats a proto's last value up to its declared size. A proto of a few
# bytes declaring [1, 600000000] made the server allocate gigabytes before any check
# ran; tensors larger than this must carry their values.
MAX_REPEATED_ELEMENTS = 1 << 16


def declared_shape(proto: tensor_pb2.TensorProto) -> tuple:
    """The shape a TensorProto declares, read from its header (no values decoded)."""
    return tuple(d.size for d in proto.tensor_shape.dim)


def check_declared_size(proto: tensor_pb2.TensorProto) -> None:
    """Refuses a proto whose declared size would be filled by repeating its values
    beyond `MAX_REPEATED_ELEMENTS` elements (ValueError; the caller names the input)."""
    if proto.tensor_content:
        return                           # size-checked against the shape on conversion
    shape = declared_shape(proto)
    if any(d < 0 for d in shape):
        raise ValueError(f"negative dimension in shape {list(shape)}")
    declared = math.prod(shape)          # Python ints: [2^40, 2^40] must not wrap
    field = _VALUE_FIELD.get(proto.dtype)
    carried = len(getattr(proto, field)) if field else 0
    if carried > declared:
        raise ValueError(f"shape {list(shape)} declares {declared:,} values but the proto "
                         f"carries {carried:,} in {field}")
    if declared > max(carried, MAX_REPEATED_ELEMENTS):
        raise ValueError(f"shape {list(shape)} declares {declared:,} values but the proto "
                         f"carries {carried:,}; a tensor of more than "
                         f"{MAX_REPEATED_ELEMENTS:,} values must carry all of them "
                         f"(tensor_content, as tf.make_tensor_proto writes it)")


def to_ndarray(proto: tensor_pb2.TensorProto) -> np.ndarray:
    """TensorProto → numpy array (read-only view of `tensor_content` when it is set).

    Raises:
      ValueError / TypeError: content size does not match shape and dtype, or an
        unknown dtype (the caller names the input).
    """
    if proto.tensor_shape.unknown_rank and proto.tensor_shape.dim:
        raise ValueError(f"the shape sets unknown_rank and lists dimensions "
                         f"{list(declared_shape(proto))}; a tensor has a known shape")
    if any(d < 0 for d in declared_shape(proto)):
        raise ValueError(f"negative dimension in shape {list(declared_shape(proto))}")
    dtype = _NUMPY.get(proto.dtype)
    if dtype is None or not proto.tensor_content or not _RAW_OK:
        check_declared_size(proto)
        field = _VALUE_FIELD.get(proto.dtype)
        if dtype is not None and field and proto.dtype != types_pb2.DT_HALF:
            # Typed values (what TF Serving answers with): one conversion, unless the
            # proto relies on TensorFlow repeating its last value up to the shape.
            values = getattr(proto, field)
            shape = declared_shape(proto)
            count = math.prod(shape)
            if len(values) == count:
                return np.fromiter(values, dtype=dtype, count=count).reshape(shape)
        return tf.make_ndarray(proto)
    shape = [d.size for d in proto.tensor_shape.dim]
    values = np.frombuffer(proto.tensor_content, dtype=dtype)
    if values.size != int(np.prod(shape, dtype=np.int64)):
        raise ValueError(f"tensor_content holds {values.size} {np.dtype(dtype).name} values, "
                         f"shape {shape} needs {int(np.prod(shape, dtype=np.int64))}")
    return values.reshape(shape)


def from_ndarray(value) -> tensor_pb2.TensorProto:
    """numpy array (or anything `tf.make_tensor_proto` takes) → TensorProto."""
    if isinstance(value, np.ndarray) and value.dtype in _ENUM and _RAW_OK:
        proto = tensor_pb2.TensorProto(dtype=_ENUM[value.dtype],
                                       tensor_content=np.ascontiguousarray(value).tobytes())
        for size in value.shape:
            proto.tensor_shape.dim.add(size=size)
        return proto
    return tf.make_tensor_proto(value)


def write_typed(proto: tensor_pb2.TensorProto, value) -> None:
    """Writes `value` into `proto` the way TF Serving answers Predict: dtype, shape and
    the values in the typed field (`float_val`, `int64_val`, `bool_val`, `string_val`,
    …; TensorFlow's `Tensor::AsProtoField`), never `tensor_content`. Clients that read
    the typed lists (Java's `getFloatValList()`, Go's `FloatVal`) see the same response
    from `dmgin serve` as from TF Serving; `to_ndarray` and `tf.make_ndarray` read both."""
    arr = np.asarray(value)
    enum = _ENUM.get(arr.dtype)
    field = _VALUE_FIELD.get(enum) if enum is not None else None
    if field is None or enum == types_pb2.DT_HALF:
        proto.CopyFrom(tf.make_tensor_proto(arr))    # strings: string_val already
        return
    proto.Clear()
    proto.dtype = enum
    for size in arr.shape:
        proto.tensor_shape.dim.add(size=size)
    getattr(proto, field).extend(arr.ravel().tolist())
