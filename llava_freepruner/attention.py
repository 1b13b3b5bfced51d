"""Attention statistics computed from captured queries and keys.

Everything here is pure tensor code in float32: the vision tower may run in
fp16, statistics never do. Query rows are processed in chunks so no full
``heads x tokens x tokens`` map is held for more than one chunk at a time.
"""

from __future__ import annotations

from typing import Optional

import torch

# Query rows per chunk: keeps the transient (heads x chunk x tokens) small.
CHUNK_ROWS = 256


def head_mean_attention(q: torch.Tensor, k: torch.Tensor, rows: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Post-softmax attention averaged over heads.

    q, k: (heads, tokens, head_dim), q already multiplied by the softmax scale.
    rows: query indices to compute (default: all). Returns (len(rows), tokens) fp32.
    """
    q = q.float() if rows is None else q[:, rows].float()
    logits = torch.matmul(q, k.float().transpose(-1, -2))
    return torch.softmax(logits, dim=-1).mean(dim=0)


def received_attention(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """For every token j: sum over queries i != j of the head-mean attention A[i, j].

    q, k: (heads, tokens, head_dim). Returns (tokens,) fp32.
    """
    num_tokens = q.shape[1]
    total = torch.zeros(num_tokens, dtype=torch.float32, device=q.device)
    for start in range(0, num_tokens, CHUNK_ROWS):
        rows = torch.arange(start, min(start + CHUNK_ROWS, num_tokens), device=q.device)
        probs = head_mean_attention(q, k, rows)
        total += probs.sum(dim=0)
        total[rows] -= probs[torch.arange(len(rows), device=q.device), rows]
    return total


def attention_to_columns(q: torch.Tensor, k: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """For every query i: sum over the given key columns of A[i, column]. Returns (tokens,)."""
    num_tokens = q.shape[1]
    total = torch.empty(num_tokens, dtype=torch.float32, device=q.device)
    for start in range(0, num_tokens, CHUNK_ROWS):
        rows = torch.arange(start, min(start + CHUNK_ROWS, num_tokens), device=q.device)
        total[rows] = head_mean_attention(q, k, rows)[:, columns].sum(dim=1)
    return total
