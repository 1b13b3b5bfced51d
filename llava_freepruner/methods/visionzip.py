"""VisionZip: dominant tokens by [CLS] attention, contextual tokens merged from the rest.

Paper: Yang et al., "VisionZip: Longer is Better but Not Necessary in Vision
Language Models", arXiv 2412.04467 (CVPR 2025). Official code:
github.com/dvlab-research/VisionZip, commit 3151f6d, read in
``visionzip/clip_encoder.py::CLIPVisionTower_VisionZip.forward`` (selection and
merging) and ``visionzip/utils.py::CLIPAttention_forward`` (the head-mean keys).

At the feature layer f (``mm_vision_select_layer``, 22 of 24 on CLIP-L):

1. Dominant: [CLS] plus the ``dominant - 1`` patches the [CLS] query attends to
   most (attention summed over heads; the head mean ranks the same).
2. Contextual: the R remaining patches in raster order; ``C`` targets at
   positions ``0, s, 2s, ...`` with ``s = max(1, R // C)``; every other remaining
   patch joins the target whose head-mean key is most similar (cosine); a
   contextual token = the target's feature + the mean of the features that
   joined it (nothing added when none did).
3. The LLM sees [CLS], the dominant patches in raster order, then the contextual
   tokens, all through the projector.

Our budget K counts every token the LLM sees, [CLS] included: the official
settings 54+10, 108+20, 162+30 are K = 64, 128, 192, and for any K the split
keeps the official 27:5 proportion: ``contextual = round(5K/32)``,
``dominant = K - contextual``. When K reaches the crop's valid patches the crop is
passed through unchanged (no [CLS] added, nothing merged), so ratio 1.0 equals the
unpatched model. A tower without [CLS] (SigLIP) ranks patches by the attention
they receive from all queries and has no [CLS] to keep (all ``dominant`` slots
go to patches). With ``mm_vision_select_feature = cls_patch`` the model's own
[CLS] row is this [CLS]: it is not fed twice and still counts toward K.
Merging runs in fp32 and is cast back to the tower's dtype.
"""

from __future__ import annotations

import math
from typing import List, Tuple

import torch

from .base import AttentionView, ClsAttentionMethod, Selection, SelectionContext, make_selection, ranked


def split_budget(budget: int) -> Tuple[int, int]:
    """(dominant, contextual) for a budget of ``budget`` LLM tokens: 54+10 at 64."""
    contextual = math.floor(5 * budget / 32 + 0.5)
    return budget - contextual, contextual


def merge_contextual(hidden: torch.Tensor, keys: torch.Tensor, count: int) -> torch.Tensor:
    """The ``count`` contextual tokens from the remaining patches.

    hidden: (R, dim) features and keys: (R, head_dim) head-mean keys of the
    remaining patches in raster order. Returns (count, dim) fp32.
    """
    remaining = hidden.shape[0]
    step = max(1, remaining // count)
    targets = torch.arange(0, remaining, step, device=hidden.device)[:count]
    is_target = torch.zeros(remaining, dtype=torch.bool, device=hidden.device)
    is_target[targets] = True
    normed = keys / keys.norm(dim=-1, keepdim=True)
    others = (~is_target).nonzero().flatten()
    assign = (normed[others] @ normed[targets].T).argmax(dim=1)          # (R - count,) target slot
    sums = torch.zeros(count, hidden.shape[1], dtype=torch.float32, device=hidden.device)
    sums.index_add_(0, assign, hidden[others].float())
    joined = torch.bincount(assign, minlength=count).clamp(min=1).unsqueeze(1)
    return hidden[targets].float() + sums / joined


class VisionZip(ClsAttentionMethod):
    name = "visionzip"
    needs_hidden = True

    def observe(self, layer: int, view: AttentionView, ctx: SelectionContext) -> None:
        super().observe(layer, view, ctx)
        ctx.state["keys"] = view.mean_keys()[:, ctx.num_prefix:]

    def select(self, ctx: SelectionContext) -> List[Selection]:
        return [self._select_crop(ctx, sample) for sample in range(len(ctx.requests))]

    def _select_crop(self, ctx: SelectionContext, sample: int) -> Selection:
        keys, cls_attention = ctx.state["keys"][sample], ctx.state["cls_attention"][sample]
        candidates = ctx.candidates(sample, keys.device)
        budget = ctx.budgets()[sample]
        if budget >= int(candidates.sum()):
            return make_selection(candidates.nonzero().flatten())
        hidden = ctx.patches()[sample]
        dominant, contextual = split_budget(budget)
        has_cls = ctx.num_prefix > 0
        kept = ranked(cls_attention, candidates)[:dominant - int(has_cls)]
        prefix = ctx.hidden[sample, :1] if has_cls else None
        if contextual == 0:
            return make_selection(kept, prefix=prefix)
        rest = candidates.clone()
        rest[kept] = False
        rest = rest.nonzero().flatten().to(hidden.device)
        merged = merge_contextual(hidden[rest], keys[rest.to(keys.device)].to(hidden.device), contextual)
        return make_selection(kept, prefix=prefix, merged=merged.to(hidden.dtype))
