"""VisPruner: important tokens by [CLS] attention, then diverse tokens by similarity removal.

Paper: Zhang et al., "Beyond Text-Visual Attention: Exploiting Visual Cues for
Effective Token Pruning in VLMs", arXiv 2412.01818 (ICCV 2025). Official code:
github.com/Theia-4869/VisPruner, commit aefa01a, read in
``llava/model/llava_arch.py::LlavaMetaForCausalLM.encode_images`` and
``llava/model/multimodal_encoder/clip_encoder.py::CLIPVisionTower.feature_select``.

Per crop, with budget K and ``important_ratio`` r (official default 0.5):

1. Importance: the [CLS] query's attention to each patch at the feature layer,
   averaged over heads. The top ``int(K * r)`` patches are kept; the others stay
   candidates, in descending importance.
2. Diverse: while more than ``K - int(K * r)`` candidates remain, drop
   ``min(8, surplus)`` of them: split the list into even and odd positions, score
   each even one by its highest cosine to any odd one (feature-layer features,
   pre-projector), drop the highest-scoring evens; the new list is the kept evens
   (descending score) followed by the odds.
3. Kept patches go to the projector in raster order.

Differences from the official code: it fails to broadcast when the candidate list
has odd length (``R // 2`` is used where the even half has ``ceil(R / 2)``
entries); here the even half's real size is used. Ties in both rankings go to
the lower index (stable sorts). Cosines run in fp32. A tower without [CLS] ranks
importance by the attention each patch receives from all queries. With a budget
at or above the crop's valid patches every patch is kept. Crops that share their
budget and number of valid patches are pruned together, in one batched pass.
"""

from __future__ import annotations

from typing import Dict, List

import torch

from .base import ClsAttentionMethod, Selection, SelectionContext, descending, gather_rows, raster_heads

IMPORTANT_RATIO = 0.5
DROP_PER_ROUND = 8


def remove_duplicates(features: torch.Tensor, candidates: torch.Tensor, keep: int) -> torch.Tensor:
    """Shrink the ordered ``candidates`` (crops, R) patch indices to ``keep`` per
    crop by even/odd matching, every crop of the batch at once.

    features: (crops, num_patches, dim) L2-normalised. Returns (crops, keep)
    surviving indices in list order.
    """
    while keep > 0:
        drop = min(DROP_PER_ROUND, candidates.shape[1] - keep)
        if drop <= 0:
            break
        evens, odds = candidates[:, 0::2], candidates[:, 1::2]
        similar = gather_rows(features, evens) @ gather_rows(features, odds).transpose(1, 2)
        survivors = torch.sort(similar.max(dim=2).values, dim=1, descending=True, stable=True).indices[:, drop:]
        candidates = torch.cat([evens.gather(1, survivors), odds], dim=1)
    return candidates


class VisPruner(ClsAttentionMethod):
    name = "vispruner"
    needs_hidden = True

    def __init__(self, important_ratio: float = IMPORTANT_RATIO):
        self.important_ratio = important_ratio

    def select(self, ctx: SelectionContext) -> List[Selection]:
        scores = ctx.state["cls_attention"]
        order = descending(scores, ctx.candidate_mask(scores.device))
        chosen: Dict[int, Selection] = {}
        for budget, valid, crops in ctx.groups():     # the rounds depend on budget and valid count
            ranking = order[ctx.rows_of(crops, scores.device)]
            kept = raster_heads(self._keep(ctx, ranking, budget, valid, crops), [budget] * len(crops))
            chosen.update(zip(crops, (Selection(k) for k in kept)))
        return [chosen[crop] for crop in range(len(ctx.requests))]

    def _keep(self, ctx: SelectionContext, ranking: torch.Tensor, budget: int, valid: int,
              crops: List[int]) -> torch.Tensor:
        """(crops, budget) kept patches of crops that share their budget and valid count."""
        important = int(budget * self.important_ratio)
        if budget >= valid or budget == important:
            return ranking[:, :budget]
        features = ctx.patches()[ctx.rows_of(crops, ranking.device)].float()
        features = features / features.norm(dim=-1, keepdim=True)
        diverse = remove_duplicates(features, ranking[:, important:valid], budget - important)
        return torch.cat([ranking[:, :important], diverse], dim=1)
