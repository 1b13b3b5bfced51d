"""Attention statistics computed from captured queries and keys, for all crops at once.

Everything here is pure tensor code in float32: the vision tower may run in
fp16, statistics never do. Inputs are (crops, heads, tokens, head_dim) fp32,
queries already multiplied by the softmax scale. Work is batched over crops and
heads, so the number of kernels does not grow with the batch; query rows go in
chunks sized to a memory budget (one chunk for a CLIP-L crop batch of up to 16
images), so no ``crops x heads x tokens x tokens`` map larger than the budget is
held at any time.
"""

from __future__ import annotations

from typing import Iterator, Optional, Tuple

import torch

# Elements of one chunk's (crops x heads x rows x tokens) probabilities: 1 GiB in fp32.
CHUNK_ELEMENTS = 1 << 28
# Chunks hold a multiple of this many rows, so close batch sizes split alike.
ROW_STEP = 64


def chunk_rows(q: torch.Tensor, k: torch.Tensor) -> int:
    """Query rows per chunk for (crops, heads, tokens, dim) queries and keys."""
    crops, heads, tokens = q.shape[0], q.shape[1], k.shape[2]
    rows = CHUNK_ELEMENTS // max(1, crops * heads * tokens)
    return max(ROW_STEP, rows // ROW_STEP * ROW_STEP)


def _probabilities(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Head-mean softmax(q k^T): (crops, rows, tokens) fp32."""
    crops, heads, rows, _ = q.shape
    # one bmm over crops x heads: the same kernels whatever the number of crops
    logits = torch.bmm(q.reshape(crops * heads, rows, -1), k.reshape(crops * heads, k.shape[2], -1).transpose(1, 2))
    return torch.softmax(logits, dim=-1).view(crops, heads, rows, -1).mean(dim=1)


def gather_queries(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Rows of (crops, heads, tokens, dim) ``x`` at (crops, R) token indices: (crops, heads, R, dim)."""
    crops, heads, _, dim = x.shape
    return x.gather(2, rows[:, None, :, None].expand(crops, heads, rows.shape[1], dim))


def head_mean_attention(q: torch.Tensor, k: torch.Tensor, rows: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Post-softmax attention averaged over heads.

    rows: (crops, R) query indices to compute (default: all). Returns (crops, R, tokens) fp32.
    """
    return _probabilities(q if rows is None else gather_queries(q, rows), k)


def row_chunks(q: torch.Tensor, k: torch.Tensor) -> Iterator[Tuple[int, torch.Tensor]]:
    """(first row, head-mean probabilities (crops, rows, tokens)) of each chunk of query rows."""
    step = chunk_rows(q, k)
    for start in range(0, q.shape[2], step):
        yield start, _probabilities(q[:, :, start:start + step], k)


def received_attention(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """For every token j: sum over queries i != j of the head-mean attention A[i, j].

    Returns (crops, tokens) fp32.
    """
    total = torch.zeros(q.shape[0], q.shape[2], dtype=torch.float32, device=q.device)
    for start, probs in row_chunks(q, k):
        total += probs.sum(dim=1)
        # the chunk's own entries A[i, i] sit on its diagonal shifted by ``start``
        total[:, start:start + probs.shape[1]] -= torch.diagonal(probs, offset=start, dim1=1, dim2=2)
    return total


def attention_to_columns(q: torch.Tensor, k: torch.Tensor, columns: torch.Tensor,
                         weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    """For every query i: sum over the crop's key columns of weight x A[i, column].

    columns: (crops, C) token indices; weights: (crops, C) or None (all ones).
    Returns (crops, tokens) fp32.
    """
    total = torch.empty(q.shape[0], q.shape[2], dtype=torch.float32, device=q.device)
    for start, probs in row_chunks(q, k):
        total[:, start:start + probs.shape[1]] = weighted_columns(probs, columns, weights)
    return total


def weighted_columns(maps: torch.Tensor, columns: torch.Tensor, weights: Optional[torch.Tensor]) -> torch.Tensor:
    """(crops, rows, tokens) maps -> (crops, rows): each row's sum of weight x map[column]."""
    picked = maps.gather(2, columns[:, None, :].expand(-1, maps.shape[1], -1))
    return (picked if weights is None else picked * weights[:, None, :]).sum(dim=2)
