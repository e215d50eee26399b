"""ItemGrouper: item embeddings (or an item attribute) -> item -> interest group table.

Grouping keys (`grouping.key` of `dmgin_tf.config.GroupingConfig`):

* ``cluster``  – k-means over the item embeddings in Beam (`transform.grouping.kmeans`).
  With a previous `ItemGroups` (resolved from MLMD by the pipeline) the new centroids are
  matched to the old ones (Hungarian, `stable_ids`), so group ids keep their meaning for
  a warm-started model; with ``refit=False`` the old centroids are kept and only new
  items are assigned to the nearest one (`assign_new_items`, no refit).
* ``category`` / ``item_id`` – one group per distinct value (DGIN when item_id); used for
  datasets without text (Taobao, MultimodalEncoder mode ``skip``). Stable ids: values
  already numbered by the previous ItemGroups keep their id, new values get new ids.

Output (`ItemGroups` uri): ``item_groups.parquet`` (``item_id`` str, ``group_id`` int64,
2.. = groups; 1 = unknown, 0 = padding, docs/internals.md), ``group_keys.json`` (key value
-> id, key=category/item_id), ``centroids.npy`` (cluster), ``grouping.json`` and the
report (``report.md`` + ``group_sizes.png``, `transform.grouping.report`).
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any, Dict, List, Optional

import numpy as np

from tfx import types
from tfx.dsl.components.base import base_beam_component, base_beam_executor, executor_spec
from tfx.types.component_spec import ChannelParameter, ExecutionParameter

from dmgin_tf import features as F
from dmgin_tf.config import GroupingConfig
from dmgin_tf.errors import DataError
from tfx_pipeline.artifacts import (SPAN, CENTROIDS_FILE, GROUPING_INFO_FILE, GROUPS_FILE, ItemEmbeddings,
                                    ItemGroups, grouping_info)
from tfx_pipeline.components.common import beam_config, check_parameters, require_span_dir

GROUP_KEYS_FILE = "group_keys.json"
FIRST_GROUP_ID = F.NUM_RESERVED_IDS  # cluster c -> group id c + 2
_LOG = logging.getLogger(__name__)


class ItemGrouperSpec(types.ComponentSpec):
    PARAMETERS = {
        "data_root": ExecutionParameter(type=str),
        "span": ExecutionParameter(type=int),
        "grouping_config": ExecutionParameter(type=str),
        "refit": ExecutionParameter(type=int),
        "beam_config": ExecutionParameter(type=str, optional=True),
    }
    INPUTS = {
        "item_embeddings": ChannelParameter(type=ItemEmbeddings, optional=True),
        "previous_groups": ChannelParameter(type=ItemGroups, optional=True),
    }
    OUTPUTS = {"item_groups": ChannelParameter(type=ItemGroups)}


def key_groups(items, key: str, previous: Optional[Dict[str, int]]) -> Dict[str, int]:
    """Value of `key` -> group id (2..): previous ids kept, new values numbered after them
    in order of first appearance (so the result is deterministic)."""
    mapping = dict(previous or {})
    next_id = max(mapping.values(), default=FIRST_GROUP_ID - 1) + 1
    for value in items[key].fillna("").astype(str):
        if value not in mapping:
            mapping[value] = next_id
            next_id += 1
    return mapping


class Executor(base_beam_executor.BaseBeamExecutor):
    """Fits (or extends) the grouping; see the module docstring."""

    def Do(self, input_dict: Dict[str, List[types.Artifact]],
           output_dict: Dict[str, List[types.Artifact]],
           exec_properties: Dict[str, Any]) -> None:
        import pandas as pd
        cfg = GroupingConfig.from_dict(json.loads(exec_properties["grouping_config"]))
        span = int(exec_properties["span"])
        refit = bool(exec_properties.get("refit", 1))
        out = output_dict["item_groups"][0]
        out.set_int_custom_property(SPAN, span)
        os.makedirs(out.uri, exist_ok=True)
        data_dir = require_span_dir(exec_properties["data_root"], span, ("items.parquet",))
        items = pd.read_parquet(os.path.join(data_dir, "items.parquet"))
        previous = (input_dict.get("previous_groups") or [None])[0]
        # `grouping.key` the previous span's groups were made with (None: unknown / none)
        previous_key = grouping_info(previous.uri).get("key") if previous is not None else None
        if previous is not None and previous_key not in (None, cfg.key):
            # Ids of another key (category ids vs item ids) mean other groups: keeping
            # them would put an item whose id equals an old category into that group.
            _LOG.warning("ItemGrouper: grouping.key changed from %r to %r; the groups are "
                         "numbered afresh (the previous span's ids are not kept)",
                         previous_key, cfg.key)
            previous = None
        info: Dict[str, Any] = {"key": cfg.key, "span": span, "refit": refit,
                                "previous": previous.uri if previous is not None else None}
        if previous_key not in (None, cfg.key):
            info["previous_key"] = previous_key
        if cfg.key == "cluster":
            table = self._cluster(cfg, input_dict, exec_properties, previous, refit, out.uri, info)
        elif cfg.key in ("category", "item_id"):
            key = F.CATEGORY if cfg.key == "category" else F.ITEM_ID
            prev_keys = None
            if previous is not None and os.path.exists(os.path.join(previous.uri, GROUP_KEYS_FILE)):
                with open(os.path.join(previous.uri, GROUP_KEYS_FILE), encoding="utf-8") as f:
                    prev_keys = json.load(f)
            mapping = key_groups(items, key, prev_keys)
            with open(os.path.join(out.uri, GROUP_KEYS_FILE), "w", encoding="utf-8") as f:
                json.dump(mapping, f)
            table = pd.DataFrame({
                F.ITEM_ID: items[F.ITEM_ID].astype(str),
                "group_id": items[key].fillna("").astype(str).map(mapping).astype(np.int64)})
            info["kept_ids"] = len(prev_keys or {})
            info["new_ids"] = len(mapping) - len(prev_keys or {})
        else:
            raise DataError(f"grouping.key={cfg.key!r} is not supported by the ItemGrouper "
                            f"(cluster, category, item_id)")
        table.to_parquet(os.path.join(out.uri, GROUPS_FILE), index=False)
        info.update(items=int(len(table)), groups=int(table["group_id"].nunique()),
                    max_group_id=int(table["group_id"].max()) if len(table) else 1)
        with open(os.path.join(out.uri, GROUPING_INFO_FILE), "w", encoding="utf-8") as f:
            json.dump(info, f, indent=1, default=str)
        from transform.grouping.report import write_report
        write_report(out.uri, table, items, title=f"Interest grouping ({cfg.key}, span {span})",
                     facts={k: v for k, v in info.items() if not isinstance(v, (dict, list))})
        _LOG.info("ItemGrouper: %s", info)

    def _cluster(self, cfg, input_dict, exec_properties, previous, refit, out_uri, info):
        import pandas as pd
        from transform import beam_io
        from transform.embedding import embeddings_table_path
        from transform.grouping import kmeans
        embs = input_dict.get("item_embeddings") or []
        if not embs or embs[0].get_int_custom_property("skipped"):
            raise DataError("grouping.key=cluster needs item embeddings; the MultimodalEncoder "
                            "ran with mode=skip (use grouping.key=category for data without text)")
        table_path = embeddings_table_path(embs[0].uri)
        beam_cfg = beam_config(exec_properties, self._beam_pipeline_args)
        old = None
        if previous is not None and os.path.exists(os.path.join(previous.uri, CENTROIDS_FILE)):
            old = np.load(os.path.join(previous.uri, CENTROIDS_FILE))
        work = os.path.join(out_uri, "kmeans")
        if old is not None and not refit:
            kmeans.assign_new_items(table_path, old, os.path.join(work, kmeans.GROUPS_DIR), beam_cfg)
            centroids = old
            info["assigned_to_previous_centroids"] = True
        else:
            result = kmeans.fit_kmeans(table_path, cfg, beam_cfg, work, previous_centroids=old)
            centroids = result.centroids
            info.update(iterations=result.iterations, inertia=result.inertia,
                        stable_ids_from_previous=old is not None)
        np.save(os.path.join(out_uri, CENTROIDS_FILE), centroids)
        groups = beam_io.read_parquet_table(os.path.join(work, kmeans.GROUPS_DIR)).to_pandas()
        return pd.DataFrame({F.ITEM_ID: groups[F.ITEM_ID].astype(str),
                             "group_id": groups[kmeans.GROUP_ID].astype(np.int64) + FIRST_GROUP_ID})


class ItemGrouper(base_beam_component.BaseBeamComponent):
    """TFX component: item -> group table with stable ids across retrains."""

    SPEC_CLASS = ItemGrouperSpec
    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(Executor)

    def __init__(self, data_root: str, span: int, grouping_config: dict,
                 item_embeddings: Optional[types.BaseChannel] = None,
                 previous_groups: Optional[types.BaseChannel] = None, refit: bool = True,
                 beam_config_json: str = ""):
        """
        Args:
          data_root: holds ``span-<N>/`` (`tfx_pipeline.runner.prepare_span`).
          span: the span whose catalog is grouped.
          grouping_config: `GroupingConfig` fields as a dict (`cfg.grouping.to_dict()`).
          item_embeddings: the MultimodalEncoder's embeddings (grouping key `cluster`).
          previous_groups: an earlier ItemGroups artifact whose group ids stay stable.
          refit: k-means refit (True) or assign new items to the previous centroids.
          beam_config_json: `BeamConfig` fields as JSON; "" uses the pipeline's Beam args.

        Raises:
          ConfigError: a config parameter that does not parse (checked when the
            pipeline is built).
        """
        check_parameters("ItemGrouper", grouping_config=grouping_config,
                         beam_config_json=beam_config_json)
        spec = ItemGrouperSpec(
            data_root=data_root, span=int(span),
            grouping_config=json.dumps(grouping_config, sort_keys=True), refit=int(refit),
            beam_config=beam_config_json, item_embeddings=item_embeddings,
            previous_groups=previous_groups, item_groups=types.Channel(type=ItemGroups))
        super().__init__(spec=spec)
