"""Data: converters to canonical tables, dataset specs, example building, batching.

Kept import-light on purpose (no TensorFlow, no Beam): the GPU host imports these modules
with numpy/pandas/pyarrow only.
"""
