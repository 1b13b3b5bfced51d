"""Analytical FLOPs of a prefill (2 FLOPs per multiply-add, matmuls only).

Counted as the code computes them: full (not causally halved) attention
score and value products, and the LM head over every prefill position
(LLaVA's forward computes logits for all of them). Norms, activations,
softmax and rotary embeddings are left out (under 1% at these shapes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple


@dataclass(frozen=True)
class DecoderShape:
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int

    @classmethod
    def from_config(cls, config) -> "DecoderShape":
        heads = config.num_attention_heads
        return cls(config.hidden_size, config.intermediate_size, heads,
                   getattr(config, "num_key_value_heads", None) or heads, config.vocab_size)


@dataclass(frozen=True)
class EncoderShape:
    hidden: int
    intermediate: int
    layers: int
    patch: int
    channels: int = 3
    prefix: int = 1                 # [CLS] (Qwen-VL's towers: none)
    mlp_matrices: int = 2           # fc1, fc2; a gated MLP (Qwen2.5-VL) has 3
    temporal: int = 1               # frames per patch (Qwen-VL: 2, a picture is repeated)
    window: int = 0                 # tokens per attention window in the windowed layers (0: none)
    full_layers: Optional[int] = None     # layers attending over the whole crop (None: all)

    @classmethod
    def from_config(cls, config) -> "EncoderShape":
        """A CLIP vision config, or any object with its fields (``hf_qwen.VisionShape`` adds the rest)."""
        return cls(config.hidden_size, config.intermediate_size, config.num_hidden_layers,
                   config.patch_size, getattr(config, "num_channels", 3), getattr(config, "prefix_tokens", 1),
                   getattr(config, "mlp_matrices", 2), getattr(config, "temporal_patch_size", 1),
                   getattr(config, "window_patches", 0), getattr(config, "full_attention_layers", None))


def decoder_layer_flops(shape: DecoderShape, tokens: int) -> int:
    """One LLaMA decoder layer on ``tokens`` positions."""
    d, n = shape.hidden, tokens
    kv = shape.kv_heads * (d // shape.heads)
    projections = 2 * n * d * (2 * d + 2 * kv)          # q, o and k, v
    attention = 2 * 2 * n * n * d                       # Q K^T and A V
    mlp = 2 * 3 * n * d * shape.intermediate            # gate, up, down
    return projections + attention + mlp


def llm_prefill_flops(shape: DecoderShape, layer_tokens: Sequence[int], head_tokens: int) -> int:
    """Decoder layers (``layer_tokens[i]`` positions enter layer i) plus the LM head
    on ``head_tokens`` positions."""
    if not layer_tokens:
        raise ValueError("layer_tokens is empty: expected one token count per decoder layer")
    layers = sum(decoder_layer_flops(shape, n) for n in layer_tokens)
    return layers + 2 * head_tokens * shape.hidden * shape.vocab


def vision_flops(shape: EncoderShape, patches: int, crops: int = 1) -> int:
    """Patch embedding and every encoder layer of a ViT on ``crops`` crops
    (``shape.prefix`` [CLS] + ``patches`` tokens each); in windowed layers a token
    attends to the ``shape.window`` tokens of its window."""
    h, n = shape.hidden, patches + shape.prefix
    embed = 2 * patches * shape.channels * shape.temporal * shape.patch ** 2 * h
    dense = 2 * n * h * 4 * h + 2 * shape.mlp_matrices * n * h * shape.intermediate
    full = shape.layers if shape.full_layers is None or not shape.window else shape.full_layers
    attention = full * 2 * 2 * n * n * h + (shape.layers - full) * 2 * 2 * n * min(shape.window, n) * h
    return crops * (embed + shape.layers * dense + attention)


def projector_flops(linears: Sequence[Tuple[int, int]], tokens: int) -> int:
    """The projector's linear layers, given as (in, out) pairs, on ``tokens`` features."""
    return sum(2 * tokens * fan_in * fan_out for fan_in, fan_out in linears)
