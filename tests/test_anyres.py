"""LLaVA-NeXT (anyres): tile bookkeeping against upstream's own merge, and the
patched path end to end on a tiny v1.6 checkpoint."""

import pytest
import torch

import llava_freepruner
from llava_freepruner.runtime import anyres
from llava_freepruner.config import VISION_METHODS, Config
from llava_freepruner.runtime.stats import read_jsonl
from llava_freepruner.fixtures.tiny import TinySpec

from conftest import load_llava as load

SIZES = [(640, 480), (480, 640), (1000, 300), (300, 1000), (512, 512), (333, 777)]   # PIL (width, height)
# Unpadding leaves the tile map of these no row, or rows of no patch (a newline each).
EXTREME = [(4000, 50), (50, 4000), (1, 1000)]


pytestmark = pytest.mark.usefixtures("unpatched")


def float_v16(checkpoints, **spec):
    """A tiny v1.6 model in fp32 (fp16 matmuls are slow on CPUs)."""
    tokenizer, model, processor = load(checkpoints(TinySpec(anyres=True, **spec)))
    return tokenizer, model.float(), processor


@pytest.fixture(scope="module")
def v16(checkpoints):
    return float_v16(checkpoints)


@pytest.fixture(scope="module")
def v16_clip_text(checkpoints):
    """With the CLIP text tower that cdpruner reads."""
    return float_v16(checkpoints, clip_text=True)


def id_features(crops):
    """(crops, 576, 2) features holding their own (crop, patch) ids, exact in fp16."""
    crop = torch.arange(crops)[:, None].expand(-1, 576)
    patch = torch.arange(576)[None].expand(crops, -1)
    return torch.stack([crop, patch], dim=-1).float()


def upstream_ids(model, size, merge_type):
    """Upstream's merged sequence for one image whose features are their own
    (crop, patch) ids; newlines are (-1, -1)."""
    from llava.mm_utils import get_anyres_image_grid_shape
    from llava.model.llava_arch import LlavaMetaForCausalLM

    wide, high = get_anyres_image_grid_shape(size, model.config.image_grid_pinpoints, 336)
    crops = 1 + wide * high     # tiles across and down, plus the base crop
    dim = model.config.hidden_size
    ids = torch.nn.functional.pad(id_features(crops), (0, dim - 2))
    model.encode_images = lambda images: ids.to(torch.float16)
    model.config.mm_patch_merge_type = merge_type
    newline = model.model.image_newline.data.clone()
    model.model.image_newline.data.fill_(-1)
    try:
        out = LlavaMetaForCausalLM.prepare_inputs_labels_for_multimodal(
            model, torch.tensor([[1, -200]]), None, None, None, None,
            torch.zeros(1, crops, 3, 336, 336), [size])
    finally:
        del model.encode_images
        model.config.mm_patch_merge_type = "spatial_unpad"
        model.model.image_newline.data.copy_(newline)
    return as_pairs(out[4][0, 1:, :2]), crops, (wide, high)


def as_pairs(features):
    return [tuple(int(v) for v in row) for row in features.float().tolist()]


def filtered(sequence, kept):
    """Brute force: drop unkept tokens; a newline goes only when its row had tokens and keeps none."""
    out, row, had_tokens = [], [], False
    for pair in sequence:
        if pair == (-1, -1):
            if row or not had_tokens:
                out += row + [pair]
            row, had_tokens = [], False
        else:
            had_tokens = True
            if pair in kept:
                row.append(pair)
    return out + row


@pytest.mark.parametrize("merge_type", ["spatial_unpad", "spatial", "flat"])
@pytest.mark.parametrize("size", SIZES + EXTREME, ids=[f"{w}x{h}" for w, h in SIZES + EXTREME])
def test_assemble_matches_upstream_merge_filtered(v16, size, merge_type):
    from llava.model.llava_arch import unpad_image

    _, model, _ = v16
    sequence, crops, (wide, high) = upstream_ids(model, size, merge_type)
    layout = anyres.tile_layout(wide, high, 24, size, unpad_image if merge_type == "spatial_unpad" else None)
    assert anyres.unpruned_length(layout if merge_type != "flat" else None, merge_type, crops, 576) == len(sequence)
    g = torch.Generator().manual_seed(sum(size))
    ids = id_features(crops)
    kept = [torch.sort(torch.randperm(576, generator=g)[:150]).values for _ in range(crops)]
    kept_pairs = {(c, p) for c in range(crops) for p in kept[c].tolist()}
    newline = torch.tensor([-1.0, -1.0])
    tile_layout = layout if merge_type != "flat" else None
    result = anyres.assemble(ids[0][kept[0]], ids[1:], kept[1:], tile_layout, merge_type, newline)
    assert as_pairs(result) == filtered(sequence, kept_pairs)
    if merge_type != "flat":
        everything = anyres.assemble(ids[0], ids[1:], [torch.arange(576)] * (crops - 1), layout, merge_type, newline)
        assert as_pairs(everything) == sequence


def test_tile_validity_is_what_unpadding_keeps(v16):
    from llava.model.llava_arch import unpad_image

    layout = anyres.tile_layout(2, 1, 24, (1000, 300), unpad_image)    # wide image on a 672x336 canvas
    valid = torch.stack([layout.tile_valid(t) for t in range(2)]).view(2, 24, 24)
    rows = valid.any(dim=2)
    # Letterbox rows are cut from both tiles alike; kept rows keep every column.
    assert rows[0].sum() < 24 and torch.equal(rows[0], rows[1]) and valid[:, rows[0]].all()


