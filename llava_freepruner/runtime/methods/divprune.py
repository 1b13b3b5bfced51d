"""DivPrune: max-min diversity selection over the visual tokens.

Paper: Alvar et al., "DivPrune: Diversity-based Visual Token Pruning for Large
Multimodal Models", arXiv 2503.02175 (CVPR 2025). Official code:
github.com/vbdi/divprune, commit 799e2d9, read in
``LLaVA/llava/model/llava_arch.py::LlavaMetaForCausalLM.DivPrune`` (and its call
in ``prepare_inputs_labels_for_multimodal``).

Distance D = 1 - cosine between tokens. The first token is the one whose
nearest other token is farthest (the second-smallest entry of its column of D,
the smallest being its own zero); each next token maximises its minimum
distance to the tokens already chosen (farthest-point sampling), until K tokens
are chosen; they go to the LLM in raster order.

Like the official code, tokens are compared **after the projector** (the
embeddings the LLM receives): the method projects every patch once and the
kept rows are taken from that projection, not projected again. Where there is
no projector (a bare ViT in the fidelity report) the feature-layer patches are
used. Differences from the official code, which prunes batch element 0 at a
hard-coded offset of 35 prompt tokens in fp16 and, on LLaVA-NeXT, over the whole
anyres sequence with its newlines: here every crop of every sample is pruned on
its own, among its valid patches, in fp32, all crops of a call in one loop on
the device; a chosen token is never chosen twice (the official loop could repeat
one only among exact duplicates).
"""

from __future__ import annotations

from typing import List, Optional

import torch

from .base import Selection, SelectionContext, VisionMethod, per_crop, raster_heads


def cosine_distance(features: torch.Tensor) -> torch.Tensor:
    """(crops, n, n) fp32 matrices of 1 - cosine between the rows of ``features`` (crops, n, dim)."""
    normed = features.float()
    normed = normed / normed.norm(dim=-1, keepdim=True)
    return 1.0 - normed @ normed.transpose(-1, -2)


def max_min_diverse(distance: torch.Tensor, count: int, candidates: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(crops, count) row indices chosen greedily by max-min distance, in choice
    order, for every crop at once and on the device (no per-choice read-back).

    distance: (crops, n, n); candidates: (crops, n) bool or None (all). A crop
    with fewer candidates than ``count`` repeats choices past its candidates."""
    if candidates is not None:      # only candidates count as neighbours, only they can be chosen
        distance = distance.masked_fill(~candidates[:, :, None], float("inf"))
    score = torch.topk(distance, 2, dim=1, largest=False).values[:, 1]     # second smallest per column
    if candidates is not None:
        score = score.masked_fill(~candidates, float("-inf"))
    chosen = torch.empty(distance.shape[0], count, dtype=torch.long, device=distance.device)
    for step in range(count):
        best = torch.argmax(score, dim=1)       # the first of equal maxima, as a host loop would take
        chosen[:, step] = best
        # minimum distance to the chosen set, kept up to date one row at a time
        row = distance.gather(1, best[:, None, None].expand(-1, 1, distance.shape[2]))[:, 0]
        if step == 0:
            score = row if candidates is None else row.masked_fill(~candidates, float("-inf"))
        else:
            score = torch.minimum(score, row)
        score = score.scatter(1, best[:, None], float("-inf"))
    return chosen


class DivPrune(VisionMethod):
    name = "divprune"
    needs_hidden = True

    def select(self, ctx: SelectionContext) -> List[Selection]:
        tokens = ctx.projected()
        budgets = ctx.budgets()
        candidates = ctx.candidate_mask(tokens.device)
        chosen = max_min_diverse(cosine_distance(tokens), max(budgets, default=0), candidates)
        return [Selection(indices) for indices in per_crop(raster_heads(chosen, budgets), budgets)]
