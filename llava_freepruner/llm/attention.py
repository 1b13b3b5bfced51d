"""Attention probabilities of a few query rows to a few key columns, and the
rotary position embedding the pruning layers apply to their queries and keys.

Used at pruning layers only, so every other layer keeps its fused attention kernel.
Softmax runs over all allowed keys (the probabilities are the model's), in fp32,
a few heads at a time so memory stays bounded for long sequences.
"""

import math

import torch

_ELEMENTS_PER_CHUNK = 1 << 24


def attention_to_columns(query, key, rows, allowed, columns, reduce_heads):
    """Post-softmax attention of ``rows`` to ``columns``, reduced over heads.

    ``query``: (heads, seq_q, head_dim) rotated queries of one sample;
    ``key``: (heads, seq_k, head_dim) rotated keys (already repeated for grouped KV);
    ``rows``: (R,) query positions; ``allowed``: (R, seq_k) bool, keys each row may see;
    ``columns``: (C,) key positions to keep; ``reduce_heads``: "max" or "mean".
    Returns (R, C) float32.
    """
    heads, head_dim = query.shape[0], query.shape[-1]
    per_chunk = max(1, _ELEMENTS_PER_CHUNK // max(1, rows.numel() * key.shape[1]))
    scale = 1.0 / math.sqrt(head_dim)
    result = None
    for start in range(0, heads, per_chunk):
        q = query[start:start + per_chunk, rows].float()
        k = key[start:start + per_chunk].float()
        logits = torch.matmul(q, k.transpose(-1, -2)) * scale
        logits.masked_fill_(~allowed, float("-inf"))
        probs = torch.softmax(logits, dim=-1)[..., columns]
        if reduce_heads == "max":
            part = probs.amax(dim=0)
            result = part if result is None else torch.maximum(result, part)
        else:
            part = probs.sum(dim=0)
            result = part if result is None else result + part
    if reduce_heads == "mean":
        result = result / heads
    return result


def rotate(x, cos, sin):
    """Rotary position embedding of queries or keys ``x`` (batch, heads, seq, head_dim)
    with ``cos``/``sin`` tables (batch or 1, seq, head_dim) for their positions."""
    return x * cos[:, None] + _rotate_half(x) * sin[:, None]


def _rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)
