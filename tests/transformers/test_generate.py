"""transformers' LLaVA classes under unchanged caller code: processor + generate() / forward."""

import inspect
import json

import pytest
import torch
import transformers
from packaging.version import Version

from chat_generation import check_beams_and_return_sequences_at_ratio_one, generate, inputs_for, layer_lengths
from llava_freepruner.fixtures.hf_tiny import TinyHF

LLAVA = TinyHF()
NEXT = TinyHF(kind="llava_next")
QUESTIONS = ["What is in the image?", "Describe the picture in one sentence."]


def image_token_count(model, inputs):
    return int((inputs["input_ids"] == model.config.image_token_id).sum(dim=1).max())


@pytest.mark.parametrize("spec", [LLAVA, NEXT], ids=["llava", "llava_next"])
def test_ratio_one_gives_the_unpatched_tokens_and_logits(spec, tiny_models, photos, plugin):
    model, processor = tiny_models(spec)
    inputs = inputs_for(processor, [photos["astronaut"], photos["rocket"]], QUESTIONS)
    reference = generate(model, inputs)
    with torch.no_grad():
        reference_logits = model(**inputs).logits
    plugin(ratio=1.0)
    pruned = generate(model, inputs)
    with torch.no_grad():
        logits = model(**inputs).logits
    assert torch.equal(pruned.sequences, reference.sequences)
    assert all(torch.equal(a, b) for a, b in zip(pruned.scores, reference.scores))
    assert torch.equal(logits, reference_logits)


def test_half_ratio_leaves_text_plus_288_in_every_layer_of_the_cache(tiny_models, photos, plugin):
    model, processor = tiny_models(LLAVA)
    inputs = inputs_for(processor, [photos["coffee"]], QUESTIONS[:1])
    length = inputs["input_ids"].shape[1]
    text = length - image_token_count(model, inputs)
    assert image_token_count(model, inputs) == 576
    plugin(ratio=0.5)
    out = generate(model, inputs, max_new_tokens=4)
    assert torch.equal(out.sequences[:, :length], inputs["input_ids"])
    # the last new token is not in the cache yet
    assert layer_lengths(out.past_key_values) == [text + 288 + 3] * model.config.text_config.num_hidden_layers


def test_several_images_in_one_prompt_each_keep_their_budget(tiny_models, photos, plugin):
    model, processor = tiny_models(LLAVA)
    inputs = inputs_for(processor, [photos["coffee"], photos["chelsea"]], QUESTIONS[:1], per_prompt=2)
    text = inputs["input_ids"].shape[1] - image_token_count(model, inputs)
    plugin(tokens=100)
    out = generate(model, inputs, max_new_tokens=1)
    assert set(layer_lengths(out.past_key_values)) == {text + 200}


@pytest.mark.parametrize("spec", [LLAVA, NEXT], ids=["llava", "llava_next"])
def test_batch_with_left_padding_equals_single_runs(spec, tiny_models, photos, plugin):
    model, processor = tiny_models(spec)
    images = [photos["astronaut"], photos["rocket"] if spec is LLAVA else photos["coffee"]]
    plugin(ratio=0.3)
    batch = generate(model, inputs_for(processor, images, QUESTIONS))
    for i, (image, question) in enumerate(zip(images, QUESTIONS)):
        single = generate(model, inputs_for(processor, [image], [question]))
        assert torch.equal(batch.sequences[i, -5:], single.sequences[0, -5:])
        for step_batch, step_single in zip(batch.scores, single.scores):
            torch.testing.assert_close(step_batch[i], step_single[0], rtol=1e-4, atol=1e-4)


def test_forward_logits_at_text_positions_match_a_prompt_built_short(tiny_models, photos, plugin):
    """The reference never sees the plugin: the unpatched model on a prompt that
    holds only the kept placeholders, filled with the kept rows of its own features."""
    from llava_freepruner.runtime import methods
    from llava_freepruner.config import Config
    from llava_freepruner.runtime.methods.base import CropRequest, SelectionContext

    model, processor = tiny_models(LLAVA)
    inputs = inputs_for(processor, [photos["chelsea"]], QUESTIONS[:1])
    config = Config(vision_method="grid", ratio=0.25)
    ctx = SelectionContext(requests=[CropRequest(config.budget(576))], grid=(24, 24), num_prefix=1,
                           num_layers=4, feature_layer=2)
    kept = methods.create(config).select(ctx)[0].indices
    ids = inputs["input_ids"][0]
    is_image = ids == model.config.image_token_id
    keep = ~is_image
    keep[torch.nonzero(is_image).flatten()[kept]] = True
    with torch.no_grad():
        features = model.get_image_features(pixel_values=inputs["pixel_values"])
        features = getattr(features, "pooler_output", features)[0][kept]
        base = model.get_input_embeddings()(ids[keep][None])
        embeds = base.masked_scatter((ids[keep] == model.config.image_token_id)[None, :, None], features[None])
        reference = model(inputs_embeds=embeds).logits
    plugin(vision_method="grid", ratio=0.25)
    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.shape[1] == ids.shape[0]          # every caller position has logits
    text_after = ids.shape[0] - int(torch.nonzero(is_image).max()) - 1
    torch.testing.assert_close(logits[0, -text_after:], reference[0, -text_after:], rtol=1e-4, atol=1e-4)


