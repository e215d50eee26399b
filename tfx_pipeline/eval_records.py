"""The Evaluator reads the user records: each eval record is expanded into flat
tf.Examples inside TFMA, so no per-example copy of the eval split is ever stored.

TFMA scores one input per example through `serving_default` (serialized flat tf.Examples:
candidate + history). The ExampleBuilder's eval split holds one `tf.train.SequenceExample`
per user (O(behaviors)); this module is the Evaluator's UDF module
(`tfx.components.Evaluator(module_path="tfx_pipeline.eval_records")`): `custom_extractors`
puts `ExpandUserRecords` in front of TFMA's default extractors. Per batch of records it

  raw SequenceExamples [R]  ─expand_record─►  flat tf.Examples [Σ positions]
      ─(≤ `batch_size` per extract)─►  Arrow RecordBatch + raw-record column

which is exactly what TFMA gets from a TFRecord file of flat tf.Examples, so features,
labels, `serving_default` predictions, slicing and the GAUC metric (`user_id`) run
unchanged. History of a position = the record's newest `window` behaviors strictly before
it (`pos_hist_end`), `window` = min(data.max_history, model.history_length) of the
candidate model's training config — the histories the Trainer's batches cut
(`dmgin_tf.data.batches.densify`). The candidate's category is not part of a user record
and not read by the model: the expanded examples have no `category` feature.

Memory: one batch of records' examples at a time (O(positions × window) per extract, cut
into extracts of at most `batch_size` examples), instead of O(eval examples × window)
bytes on disk.
"""
from __future__ import annotations

import json
import os
from typing import Iterable, Iterator, List, Optional

import apache_beam as beam
import numpy as np

from dmgin_tf import features as F
from dmgin_tf.data.sequences import resolve_positions, steps_per_record
from dmgin_tf.errors import DataError
from tfx_pipeline.artifacts import WARM_START_DIR
from transform import examples as X

EXTRACTOR_STAGE = "ExpandUserRecords"
DEFAULT_BATCH_SIZE = 1024
# Training config the Trainer ships with the model (tfx_pipeline.module.run_fn; the file is
# dmgin_tf.training.trainer.CONFIG_FILE, not imported here: that module loads Keras).
_CONFIG = os.path.join("assets.extra", WARM_START_DIR, "config.json")


def model_window(cfg) -> int:
    """Behaviors a model reads per example: min(data.max_history, model.history_length)
    of a `Config` — what a split's record keeps before its first example and where the
    Evaluator cuts histories."""
    return int(min(cfg.data.max_history, cfg.model.history_length))


def expand_record(record: bytes, window: int) -> List[bytes]:
    """One serialized user record -> its labelled positions as serialized flat tf.Examples
    (`transform.examples.to_tf_example`; features `user_id`, `item_id`, `label`,
    `timestamp`, `group_id`, `hist_*`: the newest `window` behaviors before each
    position, oldest first). Positions keep their record order."""
    if window < 1:
        raise ValueError(f"expand_record: window must be >= 1, got {window}")
    user, lists = X.from_sequence_example(record)
    counts = steps_per_record([user], {k: [len(v)] for k, v in lists.items()})
    obj = lambda v: np.asarray(v, dtype=object)  # noqa: E731
    cand = resolve_positions(
        [user], *counts,
        {"item": obj(lists[X.SEQ_ITEM]), "group": obj(lists[X.SEQ_GROUP]),
         "time": obj(lists[X.SEQ_TIME])},
        lists[X.POS_HIST_END], lists[X.POS_EVENT], lists[X.POS_SAMPLED],
        {"item": obj(lists[X.SAMPLED_ITEM]), "group": obj(lists[X.SAMPLED_GROUP])})
    out = []
    for j, end in enumerate(lists[X.POS_HIST_END]):
        end = int(end)
        s = max(0, end - int(window))
        out.append(X.to_tf_example({
            F.USER_ID: user, F.ITEM_ID: cand["item"][j], F.LABEL: int(lists[X.POS_LABEL][j]),
            F.TIMESTAMP: int(cand["time"][j]), F.HIST_ITEM_ID: lists[X.SEQ_ITEM][s:end],
            F.HIST_BEHAVIOR: lists[X.SEQ_BEHAVIOR][s:end],
            F.HIST_TIMESTAMP: lists[X.SEQ_TIME][s:end],
            F.GROUP_ID: int(cand["group"][j]), F.HIST_GROUP_ID: lists[X.SEQ_GROUP][s:end]}))
    return out


