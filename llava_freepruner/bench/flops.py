"""Analytical FLOPs of a prefill (2 FLOPs per multiply-add, matmuls only).

Counted as the code computes them: full (not causally halved) attention
score and value products, and the LM head over every prefill position
(LLaVA's forward computes logits for all of them). Norms, activations,
softmax and rotary embeddings are left out (under 1% at these shapes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Tuple


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

    @classmethod
    def from_config(cls, config) -> "EncoderShape":
        return cls(config.hidden_size, config.intermediate_size, config.num_hidden_layers,
                   config.patch_size, getattr(config, "num_channels", 3))


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
    ([CLS] + ``patches`` tokens each)."""
    h, n = shape.hidden, patches + 1
    embed = 2 * patches * shape.channels * shape.patch ** 2 * h
    layer = 2 * n * h * 4 * h + 2 * 2 * n * n * h + 2 * 2 * n * h * shape.intermediate
    return crops * (embed + shape.layers * layer)


def projector_flops(linears: Sequence[Tuple[int, int]], tokens: int) -> int:
    """The projector's linear layers, given as (in, out) pairs, on ``tokens`` features."""
    return sum(2 * tokens * fan_in * fan_out for fan_in, fan_out in linears)
