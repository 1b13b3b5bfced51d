"""The oracle: the same number of visual tokens, at no selection cost.

It keeps the first K valid patches in raster order: no attention is captured
and choosing costs one ``arange``. Which tokens it keeps is irrelevant to
speed, so its times are the floor a method with budget K can reach. It is
not a user-facing method: the benchmark installs it (see ``swap``).
"""

from __future__ import annotations

from typing import List

from ..methods.base import SelectionContext, Selection, VisionMethod, make_selection

NAME = "oracle"


class FirstK(VisionMethod):
    name = NAME

    def select(self, ctx: SelectionContext) -> List[Selection]:
        selections = []
        for sample, request in enumerate(ctx.requests):
            kept = ctx.candidates(sample, "cpu").nonzero().flatten()[: request.budget]
            selections.append(make_selection(kept))
        return selections
