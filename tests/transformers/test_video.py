"""Videos of transformers' VideoLlava, LlavaNextVideo and LlavaOnevision under unchanged generate()."""

import json
import logging

import pytest
import torch
import transformers
from packaging.version import Version

from llava_freepruner.fixtures import hf_tiny
from llava_freepruner.runtime import methods
from llava_freepruner.config import ConfigError
from llava_freepruner.fixtures.hf_tiny import TinyHF

VIDEO_LLAVA = TinyHF(kind="video_llava")
NEXT_VIDEO = TinyHF(kind="llava_next_video")
ONEVISION = TinyHF(kind="llava_onevision")
SPECS = [VIDEO_LLAVA, NEXT_VIDEO, ONEVISION]
IDS = ["video_llava", "llava_next_video", "llava_onevision"]
# (visual tokens per frame, kept per frame at ratio 0.5, tokens after the last frame)
FRAME_TOKENS = {"video_llava": (257, 129, 0), "llava_next_video": (144, 72, 0), "llava_onevision": (196, 98, 1)}


def panning(photo, frames=4, step=40):
    """A clip that pans across ``photo``: every frame a shifted crop."""
    return [photo.crop((i * step, 0, i * step + 320, 320)) for i in range(frames)]


def still(photo, frames=4):
    return [photo.crop((0, 0, 320, 320))] * frames


def generate(model, inputs, **kwargs):
    with torch.no_grad():
        return model.generate(**inputs, max_new_tokens=kwargs.pop("max_new_tokens", 4), do_sample=False,
                              return_dict_in_generate=True, output_scores=True, **kwargs)


def records(path):
    import llava_freepruner

    llava_freepruner.remove()                        # flushes the stats
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_ratio_one_gives_the_unpatched_tokens_and_scores(spec, tiny_models, photos, plugin):
    model, processor = tiny_models(spec)
    inputs = hf_tiny.video_inputs(model, processor, [panning(photos["astronaut"])], ["What happens?"])
    reference = generate(model, inputs)
    plugin(ratio=1.0)
    out = generate(model, inputs)
    assert torch.equal(out.sequences, reference.sequences)
    assert all(torch.equal(a, b) for a, b in zip(out.scores, reference.scores))


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_cache_holds_text_plus_each_frames_kept_tokens(spec, tiny_models, photos, plugin, tmp_path):
    model, processor = tiny_models(spec)
    inputs = hf_tiny.video_inputs(model, processor, [panning(photos["coffee"])], ["What happens?"])
    per_frame, kept, trailing = FRAME_TOKENS[spec.kind]
    visual = int((inputs["input_ids"] == model.config.video_token_id).sum())
    assert visual == 4 * per_frame + trailing
    text = inputs["input_ids"].shape[1] - visual
    plugin(ratio=0.5, stats=str(tmp_path / "stats.jsonl"))
    out = generate(model, inputs, max_new_tokens=2)
    assert torch.equal(out.sequences[:, :inputs["input_ids"].shape[1]], inputs["input_ids"])
    assert out.past_key_values.get_seq_length() == text + 4 * kept + trailing + 1
    (record,) = records(tmp_path / "stats.jsonl")
    assert record["kind"] == "video" and record["video_mode"] == "frame"
    assert record["frame_kept"] == [kept] * 4
    assert (record["tokens_in"], record["tokens_out"]) == (visual, 4 * kept + trailing)


# every method that needs no instruction (cdpruner also needs a CLIP text tower: test_cdpruner_hf.py)
VIDEO_METHODS = sorted(name for name, cls in methods.REGISTRY.items() if not cls.needs_instruction)


@pytest.mark.parametrize("method", VIDEO_METHODS)
@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_every_method_keeps_what_it_announces_and_the_cache_agrees(spec, method, tiny_models, photos, plugin,
                                                                   tmp_path, caplog):
    """Merging methods too: VisionZip's [CLS] and contextual tokens count and reach the LLM."""
    model, processor = tiny_models(spec)
    inputs = hf_tiny.video_inputs(model, processor, [panning(photos["chelsea"])], ["What happens?"])
    per_frame, kept, trailing = FRAME_TOKENS[spec.kind]
    text = inputs["input_ids"].shape[1] - 4 * per_frame - trailing
    plugin(vision_method=method, ratio=0.5, stats=str(tmp_path / "stats.jsonl"))
    with caplog.at_level(logging.INFO, logger="llava_freepruner"):
        out = generate(model, inputs, max_new_tokens=1)
    assert f"{method} keeping {kept} of {per_frame} visual tokens per video frame" in caplog.text
    assert out.past_key_values.get_seq_length() == text + 4 * kept + trailing
    (record,) = records(tmp_path / "stats.jsonl")
    assert record["frame_kept"] == [kept] * 4 and record["tokens_out"] == 4 * kept + trailing


@pytest.mark.parametrize("spec", [VIDEO_LLAVA, ONEVISION], ids=["video_llava", "llava_onevision"])
def test_batch_of_clips_equals_single_runs(spec, tiny_models, photos, plugin):
    model, processor = tiny_models(spec)
    clips = [panning(photos["astronaut"]), panning(photos["chelsea"], step=20)]
    questions = ["What happens?", "Describe the picture in one sentence."]
    plugin(ratio=0.3)
    batch = generate(model, hf_tiny.video_inputs(model, processor, clips, questions))
    for i in range(2):
        single = generate(model, hf_tiny.video_inputs(model, processor, clips[i:i + 1], questions[i:i + 1]))
        assert torch.equal(batch.sequences[i, -4:], single.sequences[0, -4:])
        for step_batch, step_single in zip(batch.scores, single.scores):
            torch.testing.assert_close(step_batch[i], step_single[0], rtol=1e-4, atol=1e-4)


