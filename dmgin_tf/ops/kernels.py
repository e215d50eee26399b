"""Row-wise building blocks of the grouping op, each with an XLA and a TF-kernel variant.

Every function works on a batch of rows `[B, L, ...]` along axis 1, takes the
`Executor` of the current trace (see `_backend.py`) and returns the *same integers* on
every path; only the algorithm differs, picked for speed:

- `take_rows`: a batched gather under XLA (`take_along_axis`; on TF one `tf.gather`); one
  flat `take` otherwise (2.5x faster there).
- `cumsum_rows`: a pairwise (work-efficient, log-depth) scan under XLA, whose CPU
  `cumsum` lowering is a quadratic reduce-window; the native `cumsum` otherwise.
- `stable_argsort_rows`: LSD radix sort (one bit per pass: a scan and one scatter)
  where XLA's comparator-callback sort is slow (XLA:CPU) and the key is narrow;
  `argsort` (stable on every backend) otherwise.
- `lower_bound_rows`: vectorised binary search, ceil(log2 L) + 1 small gathers.
- `map_row_chunks`: runs a row-wise function over chunks of about `XLA_CPU_CHUNK_ELEMENTS`
  elements in one loop under XLA:CPU, so the compiled temporaries stay small.
"""
from __future__ import annotations

import math

import keras
from keras import ops

#: Radix sort only for keys of at most this many bits (each bit costs one scan + one
#: scatter over [B, L]; beyond ~16 bits XLA's own sort is as fast).
MAX_RADIX_BITS = 16
#: ... and only for rows at least this long: below it XLA's sort is cheap anyway and the
#: radix passes would only add compile time.
RADIX_MIN_LENGTH = 512
#: Under XLA:CPU the op runs on row chunks of about this many B*L elements. Why: XLA
#: allocates all temporaries of a call as one `malloc` block (~55 bytes per element for
#: `group_behaviors`); above glibc's largest mmap threshold (32 MiB) every call gets fresh
#: pages from the kernel: at B=64, L=10 000 (35.2 MB) 8 594 page faults per call (~25 ms
#: system time, plus cold caches) made XLA 2x slower than graph mode there, while L=1k
#: (20 MB) and L=100k (33.0 MB, just under) were unaffected. With chunks the block is
#: 4.7 MB at L=100k and no call faults (bench_grouping, 640k elements, XLA wall ms at
#: L=1k/10k/100k: 82.7/108.8/47.9 before, ~95/65-80/45-59 after on the shared 2 cores;
#: 16k-128k-element chunks measured within noise, 512k slower).
XLA_CPU_CHUNK_ELEMENTS = 1 << 17


def take_rows(x, idx, ex):
    """x [B, L] or [B, L, C]; idx [B, K] int32 in [0, L) → x[b, idx[b, k]] [B, K(, C)]."""
    if ex.xla:
        if keras.backend.backend() == "tensorflow":
            # What Keras' take_along_axis lowers to after ~25 broadcast/transpose ops
            # (identity here). The grouping + candidate ops call this ~400 times per
            # trace, so those ops made SavedModel export ~2x slower to trace and save.
            import tensorflow as tf
            return tf.gather(x, idx, batch_dims=1)
        if len(x.shape) == 2:
            return ops.take_along_axis(x, idx, axis=1)
        return ops.take_along_axis(x, ops.expand_dims(idx, -1), axis=1)
    length = x.shape[1] if x.shape[1] is not None else ops.shape(x)[1]
    offsets = ops.expand_dims(ops.arange(ops.shape(x)[0], dtype="int32") * length, 1)
    flat_idx = ops.reshape(idx + offsets, [-1])
    tail = list(x.shape[2:])
    out = ops.take(ops.reshape(x, [-1] + tail), flat_idx, axis=0)
    k = idx.shape[1] if idx.shape[1] is not None else ops.shape(idx)[1]
    return ops.reshape(out, [-1, k] + tail)


