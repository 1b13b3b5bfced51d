"""transformers' Qwen2-VL, Qwen2.5-VL and Qwen3-VL under unchanged processor + generate() / forward.

The reference for a pruned prompt: the unpatched model with the dropped placeholders
masked out of attention and every position id as in the full prompt. Pruning
removes exactly those keys and keeps every kept token's M-RoPE ids, so the logits agree.
"""

import json

import pytest
import torch
import transformers
from packaging.version import Version

from qwen_checks import full_positions, half, merged_tokens, pruned_generate
from chat_generation import (cache_of, check_beams_and_return_sequences_at_ratio_one, generate, inputs_for,
                             layer_lengths)
from llava_freepruner.config import ConfigError
from llava_freepruner.fixtures import hf_tiny_qwen
from llava_freepruner.fixtures.hf_tiny_qwen import TinyQwen

KINDS = ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"]
# Qwen3-VL-MoE shares Qwen3-VL's tower and attention: checked where its MoE decoder could differ
WITH_MOE = KINDS + ["qwen3_vl_moe"]
# Qwen3.5's hybrid decoder (transformers >= 5.2; its reference checks: test_qwen3_5.py), where no masking is involved
WITH_HYBRID = KINDS + [kind for kind in ("qwen3_5",) if hf_tiny_qwen.available(kind)]
VISION_METHODS = ["freepruner", "random", "grid", "cls_topk", "visionzip", "divprune", "vispruner"]
QUESTIONS = ["What is in the image?", "Describe the picture in one sentence."]


@pytest.fixture
def two_sizes(qwen_models, photos):
    """(model, processor, inputs) of two prompts whose images make different numbers of merged tokens."""
    def make(kind):
        model, processor = qwen_models(TinyQwen(kind=kind))
        inputs = inputs_for(processor, [photos[name] for name in PHOTOS], QUESTIONS)
        counts = merged_tokens(inputs)
        assert counts[0] != counts[1]
        return model, processor, inputs
    return make


PHOTOS = ["astronaut", "rocket"]


@pytest.mark.parametrize("kind", WITH_MOE)
def test_ratio_one_gives_the_unpatched_tokens_and_scores(kind, two_sizes, plugin):
    model, _, inputs = two_sizes(kind)
    reference = generate(model, inputs)
    plugin(ratio=1.0)
    out = generate(model, inputs)
    assert torch.equal(out.sequences, reference.sequences)
    assert all(torch.equal(a, b) for a, b in zip(out.scores, reference.scores))


@pytest.mark.parametrize("kind", WITH_MOE)
@pytest.mark.parametrize("method", [m for m in VISION_METHODS if m != "visionzip"])     # visionzip merges rows
def test_pruned_logits_equal_the_unpatched_model_with_the_dropped_tokens_masked(kind, method, two_sizes, plugin,
                                                                                 monkeypatch):
    model, processor, inputs = two_sizes(kind)
    positions = full_positions(model, inputs)
    out, calls, keep = pruned_generate(model, inputs, plugin, monkeypatch, method, max_new_tokens=2)
    with torch.no_grad():
        reference = model(**{**inputs, "attention_mask": keep.long()}, position_ids=positions).logits[:, -1]
    torch.testing.assert_close(out.scores[0], reference, rtol=1e-4, atol=1e-5)
    # the kept tokens (and the text) saw the full prompt's M-RoPE ids; decode steps continue from them
    prefill, step = calls[0], calls[1]
    rope = prefill["position_ids"][-3:]
    for row in range(2):
        kept = int(keep[row].sum())
        assert torch.equal(rope[:, row, -kept:], positions[-3:, row][:, keep[row]])
    unpruned_step = positions[-3:, :, -1:] + 1
    assert torch.equal(step["position_ids"][-3:], unpruned_step)


