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
at or above the crop's valid patches every patch is kept.
"""

from __future__ import annotations

from typing import List

import torch

from .base import ClsAttentionMethod, Selection, SelectionContext, make_selection, ranked

IMPORTANT_RATIO = 0.5
DROP_PER_ROUND = 8


def remove_duplicates(features: torch.Tensor, candidates: torch.Tensor, keep: int) -> torch.Tensor:
    """Shrink the ordered ``candidates`` (patch indices) to ``keep`` by even/odd matching.

    features: (num_patches, dim) L2-normalised. Returns the surviving indices in list order.
    """
    while keep > 0:
        surplus = candidates.numel() - keep
        drop = min(DROP_PER_ROUND, surplus)
        if drop <= 0:
            break
        evens, odds = candidates[0::2], candidates[1::2]
        scores = (features[evens] @ features[odds].T).max(dim=1).values
        survivors = torch.sort(scores, descending=True, stable=True).indices[drop:]
        candidates = torch.cat([evens[survivors], odds])
    return candidates


class VisPruner(ClsAttentionMethod):
    name = "vispruner"
    needs_hidden = True

    def __init__(self, important_ratio: float = IMPORTANT_RATIO):
        self.important_ratio = important_ratio

    def select(self, ctx: SelectionContext) -> List[Selection]:
        selections = []
        for sample, cls_attention in enumerate(ctx.state["cls_attention"]):
            candidates = ctx.candidates(sample, cls_attention.device)
            budget = ctx.budgets()[sample]
            order = ranked(cls_attention, candidates)
            important = int(budget * self.important_ratio)
            if budget >= order.numel() or budget == important:
                selections.append(make_selection(order[:budget]))
                continue
            features = ctx.patches()[sample].float()
            features = features / features.norm(dim=-1, keepdim=True)
            diverse = remove_duplicates(features, order[important:].to(features.device), budget - important)
            selections.append(make_selection(torch.cat([order[:important], diverse.to(order.device)])))
        return selections
