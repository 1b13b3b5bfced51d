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

All samples of a batch are chosen together on the device; the host reads back one
small tensor per prefill, where the pivots sit, since Python's set order of their
positions decides which pivot picks first.
"""

from __future__ import annotations

import math
from typing import List

import torch

from .attention import rotate
from .device import upload
from .policies import PrunePolicy, one_layer_schedule

DART_INPUTS = "dart_inputs"
PIVOTS_PER_KIND = 4
DART_LAYER = 2
_EPS = 1e-8   # F.cosine_similarity's


def key_norms(attn, keys, cos, sin):
    """L1 norm per token (batch, seq) of a layer's rotated keys, over heads (repeated
    for grouped KV) and head_dim. ``keys``: (batch, seq, kv_heads * head_dim), the
    layer's ``k_proj`` output (Qwen3-VL's per-head key norm is applied here, as the layer
    applies it); ``cos``/``sin``: rotary tables (batch or 1, seq, head_dim)."""
    batch, seq, _ = keys.shape
    key = keys.view(batch, seq, -1, attn.head_dim)
    norm = getattr(attn, "k_norm", None)
    if norm is not None:
        key = norm(key)
    key = rotate(key.transpose(1, 2), cos, sin)
    key = key.repeat_interleave(attn.num_key_value_groups, dim=1)    # (batch, heads, seq, head_dim)
    return key.float().abs().sum(dim=-1).sum(dim=1)


def keep_mask(key_l1_visual, key_l1_text, normed_visual, normed_text, visual_pos, text_pos,
              visual_valid, text_valid, keep):
    """(batch, n) bool: the visual tokens DART keeps, ``keep[b]`` of them per sample.

    key_l1_*: (batch, n) / (batch, t) key L1 norms; normed_*: (batch, n, d) / (batch, t, d)
    normed hidden states; *_pos: (batch, n) / (batch, t) sequence positions (they fix the
    pivot order); *_valid: which columns hold tokens (a sample with fewer has padding
    after its own); ``keep``: per sample, an int no larger than its visual tokens."""
    neg_inf = float("-inf")
    image_order = torch.sort(key_l1_visual.masked_fill(~visual_valid, neg_inf), dim=1, descending=True,
                             stable=True).indices[:, :PIVOTS_PER_KIND]
    text_order = torch.sort(key_l1_text.masked_fill(~text_valid, neg_inf), dim=1, descending=True,
                            stable=True).indices[:, :PIVOTS_PER_KIND]
    image_slots, text_slots = image_order.shape[1], text_order.shape[1]
    # the one read-back: the pivots' positions and how many text tokens each sample has
    readback = torch.cat([visual_pos.gather(1, image_order), text_pos.gather(1, text_order),
                          text_valid.sum(dim=1, keepdim=True)], dim=1).tolist()
    rounds, image_used = _plan_rounds(readback, keep, image_slots, text_slots)
    width = len(rounds[0])
    plan = upload(torch.tensor([[slot for slot, _ in r] + [n for _, n in r] + used
                                for r, used in zip(rounds, image_used)], dtype=torch.long), visual_valid.device)
    pivot_of, picks_of, used = plan[:, :width], plan[:, width:2 * width], plan[:, 2 * width:].bool()

    free = visual_valid.scatter(1, image_order, visual_valid.gather(1, image_order) & ~used)
    visual_unit = _unit(normed_visual)
    dim = visual_unit.shape[-1]
    pivots = _unit(torch.cat([normed_visual.gather(1, image_order[..., None].expand(-1, -1, dim)),
                              normed_text.gather(1, text_order[..., None].expand(-1, -1, dim))], dim=1))
    for rank in range(width):
        most = max(r[rank][1] for r in rounds)
        if most == 0:
            continue
        pivot = pivots.gather(1, pivot_of[:, rank, None, None].expand(-1, 1, dim))
        cosine = (pivot * visual_unit).sum(dim=-1)
        picks = torch.topk((-cosine).masked_fill(~free, neg_inf), most, dim=1).indices
        taken = torch.arange(most, device=picks.device) < picks_of[:, rank, None]
        free = free.scatter(1, picks, free.gather(1, picks) & ~taken)
    return visual_valid & ~free


def _plan_rounds(readback, keep, image_slots, text_slots):
    """On the host, per sample: the rounds in the official iteration order, each
    (pivot slot, tokens it picks), padded with (0, 0) to the same count; and which image
    slots hold a pivot. ``readback`` rows: pivot positions (image slots, then text
    slots), then the sample's text token count."""
    rounds, image_used = [], []
    for row, count in zip(readback, keep):
        images = min(image_slots, count)
        slots = list(range(images)) + list(range(image_slots, image_slots + min(text_slots, row[-1])))
        positions = [row[slot] for slot in slots]
        slot_at = dict(zip(positions, slots))
        order = list(set(positions))    # from the list, as the official code builds it: the order depends on that
        share, extra = divmod(count - images, max(1, len(order)))
        rounds.append([(slot_at[position], share + int(rank < extra)) for rank, position in enumerate(order)])
        image_used.append([int(slot < images) for slot in range(image_slots)])
    width = max(map(len, rounds))
    return [r + [(0, 0)] * (width - len(r)) for r in rounds], image_used


