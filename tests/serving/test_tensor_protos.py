"""numpy ⇄ TensorProto fast path = TensorFlow's own helpers; bad content is named."""
import numpy as np
import pytest
import tensorflow as tf

from dmgin_tf.serving import tensor_protos


@pytest.mark.parametrize("dtype", ["float32", "float64", "int32", "int64", "uint8", "bool",
                                   "float16"])
def test_round_trip_equals_tensorflow_helpers(dtype):
    x = (np.random.default_rng(0).normal(size=(2, 3, 4)) * 10).astype(dtype)
    proto = tensor_protos.from_ndarray(x)
    assert proto.tensor_content                      # raw bytes, as TF Serving clients send
    np.testing.assert_array_equal(tf.make_ndarray(proto), x)   # TF reads ours
    ours = tensor_protos.to_ndarray(tf.make_tensor_proto(x))   # we read TF's
    assert ours.dtype == x.dtype and ours.shape == x.shape
    np.testing.assert_array_equal(ours, x)


def test_other_layouts_fall_back_to_tensorflow():
    strings = np.array([b"a", b"bc"], dtype=object)
    np.testing.assert_array_equal(tensor_protos.to_ndarray(tensor_protos.from_ndarray(strings)),
                                  strings)
    typed = tf.make_tensor_proto(np.int64(7))       # a scalar travels in int64_val
    assert not typed.tensor_content
    assert tensor_protos.to_ndarray(typed) == 7
    empty = np.zeros((0, 3), np.float32)
    assert tensor_protos.to_ndarray(tensor_protos.from_ndarray(empty)).shape == (0, 3)


def test_content_of_the_wrong_size_is_refused():
    proto = tensor_protos.from_ndarray(np.zeros((2, 3), np.float32))
    proto.tensor_content = np.zeros(4, np.float32).tobytes()      # 4 values for [2, 3]
    with pytest.raises(ValueError, match=r"4 float32 values, shape \[2, 3\] needs 6"):
        tensor_protos.to_ndarray(proto)


def test_a_proto_repeating_one_value_to_a_huge_shape_is_refused():
    """TensorFlow fills a declared shape by repeating the last value; beyond
    MAX_REPEATED_ELEMENTS the proto must carry its values (no allocation first)."""
    proto = tf.make_tensor_proto(7, dtype=tf.int32)
    proto.tensor_shape.dim.add(size=10)                 # 10 values from one: still fine
    np.testing.assert_array_equal(tensor_protos.to_ndarray(proto), np.full(10, 7))
    proto.tensor_shape.dim[0].size = 600_000_000
    with pytest.raises(ValueError, match="declares 600,000,000 values but the proto carries 1"):
        tensor_protos.to_ndarray(proto)
    assert tensor_protos.declared_shape(proto) == (600_000_000,)


def test_more_values_than_the_shape_or_a_shape_past_int64_is_named():
    """Five int_val values for a [1, 3] tensor, or dims [2^40, 2^40] (whose product
    wrapped in int64), got numpy's "index can't contain negative values"."""
    proto = tf.make_tensor_proto(np.arange(5, dtype=np.int32))
    proto.tensor_shape.dim[0].size = 1
    proto.tensor_shape.dim.add(size=3)
    proto.ClearField("tensor_content")
    proto.int_val.extend(range(5))
    with pytest.raises(ValueError, match=r"shape \[1, 3\] declares 3 values but the proto "
                                         r"carries 5 in int_val"):
        tensor_protos.to_ndarray(proto)
    proto.ClearField("int_val")
    proto.int_val.append(1)
    proto.tensor_shape.dim[0].size = 2 ** 40
    proto.tensor_shape.dim[1].size = 2 ** 40
    with pytest.raises(ValueError, match="declares 1,208,925,819,614,629,174,706,176 values"):
        tensor_protos.to_ndarray(proto)


@pytest.mark.parametrize("dtype,field", [("float32", "float_val"), ("float64", "double_val"),
                                         ("int32", "int_val"), ("int64", "int64_val"),
                                         ("bool", "bool_val"), ("uint8", "int_val")])
def test_responses_carry_typed_values_as_tf_serving_writes_them(dtype, field):
    """TF Serving answers Predict with `Tensor::AsProtoField`: the values in the typed
    field, no tensor_content. Java / Go clients read those lists."""
    x = (np.random.default_rng(1).normal(size=(2, 5)) * 10).astype(dtype)
    proto = tensor_protos.from_ndarray(np.zeros(1, np.float32))   # overwritten entirely
    tensor_protos.write_typed(proto, x)
    assert not proto.tensor_content and len(getattr(proto, field)) == x.size
    assert [d.size for d in proto.tensor_shape.dim] == [2, 5]
    np.testing.assert_array_equal(tf.make_ndarray(proto), x)      # TensorFlow reads it
    ours = tensor_protos.to_ndarray(proto)
    assert ours.dtype == x.dtype
    np.testing.assert_array_equal(ours, x)
    strings = np.array([b"a", b"bc"], dtype=object)
    tensor_protos.write_typed(proto, strings)
    assert list(proto.string_val) == [b"a", b"bc"]


def test_negative_dimensions_and_unknown_rank_with_dimensions_are_refused():
    """TF Serving refuses both as invalid shapes; a -1 with raw content was reported as
    'shape [-1, 3] needs -3 values'."""
    proto = tensor_protos.from_ndarray(np.zeros((2, 3), np.float32))
    proto.tensor_shape.dim[0].size = -1
    with pytest.raises(ValueError, match=r"negative dimension in shape \[-1, 3\]"):
        tensor_protos.to_ndarray(proto)
    proto = tensor_protos.from_ndarray(np.zeros((2, 3), np.float32))
    proto.tensor_shape.unknown_rank = True
    with pytest.raises(ValueError, match="unknown_rank"):
        tensor_protos.to_ndarray(proto)