def history_window(model_path: str) -> int:
    """min(data.max_history, model.history_length) of the model's training config
    (``<SavedModel>/assets.extra/dmgin_warmstart/config.json``)."""
    from dmgin_tf.config import Config
    path = os.path.join(model_path, _CONFIG)
    try:
        with open(path, encoding="utf-8") as f:
            values = json.load(f)
        if not {"data", "model"} <= set(values):
            raise KeyError("data / model sections")
        return model_window(Config.from_dict(values))
    except (OSError, KeyError, TypeError, ValueError) as e:
        raise DataError(f"{path}: no training config with data.max_history and "
                        f"model.history_length to cut evaluation histories ({e})") from e


class _ExpandBatchFn(beam.DoFn):
    """Extracts of a batch of user records -> extracts of their flat examples."""

    def __init__(self, window: int, batch_size: int):
        self._window, self._batch_size = int(window), int(batch_size)
        self._decoder = None

    def setup(self):
        from tfx_bsl.coders import example_coder
        self._decoder = example_coder.ExamplesToRecordBatchDecoder()

    def process(self, extracts) -> Iterator[dict]:
        import tensorflow_model_analysis as tfma
        from tfx_bsl.tfxio import record_based_tfxio
        batch = extracts[tfma.constants.ARROW_RECORD_BATCH_KEY]
        column = batch.column(batch.schema.get_field_index(tfma.constants.ARROW_INPUT_COLUMN))
        examples = [e for record in column.flatten().to_pylist()
                    for e in expand_record(record, self._window)]
        for start in range(0, len(examples), self._batch_size):
            chunk = examples[start:start + self._batch_size]
            decoded = record_based_tfxio.AppendRawRecordColumn(
                self._decoder.DecodeBatch(chunk), tfma.constants.ARROW_INPUT_COLUMN, chunk)
            yield {tfma.constants.ARROW_RECORD_BATCH_KEY: decoded}


def expand_user_records_extractor(window: int, batch_size: int = DEFAULT_BATCH_SIZE):
    """TFMA `Extractor`: batched extracts of user records -> batched extracts of flat
    tf.Examples (at most `batch_size` per extract). Must come before the features
    extractor."""
    import tensorflow_model_analysis as tfma
    return tfma.extractors.Extractor(
        stage_name=EXTRACTOR_STAGE,
        ptransform=beam.ParDo(_ExpandBatchFn(window, batch_size)))


def _candidate_model_path(eval_shared_model, eval_config) -> str:
    models = eval_shared_model if isinstance(eval_shared_model, list) else [eval_shared_model]
    baseline = {s.name for s in eval_config.model_specs if s.is_baseline} if eval_config else set()
    for m in models:
        if m.model_name not in baseline:
            return m.model_path
    raise DataError("Evaluator: no candidate model among the shared models")


def custom_extractors(eval_shared_model, eval_config, tensor_adapter_config=None):
    """The Evaluator's UDF (TFX `module_path`): `ExpandUserRecords` + TFMA's defaults.

    The flat examples are decoded without the records' schema (as a TFRecord file of
    flat tf.Examples would be), so `tensor_adapter_config` — built by the Evaluator from
    the *user records'* schema — is not passed on. The window comes from the candidate
    model: a baseline is scored on the same inputs.
    """
    import tensorflow_model_analysis as tfma
    del tensor_adapter_config
    window = history_window(_candidate_model_path(eval_shared_model, eval_config))
    return [expand_user_records_extractor(window)] + tfma.default_extractors(
        eval_shared_model=eval_shared_model, eval_config=eval_config)


def expand_records(records: Iterable[bytes], window: int, limit: Optional[int] = None) -> List[bytes]:
    """Flat tf.Examples of several records (in order), at most `limit` of them
    (e.g. real requests for a demo or a load test)."""
    out: List[bytes] = []
    for record in records:
        out.extend(expand_record(record, window))
        if limit is not None and len(out) >= limit:
            return out[:limit]
    return out


__all__ = ["custom_extractors", "expand_record", "expand_records", "history_window",
           "expand_user_records_extractor", "model_window"]
