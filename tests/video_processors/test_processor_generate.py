"""Processor + generate() as in transformers' examples, for videos of Video-LLaVA,
LLaVA-NeXT-Video and LLaVA-OneVision.

Each tiny checkpoint is loaded from disk with its own class and ``AutoProcessor``
(the real VideoLlavaProcessor / LlavaNextVideoProcessor / LlavaOnevisionProcessor, video
processor included); frames are 8 uniformly sampled frames of Debian's opencv-doc clips.
``processor(text=prompt, videos=clip)`` writes the placeholders, ``model.generate(**inputs)``
runs unchanged, and the plugin prunes what the LLM sees.
"""

import pytest
import torch

from llava_freepruner.runtime.stats import read_jsonl

KINDS = ["video_llava", "llava_next_video", "llava_onevision"]
FRAMES = 8          # transformers' examples sample 8 frames for each of the three models
# per kind: (model class, video tokens per frame, kept per frame at ratio 0.5, tokens after the last frame)
MODELS = {
    "video_llava": ("VideoLlavaForConditionalGeneration", 257, 129, 0),     # [CLS] + 16 x 16, [CLS] kept
    "llava_next_video": ("LlavaNextVideoForConditionalGeneration", 144, 72, 0),  # 12 x 12 pooled cells
    "llava_onevision": ("LlavaOnevisionForConditionalGeneration", 196, 98, 1),   # 14 x 14 cells + a newline
}
QUESTION = "Why is this video funny?"


@pytest.fixture(scope="module")
def loaded(checkpoint):
    """kind -> (model, processor), loaded from the saved checkpoint as the examples do."""
    import transformers

    cache = {}

    def get(kind):
        if kind not in cache:
            folder = checkpoint(kind)
            model = getattr(transformers, MODELS[kind][0]).from_pretrained(folder).eval()
            cache[kind] = model, transformers.AutoProcessor.from_pretrained(folder)
        return cache[kind]

    return get


def prompt(processor, question=QUESTION):
    conversation = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]}]
    return processor.apply_chat_template(conversation, add_generation_prompt=True)


def stats_records(path):
    import llava_freepruner

    llava_freepruner.remove()        # flushes the stats
    return read_jsonl(path)


def generate(model, inputs, new_tokens=2):
    # min_new_tokens: every run (batched or not) generates the same number of tokens
    with torch.no_grad():
        return model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                              return_dict_in_generate=True, output_scores=True)


def test_the_saved_processors_are_transformers_own(loaded):
    expected = {"video_llava": "VideoLlavaProcessor", "llava_next_video": "LlavaNextVideoProcessor",
                "llava_onevision": "LlavaOnevisionProcessor"}
    for kind in KINDS:
        _, processor = loaded(kind)
        assert type(processor).__name__ == expected[kind]
        assert type(processor.video_processor).__name__.endswith("VideoProcessor")


@pytest.mark.parametrize("kind", KINDS)
def test_ratio_half_leaves_the_llm_about_half_of_each_clips_visual_tokens(kind, loaded, clip, plugin, tmp_path):
    model, processor = loaded(kind)
    _, per_frame, kept, trailing = MODELS[kind]
    inputs = processor(text=prompt(processor), videos=clip("vtest.avi", FRAMES), return_tensors="pt")
    visual = int((inputs["input_ids"] == model.config.video_token_id).sum())
    assert visual == FRAMES * per_frame + trailing          # Video-LLaVA: 8 x 257 = 2056
    text = inputs["input_ids"].shape[1] - visual

    plugin(ratio=0.5, stats=str(tmp_path / "stats.jsonl"))
    out = generate(model, inputs)
    # the prompt the caller sees is unchanged; the KV cache holds text + kept visual tokens + 1 new token
    assert torch.equal(out.sequences[:, :inputs["input_ids"].shape[1]], inputs["input_ids"])
    assert out.past_key_values.get_seq_length() == text + FRAMES * kept + trailing + 1
    (record,) = stats_records(tmp_path / "stats.jsonl")
    assert record["kind"] == "video" and record["frames"] == FRAMES
    assert (record["tokens_in"], record["tokens_out"]) == (visual, FRAMES * kept + trailing)
    assert 0.45 <= record["tokens_out"] / record["tokens_in"] <= 0.56
    assert record["frame_kept"] == [kept] * FRAMES


@pytest.mark.parametrize("kind", KINDS)
def test_a_batch_of_two_clips_generates_what_two_single_runs_do(kind, loaded, clip, plugin):
    model, processor = loaded(kind)
    videos = [clip("vtest.avi", FRAMES), clip("Megamind.avi", FRAMES)]
    texts = [prompt(processor), prompt(processor, "What is the man in the blue suit saying to the others?")]
    plugin(ratio=0.5)
    batch = processor(text=texts, videos=videos, padding=True, return_tensors="pt")
    assert batch["attention_mask"][0].sum() < batch["attention_mask"].shape[1]     # the shorter prompt is padded
    batched = generate(model, batch, new_tokens=3)
    for i in range(2):
        single = processor(text=texts[i], videos=videos[i], return_tensors="pt")
        alone = generate(model, single, new_tokens=3)
        assert torch.equal(batched.sequences[i, batch["input_ids"].shape[1]:],
                           alone.sequences[0, single["input_ids"].shape[1]:])
        for step_batched, step_alone in zip(batched.scores, alone.scores):
            torch.testing.assert_close(step_batched[i], step_alone[0], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", KINDS)
def test_ratio_one_generates_the_unpatched_ids(kind, loaded, clip, plugin):
    model, processor = loaded(kind)
    inputs = processor(text=prompt(processor), videos=clip("tree.avi", FRAMES), return_tensors="pt")
    reference = generate(model, inputs, new_tokens=4)
    plugin(ratio=1.0)
    out = generate(model, inputs, new_tokens=4)
    assert torch.equal(out.sequences, reference.sequences)
    assert all(torch.equal(a, b) for a, b in zip(out.scores, reference.scores))
