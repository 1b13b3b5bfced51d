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
its own, among its valid patches, in fp32; a chosen token is never chosen twice
(the official loop could repeat one only among exact duplicates).
"""

from __future__ import annotations

from typing import List

import torch

from .base import Selection, SelectionContext, VisionMethod, make_selection


def cosine_distance(features: torch.Tensor) -> torch.Tensor:
    """(n, n) fp32 matrix of 1 - cosine between the rows of ``features``."""
    normed = features.float()
    normed = normed / normed.norm(dim=1, keepdim=True)
    return 1.0 - normed @ normed.T


def max_min_diverse(distance: torch.Tensor, count: int) -> torch.Tensor:
    """``count`` row indices chosen greedily by max-min distance (in choice order)."""
    chosen = []
    score = torch.topk(distance, 2, dim=0, largest=False).values[1]     # second smallest per column
    for step in range(count):
        best = int(torch.argmax(score))
        chosen.append(best)
        # Minimum distance to the chosen set, kept up to date one row at a time.
        score = distance[best].clone() if step == 0 else torch.minimum(score, distance[best])
        score[best] = -torch.inf
    return torch.tensor(chosen, dtype=torch.long, device=distance.device)


class DivPrune(VisionMethod):
    name = "divprune"
    needs_hidden = True

    def select(self, ctx: SelectionContext) -> List[Selection]:
        tokens = ctx.projected()
        selections = []
        for sample in range(len(ctx.requests)):
            candidates = ctx.candidates(sample, tokens.device)
            pool = candidates.nonzero().flatten()
            budget = ctx.budgets()[sample]
            if budget >= pool.numel():
                selections.append(make_selection(pool))
                continue
            chosen = max_min_diverse(cosine_distance(tokens[sample][pool]), budget)
            selections.append(make_selection(pool[chosen]))
        return selections
