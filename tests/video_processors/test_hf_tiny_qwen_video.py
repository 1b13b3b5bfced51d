"""Tiny Qwen-VL checkpoints (hf_tiny_qwen) with torchvision: saved with their full processors
(video processor included), loaded back with ``AutoProcessor``, videos expanded to one
placeholder per merged token, generate() unchanged; the plugin on a video laid out frame by
frame with timestamps (Qwen3-VL, Qwen3.5)."""

import json

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


def video_inputs(processor, kind):
    rng = np.random.default_rng(0)
    video = rng.integers(0, 256, (FRAMES, 200, 300, 3), dtype=np.uint8)
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What happens?"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    kwargs = {"do_sample_frames": False} if kind == "qwen3_vl" else {}
    return processor(videos=[video], text=[text], return_tensors="pt", **kwargs)


@pytest.mark.parametrize("kind", hf_tiny_qwen.KINDS)
def test_video_through_the_saved_processor(loaded, kind):
    model, processor = loaded(kind)
    _, _, processor_cls = hf_tiny_qwen._classes(kind)
    assert type(processor) is processor_cls and processor.video_processor is not None
    inputs = video_inputs(processor, kind)
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


def _decoder_positions(model, inputs, calls):
    """Runs generate() (2 new tokens) and keeps the position ids of each decoder call in ``calls``."""
    # a hook after the call: the plugin shortens the sequence inside the decoder's forward
    handle = model.model.language_model.register_forward_hook(
        lambda module, args, kwargs, output: calls.append(kwargs["position_ids"]), with_kwargs=True)
    try:
        with torch.no_grad():
            return model.generate(**inputs, max_new_tokens=2, do_sample=False, return_dict_in_generate=True,
                                  output_scores=True)
    finally:
        handle.remove()


@pytest.mark.parametrize("kind", ["qwen3_vl", "qwen3_5"])
def test_a_pruned_video_keeps_half_of_every_slice_at_its_full_prompt_positions(loaded, kind, tmp_path, monkeypatch):
    import llava_freepruner
    from llava_freepruner.config import Config
    from llava_freepruner.runtime.backends import transformers_qwen

    model, processor = loaded(kind)
    inputs = video_inputs(processor, kind)
    full = []
    reference = _decoder_positions(model, inputs, full)
    llava_freepruner.apply(Config(ratio=1.0))
    try:
        same = _decoder_positions(model, inputs, [])
    finally:
        llava_freepruner.remove()
    assert torch.equal(same.sequences, reference.sequences)
    assert all(torch.equal(a, b) for a, b in zip(same.scores, reference.scores))

    kept = []
    original = transformers_qwen._keep_in_place

    def spy(*args):
        positions, features = original(*args)
        kept.extend(positions)
        return positions, features

    monkeypatch.setattr(transformers_qwen, "_keep_in_place", spy)
    stats = tmp_path / "stats.jsonl"
    llava_freepruner.apply(Config(ratio=0.5, stats=str(stats)))
    pruned = []
    try:
        _decoder_positions(model, inputs, pruned)
    finally:
        llava_freepruner.remove()
    record = json.loads(stats.read_text().splitlines()[0])
    cells = 12 * 18 // 4
    assert (record["kind"], record["tokens_in"], record["tokens_out"]) == ("video", FRAMES // 2 * cells,
                                                                            FRAMES // 2 * (cells // 2))
    # the decoder saw the text and the kept tokens only, each at its position in the full prompt
    columns = (inputs["input_ids"][0] == model.config.video_token_id).nonzero().flatten()
    keep = torch.ones(inputs["input_ids"].shape[1], dtype=torch.bool)
    keep[columns] = False
    keep[columns[kept[0].cpu()]] = True
    assert pruned[0].shape[-1] == int(keep.sum()) < keep.numel()
    assert torch.equal(pruned[0][-3:], full[0][-3:][..., keep])
    assert torch.equal(pruned[1][-3:], full[1][-3:])          # the first decode step continues the full prompt
