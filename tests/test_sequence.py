"""Shortening a prompt for the decoder and translating its decode steps (pure tensors)."""

import torch

from llava_freepruner.runtime.sequence import Compression


def test_kept_positions_keep_order_and_fillers_go_where_the_padding_is():
    drop = torch.tensor([[0, 1, 1, 0, 0], [0, 0, 1, 0, 0]], dtype=torch.bool)
    left = Compression.from_drop(drop, 4)
    assert left.index.tolist() == [[-1, 0, 3, 4], [0, 1, 3, 4]]
    assert left.removed.tolist() == [2, 1]
    right_padded = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]])
    right = Compression.from_drop(drop, 4, right_padded)
    assert right.index.tolist() == [[0, 3, 4, -1], [0, 1, 3, 4]]


def test_positions_are_renumbered_as_if_the_dropped_tokens_never_were():
    drop = torch.tensor([[0, 0, 1, 1, 1, 0, 0]], dtype=torch.bool)
    c = Compression.from_drop(drop, 4)
    assert c.prefill_positions(None).tolist() == [[0, 1, 2, 3]]
    left_padded_positions = torch.tensor([[1, 0, 1, 2, 3, 4, 5]])   # generate's cumsum, padding at 0
    assert c.prefill_positions(left_padded_positions).tolist() == [[1, 0, 1, 2]]
    assert c.decode_positions(torch.tensor([[7]]), past_full=7, steps=1).tolist() == [[4]]
    assert c.decode_positions(None, past_full=9, steps=2).tolist() == [[6, 7]]


def test_decode_masks_keep_the_compressed_prompt_and_the_callers_tail():
    drop = torch.tensor([[0, 1, 0], [0, 0, 0]], dtype=torch.bool)
    c = Compression.from_drop(drop, 3)
    c.compress_prompt_mask(torch.tensor([[1, 1, 1], [0, 1, 1]]))
    assert c.prompt_mask.tolist() == [[0, 1, 1], [0, 1, 1]]
    assert c.decode_mask(None, total_full=5).tolist() == [[0, 1, 1, 1, 1], [0, 1, 1, 1, 1]]
    tail = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]])
    assert c.decode_mask(tail, total_full=5)[:, 3:].tolist() == [[1, 0], [1, 1]]


def test_expanded_output_carries_the_last_kept_position_forward():
    drop = torch.tensor([[1, 0, 1, 1, 0, 1]], dtype=torch.bool)
    c = Compression.from_drop(drop, 2)
    hidden = torch.tensor([[[10.0], [20.0]]])
    assert c.expand(hidden)[0, :, 0].tolist() == [0.0, 10.0, 10.0, 10.0, 20.0, 20.0]
    # a filler slot (left of the first sample's kept positions) carries nothing back
    padded = Compression.from_drop(torch.tensor([[1, 0, 0], [0, 0, 0]], dtype=torch.bool), 3)
    hidden = torch.tensor([[[9.0], [10.0], [20.0]], [[1.0], [2.0], [3.0]]])
    assert padded.expand(hidden)[..., 0].tolist() == [[0.0, 10.0, 20.0], [1.0, 2.0, 3.0]]
    gathered = c.gather(torch.arange(6.0)[None, :, None])
    assert gathered[0, :, 0].tolist() == [1.0, 4.0]
