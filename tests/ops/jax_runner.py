"""Runs the grouping ops under the JAX backend (jax.jit) — a subprocess helper for tests.

Usage: KERAS_BACKEND=jax python jax_runner.py IN.npz OUT.npz KWARGS_JSON
IN holds the history arrays (histories.HISTORY_KEYS + cand_group); OUT gets every field
of both outputs, prefixed `g.` (group_behaviors) and `c.` (candidate_group_history).
The Keras backend is fixed per process, hence the subprocess.
"""
import json
import os
import sys

os.environ["KERAS_BACKEND"] = "jax"


def main(inp, out, kwargs_json):
    import jax
    import keras
    import numpy as np

    assert keras.backend.backend() == "jax", keras.backend.backend()
    from dmgin_tf.ops import candidate_group_history, group_behaviors, kernels

    if os.environ.get("DMGIN_TEST_CHUNK_ELEMENTS"):      # exercise the row-chunk loop
        kernels.XLA_CPU_CHUNK_ELEMENTS = int(os.environ["DMGIN_TEST_CHUNK_ELEMENTS"])

    kw = json.loads(kwargs_json)
    data = dict(np.load(inp))
    keys = ("hist_item", "hist_group", "hist_behavior", "hist_time", "request_time")
    args = [data[k] for k in keys]

    grouped = jax.jit(lambda *a: group_behaviors(*a, **kw)._asdict())(*args)
    cand_kw = {k: kw[k] for k in ("max_per_group", "num_behavior_types", "num_groups")
               if k in kw}
    cand = jax.jit(lambda *a: candidate_group_history(*a, **cand_kw)._asdict())(
        *args, data["cand_group"])
    result = {f"g.{k}": np.asarray(v) for k, v in grouped.items()}
    result.update({f"c.{k}": np.asarray(v) for k, v in cand.items()})
    np.savez(out, **result)
    print("devices:", jax.devices())


if __name__ == "__main__":
    main(*sys.argv[1:4])
