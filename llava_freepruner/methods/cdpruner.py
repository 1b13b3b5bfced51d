"""CDPruner: instruction-conditioned diversity by a conditional DPP.

Paper: Zhang et al., "Beyond Attention or Similarity: Maximizing Conditional
Diversity for Token Pruning in MLLMs", arXiv 2506.10967. Official code:
github.com/Theia-4869/CDPruner, commit 9541616, read in
``llava/model/llava_arch.py::LlavaMetaForCausalLM.encode_images`` and
``llava/model/multimodal_encoder/clip_encoder.py::CLIPVisionTower.forward``
(text segments, image embeddings).

Per crop with budget K:

1. Similarity S = cosine between the patches **after the projector** (fp32).
2. Relevance: patches embedded by CLIP's ``visual_projection(post_layernorm(.))``
   and the instruction by the CLIP text tower of the same checkpoint (cut into
   77-token segments when longer); rel = mean over segments of the **negated**
   cosine (the official sign), min-max normalised: (rel - min + 1e-6) / (max - min).
3. Kernel L = diag(rel) S diag(rel); the fast greedy MAP of the DPP (Chen et al.
   2018) picks K patches; they go to the LLM in raster order.

Differences from the official code: relevance is normalised per crop over its
valid patches (the official code normalises over the whole batch, coupling the
samples); every crop of a LLaVA-NeXT image is pruned on its own with the image's
instruction (official drops unpadding); the instruction is read back from the
prompt (see ``instruction.py``); when the kernel's rank runs out before K
picks (gain not above 0, possible only when K exceeds the feature width or
among duplicates) the remaining picks go by relevance instead of failing.
With a budget at or above the crop's valid patches every patch is kept (no text
tower is loaded then).
"""

from __future__ import annotations

from typing import List, Optional

import torch

from .. import clip_text
from .base import Selection, SelectionContext, VisionMethod, make_selection


def relevance(image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
    """(n,) min-max normalised negated mean cosine of each patch to the text segments."""
    image = image_embeds / image_embeds.norm(dim=-1, keepdim=True)
    text = text_embeds / text_embeds.norm(dim=-1, keepdim=True)
    rel = (-(image @ text.T)).mean(dim=-1)
    return (rel - rel.min() + 1e-6) / (rel.max() - rel.min())


def dpp_greedy(kernel: torch.Tensor, count: int, fallback: torch.Tensor) -> torch.Tensor:
    """``count`` indices by fast greedy MAP inference on ``kernel`` (n, n), in pick order.

    ``fallback`` (n,) orders the rest once no pick adds a positive gain."""
    n = kernel.shape[0]
    rows = torch.zeros(count, n, dtype=kernel.dtype, device=kernel.device)
    gains = torch.diagonal(kernel).clone()
    picks: List[int] = []
    for i in range(count):
        best = int(torch.argmax(gains))
        if not gains[best] > 0:
            break
        picks.append(best)
        row = (kernel[best] - rows[:i, best] @ rows[:i]) / torch.sqrt(gains[best])
        rows[i] = row
        gains -= row.square()
        gains[best] = -torch.inf
    if len(picks) < count:
        free = torch.ones(n, dtype=torch.bool, device=kernel.device)
        free[picks] = False
        rest = free.nonzero().flatten()
        rest = rest[torch.sort(fallback[rest], descending=True, stable=True).indices]
        picks += rest[: count - len(picks)].tolist()
    return torch.tensor(picks, dtype=torch.long, device=kernel.device)


def conditional_dpp(projected: torch.Tensor, rel: torch.Tensor, count: int) -> torch.Tensor:
    """Indices of ``count`` tokens of ``projected`` (n, dim) weighted by ``rel`` (n,)."""
    normed = projected.float()
    normed = normed / normed.norm(dim=-1, keepdim=True)
    kernel = rel[:, None] * (normed @ normed.T) * rel[None, :]
    return dpp_greedy(kernel, count, rel)


class CDPruner(VisionMethod):
    name = "cdpruner"
    needs_hidden = True
    needs_instruction = True

    def __init__(self, text_source: Optional[str] = None):
        self.text_source = text_source      # FREEPRUNER_CLIP_TEXT; None: the vision tower's checkpoint
        self._clip: Optional[clip_text.ClipText] = None

    @classmethod
    def from_config(cls, config) -> "CDPruner":
        return cls(config.clip_text)

    def clip(self, ctx: SelectionContext) -> clip_text.ClipText:
        if self._clip is None:
            self._clip = clip_text.load(self.text_source or ctx.tower_name, ctx.hidden.device)
        elif self._clip.device != ctx.hidden.device:
            self._clip.to(ctx.hidden.device)
        return self._clip

    def select(self, ctx: SelectionContext) -> List[Selection]:
        selections = []
        for sample, request in enumerate(ctx.requests):
            candidates = ctx.candidates(sample, ctx.hidden.device)
            pool = candidates.nonzero().flatten()
            budget = ctx.budgets()[sample]
            if budget >= pool.numel():
                selections.append(make_selection(pool))
                continue
            if request.instruction is None:
                raise ValueError("FREEPRUNER_METHOD=cdpruner selects by the instruction, and this crop came "
                                 "without one (the prompt's text does not reach the vision tower here)")
            clip = self.clip(ctx)
            rel = relevance(clip.embed_patches(ctx.patches()[sample][pool]), clip.embed_text(request.instruction))
            chosen = conditional_dpp(ctx.projected()[sample][pool].to(rel.device), rel, budget)
            selections.append(make_selection(pool[chosen.to(pool.device)]))
        return selections
