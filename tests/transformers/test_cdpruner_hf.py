"""CDPruner on transformers' LLaVA classes: each image's instruction read back from the
prompt's ids, the CLIP text tower from FREEPRUNER_CLIP_TEXT (refused by name before any
weight loads without it). Tiny checkpoints saved and loaded (the prompt's tokenizer is
the checkpoint's), with a tiny whole CLIP whose vision half is as wide as their towers."""

import pytest
import torch
import transformers

from llava_freepruner.fixtures import hf_tiny, tiny
from llava_freepruner.config import ConfigError
from llava_freepruner.fixtures.hf_tiny import TinyHF
from llava_freepruner.runtime.instruction import expanded_instructions
from llava_freepruner.runtime.methods.cdpruner import CDPruner

LLAVA = TinyHF()
NEXT = TinyHF(kind="llava_next")
FORMAT = "\nAnswer the question using a single word or phrase."
# (question in the prompt, the instruction CDPruner gets)
QUESTIONS = [("What is in the image?", "What is in the image?"),
             ("How many objects are there?" + FORMAT, "How many objects are there?"),
             ("Describe the picture in one sentence, then name its colours.",
              "Describe the picture in one sentence, then name its colours.")]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """``saved(spec)`` -> (model loaded from its folder, processor); one CLIP folder: ``saved.clip``."""
    built = {}

    def get(spec):
        if spec not in built:
            model, processor = hf_tiny.build(spec)
            folder = str(tmp_path_factory.mktemp(spec.kind))
            model.save_pretrained(folder)
            processor.tokenizer.save_pretrained(folder)
            built[spec] = type(model).from_pretrained(folder).eval(), processor
        return built[spec]

    get.clip = str(tmp_path_factory.mktemp("clip"))
    tiny.build_clip(get.clip, get(LLAVA)[0].config.vision_config)
    return get


@pytest.fixture
def seen(monkeypatch):
    """What CDPruner was handed and chose: one (instructions, kept indices) per crop, in order."""
    calls = []
    select = CDPruner.select

    def spy(self, ctx):
        selections = select(self, ctx)
        calls.extend((request.instruction, selection.indices.tolist())
                     for request, selection in zip(ctx.requests, selections))
        return selections

    monkeypatch.setattr(CDPruner, "select", spy)
    return calls


def prompt(processor, *content):
    """A user turn of ``content``: None for an image, a string for text."""
    items = [{"type": "image"} if c is None else {"type": "text", "text": c} for c in content]
    return processor.apply_chat_template([{"role": "user", "content": items}], add_generation_prompt=True)


def inputs_for(processor, images, texts):
    processor.tokenizer.padding_side = "left"
    return processor(images=images, text=texts, return_tensors="pt", padding=True)


def generate(model, inputs, **kwargs):
    with torch.no_grad():
        return model.generate(**inputs, max_new_tokens=4, do_sample=False, return_dict_in_generate=True,
                              output_scores=True, **kwargs)


@pytest.mark.parametrize("spec", [LLAVA, NEXT], ids=["llava", "llava_next"])
def test_batch_with_left_padding_equals_single_runs(spec, saved, photos, plugin, seen):
    model, processor = saved(spec)
    images = [photos["astronaut"], photos["coffee"], photos["rocket"]]
    questions = [q for q, _ in QUESTIONS]
    plugin(vision_method="cdpruner", ratio=0.25, clip_text=saved.clip)
    batch_inputs = inputs_for(processor, images, [prompt(processor, None, q) for q in questions])
    assert (batch_inputs["attention_mask"] == 0).any()          # left padding
    batch = generate(model, batch_inputs)
    batch_seen = list(seen)
    seen.clear()
    for i, (image, question) in enumerate(zip(images, questions)):
        single = generate(model, inputs_for(processor, [image], [prompt(processor, None, question)]))
        assert torch.equal(batch.sequences[i, -4:], single.sequences[0, -4:])
    assert batch_seen == seen        # every crop: the same instruction, the same kept patches
    crops = len(seen) // len(images)
    assert [text for text, _ in seen] == [expected for _, expected in QUESTIONS for _ in range(crops)]
    assert all(len(kept) > 0 for _, kept in seen)


def test_each_image_gets_the_text_after_it_without_the_answer_format(saved, photos, plugin, seen):
    model, processor = saved(LLAVA)
    texts = [prompt(processor, None, "Which one is larger?", None, "How many objects are there?" + FORMAT),
             prompt(processor, None, "What is in the image?")]
    plugin(vision_method="cdpruner", ratio=0.25, clip_text=saved.clip)
    generate(model, inputs_for(processor, [photos["coffee"], photos["chelsea"], photos["rocket"]], texts))
    assert [text for text, _ in seen] == ["Which one is larger?", "How many objects are there?",
                                          "What is in the image?"]


def test_beams_repeat_rows_after_the_selection(saved, photos, plugin, seen):
    """transformers 5.x selects before it repeats the rows for beams, 4.57 after (images
    repeated with them): either way each image is pruned with its own instruction."""
    model, processor = saved(LLAVA)
    inputs = inputs_for(processor, [photos["astronaut"], photos["coffee"]],
                        [prompt(processor, None, q) for q, _ in QUESTIONS[:2]])
    plugin(vision_method="cdpruner", ratio=0.25, clip_text=saved.clip)
    generate(model, inputs)
    greedy = dict(seen)
    seen.clear()
    out = generate(model, inputs, num_beams=2, num_return_sequences=2)
    assert out.sequences.shape[0] == 4
    assert {text for text, _ in seen} == set(greedy)
    assert all(kept == greedy[text] for text, kept in seen)


