"""`score_cached` vs `score` (= `rank`) on real histories under the current Keras backend.

Run as `KERAS_BACKEND=jax python tests/serving/cached_state_probe.py`; prints one JSON line {model: max abs difference} and, per model, whether a state
of another version was refused.
"""
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/


def compare(model_name, length=48, users=4, candidates=12, **overrides):
    import keras
    from dmgin_tf import features as F
    from dmgin_tf.config import ModelConfig
    from dmgin_tf.models import build_model
    from dmgin_tf.models.cached_state import STATE_VERSION, StaleUserStateError
    from serving.real_histories import candidate_lists, taobao_examples

    x, items, groups = taobao_examples(users, length)
    cfg = ModelConfig(model=model_name, item_vocab_size=items, group_vocab_size=groups,
                      history_length=length, max_groups=8, max_per_group=4, embedding_dim=8,
                      mlp_units=(16,), attention_units=(8,), dropout=0.0, **overrides)
    model = build_model(cfg)
    if keras.backend.backend() != "tensorflow":  # JAX: times are int32 (x64 off)
        x = {k: v.astype(np.int32) for k, v in x.items()}
    model(x)
    rng = np.random.default_rng(0)
    for table in (model.context.item_table, model.context.group_table):
        table.assign(rng.normal(size=table.shape).astype("float32"))
    ci, cg = candidate_lists(x, candidates)
    hist = {k: x[k] for k in F.HISTORY_INPUT_KEYS + (F.REQUEST_TIME,)}
    ref = np.asarray(model.score(model.encode_user(hist),
                                 dict(hist, **{F.CAND_ITEM: ci, F.CAND_GROUP: cg})))
    state = model.user_state(hist, max_lookup_groups=length, max_lookup_items=length)
    got = np.asarray(model.score_cached(state, {F.CAND_ITEM: ci, F.CAND_GROUP: cg,
                                                F.REQUEST_TIME: x[F.REQUEST_TIME]}))
    stale = dict(state, **{STATE_VERSION: np.asarray(state[STATE_VERSION]) + 1})
    try:
        model.score_cached(stale, {F.CAND_ITEM: ci, F.CAND_GROUP: cg})
        refused = False
    except StaleUserStateError:
        refused = True
    return float(np.abs(got - ref).max()), refused, float(ref.std())


def main():
    import keras
    out = {name: compare(name) for name in ("dmgin", "dgin")}
    print(json.dumps({"backend": keras.backend.backend(), "models": out}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
