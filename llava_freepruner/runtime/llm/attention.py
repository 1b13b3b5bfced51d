"""Attention probabilities of a few query rows to a few key columns, and the
rotary position embedding the pruning layers apply to their queries and keys.

Used at pruning layers only, so every other layer keeps its fused attention kernel.
Softmax runs over all allowed keys (the probabilities are the model's), in fp32,
batched over samples, a few heads at a time so memory per sample stays bounded for
long sequences (the number of chunks does not grow with the batch).
"""

import math

import torch

_ELEMENTS_PER_CHUNK = 1 << 24   # per sample


def attention_to_columns(query, key, allowed, columns, reduce_heads):
    """Post-softmax attention of some query rows to some key columns, reduced over heads.

    ``query``: (batch, heads, R, head_dim) rotated queries of the rows;
    ``key``: (batch, heads, K, head_dim) rotated keys (already repeated for grouped KV);
    ``allowed``: (batch, R, K) bool, keys each row may see (every row at least one);
    ``columns``: (batch, C) key positions to keep; ``reduce_heads``: "max" or "mean".
    Returns (batch, R, C) float32.
    """
    batch, heads, rows, head_dim = query.shape
    per_chunk = max(1, _ELEMENTS_PER_CHUNK // max(1, rows * key.shape[2]))
    scale = 1.0 / math.sqrt(head_dim)
    hidden = ~allowed[:, None]
    result = None
    for start in range(0, heads, per_chunk):
        q = query[:, start:start + per_chunk].float()
        k = key[:, start:start + per_chunk].float()
        logits = torch.matmul(q, k.transpose(-1, -2)) * scale
        logits.masked_fill_(hidden, float("-inf"))
        probs = torch.softmax(logits, dim=-1)
        probs = probs.gather(3, columns[:, None, None, :].expand(-1, probs.shape[1], rows, -1))
        if reduce_heads == "max":
            part = probs.amax(dim=1)
            result = part if result is None else torch.maximum(result, part)
        else:
            part = probs.sum(dim=1)
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
