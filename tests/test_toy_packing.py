"""Packed training sequences (toy/packing.py): one image prefix, one branch per question."""

import pytest
import torch

from llava_freepruner.tools.toy import packing
from llava_freepruner.tools.toy.packing import IGNORE, Conversation


def conversations():
    # Shared opening 1..5, then each question's own tokens and answer.
    return [Conversation([1, 2, 3, 4, 5, 10, 11, 20, 21, 99, 7], answer_start=7, answer_end=10),
            Conversation([1, 2, 3, 4, 5, 12, 30, 99, 7], answer_start=6, answer_end=8, weight=0.5)]


def test_branches_follow_the_shared_prefix_with_their_own_positions_and_labels():
    packed = packing.pack(conversations(), min_prefix=5)
    assert packed.ids.tolist() == [1, 2, 3, 4, 5, 10, 11, 20, 21, 99, 12, 30, 99]
    assert packed.branch.tolist() == [-1] * 5 + [0] * 5 + [1] * 3
    assert packed.positions.tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 5, 6, 7]
    # Position t predicts token t + 1 of its own conversation, inside the answer span only.
    assert packed.labels.tolist() == [IGNORE] * 5 + [IGNORE, 20, 21, 99, IGNORE] + [30, 99, IGNORE]
    assert packed.weights.tolist() == [0.0] * 6 + [1.0, 1.0, 1.0, 0.0, 0.5, 0.5, 0.0]


def test_a_prefix_shorter_than_required_is_refused():
    with pytest.raises(ValueError, match="share 5 opening tokens, fewer than the 6 required"):
        packing.pack(conversations(), min_prefix=6)


def test_a_branch_sees_the_prefix_and_itself_only():
    one, two = packing.pack(conversations()), packing.pack(conversations()[:1])
    ids, labels, weights, positions, allowed = packing.collate([one, two], pad_id=0)
    assert ids.shape == (2, 13) and allowed.shape == (2, 1, 13, 13)
    first = allowed[0, 0]
    assert first[12].tolist() == [True] * 5 + [False] * 5 + [True] * 3     # branch 1 skips branch 0
    assert first[9].tolist() == [True] * 10 + [False] * 3
    assert not first[3, 4]                                                   # causal inside the prefix
    second = allowed[1, 0]
    assert second[9].tolist() == [True] * 10 + [False] * 3
    assert second[11].tolist() == [False] * 11 + [True, False]               # padding: itself only
    assert (labels[1, 10:] == IGNORE).all() and (weights[1, 10:] == 0).all()
