"""Benchmark harness behind `dmgin bench` and `dmgin gpu`: the quality table (every
model, baseline and ablation under one protocol), its GPU job queue and bundle, and the
untrained popularity row. Not needed to train or serve a model."""
