"""The one marked-block rewriter benchmarks use for docs/benchmarks.md, and provenance."""
from __future__ import annotations

import pytest

from dmgin_tf.docs_blocks import replace_block
from dmgin_tf.provenance import library_versions, machine_info


def test_block_replaced_in_place_prose_kept(tmp_path):
    page = tmp_path / "b.md"
    page.write_text("# B\n\nintro\n<!-- a:start -->\nold\n<!-- a:end -->\nafter\n<!-- b:start -->\nB\n<!-- b:end -->\n")
    replace_block(str(page), "<!-- a:start -->\nnew\n<!-- a:end -->")
    assert page.read_text() == ("# B\n\nintro\n<!-- a:start -->\nnew\n<!-- a:end -->\nafter\n"
                                "<!-- b:start -->\nB\n<!-- b:end -->\n")


def test_missing_block_is_appended_or_placed_by_the_caller(tmp_path):
    page = tmp_path / "b.md"
    page.write_text("# B\n\n## One\n\n## Two\n")
    replace_block(str(page), "<!-- a:start -->\nA\n<!-- a:end -->")
    assert page.read_text().endswith("## Two\n\n<!-- a:start -->\nA\n<!-- a:end -->\n")
    replace_block(str(page), "<!-- c:start -->\nC\n<!-- c:end -->",
                  append=lambda text, block: text.replace("## Two", block + "\n\n## Two"))
    assert "<!-- c:end -->\n\n## Two" in page.read_text()
    fresh = tmp_path / "sub" / "new.md"
    replace_block(str(fresh), "<!-- a:start -->\nA\n<!-- a:end -->")
    assert fresh.read_text().startswith("# Benchmarks\n")


def test_block_must_carry_its_markers(tmp_path):
    with pytest.raises(ValueError, match="must start with"):
        replace_block(str(tmp_path / "b.md"), "no markers", "<!-- a:start -->", "<!-- a:end -->")


def test_provenance_reads_metadata():
    v = library_versions("tensorflow")
    assert v["backend"] == "tensorflow" and v["keras"] and v["numpy"] and v["tensorflow"]
    assert "jax" not in v
    m = machine_info()
    assert m["cpu_count"] >= 1 and m["machine"]