def test_video_llava_prunes_an_image_and_a_video_in_one_batch(tiny_models, photos, plugin):
    model, processor = tiny_models(VIDEO_LLAVA)
    inputs = hf_tiny.video_inputs(model, processor, [panning(photos["rocket"])], ["What happens?"],
                                  image=photos["coffee"])
    ids = inputs["input_ids"]
    text = ids.shape[1] - int((ids == model.config.image_token_id).sum()) - int((ids == model.config.video_token_id).sum())
    reference = generate(model, inputs, max_new_tokens=2)
    plugin(ratio=1.0)
    assert torch.equal(generate(model, inputs, max_new_tokens=2).sequences, reference.sequences)
    plugin(ratio=0.5)
    out = generate(model, inputs, max_new_tokens=2)
    assert out.past_key_values.get_seq_length() == text + 128 + 4 * 129 + 1


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_temporal_mode_keeps_one_frames_budget_of_a_still_video(spec, tiny_models, photos, plugin, tmp_path):
    model, processor = tiny_models(spec)
    inputs = hf_tiny.video_inputs(model, processor, [still(photos["chelsea"])], ["What happens?"])
    per_frame, kept, trailing = FRAME_TOKENS[spec.kind]
    prefix = 1 if spec is VIDEO_LLAVA else 0
    plugin(ratio=0.5, video="temporal", stats=str(tmp_path / "stats.jsonl"))
    out = generate(model, inputs, max_new_tokens=1)
    text = inputs["input_ids"].shape[1] - 4 * per_frame - trailing
    assert out.past_key_values.get_seq_length() == text + kept + 3 * prefix + trailing
    (record,) = records(tmp_path / "stats.jsonl")
    assert record["video_mode"] == "temporal" and record["tau"] == 0.9
    assert record["frame_kept"] == [kept] + [prefix] * 3
    assert record["frame_redundant"] == [0] + [per_frame - prefix] * 3


def test_temporal_mode_keeps_the_frame_budget_where_frames_differ(tiny_models, photos, plugin, tmp_path):
    model, processor = tiny_models(NEXT_VIDEO)
    clip = [photos[name].crop((0, 0, 320, 320)) for name in ("astronaut", "coffee", "chelsea", "rocket")]
    inputs = hf_tiny.video_inputs(model, processor, [clip], ["What happens?"])
    plugin(ratio=0.25, video="temporal", video_tau=0.99, stats=str(tmp_path / "stats.jsonl"))
    generate(model, inputs, max_new_tokens=1)
    (record,) = records(tmp_path / "stats.jsonl")
    assert record["frame_kept"] == [36] * 4 and max(record["frame_redundant"]) < 144 - 36


def test_tokens_beyond_one_frame_are_refused_naming_the_frame_size(tiny_models, photos, plugin):
    model, processor = tiny_models(NEXT_VIDEO)
    inputs = hf_tiny.video_inputs(model, processor, [panning(photos["coffee"])], ["What happens?"])
    plugin(tokens=200)
    with pytest.raises(ConfigError, match="FREEPRUNER_TOKENS=200 exceeds the 144 visual tokens of one video frame"):
        generate(model, inputs)


def test_video_variables_on_an_image_only_model_are_refused(tiny_models, photos, plugin):
    from chat_generation import inputs_for

    model, processor = tiny_models(TinyHF())
    plugin(ratio=0.5, video="temporal")
    with pytest.raises(ConfigError, match="FREEPRUNER_VIDEO set, but LlavaModel is an image-only model"):
        generate(model, inputs_for(processor, [photos["coffee"]], ["What is in the image?"]))


@pytest.mark.skipif(Version(transformers.__version__) < Version("5.23"),
                    reason="generate(prefill_chunk_size=...) arrived in transformers 5.23")
@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_prefill_chunks_at_ratio_one_give_the_hosts_tokens(spec, tiny_models, photos, plugin):
    model, processor = tiny_models(spec)
    inputs = hf_tiny.video_inputs(model, processor, [panning(photos["astronaut"])], ["What happens?"])
    reference = generate(model, inputs, prefill_chunk_size=100)
    plugin(ratio=1.0)
    out = generate(model, inputs, prefill_chunk_size=100)
    assert torch.equal(out.sequences, reference.sequences)
    assert all(torch.equal(a, b) for a, b in zip(out.scores, reference.scores))


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_static_cache_gives_the_dynamic_caches_tokens(spec, tiny_models, photos, plugin):
    model, processor = tiny_models(spec)
    clips = [panning(photos["astronaut"]), panning(photos["chelsea"], step=20)]
    inputs = hf_tiny.video_inputs(model, processor, clips, ["What happens?", "Describe the picture in one sentence."])
    plugin(ratio=0.5)
    dynamic = generate(model, inputs)
    out = generate(model, inputs, cache_implementation="static")
    assert torch.equal(out.sequences, dynamic.sequences)
    for step_static, step_dynamic in zip(out.scores, dynamic.scores):
        torch.testing.assert_close(step_static, step_dynamic, rtol=1e-4, atol=1e-4)