def _pairwise_scan(x):
    """Inclusive prefix sum along axis 1: sum adjacent pairs, recurse, interleave.

    O(L) work, log2(L) levels of reshapes/slices that XLA fuses well (4 ms for
    [64, 10 000] vs 74 ms for a pad-and-add Hillis–Steele scan and 9 s for XLA:CPU's
    `cumsum` at B=256). Exact for ints.
    """
    length = x.shape[1]
    if length == 1:
        return x
    tail = list(x.shape[2:])
    if length % 2:
        x = ops.pad(x, [[0, 0], [0, 1]] + [[0, 0]] * len(tail))
    half = x.shape[1] // 2
    pairs = ops.reshape(x, [-1, half, 2] + tail)
    first, second = pairs[:, :, 0], pairs[:, :, 1]
    pair_sums = _pairwise_scan(first + second)             # prefix sums at odd positions
    evens = pair_sums - second
    out = ops.reshape(ops.stack([evens, pair_sums], axis=2), [-1, 2 * half] + tail)
    return out[:, :length]


def cumsum_rows(x, ex):
    """Inclusive prefix sum along axis 1 of 0/1 ints [R, L] → int32 [R, L]."""
    if ex.xla:
        # A triangular-matmul scan compiled ~5x faster (0.13 vs 0.65 s per scan) but
        # made the whole op ~1.6x slower under XLA (bench_grouping, L=10k), so no.
        return ops.cast(_pairwise_scan(x), "int32")
    return ops.cast(ops.cumsum(x, axis=1), "int32")


def _radix_argsort(keys, num_bits, ex):
    """Stable argsort of non-negative int32 keys < 2**num_bits along axis 1 (LSD radix).

    Each pass stably partitions the row by one bit: an element with bit 0 goes to the
    number of zeros up to it (minus one), one with bit 1 after all zeros. Key and
    position travel packed in one int32 when they fit, so each pass is one row scan and
    one scatter. Returns (sorted keys, permutation) [B, L] int32.

    Measured under XLA on CPU, B=64, L=10 000, 10 bits (with pairwise scans): 52 ms,
    vs 524 ms for XLA's sort (182 ms for TF's non-XLA argsort). The passes are unrolled
    on purpose: the same passes in a `fori_loop` ran 6x slower (332 ms), and 2- or 3-bit
    digits (more scans, fewer scatters) were slower too.
    """
    length = keys.shape[1]
    batch = ops.shape(keys)[0]
    pos_bits = max(1, (length - 1).bit_length())
    packed = num_bits + pos_bits <= 31
    position = ops.broadcast_to(ops.arange(length, dtype="int32"), ops.shape(keys))
    row_offset = ops.expand_dims(ops.arange(batch, dtype="int32") * length, 1)
    flat_size = batch * length
    offset = pos_bits if packed else 0
    payloads = [ops.left_shift(keys, pos_bits) + position] if packed else [keys, position]
    for bit in range(num_bits):
        bits = ops.bitwise_and(ops.right_shift(payloads[0], bit + offset), 1)
        zeros_upto = cumsum_rows(1 - bits, ex)
        num_zeros = zeros_upto[:, -1:]
        dest = ops.where(bits == 0, zeros_upto - 1, num_zeros + position - zeros_upto)
        dest = ops.reshape(dest + row_offset, [-1, 1])
        payloads = [ops.reshape(ops.scatter(dest, ops.reshape(p, [-1]), [flat_size]),
                                ops.shape(keys)) for p in payloads]
    if packed:
        mask = (1 << pos_bits) - 1
        return ops.right_shift(payloads[0], pos_bits), ops.bitwise_and(payloads[0], mask)
    return payloads[0], payloads[1]


def stable_argsort_rows(keys, num_bits, ex):
    """Stable ascending sort of int32 keys along axis 1 → (sorted keys, permutation).

    num_bits: keys are known to be < 2**num_bits (None: unknown, any int32).
    """
    if (ex.xla and ex.slow_sort and num_bits is not None and num_bits <= MAX_RADIX_BITS
            and keys.shape[1] >= RADIX_MIN_LENGTH):
        return _radix_argsort(keys, num_bits, ex)
    perm = ops.cast(ops.argsort(keys, axis=1), "int32")
    return take_rows(keys, perm, ex), perm


