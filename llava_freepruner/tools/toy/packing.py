"""Several questions about one image in one training sequence, each answered as if alone.

Every single-question conversation about a scene starts with the same tokens (the
user turn's opening and the 256 image tokens). A packed sequence holds that shared
prefix once, followed by each question's remaining tokens as a *branch*: a branch
attends to the prefix and to itself only (never to another question or its answer),
and its positions continue from the end of the prefix. The language model then
computes, for every branch, exactly what it computes for that conversation alone,
while the image tokens are processed once for all of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence

import torch

IGNORE = -100
PREFIX = -1      # branch id of the shared prefix
PADDING = -2     # branch id of padding


@dataclass
class Conversation:
    """One single-question conversation: its token ids and the span of the answer
    (the tokens that are supervised and scored)."""

    ids: List[int]
    answer_start: int
    answer_end: int
    weight: float = 1.0      # of each supervised token in the loss


@dataclass
class Packed:
    ids: torch.Tensor         # (L,)
    labels: torch.Tensor      # (L,) the token to predict *at* each position, IGNORE elsewhere
    positions: torch.Tensor   # (L,)
    branch: torch.Tensor      # (L,) PREFIX or the question's index
    weights: torch.Tensor     # (L,) loss weight of each label (0 where IGNORE)


def shared_prefix(conversations: Sequence[Conversation]) -> int:
    first = conversations[0].ids
    length = len(first)
    for conv in conversations[1:]:
        length = min(length, len(conv.ids))
        length = next((i for i in range(length) if conv.ids[i] != first[i]), length)
    return length


def pack(conversations: Sequence[Conversation], min_prefix: int = 0) -> Packed:
    """Pack conversations that share their opening tokens. ``min_prefix``: the prefix
    must reach at least this far (e.g. past the last image token), or ValueError."""
    if not conversations:
        raise ValueError("nothing to pack: no conversations")
    prefix = shared_prefix(conversations)
    # Each branch holds at least the last prompt token, which predicts its first answer token.
    prefix = min(prefix, min(conv.answer_start for conv in conversations) - 1)
    if prefix < min_prefix:
        raise ValueError(f"the conversations share {prefix} opening tokens, fewer than the {min_prefix} required")
    ids = list(conversations[0].ids[:prefix])
    labels = [IGNORE] * prefix
    positions = list(range(prefix))
    branch = [PREFIX] * prefix
    weights = [0.0] * prefix
    for index, conv in enumerate(conversations):
        tokens = conv.ids[prefix:conv.answer_end]
        ids += tokens
        positions += range(prefix, prefix + len(tokens))
        branch += [index] * len(tokens)
        # The token at position t is predicted from position t - 1.
        labels += [conv.ids[t + 1] if conv.answer_start <= t + 1 < conv.answer_end else IGNORE
                   for t in range(prefix, conv.answer_end)]
        weights += [conv.weight if label != IGNORE else 0.0 for label in labels[-len(tokens):]]
    return Packed(torch.tensor(ids), torch.tensor(labels), torch.tensor(positions), torch.tensor(branch),
                  torch.tensor(weights))


def collate(packed: Sequence[Packed], pad_id: int):
    """Right-padded (ids, labels, weights, positions, mask): mask is (B, 1, L, L)
    boolean, True where a query position may attend to a key position."""
    length = max(len(p.ids) for p in packed)
    rows = len(packed)
    ids = torch.full((rows, length), pad_id)
    labels = torch.full((rows, length), IGNORE)
    positions = torch.zeros((rows, length), dtype=torch.long)
    branch = torch.full((rows, length), PADDING)
    weights = torch.zeros((rows, length))
    for row, p in enumerate(packed):
        n = len(p.ids)
        ids[row, :n], labels[row, :n], positions[row, :n] = p.ids, p.labels, p.positions
        branch[row, :n], weights[row, :n] = p.branch, p.weights
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    query, key = branch[:, :, None], branch[:, None, :]
    same_or_prefix = (key == PREFIX) | (key == query)
    mask = causal & same_or_prefix & (query != PADDING) & (key != PADDING)
    mask |= torch.eye(length, dtype=torch.bool)          # padding rows attend to themselves (no empty row)
    return ids, labels, weights, positions, mask[:, None]