def test_right_padded_forward_equals_single_forwards(tiny_models, photos, plugin):
    model, processor = tiny_models(LLAVA)
    images = [photos["astronaut"], photos["coffee"]]
    questions = [QUESTIONS[0], QUESTIONS[1] + " Answer briefly."]
    plugin(ratio=0.4)
    batch = inputs_for(processor, images, questions, padding_side="right")
    with torch.no_grad():
        batch_logits = model(**batch).logits
    for i in range(2):
        single = inputs_for(processor, [images[i]], [questions[i]], padding_side="right")
        n = single["input_ids"].shape[1]
        with torch.no_grad():
            single_logits = model(**single).logits
        torch.testing.assert_close(batch_logits[i, n - 8:n], single_logits[0, -8:], rtol=1e-4, atol=1e-4)


def test_text_only_prompts_are_untouched(tiny_models, plugin):
    model, processor = tiny_models(LLAVA)
    processor.tokenizer.padding_side = "left"
    inputs = processor.tokenizer(["Describe the picture in one sentence."], return_tensors="pt")
    reference = generate(model, inputs)
    plugin(ratio=0.5)
    assert torch.equal(generate(model, inputs).sequences, reference.sequences)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_ratio_one_is_identical_in_half_precision(dtype, photos, plugin):
    from llava_freepruner.fixtures import hf_tiny

    model, processor = hf_tiny.build(LLAVA)
    model = model.to(dtype)
    inputs = inputs_for(processor, [photos["rocket"]], QUESTIONS[:1])
    inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
    reference = generate(model, inputs)
    plugin(ratio=1.0)
    out = generate(model, inputs)
    assert torch.equal(out.sequences, reference.sequences)
    plugin(ratio=0.5)
    assert torch.isfinite(generate(model, inputs).scores[0]).all()


def test_sampling_and_beam_search_keep_the_prompt_prefix(tiny_models, photos, plugin):
    model, processor = tiny_models(LLAVA)
    inputs = inputs_for(processor, [photos["astronaut"]], QUESTIONS[:1])
    length = inputs["input_ids"].shape[1]
    text = length - 576
    plugin(ratio=0.5)
    torch.manual_seed(0)
    sampled = generate(model, inputs, do_sample=True, top_k=5)
    assert torch.equal(sampled.sequences[:, :length], inputs["input_ids"])
    beams = generate(model, inputs, num_beams=3, max_new_tokens=3)
    assert torch.equal(beams.sequences[:, :length], inputs["input_ids"])
    assert max(layer_lengths(beams.past_key_values)) <= text + 288 + 2


@pytest.mark.parametrize("spec", [LLAVA, NEXT], ids=["llava", "llava_next"])
def test_beams_and_several_return_sequences_at_ratio_one_are_the_hosts(spec, tiny_models, photos, plugin):
    model, processor = tiny_models(spec)
    inputs = inputs_for(processor, [photos["astronaut"], photos["coffee"]], QUESTIONS)
    check_beams_and_return_sequences_at_ratio_one(model, inputs, plugin)
    plugin(ratio=0.5)
    length = inputs["input_ids"].shape[1]
    several = generate(model, inputs, do_sample=True, top_k=5, num_return_sequences=2, max_new_tokens=3)
    assert torch.equal(several.sequences[:, :length], inputs["input_ids"].repeat_interleave(2, dim=0))


