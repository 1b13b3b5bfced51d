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
[CLS] row is this [CLS]: it is not fed twice and still counts toward K. Where the
host feeds its [CLS] itself outside the crop budget (Video-LLaVA's video frames:
``SelectionContext.host_keeps_prefix``), that [CLS] is this one too: the split is
made for K = budget + 1 and only the patches and contextual tokens are returned.
On a pooled model (LLaVA-NeXT-Video, OneVision videos) the same runs on cells:
a cell's feature and key are the pooling-weighted means of its patches'.
Merging runs in fp32 and is cast back to the tower's dtype. Crops that share
their budget and number of valid patches are pruned together, in one batched pass.
"""

from __future__ import annotations

import math
from typing import Dict, List, Tuple

import torch

from .base import AttentionView, ClsAttentionMethod, Selection, SelectionContext, descending, gather_rows, raster_heads


def split_budget(budget: int) -> Tuple[int, int]:
    """(dominant, contextual) for a budget of ``budget`` LLM tokens: 54+10 at 64."""
    contextual = math.floor(5 * budget / 32 + 0.5)
    return budget - contextual, contextual


def contextual_targets(remaining: int, count: int) -> slice:
    """Which of the ``remaining`` patches (raster order) the contextual tokens grow from:
    0, s, 2s, ... (``count`` of them, fewer only when the patches run out)."""
    step = max(1, remaining // count)
    return slice(0, step * count, step)


def merge_contextual(hidden: torch.Tensor, keys: torch.Tensor, count: int) -> torch.Tensor:
    """The ``count`` contextual tokens from the remaining patches of every crop.

    hidden: (crops, R, dim) features and keys: (crops, R, head_dim) head-mean
    keys of the remaining patches in raster order. Returns (crops, targets, dim)
    fp32 (targets = ``count``, fewer only when R < ``count``).
    """
    remaining = hidden.shape[1]
    targets = list(range(remaining))[contextual_targets(remaining, count)]
    chosen = set(targets)
    others = [i for i in range(remaining) if i not in chosen]
    targets, others = (torch.tensor(i, dtype=torch.long).to(hidden.device, non_blocking=True) for i in (targets, others))
    normed = keys / keys.norm(dim=-1, keepdim=True)
    assign = (normed[:, others] @ normed[:, targets].transpose(1, 2)).argmax(dim=2)      # (crops, R - T) target slot
    dim = hidden.shape[2]
    sums = torch.zeros(hidden.shape[0], targets.numel(), dim, dtype=torch.float32, device=hidden.device)
    sums.scatter_add_(1, assign[:, :, None].expand(-1, -1, dim), hidden[:, others].float())
    joined = torch.zeros(hidden.shape[0], targets.numel(), dtype=torch.float32, device=hidden.device)
    joined.scatter_add_(1, assign, torch.ones_like(assign, dtype=torch.float32))
    return hidden[:, targets].float() + sums / joined.clamp(min=1)[:, :, None]


class VisionZip(ClsAttentionMethod):
    name = "visionzip"
    needs_hidden = True

    def observe(self, layer: int, view: AttentionView, ctx: SelectionContext) -> None:
        super().observe(layer, view, ctx)
        ctx.state["keys"] = view.mean_keys()[:, ctx.num_prefix:]

    def select(self, ctx: SelectionContext) -> List[Selection]:
        order = descending(ctx.state["cls_attention"], ctx.candidate_mask(ctx.state["cls_attention"].device))
        chosen: Dict[int, Selection] = {}
        for budget, valid, crops in ctx.groups():     # the split and the merge depend on both
            chosen.update(zip(crops, self._select_group(ctx, order, budget, valid, crops)))
        return [chosen[crop] for crop in range(len(ctx.requests))]

    def _select_group(self, ctx: SelectionContext, order: torch.Tensor, budget: int, valid: int,
                      crops: List[int]) -> List[Selection]:
        """The selections of crops that share their budget and valid patch count."""
        rows = ctx.rows_of(crops, order.device)
        if budget >= valid:                      # passed through unchanged
            return [Selection(kept) for kept in raster_heads(order[rows], [valid] * len(crops))]
        has_cls = ctx.num_prefix > 0
        dominant, contextual = split_budget(budget + int(ctx.host_keeps_prefix))
        kept = raster_heads(order[rows], [dominant - int(has_cls)] * len(crops))
        prefix = ctx.hidden[rows, :1] if has_cls and not ctx.host_keeps_prefix else [None] * len(crops)
        if contextual == 0:
            return [Selection(k, prefix=p) for k, p in zip(kept, prefix)]
        # the remaining candidates, in raster order, after the dominant ones
        rest = order[rows, kept.shape[1]:valid].sort(dim=1).values
        hidden = ctx.patches()[rows]
        keys = ctx.state["keys"][rows].to(hidden.device)
        merged = merge_contextual(gather_rows(hidden, rest), gather_rows(keys, rest), contextual).to(hidden.dtype)
        targets = rest[:, contextual_targets(rest.shape[1], contextual)]
        return [Selection(k, prefix=p, merged=m, merged_at=t) for k, p, m, t in zip(kept, prefix, merged, targets)]
