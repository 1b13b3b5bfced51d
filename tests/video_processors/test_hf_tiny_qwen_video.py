"""Tiny Qwen2-VL, Qwen2.5-VL and Qwen3-VL checkpoints (hf_tiny_qwen) with torchvision: saved
with their full processors (video processor included), loaded back with ``AutoProcessor``,
videos expanded to one placeholder per merged token, generate() unchanged."""

import numpy as np
import pytest
import torch

from llava_freepruner.fixtures import hf_tiny_qwen
from llava_freepruner.fixtures.hf_tiny_qwen import TinyQwen

FRAMES = 4


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    root = tmp_path_factory.mktemp("tiny_qwen")
    cache = {}

    def get(kind):
        if kind not in cache:
            folder = hf_tiny_qwen.save(TinyQwen(kind=kind), str(root / kind))
            cache[kind] = (AutoModelForImageTextToText.from_pretrained(folder).eval(),
                           AutoProcessor.from_pretrained(folder))
        return cache[kind]

    return get


@pytest.mark.parametrize("kind", hf_tiny_qwen.KINDS)
def test_video_through_the_saved_processor(loaded, kind):
    model, processor = loaded(kind)
    _, _, processor_cls = hf_tiny_qwen._classes(kind)
    assert type(processor) is processor_cls and processor.video_processor is not None
    rng = np.random.default_rng(0)
    video = rng.integers(0, 256, (FRAMES, 200, 300, 3), dtype=np.uint8)
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What happens?"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    kwargs = {"do_sample_frames": False} if kind == "qwen3_vl" else {}
    inputs = processor(videos=[video], text=[text], return_tensors="pt", **kwargs)
    grid = inputs["video_grid_thw"][0]
    assert grid.tolist() == [FRAMES // 2, 12, 18]
    tokens = int((inputs["input_ids"] == model.config.video_token_id).sum())
    assert tokens == int(grid.prod()) // 4
    if kind == "qwen3_vl":      # each temporal patch: a timestamp, then its tokens between vision start and end
        assert (inputs["input_ids"] == model.config.vision_start_token_id).sum() == FRAMES // 2
    assert inputs["mm_token_type_ids"].eq(2).sum() == tokens
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=2, do_sample=False)
    assert out.shape[0] == 1 and out.shape[1] > inputs["input_ids"].shape[1]