def test_llava_next_keeps_about_half_of_each_image_and_records_it(tiny_models, photos, plugin, tmp_path):
    model, processor = tiny_models(NEXT)
    stats = tmp_path / "stats.jsonl"
    images = [photos["astronaut"], photos["coffee"], photos["rocket"]]
    plugin(ratio=0.5, stats=str(stats))
    inputs = inputs_for(processor, images, [QUESTIONS[0]] * 3)
    out = generate(model, inputs, max_new_tokens=1)
    import llava_freepruner

    llava_freepruner.remove()                       # flushes the stats
    records = [json.loads(line) for line in stats.read_text().splitlines()]
    assert len(records) == 3
    full = (inputs["input_ids"] == model.config.image_token_id).sum(dim=1).tolist()
    for record, tokens in zip(records, full):
        assert record["tokens_in"] == tokens
        assert 0.45 < record["tokens_out"] / record["tokens_in"] < 0.56
        assert record["crops"][0] == {"tokens_in": 576, "tokens_out": 288, "pivotal": record["crops"][0]["pivotal"],
                                      "complementary": 288 - record["crops"][0]["pivotal"]}
        assert record["llm_prefill_ms"] > 0
    width = inputs["input_ids"].shape[1] - min(r["tokens_in"] - r["tokens_out"] for r in records)
    assert out.past_key_values.get_seq_length() == width


def test_tokens_above_the_crop_are_refused_by_name(tiny_models, photos, plugin):
    from llava_freepruner.config import ConfigError

    model, processor = tiny_models(LLAVA)
    plugin(tokens=600)
    with pytest.raises(ConfigError, match="FREEPRUNER_TOKENS=600 exceeds the 576"):
        generate(model, inputs_for(processor, [photos["coffee"]], QUESTIONS[:1]))


ONEVISION = TinyHF(kind="llava_onevision", llm="qwen2")


def test_onevision_keeps_half_of_what_the_llm_sees_resampled_maps_included(tiny_models, photos, plugin, tmp_path):
    from llava_freepruner.fixtures.hf_tiny import onevision_inputs

    model, processor = tiny_models(ONEVISION)
    # the coffee photo at 1600x1000 tiles into a map OneVision resamples (anyres_max_9)
    images = [photos["astronaut"], photos["coffee"].resize((1600, 1000))]
    questions = ["What is it?", "Describe it."]
    inputs = onevision_inputs(model, processor, images, questions)
    reference = generate(model, inputs)
    plugin(ratio=1.0)
    assert torch.equal(generate(model, inputs).sequences, reference.sequences)

    stats = tmp_path / "stats.jsonl"
    plugin(ratio=0.5, stats=str(stats))
    batch = generate(model, inputs)
    for i in range(2):
        single = generate(model, onevision_inputs(model, processor, images[i:i + 1], questions[i:i + 1]))
        assert torch.equal(batch.sequences[i, -5:], single.sequences[0, -5:])
    import llava_freepruner

    llava_freepruner.remove()
    records = [json.loads(line) for line in stats.read_text().splitlines()][:2]
    full = (inputs["input_ids"] == model.config.image_token_id).sum(dim=1).tolist()
    for record, tokens in zip(records, full):
        assert record["tokens_in"] == tokens
        assert 0.48 < record["tokens_out"] / tokens < 0.53
        assert record["crops"][0]["tokens_in"] == 729
    # resampled: each tile counts only the patches behind a token the LLM sees
    assert any(c["tokens_in"] < 729 for c in records[1]["crops"][1:])


@pytest.mark.parametrize("method", ["visionzip", "divprune", "vispruner", "random", "grid", "cls_topk"])
@pytest.mark.parametrize("spec", [LLAVA, NEXT], ids=["llava", "llava_next"])
def test_every_vision_method_keeps_its_budget_with_batch_equal_to_single(method, spec, tiny_models, photos, plugin,
                                                                           tmp_path):
    model, processor = tiny_models(spec)
    images = [photos["astronaut"], photos["coffee"]]
    stats = tmp_path / "stats.jsonl"
    plugin(vision_method=method, ratio=1.0)
    reference_inputs = inputs_for(processor, images[:1], QUESTIONS[:1])
    assert torch.equal(generate(model, reference_inputs).sequences,
                       _unpatched(model, reference_inputs).sequences)
    plugin(vision_method=method, ratio=0.5, stats=str(stats))
    batch = generate(model, inputs_for(processor, images, QUESTIONS))
    for i in range(2):
        single = generate(model, inputs_for(processor, images[i:i + 1], QUESTIONS[i:i + 1]))
        assert torch.equal(batch.sequences[i, -5:], single.sequences[0, -5:])
    import llava_freepruner

    llava_freepruner.remove()
    for record in [json.loads(line) for line in stats.read_text().splitlines()]:
        crops = record.get("crops") or [record]
        assert crops[0]["tokens_out"] == 288
        assert 0.45 < record["tokens_out"] / record["tokens_in"] < 0.56


