"""The oracle: the same number of visual tokens, at no selection cost.

It keeps the first K valid patches in raster order: no attention is captured
and choosing costs one sort for all crops. Which tokens it keeps is irrelevant to
speed, so its times are the floor a method with budget K can reach. It is
not a user-facing method: the benchmark installs it (see ``swap``).
"""

from __future__ import annotations

from typing import List

import torch

from ...runtime.methods.base import SelectionContext, Selection, VisionMethod, keep_top

NAME = "oracle"


class FirstK(VisionMethod):
    name = NAME

    def select(self, ctx: SelectionContext) -> List[Selection]:
        first = -torch.arange(ctx.num_patches, device=ctx.device, dtype=torch.float32)
        return keep_top(first.expand(len(ctx.requests), -1), ctx)
