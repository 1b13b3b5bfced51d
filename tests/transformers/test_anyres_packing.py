"""Kept positions in LLaVA-NeXT's packed sequence, checked against the host's own packing."""

import pytest
import torch

from llava_freepruner import anyres
from llava_freepruner.hf_tiny import TinyHF

SIZES = [(480, 640), (640, 480), (512, 1024), (1008, 336), (800, 800), (300, 1200), (336, 336)]


@pytest.mark.parametrize("size", SIZES, ids=[f"{h}x{w}" for h, w in SIZES])
def test_packed_positions_find_the_kept_ids_in_the_hosts_sequence(size, tiny_models):
    from transformers.models.llava_next.modeling_llava_next import (
        get_anyres_image_grid_shape, image_size_to_num_patches, unpad_image)

    model, _ = tiny_models(TinyHF(kind="llava_next"))
    config = model.config
    side = 24
    crops = image_size_to_num_patches(torch.tensor(size), config.image_grid_pinpoints, 336)
    # Features that carry their own id: crop * 1000 + patch; the newline carries -1.
    ids = (torch.arange(crops)[:, None] * 1000 + torch.arange(side * side)[None]).float()[..., None]
    packed, _ = model.model.pack_image_features([ids], torch.tensor([size]), "default",
                                                image_newline=torch.tensor([-1.0]))
    packed = packed[0][:, 0]

    generator = torch.Generator().manual_seed(sum(size))
    high, wide = get_anyres_image_grid_shape(torch.tensor(size), config.image_grid_pinpoints, 336)
    layout = anyres.tile_layout(wide, high, side, torch.tensor(size), unpad_image)
    base = torch.sort(torch.randperm(side * side, generator=generator)[:200]).values
    tiles = []
    for tile in range(crops - 1):
        valid = torch.nonzero(layout.tile_valid(tile)).flatten()
        tiles.append(torch.sort(valid[torch.randperm(valid.numel(), generator=generator)[:valid.numel() // 3]]).values)

    positions = anyres.packed_positions(layout, base, tiles, newline=True)
    wanted = set(base.tolist()) | {(t + 1) * 1000 + p for t, kept in enumerate(tiles) for p in kept.tolist()}
    got = packed[positions]
    assert {int(v) for v in got if v >= 0} == wanted
    assert len(positions) == len(set(positions.tolist()))
    # a row's newline stays exactly when the row keeps a patch, right after the row
    ends = torch.nonzero(packed == -1).flatten()
    starts = torch.cat([torch.tensor([side * side]), ends[:-1] + 1])
    kept = set(positions.tolist())
    for start, end in zip(starts.tolist(), ends.tolist()):
        assert (end in kept) == any(p in kept for p in range(start, end))
