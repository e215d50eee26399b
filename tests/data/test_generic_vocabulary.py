"""Users' own (generic) data from conversion to export: the behavior vocabulary the
converter recorded is the one examples, training, the pipeline and export use; data
converted as one dataset is not built as another; a catalog without categories is not
collapsed into one group."""
from __future__ import annotations

import pytest

from dmgin_tf.config import Config, DataConfig
from dmgin_tf.data.converters import convert
from dmgin_tf.data.datasets import get_spec
from dmgin_tf.data.examples import build_from_canonical
from dmgin_tf.errors import DataError

ROWS = ("user_id,item_id,behavior,timestamp\n"
        + "".join(f"u{u},i{(u + k) % 7},{('click', 'cart', 'order')[k % 3]},{1600000000 + 60 * k}\n"
                  for u in range(4) for k in range(8)))


@pytest.fixture
def converted(tmp_path):
    """Generic data converted with a declared vocabulary, not in sorted order, naming a
    type ("share") the data does not use yet."""
    raw = tmp_path / "behaviors.csv"
    raw.write_text(ROWS)
    out = tmp_path / "mine"
    convert("generic", str(raw), str(out), DataConfig(dataset="generic"),
            behavior_types=["order", "click", "cart", "share"], show_progress=False)
    return out


def test_the_converters_vocabulary_and_order_reach_the_examples(converted, tmp_path):
    es = build_from_canonical(converted, tmp_path / "ex", DataConfig(
        dataset="generic", positive_behaviors=("order",)), progress=False)
    # Ids follow the declared order (order = 1, click = 2, ...), not the sorted set seen.
    assert es.metadata["spec"]["behavior_types"] == ["order", "click", "cart", "share"]
    # A declared type the data does not use yet is still a type that labels may name.
    es = build_from_canonical(converted, tmp_path / "ex2", DataConfig(
        dataset="generic", positive_behaviors=("share", "order")), progress=False)
    assert es.metadata["spec"]["positive_behaviors"] == ["share", "order"]


def test_data_converted_as_generic_is_not_built_as_taobao(converted, tmp_path):
    with pytest.raises(DataError, match=r"converted as dataset 'generic'.*pass --dataset generic"):
        build_from_canonical(converted, tmp_path / "ex", DataConfig(dataset="taobao"),
                             progress=False)


def test_a_catalog_without_categories_is_not_one_group(converted, tmp_path):
    from dmgin_tf.training.data_source import effective_grouping_key, prepare_example_dir
    with pytest.raises(DataError, match=r"none of the 7 items has a category"):
        build_from_canonical(converted, tmp_path / "ex", DataConfig(
            dataset="generic", positive_behaviors=("order",)), grouping_key="category",
            progress=False)
    # The default key (cluster, no group table) falls back to item ids, and says why.
    cfg = Config.from_dict({"data": {"dataset": "generic", "positive_behaviors": ["order"]}})
    assert cfg.grouping.key == "cluster"
    assert effective_grouping_key(cfg, None) == "category"
    assert effective_grouping_key(cfg, None, str(converted)) == "item_id"
    log = []
    prepare_example_dir(cfg, str(converted), str(tmp_path / "w"), progress=False, log=log.append)
    assert any("using 'item_id' instead (the items have no category)" in m for m in log), log


def test_a_generic_runs_config_names_its_behavior_types(converted, tmp_path):
    """What `dmgin export` reads: without it, a generic run could not be exported."""
    from dmgin_tf.training.data_source import load_training_data
    from dmgin_tf.training.trainer import resolve_config
    cfg = Config.from_dict({"data": {"dataset": "generic", "positive_behaviors": ["order"]},
                            "grouping": {"key": "item_id"}})
    with pytest.raises(DataError, match="set data.behavior_types"):
        get_spec("generic", cfg.data)
    data = load_training_data(cfg, str(converted), str(tmp_path / "w"), progress=False,
                              log=lambda m: None)
    resolved = resolve_config(cfg, data)
    types = ("order", "click", "cart", "share")
    assert resolved.data.behavior_types == types
    assert get_spec("generic", resolved.data).behavior_types == types
    assert resolved.model.num_behavior_types == 4
    # A vocabulary the user set is kept as set.
    mine = cfg.apply_overrides({"data.behavior_types": ["order", "click", "cart", "share", "x"]})
    assert resolve_config(mine, data).data.behavior_types == types + ("x",)