def lower_bound_rows(sorted_keys, values, hi, ex):
    """First index i in [0, hi] with sorted_keys[b, i] >= values[b, k] (vectorised).

    sorted_keys [B, L] ascending per row; values, hi [B, K] int32 (hi: an index whose
    key is known to be >= the value). With a static L the ceil(log2(L + 1)) + 1 steps
    are unrolled; with a dynamic L (candidates [B, N] in a serving trace) one step runs
    in a while loop until every search has converged, so the trace holds one step
    instead of an unrolled worst case (32 steps made export tracing much slower).
    """
    length = sorted_keys.shape[1]

    def step(lo, hi):
        mid = (lo + hi) // 2
        below = take_rows(sorted_keys, mid, ex) < values
        return ops.where(below, mid + 1, lo), ops.where(below, hi, mid)

    lo = ops.zeros_like(hi)
    if length is None:
        lo, _ = ops.while_loop(lambda lo, hi: ops.any(lo < hi), step, (lo, hi))
        return lo
    for _ in range(max(1, math.ceil(math.log2(length + 1)) + 1)):
        lo, hi = step(lo, hi)
    return lo


def chunk_rows(length, ex):
    """Rows per chunk for `map_row_chunks` at history length L, or None (no chunking:
    only XLA:CPU allocates one block per call that grows with B*L)."""
    if not ex.xla_cpu:
        return None
    return max(1, XLA_CPU_CHUNK_ELEMENTS // length)


def map_row_chunks(fn, arrays, out_specs, rows):
    """fn over row chunks of `arrays` in one loop; same result as fn(*arrays).

    fn: maps arrays [R, ...] (one leading row axis each) to a tuple of arrays [R, ...],
      each output row depending only on the same input row (the loop pads the last
      chunk with zero rows and drops their outputs).
    arrays: [B, ...] each (B may be dynamic). out_specs: (shape after the row axis,
      dtype) per output of fn, so fn is traced only once. rows: rows per chunk.

    With a static B the chunks are balanced (fewer than n padding rows for n chunks).
    Returns the tuple of outputs [B, ...].
    """
    arrays = [ops.convert_to_tensor(a) for a in arrays]
    static_batch = arrays[0].shape[0]
    if static_batch is not None and static_batch <= rows:
        return tuple(fn(*arrays))
    if static_batch is not None:
        num_chunks = -(-static_batch // rows)
        return _chunk_loop(fn, arrays, out_specs, -(-static_batch // num_chunks), static_batch,
                           num_chunks)
    batch = ops.shape(arrays[0])[0]
    # At least one chunk: XLA rejects the loop's slices of an empty chunk axis.
    num_chunks = ops.maximum((batch + rows - 1) // rows, 1)
    # A dynamic batch that fits one chunk (serving: one user x L = 10k) runs unpadded: the
    # loop would pad it to `rows` rows (13 at L = 10k), i.e. 13x the work.
    return ops.cond(batch <= rows, lambda: tuple(fn(*arrays)),
                    lambda: _chunk_loop(fn, arrays, out_specs, rows, batch, num_chunks))


def _chunk_loop(fn, arrays, out_specs, rows, batch, num_chunks):
    """`map_row_chunks`' loop: `num_chunks` chunks of `rows` rows (the last zero-padded)."""
    pad = num_chunks * rows - batch
    padded = [ops.pad(a, [[0, pad]] + [[0, 0]] * (len(a.shape) - 1)) for a in arrays]

    # ops.slice / slice_update lower to XLA's dynamic-slice / dynamic-update-slice in
    # place; indexing `x[i]` with a traced i became a 4x padded copy under TF's XLA bridge.
    def body(i, outs):
        start = i * rows
        new = fn(*[ops.slice(a, [start] + [0] * (len(a.shape) - 1), [rows] + list(a.shape[1:]))
                   for a in padded])
        return tuple(ops.slice_update(acc, [start] + [0] * len(tail), x)
                     for acc, x, (tail, _) in zip(outs, new, out_specs))

    init = tuple(ops.zeros([num_chunks * rows] + list(tail), dtype) for tail, dtype in out_specs)
    outs = ops.fori_loop(0, num_chunks, body, init)
    return tuple(o[:batch] for o in outs)