@pytest.mark.parametrize("kind", WITH_HYBRID)
@pytest.mark.parametrize("method", VISION_METHODS)
def test_every_vision_method_keeps_half_of_each_image_and_batch_equals_singles(kind, method, two_sizes, photos,
                                                                               plugin, tmp_path):
    model, processor, inputs = two_sizes(kind)
    stats = tmp_path / "stats.jsonl"
    plugin(ratio=0.5, vision_method=method, stats=str(stats))
    batch = generate(model, inputs, max_new_tokens=3)
    singles = [generate(model, inputs_for(processor, [photos[name]], [question]), max_new_tokens=3)
               for name, question in zip(PHOTOS, QUESTIONS)]
    import llava_freepruner

    llava_freepruner.remove()       # flushes the stats
    records = [json.loads(line) for line in stats.read_text().splitlines()]
    counts = merged_tokens(inputs)
    assert [(r["tokens_in"], r["tokens_out"]) for r in records[:2]] == [(n, half(n)) for n in counts]
    length = inputs["input_ids"].shape[1]
    for row, single in enumerate(singles):
        assert torch.equal(single.sequences[0, -3:], batch.sequences[row, length:])
        # Qwen3.5's linear attention alone moves a logit by up to 1e-5 between batched and single prompts
        torch.testing.assert_close(single.scores[0][0], batch.scores[0][row], rtol=1e-4,
                                   atol=1e-4 if kind in hf_tiny_qwen.HYBRID_KINDS else 1e-5)


@pytest.mark.parametrize("kind", WITH_HYBRID)
def test_several_images_in_one_prompt_each_keep_their_budget(kind, qwen_models, photos, plugin, tmp_path):
    model, processor = qwen_models(TinyQwen(kind=kind))
    inputs = inputs_for(processor, [photos["coffee"], photos["chelsea"], photos["rocket"]], QUESTIONS[:1],
                        per_prompt=3)
    stats = tmp_path / "stats.jsonl"
    plugin(ratio=0.5, stats=str(stats))
    with torch.no_grad():
        out = model(**inputs, use_cache=True)
    import llava_freepruner

    llava_freepruner.remove()
    counts = merged_tokens(inputs)
    records = [json.loads(line) for line in stats.read_text().splitlines()]
    assert [r["tokens_out"] for r in records] == [half(n) for n in counts]
    length = inputs["input_ids"].shape[1]
    assert set(layer_lengths(cache_of(out))) == {length - sum(n - half(n) for n in counts)}
    assert out.logits.shape[1] == length          # the caller's positions, all of them


@pytest.mark.parametrize("kind", WITH_HYBRID)
def test_text_only_prompts_are_untouched(kind, qwen_models, plugin):
    model, processor = qwen_models(TinyQwen(kind=kind))
    processor.tokenizer.padding_side = "left"
    inputs = processor.tokenizer(QUESTIONS, return_tensors="pt", padding=True)
    reference = generate(model, inputs)
    plugin(ratio=0.5)
    out = generate(model, inputs)
    assert torch.equal(out.sequences, reference.sequences)


@pytest.mark.parametrize("kind", WITH_MOE + WITH_HYBRID[len(KINDS):])
@pytest.mark.parametrize("fields", [{"vision_method": "cdpruner", "ratio": 0.5},
                                    {"vision_method": None, "llm_method": "fastv", "ratio": 0.5, "fastv_layer": 3}],
                         ids=["cdpruner", "fastv-past-the-last-layer"])
def test_what_a_qwen_model_cannot_serve_is_refused_by_name_before_its_weights(kind, fields, plugin):
    plugin(**fields)
    method = fields["vision_method"] or fields["llm_method"]
    with pytest.raises(ConfigError, match=rf"FREEPRUNER_METHOD={method}"):
        hf_tiny_qwen.build(TinyQwen(kind=kind))


@pytest.mark.parametrize("kind", WITH_HYBRID)
def test_beams_and_several_return_sequences(kind, two_sizes, plugin):
    model, _, inputs = two_sizes(kind)
    length = inputs["input_ids"].shape[1]
    check_beams_and_return_sequences_at_ratio_one(model, inputs, plugin)
    plugin(ratio=0.5)
    counts = merged_tokens(inputs)
    pruned = generate(model, inputs, num_beams=2, max_new_tokens=3)
    assert torch.equal(pruned.sequences[:, :length], inputs["input_ids"])
    assert max(layer_lengths(cache_of(pruned))) <= length - min(n - half(n) for n in counts) + 3
    torch.manual_seed(0)
    several = generate(model, inputs, do_sample=True, top_k=5, num_return_sequences=2, max_new_tokens=3)
    assert torch.equal(several.sequences[:, :length], inputs["input_ids"].repeat_interleave(2, dim=0))


