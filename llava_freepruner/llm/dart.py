"""DART: duplication-aware token reduction inside the LLM, at decoder layer 2.

Paper: Wen et al., "Stop Looking for Important Tokens in Multimodal Language
Models: Duplication Matters More", arXiv 2502.11494. Official code:
github.com/ZichenWen1/DART; read in the fork xqy1111111/DART, commit d6a5af6,
``llava/model/language_model/modeling_llama_self.py::LlamaModel.get_retained_image_token``
(and the call before decoder layer K in ``LlamaModel.forward``), cross-checked
with LightCompress ``llmc/compression/token_reduction/dart.py``.

Before decoder layer K (2), during prefill, from the output of layer K-1:

1. Pivots: the 4 visual tokens and the 4 text tokens (every token after the
   first image) whose layer K-1 keys (after RoPE, heads repeated and
   concatenated) have the largest L1 norm.
2. For each pivot, in the order of Python's ``list(set(positions))`` as the
   official code iterates them, take the not yet kept visual tokens (image
   pivots excluded) with the **lowest** cosine to the pivot on the
   final-norm(RMSNorm) of layer K-1's hidden states, and remove them from the
   candidates.
3. Kept visual tokens = image pivots + those picks; text pivots are not kept as
   visual tokens (text is never pruned). Kept tokens keep their positions.

Budget: the official code keeps 4 + 8 * floor(M / 8) tokens for a target M
(132 for M = 128). Here exactly K = round-half-up(FREEPRUNER_RATIO * n) visual
tokens are kept: ``min(4, K)`` image pivots, and the K - pivots picks are shared
out over the pivots, one more for each of the first ``(K - pivots) % P`` of them
in iteration order. Positions are counted from the sample's first real token, so
padding changes neither the iteration order nor the result (the official code
runs batch size 1, one image at a known offset).
"""

from __future__ import annotations

import math
from typing import List

import torch
import torch.nn.functional as F

from .attention import rotate
from .policies import PrunePolicy

DART_INPUTS = "dart_inputs"
PIVOTS_PER_KIND = 4
DART_LAYER = 2


def layer_inputs(decoder, layer_idx, previous_input, hidden_states, cos, sin):
    """What DART reads before layer ``layer_idx``: the L1 norm of layer
    ``layer_idx - 1``'s rotated keys per token (batch, seq) and the final norm of
    that layer's output (batch, seq, hidden), recomputed from the layer's input.
    ``cos``/``sin``: rotary tables (batch or 1, seq, head_dim) of these positions."""
    layer = decoder.layers[layer_idx - 1]
    attn = layer.self_attn
    batch, seq, _ = previous_input.shape
    x = layer.input_layernorm(previous_input)
    key = rotate(attn.k_proj(x).view(batch, seq, -1, attn.head_dim).transpose(1, 2), cos, sin)
    key = key.repeat_interleave(attn.num_key_value_groups, dim=1)    # (batch, heads, seq, head_dim)
    key_l1 = key.float().abs().sum(dim=-1).sum(dim=1)                # L1 over heads x head_dim
    return key_l1, decoder.norm(hidden_states)


def dart_keep(key_l1_visual, key_l1_text, normed_visual, normed_text, visual_pos, text_pos, keep):
    """Indices (into the visual tokens) of the ``keep`` visual tokens DART keeps, ascending.

    key_l1_*: (n,) / (t,) key L1 norms; normed_*: (n, d) / (t, d) normed hidden
    states; *_pos: lists of sequence positions (they fix the pivot order)."""
    n = key_l1_visual.shape[0]
    keep = max(0, min(int(keep), n))
    image_pivots = torch.sort(key_l1_visual, descending=True, stable=True).indices[:min(PIVOTS_PER_KIND, keep)]
    text_pivots = torch.sort(key_l1_text, descending=True, stable=True).indices[:PIVOTS_PER_KIND]
    pivot_positions = [visual_pos[i] for i in image_pivots.tolist()] + [text_pos[i] for i in text_pivots.tolist()]
    by_position = dict(zip(pivot_positions, [normed_visual[i] for i in image_pivots.tolist()]
                           + [normed_text[i] for i in text_pivots.tolist()]))
    order = list(set(pivot_positions))
    free = torch.ones(n, dtype=torch.bool, device=normed_visual.device)
    free[image_pivots] = False
    kept = image_pivots.tolist()
    share, extra = divmod(keep - len(kept), max(1, len(order)))
    for rank, position in enumerate(order):
        count = min(share + int(rank < extra), int(free.sum()))
        if count == 0:
            continue
        pool = free.nonzero().flatten()
        cosine = F.cosine_similarity(by_position[position][None].float(), normed_visual[pool].float(), dim=-1)
        picks = pool[torch.topk(-cosine, count).indices]
        free[picks] = False
        kept += picks.tolist()
    return torch.tensor(sorted(kept), dtype=torch.long, device=normed_visual.device)


def half_up(ratio: float, n: int) -> int:
    return max(1, min(n, math.floor(ratio * n + 0.5))) if n else 0


class DartPolicy(PrunePolicy):
    """Keeps round-half-up(ratio * n) visual tokens at layer 2, chosen by DART."""

    def __init__(self, ratio, layer=DART_LAYER):
        if not 0 < ratio <= 1:
            raise ValueError(f"DART ratio={ratio!r} must lie in (0, 1]")
        self.ratio, self.layer = ratio, layer
        self._keep: List[int] = []

    def check_model(self, num_layers):
        if not 1 <= self.layer < num_layers:
            raise ValueError(f"DART prunes before LLM layer {self.layer} from layer {self.layer - 1}'s output: "
                             f"the language model has {num_layers} layers (accepted: 1..{num_layers - 1})")

    def begin(self, visual_counts):
        self._keep = [half_up(self.ratio, n) for n in visual_counts]
        return []

    def statistic(self, layer_idx):
        return DART_INPUTS if layer_idx == self.layer else None

    def choose(self, layer_idx, stats, alive):
        deletions = []
        for s, n, keep in zip(stats, alive, self._keep):
            kept = dart_keep(s["key_l1_visual"], s["key_l1_text"], s["normed_visual"], s["normed_text"],
                             s["visual_pos"], s["text_pos"], keep)
            drop = torch.ones(n, dtype=torch.bool, device=kept.device)
            drop[kept] = False
            deletions.append(drop.nonzero().flatten())
        return deletions