@pytest.mark.parametrize("spec", [LLAVA, NEXT], ids=["llava", "llava_next"])
def test_ratio_one_gives_the_unpatched_tokens_and_scores(spec, saved, photos, plugin):
    model, processor = saved(spec)
    inputs = inputs_for(processor, [photos["astronaut"], photos["rocket"]],
                        [prompt(processor, None, q) for q, _ in QUESTIONS[:2]])
    reference = generate(model, inputs)
    plugin(vision_method="cdpruner", ratio=1.0, clip_text=saved.clip)
    out = generate(model, inputs)
    assert torch.equal(out.sequences, reference.sequences)
    assert all(torch.equal(a, b) for a, b in zip(out.scores, reference.scores))


@pytest.mark.parametrize("spec", [TinyHF(kind="video_llava"), TinyHF(kind="llava_next_video")],
                         ids=["video_llava", "llava_next_video"])
def test_every_frame_of_a_video_gets_its_question_batch_equal_to_single(spec, saved, photos, plugin, seen):
    model, processor = saved(spec)
    clips = [[photos["astronaut"].crop((i * 40, 0, i * 40 + 320, 320)) for i in range(3)],
             [photos["coffee"].crop((0, i * 30, 320, i * 30 + 320)) for i in range(3)]]
    questions = [q for q, _ in QUESTIONS[:2]]
    plugin(vision_method="cdpruner", ratio=0.25, clip_text=saved.clip)
    batch = generate(model, hf_tiny.video_inputs(model, processor, clips, questions))
    batch_seen = list(seen)
    seen.clear()
    for i in range(2):
        single = generate(model, hf_tiny.video_inputs(model, processor, clips[i:i + 1], questions[i:i + 1]))
        assert torch.equal(batch.sequences[i, -4:], single.sequences[0, -4:])
    assert batch_seen == seen
    assert [text for text, _ in seen] == [expected for _, expected in QUESTIONS[:2] for _ in range(3)]


# -- refusals ---------------------------------------------------------------------------------


def test_without_a_clip_text_tower_the_model_is_refused_before_its_weights_load(saved, plugin, tmp_path):
    folder = str(tmp_path / "llava")
    hf_tiny.save(LLAVA, folder)
    plugin(vision_method="cdpruner", ratio=0.5)
    with pytest.raises(ConfigError, match="set FREEPRUNER_CLIP_TEXT to a local folder"):
        transformers.LlavaForConditionalGeneration.from_pretrained(folder)
    with pytest.raises(ConfigError, match="FREEPRUNER_METHOD=cdpruner needs the CLIP text tower"):
        hf_tiny.build(NEXT)


def test_a_model_built_before_the_plugin_is_refused_at_its_first_image(saved, photos, plugin):
    model, processor = saved(LLAVA)
    plugin(vision_method="cdpruner", ratio=0.5)
    with pytest.raises(ConfigError, match="FREEPRUNER_CLIP_TEXT"):
        generate(model, inputs_for(processor, [photos["coffee"]], [prompt(processor, None, "What is it?")]))


def test_a_clip_folder_that_does_not_fit_the_tower_is_refused_by_name(saved, plugin, tmp_path):
    from transformers import CLIPVisionConfig, CLIPVisionModel

    wide = str(tmp_path / "wide")
    tiny.build_clip(wide, CLIPVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                                           num_attention_heads=2, projection_dim=32))
    plugin(vision_method="cdpruner", ratio=0.5, clip_text=wide)
    with pytest.raises(ConfigError, match="FREEPRUNER_CLIP_TEXT=.* vision width is 64, and this model's vision "
                                          "tower is 32 wide"):
        hf_tiny.build(LLAVA)
    vision_only = str(tmp_path / "vision")
    CLIPVisionModel(saved(LLAVA)[0].config.vision_config).save_pretrained(vision_only)
    plugin(vision_method="cdpruner", ratio=0.5, clip_text=vision_only)
    with pytest.raises(ConfigError, match="FREEPRUNER_CLIP_TEXT=.*'clip_vision_model' checkpoint, not a whole CLIP"):
        hf_tiny.build(LLAVA)


def test_a_siglip_tower_is_refused_by_name(saved, plugin):
    plugin(vision_method="cdpruner", ratio=0.5, clip_text=saved.clip)
    with pytest.raises(ConfigError, match="vision tower is siglip_vision_model, which has no CLIP text tower"):
        hf_tiny.build(TinyHF(kind="llava_onevision"))


def test_images_encoded_without_the_prompts_ids_are_refused_by_name(saved, photos, plugin):
    model, processor = saved(LLAVA)
    inputs = inputs_for(processor, [photos["coffee"]], [prompt(processor, None, "What is it?")])
    plugin(vision_method="cdpruner", ratio=0.5, clip_text=saved.clip)
    with pytest.raises(RuntimeError, match="reads each image's instruction from the prompt's input_ids"):
        with torch.no_grad():
            model.model.get_image_features(pixel_values=inputs["pixel_values"])


# -- the ids, read back ----------------------------------------------------------------------


def test_expanded_placeholders_are_split_by_each_items_length():
    image, video = 9, 8
    rows = [[1, image, image, image, image, 5, 6, video, video, 7], [1, 4, 4], [image, image, 3]]
    decode = lambda ids: " ".join(map(str, ids))      # noqa: E731
    # two adjacent images share one run; the text after the second stops at the video
    assert expanded_instructions(rows, decode, image, [2, 2, 2], {video}) == ["", "5 6", "3"]
    assert expanded_instructions(rows, decode, video, [2], {image}) == ["7"]
    with pytest.raises(RuntimeError, match="hold 6 placeholders of token 9, the 2 items passed make 4"):
        expanded_instructions(rows, decode, image, [2, 2], {video})
    with pytest.raises(RuntimeError, match="placeholders of token 9"):
        expanded_instructions(rows, decode, image, [3, 2, 1], {video})
