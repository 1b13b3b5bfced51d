"""Tiny Qwen2-VL, Qwen2.5-VL, Qwen3-VL(-MoE) and Qwen3.5(-MoE) checkpoints (hf_tiny_qwen): transformers' own
processors expand the image placeholders, generate() runs, batches match single prompts,
checkpoints load back."""

import numpy as np
import pytest
import torch
import transformers

from llava_freepruner.fixtures import hf_tiny_qwen
from llava_freepruner.fixtures.hf_tiny_qwen import TinyQwen

KINDS = [kind for kind in hf_tiny_qwen.KINDS if hf_tiny_qwen.available(kind)]      # Qwen3.5: transformers >= 5.2
HYBRID = hf_tiny_qwen.HYBRID_KINDS
TRANSFORMERS_5 = int(transformers.__version__.split(".")[0]) >= 5
# (width, height) -> merged tokens: 14 px patches (Qwen2/2.5-VL) resize 300 x 200 to 252 x 168
# (18 x 12 patches, 54 tokens) and 120 x 160 to 112 x 168 (8 x 12, 24 tokens); 16 px patches
# (Qwen3-VL) to 288 x 192 (54 tokens) and 128 x 160 (8 x 10, 20 tokens)
WIDE, TALL = (300, 200), (120, 160)
TOKENS = {"qwen2_vl": {WIDE: 54, TALL: 24}, "qwen2_5_vl": {WIDE: 54, TALL: 24}, "qwen3_vl": {WIDE: 54, TALL: 20}}


def picture(size, seed):
    """A smooth gradient with noise, ``size`` = (width, height)."""
    from PIL import Image

    width, height = size
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / width, y * 255 / height, (x + y) * 127 / (width + height)], axis=-1)
    noisy = base + rng.normal(0, 40, base.shape)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def tiny():
    built = {}

    def get(spec):
        if spec not in built:
            built[spec] = hf_tiny_qwen.build(spec)
        return built[spec]

    return get


def prompt(processor, question="What is in the image?"):
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True)


def image_counts(model, inputs):
    return (inputs["input_ids"] == model.config.image_token_id).sum(dim=1).tolist()


@pytest.mark.parametrize("kind", KINDS)
def test_geometry(tiny, kind):
    model, _ = tiny(TinyQwen(kind=kind))
    vision, text = model.config.vision_config, model.config.text_config
    assert (vision.depth, vision.patch_size, vision.spatial_merge_size, vision.temporal_patch_size) == (
        4, hf_tiny_qwen.PATCH_SIZE[hf_tiny_qwen.geometry(kind)], 2, 2)
    assert (text.hidden_size, text.num_attention_heads, text.num_key_value_heads) == (64, 4, 2)
    assert text.num_hidden_layers == 3
    language = model.model.language_model
    if kind in HYBRID:       # no deepstack; linear / full / linear attention, half of each head rotated
        assert getattr(vision, "deepstack_visual_indexes", None) is None
        assert text.layer_types == ["linear_attention", "full_attention", "linear_attention"]
        assert [hasattr(layer, "linear_attn") for layer in language.layers] == [True, False, True]
        assert language.rotary_emb.mrope_section == [2, 1, 1] and language.layers[1].self_attn.head_dim == 16
        assert language.rotary_emb.inv_freq.numel() == 4         # 8 of 16 channels rotated
        if kind == "qwen3_5_moe":
            assert {type(layer.mlp).__name__ for layer in language.layers} == {"Qwen3_5MoeSparseMoeBlock"}
        return
    if hf_tiny_qwen.geometry(kind) == "qwen3_vl":
        assert vision.deepstack_visual_indexes == [1, 2]
    if kind == "qwen3_vl_moe":      # a dense first layer, then mixture-of-experts MLPs
        assert [type(layer.mlp).__name__ for layer in language.layers] == \
            ["Qwen3VLMoeTextMLP"] + ["Qwen3VLMoeTextSparseMoeBlock"] * 2
    # the sections the decoder applies (transformers 4.57's Qwen2(.5)-VL attention reads its rope_scaling)
    section = getattr(language.rotary_emb, "mrope_section", None) or \
        language.layers[0].self_attn.rope_scaling["mrope_section"]
    assert section == hf_tiny_qwen.MROPE_SECTION[hf_tiny_qwen.geometry(kind)] and sum(section) == hf_tiny_qwen.HEAD_DIM // 2
    assert language.layers[0].self_attn.head_dim == hf_tiny_qwen.HEAD_DIM


