"""Resolver strategies of the pipeline.

`PreviousSpanStrategy`: the newest artifact whose `span` is *below* the current run's
span — the ItemGroups the ItemGrouper keeps ids stable against. Restricting it to
earlier spans (rather than "latest") keeps a re-run of the same span cacheable: its
inputs resolve to the same artifacts as the first run of that span.
"""
from __future__ import annotations

from typing import Dict, List, Optional

from tfx import types
from tfx.dsl.components.common import resolver


def _span(artifact: types.Artifact) -> int:
    """The int custom property `span` (-1 when absent: such artifacts sort first)."""
    if artifact.has_custom_property("span"):
        return int(artifact.get_int_custom_property("span"))
    return -1


class PreviousSpanStrategy(resolver.ResolverStrategy):
    """Newest artifact (by span, then id) with span < `span`; empty when none."""

    def __init__(self, span: int):
        self._span = int(span)

    def resolve_artifacts(self, store, input_dict: Dict[str, List[types.Artifact]]
                          ) -> Optional[Dict[str, List[types.Artifact]]]:
        out = {}
        for key, artifacts in input_dict.items():
            earlier = [a for a in artifacts if _span(a) < self._span]
            earlier.sort(key=lambda a: (_span(a), a.id))
            out[key] = earlier[-1:]
        return out