CHUNKS_SINCE = "5.23"


@pytest.mark.skipif(Version(transformers.__version__) < Version(CHUNKS_SINCE),
                    reason=f"generate(prefill_chunk_size=...) arrived in transformers {CHUNKS_SINCE}")
@pytest.mark.parametrize("kind", WITH_HYBRID)
def test_prefill_chunks_at_ratio_one_are_the_hosts_and_refused_with_pruning(kind, two_sizes, plugin):
    model, _, inputs = two_sizes(kind)
    reference = generate(model, inputs, prefill_chunk_size=16)
    plugin(ratio=1.0)
    assert torch.equal(generate(model, inputs, prefill_chunk_size=16).sequences, reference.sequences)
    plugin(ratio=0.5)
    with pytest.raises(ConfigError, match=r"generate\(prefill_chunk_size=16\)"):
        generate(model, inputs, prefill_chunk_size=16)


def video_inputs(model, processor, frames, grid, still=False):
    """A prompt with one video of ``frames`` temporal slices of ``grid`` patches, built by hand
    (the video processors need torchvision): Qwen3-VL sets each slice apart."""
    tokenizer = processor.tokenizer
    config = model.config
    cells = grid[0] * grid[1] // 4
    start, end = tokenizer.convert_tokens_to_ids("<|vision_start|>"), tokenizer.convert_tokens_to_ids("<|vision_end|>")
    per_slice = config.model_type == "qwen3_vl"
    block = ([start] + [config.video_token_id] * cells + [end]) * frames if per_slice else \
        [start] + [config.video_token_id] * (frames * cells) + [end]
    text = tokenizer("What happens in the video?")["input_ids"]
    ids = torch.tensor([text[:2] + block + text[2:]])
    vision = config.vision_config
    width = 3 * vision.temporal_patch_size * vision.patch_size ** 2
    torch.manual_seed(1)
    pixels = torch.randn(grid[0] * grid[1], width).repeat(frames, 1) if still else \
        torch.randn(frames * grid[0] * grid[1], width)
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values_videos": pixels,
              "video_grid_thw": torch.tensor([[frames, *grid]])}
    if Version(transformers.__version__).major >= 5:
        inputs["mm_token_type_ids"] = 2 * (ids == config.video_token_id).int()
    return inputs, cells


@pytest.mark.parametrize("kind", KINDS)       # Qwen3.5 needs its own timestamped frame layout
def test_videos_keep_half_of_every_frame_and_temporal_mode_drops_a_still_frame(kind, qwen_models, plugin, tmp_path):
    model, processor = qwen_models(TinyQwen(kind=kind))
    inputs, cells = video_inputs(model, processor, frames=3, grid=(8, 12))
    reference = generate(model, inputs)
    plugin(ratio=1.0)
    assert torch.equal(generate(model, inputs).sequences, reference.sequences)
    length = inputs["input_ids"].shape[1]
    for mode, still, kept in (("frame", False, 3 * half(cells)), ("temporal", True, half(cells))):
        stats = tmp_path / f"{mode}.jsonl"
        plugin(ratio=0.5, video=mode, stats=str(stats))
        data, _ = video_inputs(model, processor, frames=3, grid=(8, 12), still=still)
        with torch.no_grad():
            out = model(**data, use_cache=True)
        import llava_freepruner

        llava_freepruner.remove()
        record = json.loads(stats.read_text().splitlines()[0])
        assert (record["kind"], record["tokens_in"], record["tokens_out"]) == ("video", 3 * cells, kept)
        assert set(layer_lengths(cache_of(out))) == {length - (3 * cells - kept)}