def images_of(processor, model, photo_dir, names_sizes):
    from PIL import Image
    from llava.mm_utils import process_images

    images = [Image.open(photo_dir / f"{n}.png").convert("RGB").resize(s) for n, s in names_sizes]
    tensors = process_images(images, processor, model.config)
    return [t.to(model.dtype) for t in tensors], [im.size for im in images]


def splice(model, tokenizer, images, sizes):
    from llava.mm_utils import tokenizer_image_token

    ids = [tokenizer_image_token("<image>\nWhat is this?", tokenizer, return_tensors="pt") for _ in images]
    input_ids = torch.nn.utils.rnn.pad_sequence(ids, batch_first=True, padding_value=0)
    mask = torch.nn.utils.rnn.pad_sequence([torch.ones_like(i, dtype=torch.bool) for i in ids], batch_first=True)
    with torch.inference_mode():
        out = model.prepare_inputs_labels_for_multimodal(input_ids, None, mask, None, None, images, sizes)
    return out[4], out[2]


def assert_batch_equals_singles(model, tokenizer, images, sizes):
    """Splice the images as one batch, then one at a time: each image's rows must agree."""
    embeds, mask = splice(model, tokenizer, images, sizes)
    for i, (image, size) in enumerate(zip(images, sizes)):
        single_embeds, single_mask = splice(model, tokenizer, [image], [size])
        length = int(mask[i].sum())
        assert length == int(single_mask.sum())
        torch.testing.assert_close(embeds[i, :length], single_embeds[0, :length], rtol=1e-3, atol=1e-3)


PHOTOS = [("astronaut", (512, 512)), ("coffee", (600, 400)), ("chelsea", (451, 300)), ("rocket", (427, 640)), ("coffee", (900, 250))]
EXTREME_PHOTOS = [("coffee", size) for size in EXTREME]


def test_ratio_one_is_bit_identical_to_upstream_with_fp16_tower(checkpoints, photo_dir):
    tokenizer, model, processor = load(checkpoints(TinySpec(anyres=True)))
    assert model.get_vision_tower().dtype == torch.float16      # as v1.6 checkpoints load
    images, sizes = images_of(processor, model, photo_dir, [PHOTOS[1], PHOTOS[3]] + EXTREME_PHOTOS)
    reference = splice(model, tokenizer, images, sizes)
    llava_freepruner.apply(Config(ratio=1.0))
    patched = splice(model, tokenizer, images, sizes)
    assert torch.equal(patched[0], reference[0]) and torch.equal(patched[1], reference[1])


def test_half_ratio_per_image_fraction_and_batch_equals_single(v16, photo_dir, tmp_path):
    tokenizer, model, processor = v16
    images, sizes = images_of(processor, model, photo_dir, PHOTOS)
    stats = tmp_path / "stats.jsonl"
    llava_freepruner.apply(Config(ratio=0.5, stats=str(stats)))
    assert_batch_equals_singles(model, tokenizer, images, sizes)
    llava_freepruner.remove()
    for record in read_jsonl(stats)[: len(images)]:
        assert 0.45 <= record["tokens_out"] / record["tokens_in"] <= 0.56
        assert record["crops"][0] == {**record["crops"][0], "tokens_in": 576, "tokens_out": 288}
        for crop in record["crops"][1:]:
            assert crop["tokens_out"] == int(crop["tokens_in"] * 0.5 + 0.5)


@pytest.mark.parametrize("method", VISION_METHODS)
def test_extreme_aspect_ratios_keep_their_budget_with_batch_equal_to_single(method, v16_clip_text, photo_dir,
                                                                             tmp_path):
    tokenizer, model, processor = v16_clip_text
    images, sizes = images_of(processor, model, photo_dir, EXTREME_PHOTOS + [PHOTOS[1]])
    stats = tmp_path / "stats.jsonl"
    llava_freepruner.apply(Config(vision_method=method, ratio=0.5, stats=str(stats)))
    assert_batch_equals_singles(model, tokenizer, images, sizes)
    llava_freepruner.remove()
    records = read_jsonl(stats)[: len(EXTREME)]
    # (tokens in, out) per image: the base crop keeps 288 of 576 and the tiles have no patch
    # left by unpadding; 50x4000 and 1x1000 keep the newlines of their 72 patchless rows.
    assert [(r["tokens_in"], r["tokens_out"]) for r in records] == [(576, 288), (648, 360), (648, 360)]
    assert all(crop["tokens_in"] == crop["tokens_out"] == 0 for r in records for crop in r["crops"][1:])


def test_tokens_mean_per_full_crop_scaled_to_tiles(v16, photo_dir, tmp_path):
    tokenizer, model, processor = v16
    images, sizes = images_of(processor, model, photo_dir, [("coffee", (900, 250))])
    llava_freepruner.apply(Config(tokens=100, stats=str(tmp_path / "s.jsonl")))
    splice(model, tokenizer, images, sizes)
    llava_freepruner.remove()
    crops = read_jsonl(tmp_path / "s.jsonl")[0]["crops"]
    assert crops[0]["tokens_out"] == 100
    for crop in crops[1:]:
        assert crop["tokens_in"] < 576 and crop["tokens_out"] == int(100 * crop["tokens_in"] / 576 + 0.5)
