"""Custom TFX components of the DMGIN pipeline (docs/design.md: Architecture and data flow).

    MultimodalEncoder  items of a span -> EncoderModel + ItemEmbeddings
    ItemGrouper        ItemEmbeddings (+ previous ItemGroups) -> ItemGroups (stable ids)
    ExampleBuilder     behaviors of a span + ItemGroups -> Examples (train/val/eval, span)
    ValidationGate     ExampleValidator anomalies -> fail the run with a readable report
"""
from tfx_pipeline.components.example_builder import ExampleBuilder
from tfx_pipeline.components.item_grouper import ItemGrouper
from tfx_pipeline.components.multimodal_encoder import MultimodalEncoder
from tfx_pipeline.components.validation_gate import ValidationGate

__all__ = ["ExampleBuilder", "ItemGrouper", "MultimodalEncoder", "ValidationGate"]