def _unpatched(model, inputs):
    import llava_freepruner

    llava_freepruner.remove()
    return generate(model, inputs)


def test_a_method_that_reads_the_instruction_without_a_text_tower_is_refused_by_name(tiny_models, photos, plugin):
    from llava_freepruner.config import ConfigError

    model, processor = tiny_models(LLAVA)
    plugin(vision_method="cdpruner", ratio=0.5)
    with pytest.raises(ConfigError, match="FREEPRUNER_METHOD=cdpruner needs the CLIP text tower.*FREEPRUNER_CLIP_TEXT"):
        generate(model, inputs_for(processor, [photos["coffee"]], QUESTIONS[:1]))


@pytest.mark.parametrize("llm_method", ["fastv", "dart"])
@pytest.mark.parametrize("spec", [LLAVA, TinyHF(kind="llava_next", llm="mistral")], ids=["llava", "next-mistral"])
def test_llm_side_methods_prune_from_the_first_call_after_the_vision_side(llm_method, spec, tiny_models, photos,
                                                                            plugin, tmp_path):
    model, processor = tiny_models(spec)
    stats = tmp_path / "stats.jsonl"
    plugin(vision_method="freepruner", llm_method=llm_method, ratio=0.5, stats=str(stats))
    images = [photos["astronaut"], photos["coffee"]]
    batch = generate(model, inputs_for(processor, images, QUESTIONS))
    for i in range(2):
        single = generate(model, inputs_for(processor, images[i:i + 1], QUESTIONS[i:i + 1]))
        assert torch.equal(batch.sequences[i, -5:], single.sequences[0, -5:])
    import llava_freepruner

    llava_freepruner.remove()
    records = [json.loads(line) for line in stats.read_text().splitlines()]
    first = records[0]
    alive = first["llm_visual_alive"]
    # the vision side keeps ~half, the LLM side keeps half of that from layer 2 on
    assert alive[0] == first["tokens_out"]
    assert alive[-1] == round(0.5 * first["tokens_out"]) or abs(alive[-1] - 0.5 * first["tokens_out"]) <= 1


# -- generate() options and multi-turn chat -----------------------------------------------------

CHUNKS_SINCE = "5.23"     # transformers release that added generate(prefill_chunk_size=...)
needs_chunked_prefill = pytest.mark.skipif(
    Version(transformers.__version__) < Version(CHUNKS_SINCE),
    reason=f"generate(prefill_chunk_size=...) arrived in transformers {CHUNKS_SINCE}")


@pytest.mark.parametrize("cache_arg", ["cache", "past_key_values"])
@pytest.mark.parametrize("spec", [LLAVA, NEXT], ids=["llava", "llava_next"])
def test_a_second_turn_on_a_pruned_cache_equals_the_whole_conversation_run_fresh(spec, cache_arg, tiny_models, photos,
                                                                                  plugin):
    model, processor = tiny_models(spec)
    if cache_arg == "cache" and Version(transformers.__version__) < Version("5.24"):
        pytest.skip(f"generate(cache=...) arrived in transformers 5.24; this is {transformers.__version__}")
    # an image placeholder generated in turn 1 would hold no pixels in the fresh run
    no_placeholder = {"suppress_tokens": [model.config.image_token_id]}
    inputs = inputs_for(processor, [photos["astronaut"], photos["coffee"]], QUESTIONS)
    length = inputs["input_ids"].shape[1]
    plugin(ratio=0.5)
    first = generate(model, inputs, **no_placeholder)
    pruned = first.past_key_values.get_seq_length()
    new = processor.tokenizer([" USER: How many objects are there? ASSISTANT:"] * 2, return_tensors="pt",
                              add_special_tokens=False)["input_ids"]
    conversation = torch.cat([first.sequences, new], dim=1)
    mask = torch.cat([inputs["attention_mask"], torch.ones_like(conversation[:, length:])], dim=1)
    turn = {"input_ids": conversation, "attention_mask": mask}
    second = generate(model, turn, **{cache_arg: first.past_key_values}, **no_placeholder)
    fresh = generate(model, {**inputs, **turn}, **no_placeholder)       # with the image's pixels
    assert torch.equal(second.sequences, fresh.sequences)
    for step_second, step_fresh in zip(second.scores, fresh.scores):
        torch.testing.assert_close(step_second, step_fresh, rtol=1e-4, atol=1e-4)
    # the cache grew by the new text and answer only: 4 answer tokens of turn 1, the new text, 4 of turn 2
    assert second.past_key_values.get_seq_length() == fresh.past_key_values.get_seq_length() == \
        pruned + 1 + new.shape[1] + 4