@pytest.mark.parametrize("kind", KINDS)
def test_processor_writes_one_placeholder_per_merged_token(tiny, kind):
    model, processor = tiny(TinyQwen(kind=kind))
    _, _, processor_cls = hf_tiny_qwen._classes(kind)
    assert isinstance(processor, processor_cls)
    tokenizer = processor.tokenizer
    for name, token in (("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
                        ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>")):
        assert getattr(model.config, name) == tokenizer.convert_tokens_to_ids(token)
    for token in hf_tiny_qwen.SPECIAL_TOKENS:
        assert tokenizer.tokenize(token) == [token]

    text = prompt(processor)
    assert "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>What is in the image?<|im_end|>" in text
    assert text.endswith("<|im_start|>assistant\n")
    # plain-string content keeps its own placeholders
    plain = processor.apply_chat_template(
        [{"role": "user", "content": "<|vision_start|><|image_pad|><|vision_end|>What is in the image?"}],
        add_generation_prompt=True)
    assert plain == text

    inputs = processor(images=[picture(WIDE, 0)], text=[text], return_tensors="pt")
    grid = inputs["image_grid_thw"]
    assert grid.tolist()[0][0] == 1                                   # one image: one temporal patch (2 frames)
    merged = int(grid.prod()) // hf_tiny_qwen.MERGE_SIZE ** 2
    assert image_counts(model, inputs) == [merged] == [TOKENS[hf_tiny_qwen.geometry(kind)][WIDE]]
    patch = hf_tiny_qwen.PATCH_SIZE[hf_tiny_qwen.geometry(kind)]
    assert inputs["pixel_values"].shape == (int(grid.prod()), 3 * 2 * patch * patch)
    ids = inputs["input_ids"][0].tolist()
    start = ids.index(model.config.vision_start_token_id)
    assert ids[start + 1:start + 1 + merged] == [model.config.image_token_id] * merged
    assert ids[start + 1 + merged] == model.config.vision_end_token_id
    if TRANSFORMERS_5:       # the models need them for their 3D positions; 4.57's processor leaves them out
        images = inputs["input_ids"] == model.config.image_token_id
        assert inputs["mm_token_type_ids"].tolist() == images.int().tolist()


@pytest.mark.parametrize("kind", KINDS)
def test_batch_of_two_image_sizes_is_left_padded(tiny, kind):
    model, processor = tiny(TinyQwen(kind=kind))
    text = prompt(processor)
    inputs = processor(images=[picture(WIDE, 0), picture(TALL, 1)], text=[text, text], return_tensors="pt",
                       padding=True)
    counts = image_counts(model, inputs)
    assert counts == [TOKENS[hf_tiny_qwen.geometry(kind)][WIDE], TOKENS[hf_tiny_qwen.geometry(kind)][TALL]]
    grids = inputs["image_grid_thw"]
    assert [int(g.prod()) // 4 for g in grids] == counts
    mask = inputs["attention_mask"]
    assert mask[0].all() and not mask[1].all()
    gap = counts[0] - counts[1]
    assert mask[1, :gap].sum() == 0 and mask[1, gap:].all()            # padding on the left
    assert (inputs["input_ids"][1, :gap] == processor.tokenizer.pad_token_id).all()


@pytest.mark.parametrize("kind", KINDS)
def test_generate_batch_matches_each_prompt_alone(tiny, kind):
    model, processor = tiny(TinyQwen(kind=kind))
    images = [picture(WIDE, 0), picture(TALL, 1)]
    texts = [prompt(processor), prompt(processor, "How many objects are there?")]

    stops = set(model.generation_config.eos_token_id)           # <|im_end|>, <|endoftext|> (also the padding)

    def until_stop(row):
        row = row.tolist()
        ends = [i for i, token in enumerate(row) if token in stops]
        return row[:ends[0] + 1] if ends else row

    def greedy(images, texts):
        inputs = processor(images=images, text=texts, return_tensors="pt", padding=True)
        length = inputs["input_ids"].shape[1]
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
        # generation stops early once every prompt has ended
        assert out.shape[0] == len(texts) and length < out.shape[1] <= length + 3
        assert torch.equal(out[:, :length], inputs["input_ids"])
        return [until_stop(row) for row in out[:, length:]]

    batch = greedy(images, texts)
    alone = [greedy(images[i:i + 1], texts[i:i + 1])[0] for i in range(2)]
    assert batch == alone


def test_qwen2_5_images_span_several_attention_windows(tiny):
    model, processor = tiny(TinyQwen(kind="qwen2_5_vl"))
    vision = model.config.vision_config
    assert vision.fullatt_block_indexes == [1, 3]                      # blocks 0 and 2 attend within windows
    inputs = processor(images=[picture(WIDE, 0), picture(TALL, 1)], text=[prompt(processor)] * 2,
                       return_tensors="pt", padding=True)
    side = vision.window_size // vision.patch_size                     # 8 x 8 patches per window
    windows = [-(-int(h) // side) * -(-int(w) // side) for _, h, w in inputs["image_grid_thw"]]
    assert windows == [2 * 3, 2 * 1]
    for grid, expected in zip(inputs["image_grid_thw"], windows):
        _, bounds = window_index(model, grid[None])
        assert len(bounds) - 1 == expected                             # cumulative window boundaries
    # the wide image's windows sit side by side: its merged tokens are reordered window by window
    index, _ = window_index(model, inputs["image_grid_thw"][:1])
    assert not torch.equal(torch.as_tensor(index), torch.arange(len(index)))


def window_index(model, grid_thw):
    """(window order of merged tokens, window boundaries in patches) as the tower computes them."""
    visual = model.model.visual
    if hasattr(visual, "get_window_index"):                             # transformers 4.57
        index, bounds = visual.get_window_index(grid_thw)
    else:                                                               # transformers 5: a shared helper
        from transformers.vision_utils import get_vision_window_index

        vision = model.config.vision_config
        index, bounds = get_vision_window_index(grid_thw, spatial_merge_size=vision.spatial_merge_size,
                                                window_size=vision.window_size, patch_size=vision.patch_size)
    return index, torch.unique_consecutive(torch.as_tensor(bounds)).tolist()


@pytest.mark.parametrize("kind", KINDS)
def test_save_and_load_back(tiny, kind, tmp_path):
    from transformers import AutoModelForImageTextToText

    spec = TinyQwen(kind=kind)
    model, processor = tiny(spec)
    folder = hf_tiny_qwen.save(spec, str(tmp_path / kind))
    loaded = AutoModelForImageTextToText.from_pretrained(folder).eval()
    assert type(loaded) is type(model)
    reloaded = hf_tiny_qwen.load_processor(folder)
    assert isinstance(reloaded, hf_tiny_qwen._classes(kind)[2])
    text = prompt(reloaded)
    assert text == prompt(processor)
    images = [picture(WIDE, 0), picture(TALL, 1)]
    inputs = processor(images=images, text=[text, text], return_tensors="pt", padding=True)
    again = reloaded(images=images, text=[text, text], return_tensors="pt", padding=True)
    assert inputs.keys() == again.keys() and all(torch.equal(inputs[k], again[k]) for k in inputs)
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, loaded(**again).logits)


@pytest.mark.parametrize("kind", KINDS)
def test_eager_attention_matches_sdpa(tiny, kind):
    sdpa, processor = tiny(TinyQwen(kind=kind))
    eager, _ = tiny(TinyQwen(kind=kind, attn="eager"))
    assert eager.model.visual.config._attn_implementation == "eager"
    assert eager.model.language_model.config._attn_implementation == "eager"
    images = [picture(WIDE, 0), picture(TALL, 1)]
    # Qwen3.5's hybrid decoder: one prompt at a time (with left padding the host's two forms
    # differ by up to 3e-4, beside 6e-5 unpadded)
    for batch in ([images[:1], images[1:]] if kind in HYBRID else [images]):
        inputs = processor(images=batch, text=[prompt(processor)] * len(batch), return_tensors="pt", padding=True)
        with torch.no_grad():
            a, b = sdpa(**inputs).logits, eager(**inputs).logits
        real = inputs["attention_mask"].bool()
        torch.testing.assert_close(a[real], b[real], rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(hf_tiny_qwen.has_torchvision(), reason="with torchvision the processor takes videos")
def test_image_only_processor_refuses_videos(tiny):
    _, processor = tiny(TinyQwen())
    frames = [picture(WIDE, 0)] * 2
    with pytest.raises(ValueError, match="no video processor"):
        processor(videos=[frames], text=["<|vision_start|><|video_pad|><|vision_end|>"], return_tensors="pt")
