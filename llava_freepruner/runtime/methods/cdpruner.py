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

from typing import Dict, List, Optional

import torch

from .. import clip_text
from .base import Selection, SelectionContext, VisionMethod, descending, per_crop, raster_heads


def relevance(image_embeds: torch.Tensor, text_embeds: torch.Tensor,
              candidates: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(crops, n) negated mean cosine of each patch to the text segments,
    min-max normalised over each crop's candidates.

    image_embeds: (crops, n, dim); text_embeds: (segments, dim), the same text for every crop."""
    image = image_embeds / image_embeds.norm(dim=-1, keepdim=True)
    text = text_embeds / text_embeds.norm(dim=-1, keepdim=True)
    rel = (-(image @ text.T)).mean(dim=-1)
    low = rel if candidates is None else rel.masked_fill(~candidates, float("inf"))
    high = rel if candidates is None else rel.masked_fill(~candidates, float("-inf"))
    low, high = low.min(dim=1, keepdim=True).values, high.max(dim=1, keepdim=True).values
    return (rel - low + 1e-6) / (high - low)


def dpp_greedy(kernel: torch.Tensor, count: int, fallback: torch.Tensor,
               candidates: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Fast greedy MAP inference on ``kernel`` (crops, n, n) for every crop at
    once, on the device: (crops, n) priorities whose descending order is the
    pick order (a crop stops picking once no pick adds a positive gain), then
    the rest by ``fallback`` (crops, n), which lies in (0, 1]."""
    crops, n = fallback.shape
    rows = torch.zeros(crops, count, n, dtype=kernel.dtype, device=kernel.device)
    gains = torch.diagonal(kernel, dim1=1, dim2=2).clone()
    if candidates is not None:
        gains = gains.masked_fill(~candidates, float("-inf"))
    priority = fallback.clone()
    picking = torch.ones(crops, dtype=torch.bool, device=kernel.device)
    for i in range(count):
        best = torch.argmax(gains, dim=1)
        gain = gains.gather(1, best[:, None])[:, 0]
        picking = picking & (gain > 0)
        scale = torch.where(picking, gain, torch.ones_like(gain)).sqrt()
        earlier = rows[:, :i].gather(2, best[:, None, None].expand(-1, i, 1)).transpose(1, 2)   # (crops, 1, i)
        row = (kernel.gather(1, best[:, None, None].expand(-1, 1, n)) - earlier @ rows[:, :i])[:, 0] / scale[:, None]
        row = row * picking[:, None]        # a crop that stopped picking changes nothing more
        rows[:, i] = row
        gains = (gains - row.square()).scatter(
            1, best[:, None], torch.where(picking, float("-inf"), gain)[:, None])
        # picks rank above every fallback value, earlier picks higher
        priority = priority.scatter(1, best[:, None], torch.where(
            picking, float(2 + count - i), priority.gather(1, best[:, None])[:, 0])[:, None])
    return priority


def conditional_dpp(projected: torch.Tensor, rel: torch.Tensor, count: int,
                    candidates: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(crops, n) priorities of the tokens of ``projected`` (crops, n, dim)
    weighted by ``rel`` (crops, n): the first ``count`` in descending order are CDPruner's."""
    normed = projected.float()
    normed = normed / normed.norm(dim=-1, keepdim=True)
    kernel = rel[:, :, None] * (normed @ normed.transpose(1, 2)) * rel[:, None, :]
    return dpp_greedy(kernel, count, rel, candidates)


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
        budgets = ctx.budgets()
        device = ctx.hidden.device
        candidates = ctx.candidate_mask(device)
        priority = torch.empty(len(budgets), ctx.num_patches, device=device)
        by_text: Dict[Optional[str], List[int]] = {}
        for crop, request in enumerate(ctx.requests):
            by_text.setdefault(request.instruction, []).append(crop)
        for text, crops in by_text.items():     # one pass per distinct instruction
            if text is None:
                raise ValueError("FREEPRUNER_METHOD=cdpruner selects by the instruction, and this crop came "
                                 "without one (the prompt's text does not reach the vision tower here)")
            rows = ctx.rows_of(crops, device)
            mine = None if candidates is None else candidates[rows]
            clip = self.clip(ctx)
            rel = relevance(clip.embed_patches(ctx.patches()[rows]), clip.embed_text(text), mine)
            priority[rows] = conditional_dpp(ctx.projected()[rows].to(rel.device), rel,
                                             max(budgets[c] for c in crops), mine).to(device)
        kept = raster_heads(descending(priority, candidates), budgets)
        return [Selection(indices) for indices in per_crop(kept, budgets)]
