"""Serving signatures around a Keras 3 ranking model (TF backend), as a `tf.Module`.

Signatures (names are what clients pass as `signature_name`):

| signature | inputs | outputs |
|---|---|---|
| `serving_default` | `examples: string [B]` serialized tf.Example (example_parsing) | `ctr [B]` |
| `predict_raw` | `hist_item, hist_group, hist_behavior_id: int32 [B, L]`, `hist_time: int64 [B, L]`, `request_time: int64 [B]`, `cand_item, cand_group: int32 [B]` | `ctr [B]` |
| `rank` | history keys `[U, L]`, `request_time [U]`, `cand_item, cand_group: int32 [U, N]` | `ctr [U, N]` |
| `user_state` | history keys `[B, L]`, `request_time [B]` | `group_vectors f32 [B, G, D]`, `group_mask bool [B, G]`, `group_ids int32 [B, G]` |
| `score` | `group_vectors`, `group_mask`, `group_ids` (and `recent_tokens`, `recent_mask` when the model has them) of `user_state` `[U, …]` + history keys `[U, L]`, `request_time [U]`, `cand_item, cand_group [U, N]` | `ctr [U, N]` |
| `score_cached` | every `user_state` output `[U, …]` + `request_time [U]`, `cand_item, cand_group [U, N]` — no history | `ctr [U, N]` |
| `tensorize` | `examples: string [B]` as `serving_default` | the `predict_raw` inputs of those examples (ids, newest L behaviors) |

`tensorize` is how a client holding string ids (a feature store's tf.Examples) gets the
id inputs of the other signatures with the model's own vocabularies: e.g. a user's
history for `user_state` (the cached user state) and candidate ids for `score_cached`.

For models with `score_cached` (DMGIN, DGIN) `user_state` returns the complete cacheable
state (`dmgin_tf.models.cached_state`: the group vectors plus lookup tables of K groups and
I items, context aggregates, `state_time`, `state_version`); `score_cached` scores from
it alone and refuses (INVALID_ARGUMENT) a state whose `state_version` is not this
export's model fingerprint.

`rank`/`score` take U users (a client sends one: U = 1) with N candidates each. Every
input's leading dimension is the user: TF Serving's batching concatenates requests
along dimension 0 and requires all inputs to share it, so candidates are `[U, N]`
rather than `[N]`. Requests of different N merge under TF Serving's
`pad_variable_length_inputs: true` (serving_configs/batching_parameters.txt), which pads
each request's candidates with its first one: candidates are scored independently, so
the real ones keep their scores and the client drops the padded columns. The user side
(grouping, statistics, both Transformer levels) runs once; target attention, candidate-group features and the MLP
run per candidate. `score` needs the history as well as the cached state because the
candidate-group features scan the whole history (O(L) per candidate).

Fixed shapes for XLA: inside every signature the batch is zero-padded up to the next
entry of `batch_buckets` (beyond the largest: a multiple of it) and candidates up to
the next `candidate_buckets` entry; outputs are sliced back. So the XLA-compiled core
sees only a few shapes, all compiled by the warmup records before traffic arrives.
Before padding, every signature checks that its inputs share dimension 0 (`shared_rows`)
and the value rules of the request contract (`input_checks`), so a server that checks
only dtypes and shapes (TF Serving) refuses what `dmgin serve` refuses.

With `jit_compile=True` the model math (grouping included) runs in
`tf.function(jit_compile=True)`; the graph node calling it carries `_XlaMustCompile`.
Parsing and lookups stay outside XLA (string ops have no XLA kernels).
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import tensorflow as tf

from dmgin_tf import features as F
from dmgin_tf.export.example_parsing import LookupTables, parse_serving_examples
from dmgin_tf.export.input_checks import contract_checks
from dmgin_tf.layers.context_statistics import CONTEXT_STATE_KEYS
from dmgin_tf.layers.group_interest_encoder import LOOKUP_STATE_KEYS
from dmgin_tf.models.cached_state import STATE_TIME
from dmgin_tf.models.cached_state import STATE_VERSION as STATE_VERSION_KEY
from dmgin_tf.serving.validation import Contract

# What only `score_cached` reads of a complete user state; `score` takes the rest
# (`encode_user`'s outputs: the group vectors, and recent tokens when the model has them).
CACHED_ONLY_KEYS = LOOKUP_STATE_KEYS + CONTEXT_STATE_KEYS + (STATE_TIME, STATE_VERSION_KEY)


def score_state_keys(state_keys):
    """The keys of a user state the `score` signature takes, in order."""
    return tuple(k for k in state_keys if k not in CACHED_ONLY_KEYS)
SIGNATURES = ("serving_default", "predict_raw", "rank", "user_state", "score", "score_cached",
              "tensorize")
STATE_VERSION = "state_version"   # dmgin_tf.models.cached_state.STATE_VERSION
STALE_STATE_MESSAGE = ("user state from another model version: its state_version differs "
                       "from this model's; recompute it with the user_state signature")
EXAMPLES = "examples"


def history_specs(L: int, batch: Optional[int]) -> Dict[str, tf.TensorSpec]:
    return {F.HIST_ITEM: tf.TensorSpec([batch, L], tf.int32, F.HIST_ITEM),
            F.HIST_GROUP: tf.TensorSpec([batch, L], tf.int32, F.HIST_GROUP),
            F.HIST_BEHAVIOR_ID: tf.TensorSpec([batch, L], tf.int32, F.HIST_BEHAVIOR_ID),
            F.HIST_TIME: tf.TensorSpec([batch, L], tf.int64, F.HIST_TIME),
            F.REQUEST_TIME: tf.TensorSpec([batch], tf.int64, F.REQUEST_TIME)}


def bucket_size(n: tf.Tensor, buckets: Sequence[int]) -> tf.Tensor:
    """Smallest bucket >= n; above the largest bucket, n rounded up to a multiple of it."""
    b = tf.constant(sorted(buckets), tf.int32)
    n = tf.cast(n, tf.int32)
    largest = b[-1]
    fitting = tf.reduce_min(tf.where(b >= n, b, largest))
    return tf.where(n <= largest, fitting, (n + largest - 1) // largest * largest)


ROWS_MESSAGE = ("request inputs disagree: every input must have the same dimension 0 (one "
                "row per user or example), and cand_item and cand_group the same shape")


def finite_scores(ctr: tf.Tensor, signature: str) -> tf.Tensor:
    """`ctr` once it is known to be finite (InvalidArgumentError otherwise).

    The signatures that take a user state score whatever state they are given; the
    contract bounds its ids, times and counts, but finite vectors far outside anything
    the model produces (e.g. 3e38) still overflowed to NaN scores under status OK.
    """
    check = tf.debugging.Assert(tf.reduce_all(tf.math.is_finite(ctr)), [
        # (no apostrophes: the Assert message is quoted with escapes)
        f"{signature}: the scores are not finite for these inputs; the user state holds "
        f"values no state of this model has (recompute it with the user_state signature)"])
    with tf.control_dependencies([check]):
        return tf.identity(ctr)


def shared_rows(tensors: Dict[str, tf.Tensor], same_shape: Sequence[str] = (),
                checks: Sequence[tf.Operation] = ()) -> tf.Tensor:
    """The dimension 0 all `tensors` share (int32 scalar), checked in the graph.

    Without the check a request whose inputs disagree (candidates of two users with one
    user's state or history) was zero-padded until they agreed and scored against empty
    rows. `same_shape`: two inputs that must match in every dimension (`cand_item`,
    `cand_group`). The dimensions come from one `ShapeN` per dtype + concat + gather: a
    handful of graph ops whatever the number of inputs (`score_cached` takes ~25).
    `checks`: further ops (`input_checks.contract_checks`) that must pass first; the
    returned size, which all padding depends on, waits for them.

    Raises (when run): InvalidArgumentError with `ROWS_MESSAGE`, the inputs' names and
    their dimension 0.
    """
    # ShapeN takes one dtype: one op per dtype present, the inputs ordered by it.
    names = sorted(tensors, key=lambda k: tensors[k].dtype.name)
    dtypes = sorted({tensors[k].dtype.name for k in names})
    flat = tf.concat([s for d in dtypes for s in tf.shape_n(
        [tensors[k] for k in names if tensors[k].dtype.name == d], out_type=tf.int32)], 0)
    ranks = [tensors[k].shape.rank for k in names]
    starts = [sum(ranks[:i]) for i in range(len(names) + 1)]
    rows = tf.gather(flat, starts[:-1])
    ok = tf.reduce_all(tf.equal(rows, rows[0]))
    data = [ROWS_MESSAGE + ". Inputs:", tf.constant(names), "dimension 0:", rows]
    if same_shape:
        a, b = (names.index(k) for k in same_shape)
        dims_a, dims_b = flat[starts[a]:starts[a + 1]], flat[starts[b]:starts[b + 1]]
        ok = tf.logical_and(ok, tf.reduce_all(tf.equal(dims_a, dims_b)))
        data += [f"{same_shape[0]} shape:", dims_a, f"{same_shape[1]} shape:", dims_b]
    check = tf.debugging.Assert(ok, data, summarize=len(names))
    # The signature's fixed dimensions (e.g. K and M of a user state): TF Serving passes
    # any shape of the right rank through, and a state with K and M swapped was scored
    # (after compiling a new shape under XLA).
    # (position in `flat`, static size, input) of every fixed dimension after dimension 0
    fixed = [(starts[j] + a, d, k) for j, k in enumerate(names)
             for a, d in enumerate(tensors[k].shape.as_list()) if a and d is not None]
    if fixed:
        got = tf.gather(flat, [i for i, _, _ in fixed])
        want = tf.constant([d for _, d, _ in fixed], tf.int32)
        owner = [k for _, _, k in fixed]
        bad = tf.not_equal(got, want)
        checks = [*checks, tf.debugging.Assert(tf.logical_not(tf.reduce_any(bad)), [
            "request inputs must have the signature fixed dimensions. Inputs:",
            tf.boolean_mask(tf.constant(owner), bad)[:4], "got", tf.boolean_mask(got, bad)[:4],
            "expected", tf.boolean_mask(want, bad)[:4]])]
    with tf.control_dependencies([check, *checks]):
        return tf.identity(rows[0])


def pad_rows(tensors: Dict[str, tf.Tensor], rows: tf.Tensor,
             size: tf.Tensor) -> Dict[str, tf.Tensor]:
    """Zero-pads dimension 0 of every tensor from `rows` (their common dimension 0,
    `shared_rows`) up to `size` (zeros = padding ids / empty rows); one paddings
    tensor per rank, shared by the inputs of that rank."""
    first = tf.reshape(tf.stack([0, size - rows]), [1, 2])        # [[0, extra]]
    paddings, out = {}, {}
    for k, x in tensors.items():
        rank = x.shape.rank
        if rank not in paddings:
            paddings[rank] = (first if rank == 1 else
                              tf.concat([first, tf.zeros([rank - 1, 2], tf.int32)], 0))
        out[k] = tf.pad(x, paddings[rank])
        out[k].set_shape([None] + x.shape[1:])     # a computed paddings tensor hides it
    return out


class _Untracked:
    """Plain attribute holder: what a tf.Module keeps here is not saved with it."""

    def __init__(self, **attrs):
        self.__dict__.update(attrs)


class ServingModule(tf.Module):
    """A Keras 3 ranking model + lookup tables with the signatures above.

    Args:
      model: built Keras 3 `RankingModel` (TF backend); `encode_user`/`score` methods
        (DMGIN, DGIN) enable `rank`'s user-once split and the `user_state`/`score`
        pair; other models get `rank` by tiling the history over the candidates.
      tables: `LookupTables` for `serving_default`, or None to omit that signature.
      history_length: L of the model input.
      jit_compile: trace the model math with XLA (`tf.function(jit_compile=True)`).
      batch_buckets, candidate_buckets: padded sizes (see module docstring).
      contract: the vocabulary sizes the signatures check ids against
        (`input_checks`); None checks only that inputs share dimension 0.
    """

    def __init__(self, model, tables: Optional[LookupTables], history_length: int,
                 jit_compile: bool, batch_buckets: Sequence[int] = (1, 8, 32, 128),
                 candidate_buckets: Sequence[int] = (16, 64, 128, 512),
                 state_groups: int = 128, state_items: int = 512,
                 contract: Optional[Contract] = None):
        super().__init__(name="dmgin_serving")
        # The SavedModel tracks only the variables (as keras.export.ExportArchive does),
        # the lookup tables and the signatures. The Keras model and the core
        # tf.functions stay untracked: tracked, `tf.saved_model.save` retraced the
        # model (Keras' default save signature) and every core function once more
        # while walking the object graph — a third of the export time.
        self._untracked = _Untracked(model=model)
        self.model_variables = list(model.variables)
        self.tables = tables
        self.contract = contract
        self.history_length = int(history_length)
        self.jit_compile = bool(jit_compile)
        self.batch_buckets = tuple(sorted(int(b) for b in batch_buckets))
        self.candidate_buckets = tuple(sorted(int(b) for b in candidate_buckets))
        self.has_user_split = hasattr(model, "encode_user") and hasattr(model, "score")
        # Models that split scoring into a user-state part and a candidate part (DMGIN):
        # `rank` compiles them as two clusters TensorFlow runs side by side.
        self.has_parts = (self.has_user_split and hasattr(model, "candidate_features")
                          and hasattr(model, "user_features"))
        # The complete user state + `score_cached` (K groups, I items in its lookup tables).
        self.has_cached = self.has_user_split and hasattr(model, "score_cached")
        self.state_groups, self.state_items = int(state_groups), int(state_items)
        self.state_version = model.state_version() if self.has_cached else None
        # autograph off: the model math is keras.ops (control flow via ops.cond /
        # while_loop, as on JAX), and converting every layer's source cost ~20 s per export.
        core = lambda fn: tf.function(fn, jit_compile=self.jit_compile or None,  # noqa: E731
                                      autograph=False)
        self._untracked.ctr = core(self._ctr)
        self._untracked.rank = core(self._rank)
        self._untracked.user_state = core(self._user_state)
        self._untracked.score = core(self._score)
        self._untracked.candidate_features = core(self._candidate_features)
        self._untracked.user_side = core(self._user_side)
        self._untracked.score_cached = core(self._score_cached)

    @property
    def model(self):
        return self._untracked.model

    # ---- model math (XLA-compiled in the XLA variant) -------------------------------------
    def _ctr(self, inputs):
        return tf.reshape(self.model(inputs, training=False), [-1])

    def _user_state(self, history):
        if self.has_cached:
            return self.model.user_state(history, self.state_groups, self.state_items,
                                         state_version=self.state_version, training=False)
        return dict(self.model.encode_user(history, training=False))

    def _score_cached(self, state, request_time, cand_item, cand_group):
        """state: [U, ...]; cand_*: [U, N] → ctr [U, N], no history."""
        return self.model.score_cached(
            state, {F.CAND_ITEM: cand_item, F.CAND_GROUP: cand_group,
                    F.REQUEST_TIME: request_time},
            training=False, state_version=self.state_version)

    def _candidate_features(self, history, cand_item, cand_group):
        """What scoring needs of the candidates without the user state
        (`model.candidate_features`), [U, N, ...]."""
        return self.model.candidate_features(
            dict(history, **{F.CAND_ITEM: cand_item, F.CAND_GROUP: cand_group}), training=False)

    def _rank(self, history, cand_item, cand_group):
        """history: keys [U, L] / [U]; cand_*: [U, N] → ctr [U, N] (models without the
        user/candidate split: the history repeats per candidate)."""
        n = tf.shape(cand_item)[1]  # no split: the history repeats per candidate
        tiled = {k: tf.repeat(v, n, axis=0) for k, v in history.items()}
        ctr = self._ctr(dict(tiled, **{F.CAND_ITEM: tf.reshape(cand_item, [-1]),
                                       F.CAND_GROUP: tf.reshape(cand_group, [-1])}))
        return tf.reshape(ctr, tf.shape(cand_item))

    def _user_side(self, history, cand_item, cand_group):
        """encode_user + the scoring part that reads the user state
        (`model.user_features`), [U, N, ...]: all of `rank`'s work that waits for the
        user state, in one cluster."""
        inputs = dict(history, **{F.CAND_ITEM: cand_item, F.CAND_GROUP: cand_group})
        return self.model.user_features(self.model.encode_user(history, training=False),
                                        inputs)

    def _score(self, state, history, cand_item, cand_group, candidate_features=None,
               user_features=None):
        """state/history: [U, ...]; cand_*: [U, N] → ctr [U, N]. The model scores N
        candidates per user with one pass over each user's history. With both feature
        dicts given only the MLP head is left (state may be None)."""
        inputs = dict(history, **{F.CAND_ITEM: cand_item, F.CAND_GROUP: cand_group})
        if candidate_features is None:
            return self.model.score(state, inputs, training=False)
        return self.model.score(state, inputs, training=False,
                                candidate_features=candidate_features,
                                user_features=user_features)

    def _split_score(self, state, history, cand_item, cand_group):
        """`score` of padded inputs as separately compiled parts: the candidate features
        (history lookups + the candidate-group attention) do not depend on the user
        state, so TensorFlow's executor runs them on the second core while the user side
        runs (in `rank`: encode_user + target attention; in `score`: target attention),
        then a small cluster runs the MLP head on both."""
        if not self.has_parts:
            if state is None:
                state = self._untracked.user_state(history)
            return self._untracked.score(state, history, cand_item, cand_group)
        cand = self._untracked.candidate_features(history, cand_item, cand_group)
        user = (self._untracked.user_side(history, cand_item, cand_group) if state is None
                else None)  # a given state: target attention runs in the score cluster
        return self._untracked.score(state, history, cand_item, cand_group, cand, user)

    # ---- input checks and padding ----------------------------------------------------------
    def _checked_rows(self, tensors, same_shape=()):
        """`shared_rows` of a signature's inputs, after the contract's value checks and,
        with the vocabularies, the item → group check."""
        checks = list(contract_checks(tensors, self.contract) if self.contract else ())
        if self.tables is not None:
            checks += self._group_checks(tensors)
        return shared_rows(tensors, same_shape, checks)

    def _group_checks(self, tensors):
        """A known item's group must be its group in this model's item table (the one
        `serving_default` looks up): a request pairing items with other groups (another
        catalog version, a client-side bug) was scored as if they belonged there. Padding
        and the OOV item (a new item, whose group the client knows) are not checked."""
        table = self.tables.group_of_idx
        checks = []
        for item_key, group_key in ((F.HIST_ITEM, F.HIST_GROUP), (F.CAND_ITEM, F.CAND_GROUP)):
            if item_key not in tensors or group_key not in tensors:
                continue
            item, group = tensors[item_key], tensors[group_key]
            # Clipped: an id outside the vocabulary fails the contract's own check.
            idx = tf.clip_by_value(item, 0, tf.shape(table, out_type=item.dtype)[0] - 1)
            expected = tf.cast(tf.gather(table, idx), group.dtype)
            bad = tf.logical_and(item >= F.NUM_RESERVED_IDS, tf.not_equal(group, expected))
            checks.append(tf.debugging.Assert(tf.logical_not(tf.reduce_any(bad)), [
                # (no apostrophes: the Assert message is quoted with escapes)
                f"input {group_key}: the group of a known item must be the one of the "
                f"item table of this model (the OOV item 1 may carry any group)", "items",
                tf.boolean_mask(item, bad)[:3], "got", tf.boolean_mask(group, bad)[:3],
                "expected", tf.boolean_mask(expected, bad)[:3]]))
        return checks

    def _padded_ctr(self, inputs):
        n = self._checked_rows(inputs, (F.CAND_ITEM, F.CAND_GROUP))
        ctr = self._untracked.ctr(pad_rows(inputs, n, bucket_size(n, self.batch_buckets)))
        return {F.PREDICTION: ctr[:n]}

    def _pad_users(self, tensors, cand_item, cand_group):
        """Users padded to a batch bucket, candidates [U, N] to a candidate bucket."""
        u = self._checked_rows(
            dict(tensors, **{F.CAND_ITEM: cand_item, F.CAND_GROUP: cand_group}),
            (F.CAND_ITEM, F.CAND_GROUP))
        n = tf.shape(cand_item)[1]
        us = bucket_size(u, self.batch_buckets)
        ns = bucket_size(n, self.candidate_buckets)
        cand = tf.reshape(tf.stack([0, us - u, 0, ns - n]), [2, 2])
        return pad_rows(tensors, u, us), tf.pad(cand_item, cand), tf.pad(cand_group, cand), u, n

    # ---- signatures ---------------------------------------------------------------------------
    def tensorize(self, examples: tf.Tensor) -> Dict[str, tf.Tensor]:
        """Serialized serving tf.Examples `[B]` → the `predict_raw` inputs (ids)."""
        return parse_serving_examples(examples, self.tables, self.history_length)

    def example_signatures(self) -> Dict[str, tf.types.experimental.ConcreteFunction]:
        """`serving_default` (tf.Examples → ctr) and `tensorize` (tf.Examples → the
        id inputs the other signatures take), both through `self.tensorize`."""
        spec = [tf.TensorSpec([None], tf.string, EXAMPLES)]

        @tf.function(autograph=False, input_signature=spec)
        def serving_default(examples):
            return self._padded_ctr(self.tensorize(examples))

        @tf.function(autograph=False, input_signature=spec)
        def tensorize(examples):
            # The request contract as `serving_default` checks it (TF Serving runs no
            # checks of its own): the ids a client keeps must be ids the model accepts.
            ids = self.tensorize(examples)
            n = self._checked_rows(ids, (F.CAND_ITEM, F.CAND_GROUP))
            return {k: v[:n] for k, v in ids.items()}
        return {"serving_default": serving_default.get_concrete_function(),
                "tensorize": tensorize.get_concrete_function()}

    def signatures(self) -> Dict[str, tf.types.experimental.ConcreteFunction]:
        """Concrete functions for `tf.saved_model.save(..., signatures=...)`."""
        L = self.history_length
        hist_b = history_specs(L, None)
        cand_b = {F.CAND_ITEM: tf.TensorSpec([None], tf.int32, F.CAND_ITEM),
                  F.CAND_GROUP: tf.TensorSpec([None], tf.int32, F.CAND_GROUP)}
        cand_un = {F.CAND_ITEM: tf.TensorSpec([None, None], tf.int32, F.CAND_ITEM),
                   F.CAND_GROUP: tf.TensorSpec([None, None], tf.int32, F.CAND_GROUP)}
        sigs = {}

        @tf.function(autograph=False, input_signature=[dict(hist_b, **cand_b)])
        def predict_raw(inputs):
            return self._padded_ctr(inputs)
        sigs["predict_raw"] = predict_raw.get_concrete_function()

        if self.tables is not None:
            sigs.update(self.example_signatures())
        else:  # no vocabularies: the raw signature is the default one
            sigs["serving_default"] = sigs["predict_raw"]

        @tf.function(autograph=False, input_signature=[dict(hist_b, **cand_un)])
        def rank(inputs):
            history, ci, cg, u, n = self._pad_users({k: inputs[k] for k in hist_b},
                                                    inputs[F.CAND_ITEM], inputs[F.CAND_GROUP])
            if self.has_user_split:
                ctr = self._split_score(None, history, ci, cg)
            else:
                ctr = self._untracked.rank(history, ci, cg)
            return {F.PREDICTION: ctr[:u, :n]}
        sigs["rank"] = rank.get_concrete_function()

        if self.has_user_split:
            @tf.function(autograph=False, input_signature=[hist_b])
            def user_state(history):
                n = self._checked_rows(history)
                state = self._untracked.user_state(
                    pad_rows(history, n, bucket_size(n, self.batch_buckets)))
                return {k: v[:n] for k, v in state.items()}
            sigs["user_state"] = user_state.get_concrete_function()

            probe = self._untracked.user_state.get_concrete_function(hist_b).structured_outputs
            full_b = {k: tf.TensorSpec(v.shape, v.dtype, k) for k, v in probe.items()}
            state_b = {k: full_b[k] for k in score_state_keys(full_b)}

            @tf.function(autograph=False, input_signature=[dict(state_b, **hist_b, **cand_un)])
            def score(inputs):
                tensors = {k: inputs[k] for k in list(hist_b) + list(state_b)}
                tensors, ci, cg, u, n = self._pad_users(tensors, inputs[F.CAND_ITEM],
                                                        inputs[F.CAND_GROUP])
                history = {k: tensors[k] for k in hist_b}
                state = {k: tensors[k] for k in state_b}
                ctr = self._split_score(state, history, ci, cg)
                return {F.PREDICTION: finite_scores(ctr, "score")[:u, :n]}
            sigs["score"] = score.get_concrete_function()

        if self.has_cached:
            rt_b = {F.REQUEST_TIME: hist_b[F.REQUEST_TIME]}

            @tf.function(autograph=False, input_signature=[dict(full_b, **rt_b, **cand_un)])
            def score_cached(inputs):
                version = inputs[STATE_VERSION]
                stale = tf.boolean_mask(version, tf.not_equal(version, self.state_version))
                check = tf.debugging.Assert(
                    tf.size(stale) == 0,
                    [STALE_STATE_MESSAGE, "(state_version", stale[:1], "this model",
                     tf.constant(self.state_version, tf.int32), ")"])
                # The check gates the candidates, which every score depends on (not
                # each of the ~25 inputs: an Identity per input costs the executor).
                with tf.control_dependencies([check]):
                    cand_item = tf.identity(inputs[F.CAND_ITEM])
                tensors = {k: inputs[k] for k in list(full_b) + list(rt_b)}
                tensors, ci, cg, u, n = self._pad_users(tensors, cand_item,
                                                        inputs[F.CAND_GROUP])
                state = {k: tensors[k] for k in full_b}
                # One cluster: split like `rank` (candidate side ∥ user side → head) it
                # measured slower — three calls' overhead exceeds ~2 ms of work.
                ctr = self._untracked.score_cached(state, tensors[F.REQUEST_TIME], ci, cg)
                return {F.PREDICTION: finite_scores(ctr, "score_cached")[:u, :n]}
            sigs["score_cached"] = score_cached.get_concrete_function()
        return sigs
