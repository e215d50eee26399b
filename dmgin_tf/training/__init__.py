"""Training: the config-driven trainer (`trainer.train`), its data sources, callbacks,
optimizer schedules, search spaces and plots — used by `dmgin train`, the TFX Trainer's
`run_fn` and the quality benchmark."""
