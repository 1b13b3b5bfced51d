"""Kept positions in LLaVA-NeXT's packed sequence, checked against the host's own packing,
and images of extreme aspect ratio end to end."""

import json

import pytest
import torch

from llava_freepruner.runtime import anyres
from llava_freepruner.fixtures.hf_tiny import TinyHF

from chat_generation import generate, inputs_for

SIZES = [(480, 640), (640, 480), (512, 1024), (1008, 336), (800, 800), (300, 1200), (336, 336)]
# (height, width) whose unpadded tile map has no row, or rows of no patch (a newline each)
EXTREME = [(50, 4000), (4000, 50), (1000, 1)]


@pytest.mark.parametrize("size", SIZES + EXTREME, ids=[f"{h}x{w}" for h, w in SIZES + EXTREME])
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
    assert anyres.unpruned_length(layout, "spatial_unpad", crops, side * side) == packed.numel()
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
    # a row's newline stays, right after the row, unless the row had patches and keeps none
    ends = torch.nonzero(packed == -1).flatten()
    starts = torch.cat([torch.tensor([side * side]), ends[:-1] + 1])
    kept = set(positions.tolist())
    for start, end in zip(starts.tolist(), ends.tolist()):
        assert (end in kept) == (start == end or any(p in kept for p in range(start, end)))


def test_extreme_aspect_ratios_prune_with_batch_equal_to_single(tiny_models, photos, plugin, tmp_path):
    model, processor = tiny_models(TinyHF(kind="llava_next"))
    images = [photos["coffee"].resize((w, h)) for h, w in EXTREME] + [photos["astronaut"]]
    questions = ["What is in the image?"] * len(images)
    inputs = inputs_for(processor, images, questions)
    reference = generate(model, inputs)
    plugin(ratio=1.0)
    unchanged = generate(model, inputs)
    assert torch.equal(unchanged.sequences, reference.sequences)
    assert all(torch.equal(a, b) for a, b in zip(unchanged.scores, reference.scores))

    stats = tmp_path / "stats.jsonl"
    plugin(ratio=0.5, stats=str(stats))
    batch = generate(model, inputs)
    for i in range(len(images)):
        single = generate(model, inputs_for(processor, images[i:i + 1], questions[i:i + 1]))
        assert torch.equal(batch.sequences[i, -5:], single.sequences[0, -5:])
    import llava_freepruner

    llava_freepruner.remove()                       # flushes the stats
    records = [json.loads(line) for line in stats.read_text().splitlines()][:len(EXTREME)]
    # (tokens in, out) per image: the base crop keeps 288 of 576 and the tiles have no patch
    # left by unpadding; 4000x50 and 1000x1 keep the newlines of their 72 patchless rows.
    assert [(r["tokens_in"], r["tokens_out"]) for r in records] == [(576, 288), (648, 360), (648, 360)]
    assert all(crop["tokens_in"] == crop["tokens_out"] == 0 for r in records for crop in r["crops"][1:])
