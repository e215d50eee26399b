"""MultimodalEncoder: the catalog of a span -> item encoder + item embeddings.

Modes (`mode` exec property):

* ``train``    – trains the CLIP-style encoder of `transform.encoder` on the span's
  ``items.parquet`` (`train_encoder`, config from `encoder_config` JSON), saves it
  (`save_encoder`) into the `encoder` artifact, then embeds the catalog with Beam
  RunInference (`transform.embedding.embed_catalog`) into `item_embeddings`.
* ``external`` – the user's own embeddings (Parquet/TFRecord item_id -> vector, e.g. from
  their multimodal LLM) at `external_embeddings`, validated and imported
  (`import_external_embeddings`); `encoder` stays empty.
* ``skip``     – datasets without item text (Taobao): both artifacts stay empty and carry
  ``skipped=1``; the ItemGrouper then groups by a key such as category.

Beam runs through `BeamExecutorSpec` with our runner selection (`beam_config`).
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any, Dict, List, Optional

from tfx import types
from tfx.dsl.components.base import base_beam_component, base_beam_executor, executor_spec
from tfx.types.component_spec import ChannelParameter, ExecutionParameter

from tfx_pipeline.artifacts import SPAN, EncoderModel, ItemEmbeddings
from tfx_pipeline.components.common import beam_config, check_parameters, require_span_dir

MODES = ("train", "external", "skip")
SKIPPED = "skipped"   # custom property: 1 when the artifact holds nothing (mode skip)
_LOG = logging.getLogger(__name__)


class MultimodalEncoderSpec(types.ComponentSpec):
    PARAMETERS = {
        "data_root": ExecutionParameter(type=str),
        "span": ExecutionParameter(type=int),
        "mode": ExecutionParameter(type=str),
        "external_embeddings": ExecutionParameter(type=str, optional=True),
        "encoder_config": ExecutionParameter(type=str, optional=True),
        "beam_config": ExecutionParameter(type=str, optional=True),
    }
    INPUTS = {}
    OUTPUTS = {
        "encoder": ChannelParameter(type=EncoderModel),
        "item_embeddings": ChannelParameter(type=ItemEmbeddings),
    }


class Executor(base_beam_executor.BaseBeamExecutor):
    """Runs one of the modes above; records the span and `skipped` on both outputs."""

    def Do(self, input_dict: Dict[str, List[types.Artifact]],
           output_dict: Dict[str, List[types.Artifact]],
           exec_properties: Dict[str, Any]) -> None:
        mode = exec_properties["mode"]
        span = int(exec_properties["span"])
        encoder_art = output_dict["encoder"][0]
        emb_art = output_dict["item_embeddings"][0]
        for art in (encoder_art, emb_art):
            art.set_int_custom_property(SPAN, span)
            art.set_int_custom_property(SKIPPED, int(mode == "skip"))
        report: Dict[str, Any] = {"mode": mode, "span": span}
        if mode == "skip":
            _LOG.info("MultimodalEncoder: mode=skip, no embeddings for span %d", span)
        elif mode == "external":
            from transform.embedding import import_external_embeddings
            path = exec_properties.get("external_embeddings") or ""
            if not path:
                raise ValueError("MultimodalEncoder: mode=external needs external_embeddings=PATH")
            report.update(import_external_embeddings(path, emb_art.uri, normalize=True))
        elif mode == "train":
            report.update(self._train_and_embed(exec_properties, span, encoder_art.uri,
                                                emb_art.uri))
        else:
            raise ValueError(f"MultimodalEncoder: mode={mode!r}; expected one of {list(MODES)}")
        os.makedirs(emb_art.uri, exist_ok=True)
        with open(os.path.join(emb_art.uri, "component.json"), "w", encoding="utf-8") as f:
            json.dump(report, f, indent=1, default=str)

    def _train_and_embed(self, exec_properties, span: int, encoder_uri: str, emb_uri: str):
        import pandas as pd
        from transform.embedding import embed_catalog
        from transform.encoder import EncoderConfig, save_encoder, train_encoder
        data_dir = require_span_dir(exec_properties["data_root"], span, ("items.parquet",))
        items_path = os.path.join(data_dir, "items.parquet")
        cfg = EncoderConfig.from_dict(json.loads(exec_properties.get("encoder_config") or "{}"))
        encoder, summary = train_encoder(pd.read_parquet(items_path), cfg)
        version_dir = save_encoder(encoder, encoder_uri)
        embed_report = embed_catalog(items_path, str(version_dir), emb_uri,
                                     beam_config(exec_properties, self._beam_pipeline_args))
        return {"encoder_version_dir": str(version_dir), "training": summary,
                "embedding": embed_report}


class MultimodalEncoder(base_beam_component.BaseBeamComponent):
    """TFX component: trains/imports item embeddings for a span (module docstring)."""

    SPEC_CLASS = MultimodalEncoderSpec
    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(Executor)

    def __init__(self, data_root: str, span: int, mode: str = "train",
                 external_embeddings: str = "", encoder_config: Optional[dict] = None,
                 beam_config_json: str = ""):
        """
        Args:
          data_root: holds ``span-<N>/`` (`tfx_pipeline.runner.prepare_span`).
          span: the span whose catalog is embedded.
          mode: one of `MODES` (train | external | skip | auto, module docstring).
          external_embeddings: Parquet/TFRecord embeddings for mode `external`.
          encoder_config: `EncoderConfig` fields as a dict.
          beam_config_json: `BeamConfig` fields as JSON; "" uses the pipeline's Beam args.

        Raises:
          ValueError / ConfigError: an unknown mode or a config parameter that does not
            parse (checked when the pipeline is built).
        """
        if mode not in MODES:
            raise ValueError(f"MultimodalEncoder: mode={mode!r}; expected one of {list(MODES)}")
        check_parameters("MultimodalEncoder", encoder_config=encoder_config,
                         beam_config_json=beam_config_json)
        spec = MultimodalEncoderSpec(
            data_root=data_root, span=int(span), mode=mode,
            external_embeddings=external_embeddings,
            encoder_config=json.dumps(encoder_config or {}, sort_keys=True),
            beam_config=beam_config_json,
            encoder=types.Channel(type=EncoderModel),
            item_embeddings=types.Channel(type=ItemEmbeddings))
        super().__init__(spec=spec)
