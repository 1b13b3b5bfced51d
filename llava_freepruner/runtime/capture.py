"""Hooks that hand a method the attention of the encoder layers it asks for.

The hooks hand the method one layer's attention (see
``methods.base.AttentionView``), to be reduced on the spot: only the layers the
method asks for, no attention map kept after the layer returns, and the
model's own outputs untouched.

Supported towers: Hugging Face CLIP vision models (LLaVA's tower) and DINOv2.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import List

import torch
from torch import nn

from .methods.base import MapView, QueryKeyView, SelectionContext, VisionMethod, keeps_everything


@dataclass(frozen=True)
class AttentionSite:
    """Where one encoder layer computes its queries and keys."""

    attention: nn.Module   # its forward hook fires once q and k exist
    query: nn.Module
    key: nn.Module
    num_heads: int
    block: nn.Module       # the whole encoder layer: its output is the next hidden state


def attention_sites(vision_model: nn.Module) -> List[AttentionSite]:
    """The encoder layers of a supported vision model, in order."""
    if hasattr(vision_model, "vision_model"):          # CLIPVisionModel
        vision_model = vision_model.vision_model
    encoder = getattr(vision_model, "encoder", None)
    if encoder is not None and hasattr(encoder, "layers"):      # CLIP
        return [AttentionSite(l.self_attn, l.self_attn.q_proj, l.self_attn.k_proj, l.self_attn.num_heads, l)
                for l in encoder.layers]
    if encoder is not None and hasattr(encoder, "layer"):       # DINOv2 / ViT
        sites = []
        for layer in encoder.layer:
            attn = layer.attention
            if hasattr(attn, "q_proj"):     # transformers 5.x
                sites.append(AttentionSite(attn, attn.q_proj, attn.k_proj, attn.num_attention_heads, layer))
            else:
                attn = attn.attention
                sites.append(AttentionSite(attn, attn.query, attn.key, attn.num_attention_heads, layer))
        return sites
    raise TypeError(
        f"llava_freepruner cannot read attention from {type(vision_model).__name__}: "
        "supported vision towers are CLIP vision models and DINOv2."
    )


def _split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    batch, tokens, width = x.shape
    return x.view(batch, tokens, num_heads, width // num_heads).transpose(1, 2)


class AttentionCapture:
    """Context manager: while active, each requested layer's attention goes to
    ``method.observe`` as the tower runs. ``seconds`` accumulates the time spent
    in the hooks (the selection overhead inside the tower).

    Where the layer computes its attention map itself (CLIP's eager attention, as
    upstream LLaVA runs it), the hook asks for that map and reduces it over heads
    with fp32 accumulation: no recomputation. Otherwise (SDPA, FlashAttention)
    the statistics are recomputed in fp32 from the layer's queries and keys,
    batched over crops and heads. ``reuse_maps=False`` forces the recomputation.
    """

    def __init__(self, vision_model: nn.Module, method: VisionMethod, ctx: SelectionContext, reuse_maps: bool = True):
        self.sites = attention_sites(vision_model)
        self.method = method
        self.ctx = ctx
        self.reuse_maps = reuse_maps
        self.seconds = 0.0
        self._handles = []

    def __enter__(self) -> "AttentionCapture":
        if keeps_everything(self.ctx):     # nothing to choose: the tower runs untouched
            return self
        layers = self.method.attention_layers(len(self.sites), self.ctx.feature_layer)
        for layer in layers:
            self._hook(layer, self.sites[layer])
        if self.method.needs_hidden:
            self._handles.append(self.sites[self.ctx.feature_layer].block.register_forward_hook(self._keep_hidden))
        return self

    def _keep_hidden(self, module, args, output) -> None:
        self.ctx.hidden = output[0] if isinstance(output, tuple) else output

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _hook(self, layer: int, site: AttentionSite) -> None:
        captured = {}

        def keep(name):
            def hook(module, args, output):
                captured[name] = output
            return hook

        def ask_for_map(module, args, kwargs):
            # Only a keyword the caller already passes is changed; the layer's own
            # outputs do not depend on it.
            if "output_attentions" in kwargs:
                kwargs["output_attentions"] = True
            return args, kwargs

        def observe(module, args, output):
            start = time.perf_counter()
            q, k = captured.pop("q"), captured.pop("k")
            k = _split_heads(k, site.num_heads)
            maps = output[1] if isinstance(output, tuple) and len(output) > 1 else None
            if torch.is_tensor(maps) and maps.dim() == 4:
                # the layer made its map anyway: reduce it over heads, accumulating in fp32
                view = MapView(maps.mean(dim=1, dtype=torch.float32), k)
            else:
                q = _split_heads(q, site.num_heads).float()
                view = QueryKeyView(q * q.shape[-1] ** -0.5, k)
            self.method.observe(layer, view, self.ctx)
            self.seconds += time.perf_counter() - start

        self._handles += [
            site.query.register_forward_hook(keep("q")),
            site.key.register_forward_hook(keep("k")),
            site.attention.register_forward_hook(observe),
        ]
        if self.reuse_maps:
            self._handles.append(site.attention.register_forward_pre_hook(ask_for_map, with_kwargs=True))
