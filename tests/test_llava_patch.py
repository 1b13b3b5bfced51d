"""The encode_images patch, in process, on tiny upstream LLaVA models."""

import pytest
import torch

import llava_freepruner
from llava_freepruner.config import Config
from llava_freepruner.runtime.stats import read_jsonl
from llava_freepruner.fixtures.tiny import TinySpec

from conftest import load_llava as load


pytestmark = pytest.mark.usefixtures("unpatched")


def pixels(processor, photo_dir, names=("astronaut", "coffee", "chelsea")):
    from PIL import Image
    from llava.mm_utils import process_images

    images = [Image.open(photo_dir / f"{n}.png").convert("RGB") for n in names]
    return process_images(images, processor, type("C", (), {"image_aspect_ratio": "pad"})()).half()


@pytest.fixture(scope="module")
def v15(checkpoints):
    return load(checkpoints())


def encode(model, images):
    with torch.inference_mode():
        return model.encode_images(images)


def test_apply_is_idempotent_and_remove_restores_originals():
    from llava.model.llava_arch import LlavaMetaForCausalLM

    original = LlavaMetaForCausalLM.encode_images
    llava_freepruner.apply(Config(ratio=0.5))
    patched = LlavaMetaForCausalLM.encode_images
    assert patched is not original and llava_freepruner.is_applied()
    llava_freepruner.apply(Config(ratio=0.25))
    assert LlavaMetaForCausalLM.encode_images is patched
    llava_freepruner.remove()
    llava_freepruner.remove()
    assert LlavaMetaForCausalLM.encode_images is original and not llava_freepruner.is_applied()


def test_half_ratio_keeps_288_per_image_and_writes_stats(v15, photo_dir, tmp_path):
    _, model, processor = v15
    images = pixels(processor, photo_dir)
    full = encode(model, images)
    stats = tmp_path / "stats.jsonl"
    llava_freepruner.apply(Config(ratio=0.5, stats=str(stats)))
    kept = encode(model, images)
    llava_freepruner.remove()
    assert full.shape[:2] == (3, 576) and kept.shape == (3, 288, full.shape[2])
    records = read_jsonl(stats)
    assert [r["tokens_out"] for r in records] == [288] * 3
    assert all(r["tokens_in"] == 576 and r["pivotal"] + r["complementary"] == 288 for r in records)
    # Kept rows are rows of the unpruned output (projector is per token), in raster order.
    for b in range(3):
        matches = [int(torch.nonzero((full[b] == row).all(-1))[0]) for row in kept[b]]
        assert matches == sorted(matches) and len(set(matches)) == 288


def test_ratio_one_is_bit_identical(v15, photo_dir):
    _, model, processor = v15
    images = pixels(processor, photo_dir)
    reference = encode(model, images)
    llava_freepruner.apply(Config(ratio=1.0))
    assert torch.equal(encode(model, images), reference)


def test_batch_equals_single_runs(v15, photo_dir, tmp_path):
    _, model, processor = v15
    images = pixels(processor, photo_dir)
    llava_freepruner.apply(Config(ratio=0.3, stats=str(tmp_path / "s.jsonl")))
    batch = encode(model, images)
    singles = torch.cat([encode(model, images[i:i + 1]) for i in range(3)])
    llava_freepruner.remove()   # flushes the last stats record
    torch.testing.assert_close(batch, singles, rtol=1e-3, atol=1e-3)
    records = read_jsonl(tmp_path / "s.jsonl")
    assert [r["pivotal"] for r in records[:3]] == [r["pivotal"] for r in records[3:]]


def test_fp16_tower(checkpoints, photo_dir):
    _, model, processor = load(checkpoints())
    model.get_vision_tower().to(torch.float16)
    images = pixels(processor, photo_dir)
    llava_freepruner.apply(Config(ratio=0.5))
    kept = encode(model, images)
    assert kept.shape[1] == 288 and torch.isfinite(kept).all()


def test_cls_patch_keeps_cls_in_front(checkpoints, photo_dir):
    _, model, processor = load(checkpoints(TinySpec(select_feature="cls_patch")))
    images = pixels(processor, photo_dir, ("rocket",))
    full = encode(model, images)
    llava_freepruner.apply(Config(tokens=100))
    kept = encode(model, images)
    assert full.shape[1] == 577 and kept.shape[1] == 101
    assert torch.equal(kept[0, 0], full[0, 0])


def test_mistral_class_and_text_only_generation(checkpoints, photo_dir):
    tokenizer, model, processor = load(checkpoints(TinySpec(llm="mistral")))
    assert type(model).__name__ == "LlavaMistralForCausalLM"
    images = pixels(processor, photo_dir, ("coffee",))
    llava_freepruner.apply(Config(ratio=0.5))
    assert encode(model, images).shape[1] == 288
    ids = tokenizer("Hello there", return_tensors="pt").input_ids
    with torch.inference_mode():
        out = model.generate(ids, max_new_tokens=3, do_sample=False)
    assert out.shape[1] >= 1