def _unit(x):
    """Rows scaled to unit L2 norm in fp32, as F.cosine_similarity scales them."""
    x = x.float()
    return x / torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_min(_EPS)


def dart_keep(key_l1_visual, key_l1_text, normed_visual, normed_text, visual_pos, text_pos, keep):
    """Indices (into the visual tokens) of the ``keep`` visual tokens DART keeps, ascending,
    for one sample: key_l1_*: (n,) / (t,); normed_*: (n, d) / (t, d); *_pos: lists of
    sequence positions."""
    n, t = key_l1_visual.shape[0], key_l1_text.shape[0]
    device = key_l1_visual.device
    kept = keep_mask(key_l1_visual[None], key_l1_text[None], normed_visual[None], normed_text[None],
                     torch.tensor([visual_pos], dtype=torch.long, device=device),
                     torch.tensor([text_pos], dtype=torch.long, device=device),
                     torch.ones(1, n, dtype=torch.bool, device=device),
                     torch.ones(1, t, dtype=torch.bool, device=device), [max(0, min(int(keep), n))])
    return kept[0].nonzero().flatten()


def half_up(ratio: float, n: int) -> int:
    return max(1, min(n, math.floor(ratio * n + 0.5))) if n else 0


class DartPolicy(PrunePolicy):
    """Keeps round-half-up(ratio * n) visual tokens at layer 2, chosen by DART."""

    def __init__(self, ratio, layer=DART_LAYER):
        if not 0 < ratio <= 1:
            raise ValueError(f"DART ratio={ratio!r} must lie in (0, 1]")
        self.ratio, self.layer = ratio, layer
        self._counts: List[int] = []
        self._keep: List[int] = []

    def check_model(self, num_layers):
        if not 1 <= self.layer < num_layers:
            raise ValueError(f"DART prunes before LLM layer {self.layer} from layer {self.layer - 1}'s output: "
                             f"the language model has {num_layers} layers (accepted: 1..{num_layers - 1})")

    def begin(self, visual_counts):
        self._counts = list(visual_counts)
        self._keep = [half_up(self.ratio, n) for n in visual_counts]
        return []

    def schedule(self, num_layers):
        return one_layer_schedule(num_layers, self.layer, [n - keep for n, keep in zip(self._counts, self._keep)])

    def key_layer(self):
        return self.layer - 1

    def statistic(self, layer_idx):
        return DART_INPUTS if layer_idx == self.layer else None

    def choose(self, layer_idx, stats, alive):
        kept = keep_mask(stats["key_l1_visual"], stats["key_l1_text"], stats["normed_visual"], stats["normed_text"],
                         stats["visual_pos"], stats["text_pos"], stats["visual_valid"], stats["text_valid"],
                         self._keep)
        return kept.float()      # the runtime deletes the lowest: the tokens not kept