def test_a_new_image_in_a_turn_on_a_pruned_cache_is_refused_before_any_work(tiny_models, photos, plugin):
    from llava_freepruner.config import ConfigError

    model, processor = tiny_models(LLAVA)
    inputs = inputs_for(processor, [photos["astronaut"]], QUESTIONS[:1])
    plugin(ratio=0.5)
    first = generate(model, inputs, suppress_tokens=[model.config.image_token_id])
    turn = processor(images=[photos["coffee"]], text=[" USER: <image>\nAnd this one? ASSISTANT:"], return_tensors="pt")
    conversation = torch.cat([first.sequences, turn["input_ids"]], dim=1)
    cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    towers = []
    handle = model.model.vision_tower.register_forward_hook(lambda *args: towers.append(1))
    try:
        with pytest.raises(ConfigError, match="a new image or video in a turn that continues a pruned turn's KV cache"):
            generate(model, {"input_ids": conversation, "attention_mask": torch.ones_like(conversation),
                             "pixel_values": turn["pixel_values"]}, **{cache_arg: first.past_key_values})
    finally:
        handle.remove()
    assert towers == []


@pytest.mark.parametrize("spec", [LLAVA, NEXT], ids=["llava", "llava_next"])
def test_static_cache_at_ratio_one_is_the_hosts_and_pruned_equals_the_dynamic_cache(spec, tiny_models, photos,
                                                                                  plugin):
    model, processor = tiny_models(spec)
    inputs = inputs_for(processor, [photos["astronaut"], photos["rocket"]], QUESTIONS)
    static = {"cache_implementation": "static"}
    reference = generate(model, inputs, **static)
    plugin(ratio=1.0)
    out = generate(model, inputs, **static)
    assert torch.equal(out.sequences, reference.sequences)
    assert all(torch.equal(a, b) for a, b in zip(out.scores, reference.scores))
    plugin(ratio=0.5)
    dynamic = generate(model, inputs)
    out = generate(model, inputs, **static)
    assert torch.equal(out.sequences, dynamic.sequences)
    for step_static, step_dynamic in zip(out.scores, dynamic.scores):
        torch.testing.assert_close(step_static, step_dynamic, rtol=1e-4, atol=1e-4)


@needs_chunked_prefill
@pytest.mark.parametrize("spec", [LLAVA, NEXT], ids=["llava", "llava_next"])
def test_prefill_chunks_at_ratio_one_give_the_hosts_tokens(spec, tiny_models, photos, plugin):
    model, processor = tiny_models(spec)
    inputs = inputs_for(processor, [photos["astronaut"], photos["rocket"]], QUESTIONS)
    reference = generate(model, inputs, prefill_chunk_size=64)
    plugin(ratio=1.0)
    out = generate(model, inputs, prefill_chunk_size=64)
    assert torch.equal(out.sequences, reference.sequences)
    assert all(torch.equal(a, b) for a, b in zip(out.scores, reference.scores))


@needs_chunked_prefill
@pytest.mark.parametrize("fields", [{"ratio": 0.5}, {"tokens": 100}, {"vision_method": None, "llm_method": "fastv",
                                                                      "ratio": 0.5}],
                         ids=["ratio", "tokens", "fastv"])
def test_prefill_chunks_with_pruning_are_refused_before_any_work(fields, tiny_models, photos, plugin):
    from transformers import GenerationConfig

    from llava_freepruner.config import ConfigError

    model, processor = tiny_models(LLAVA)
    towers = []
    handle = model.model.vision_tower.register_forward_hook(lambda *args: towers.append(1))
    plugin(**fields)
    inputs = inputs_for(processor, [photos["coffee"]], QUESTIONS[:1])
    try:
        with pytest.raises(ConfigError, match=r"generate\(prefill_chunk_size=64\) .* Leave prefill_chunk_size unset"):
            generate(model, inputs, prefill_chunk_size=64)
        with pytest.raises(ConfigError, match=r"prefill_chunk_size=32"):
            generate(model, inputs, generation_config=GenerationConfig(prefill_chunk_size=32, max_new_tokens=5))
    finally:
        handle.remove()
    assert towers == []
