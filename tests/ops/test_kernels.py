"""dmgin_tf.ops.kernels: every algorithm variant gives numpy's integers exactly."""
import numpy as np
import pytest
import tensorflow as tf

from dmgin_tf.ops import kernels
from dmgin_tf.ops._backend import Executor, current_executor

GRAPH = Executor(xla=False, slow_sort=False)
XLA_CPU = Executor(xla=True, slow_sort=True)


@pytest.mark.parametrize("length", [1, 2, 7, 32, 33, 1000, 4099])
def test_scans_match_numpy(length):
    x = np.random.default_rng(length).integers(0, 2, (3, length)).astype(np.int32)
    expected = np.cumsum(x, axis=1)
    np.testing.assert_array_equal(kernels._pairwise_scan(x), expected)
    for ex in (GRAPH, XLA_CPU):
        np.testing.assert_array_equal(kernels.cumsum_rows(x, ex), expected)


@pytest.mark.parametrize("num_bits,length", [(1, 5), (4, 1000), (10, 3000), (16, 40_000)])
def test_radix_argsort_is_a_stable_sort(num_bits, length):
    """Packed (key + position in one int32) and unpacked (16 + 16 bits) variants."""
    rng = np.random.default_rng(num_bits)
    keys = rng.integers(0, min(2**num_bits, 50), (2, length)).astype(np.int32)
    sorted_keys, perm = kernels._radix_argsort(keys, num_bits, XLA_CPU)
    expected = np.argsort(keys, axis=1, kind="stable")
    np.testing.assert_array_equal(perm, expected)
    np.testing.assert_array_equal(sorted_keys, np.take_along_axis(keys, expected, axis=1))


def test_take_rows_and_lower_bound_variants_agree():
    rng = np.random.default_rng(0)
    x = np.sort(rng.integers(0, 20, (4, 50)), axis=1).astype(np.int32)
    idx = rng.integers(0, 50, (4, 9)).astype(np.int32)
    x3 = rng.integers(0, 9, (4, 50, 3)).astype(np.int32)
    for ex in (GRAPH, XLA_CPU):
        np.testing.assert_array_equal(kernels.take_rows(x, idx, ex),
                                      np.take_along_axis(x, idx, axis=1))
        np.testing.assert_array_equal(kernels.take_rows(x3, idx, ex),
                                      np.take_along_axis(x3, idx[:, :, None], axis=1))
        values = np.take_along_axis(x, idx, axis=1)
        hi = np.full_like(idx, 49)
        expected = np.stack([np.searchsorted(x[b], values[b], side="left") for b in range(4)])
        np.testing.assert_array_equal(kernels.lower_bound_rows(x, values, hi, ex), expected)


def test_executor_detects_xla_trace():
    seen = {}

    def probe(x):
        seen[len(seen)] = current_executor().xla
        return x + 1

    probe(tf.constant(1))
    tf.function(probe)(tf.constant(1))
    tf.function(probe, jit_compile=True)(tf.constant(1))
    assert seen == {0: False, 1: False, 2: True}
