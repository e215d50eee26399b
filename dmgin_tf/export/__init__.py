"""Export: the TF SavedModel with the serving signatures (XLA-compiled grouping), the
in-graph request checks, warmup records and the export contract (`dmgin export`, the TFX
Trainer)."""
