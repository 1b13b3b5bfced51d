"""visual_spans against upstream's own splice, and the wiring the llava patch uses."""

import pytest
import torch
from transformers import GenerationMixin

from llava_freepruner.runtime.fitprune import Recipe
from llava_freepruner.runtime.llm import FitPrunePolicy, attach, begin_prefill, detach, last_record, visual_spans
from test_llm_tiny_models import VOCAB, tiny_llava

TOKENS_PER_CROP = 3
MARK = 1000.0


@pytest.fixture(scope="module")
def model():
    model = tiny_llava(seed=0, layers=4)
    model.get_model().vision_tower = torch.nn.Identity()  # only needs to exist

    def marked_features(images):
        # crop c, token t -> every channel equals MARK + TOKENS_PER_CROP * c + t
        crops = images.shape[0]
        values = MARK + torch.arange(crops * TOKENS_PER_CROP, dtype=torch.float32)
        return values.view(crops, TOKENS_PER_CROP, 1).expand(-1, -1, model.config.hidden_size).clone()
    model.encode_images = marked_features
    return model


def images_with_crops(crops):
    return [torch.zeros(c, 3, 2, 2) for c in crops]


def ids(*parts, seed=0):
    """A prompt of random text ids; an int n in parts means n text tokens, None an image."""
    generator = torch.Generator().manual_seed(seed)
    out = []
    for part in parts:
        out += [-200] if part is None else torch.randint(2, VOCAB, (part,), generator=generator).tolist()
    return out


def batch(prompts, padding_side):
    width = max(len(p) for p in prompts)
    input_ids = torch.zeros(len(prompts), width, dtype=torch.long)
    mask = torch.zeros(len(prompts), width, dtype=torch.long)
    for i, p in enumerate(prompts):
        cols = slice(width - len(p), width) if padding_side == "left" else slice(0, len(p))
        input_ids[i, cols] = torch.tensor(p)
        mask[i, cols] = 1
    return input_ids, mask


def upstream_visual_mask(model, input_ids, mask, crops, max_length, padding_side):
    model.config.tokenizer_model_max_length = max_length
    model.config.tokenizer_padding_side = padding_side
    with torch.no_grad():
        out = model.prepare_inputs_labels_for_multimodal(input_ids, None, mask, None, None, images_with_crops(crops))
    embeds = out[4]
    return embeds[..., 0] >= MARK, embeds[..., 0]


def spans_mask(spans, shape):
    mask = torch.zeros(shape, dtype=torch.bool)
    for b, sample in enumerate(spans):
        for s, e in sample:
            mask[b, s:e] = True
    return mask


CASES = {
    "multi-image, text-only sample, right padding": (
        [ids(5, None, 4, None, 6), ids(9, seed=1), ids(3, None, 2, seed=2)], [1, 2, 4, 3], None, "right"),
    "left padding": (
        [ids(5, None, 4, None, 6), ids(9, seed=1), ids(3, None, 2, seed=2)], [2, 1, 5, 3], None, "left"),
    "truncation inside an image": ([ids(4, None, 3, None, 5), ids(2, None, 1, seed=3)], [2, 3, 1], 16, "right"),
    "truncation, left padding": ([ids(4, None, 3, None, 5), ids(2, None, 1, seed=3)], [2, 3, 1], 16, "left"),
    "no attention mask": ([ids(2, None, 1, None, None, 3)], [1, 1, 2], None, "right"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_spans_match_upstream_splice(model, case):
    prompts, crops, max_length, side = CASES[case]
    input_ids, mask = batch(prompts, side)
    if case == "no attention mask":
        mask = None
    expected, values = upstream_visual_mask(model, input_ids, mask, crops, max_length, side)
    spans = visual_spans(input_ids, mask, [c * TOKENS_PER_CROP for c in crops], max_length, side)
    assert torch.equal(spans_mask(spans, expected.shape), expected)
    # spans follow image order: marker values run on across spans of a sample
    for b, sample in enumerate(spans):
        run = torch.cat([values[b, s:e] for s, e in sample]) if sample else torch.zeros(0)
        assert torch.equal(run, torch.sort(run).values)
    assert expected.any()


def test_spans_bad_inputs():
    input_ids = torch.tensor([ids(2, None, None, 1)])
    with pytest.raises(ValueError, match="image_token_counts has 1 entries"):
        visual_spans(input_ids, None, [5])
    with pytest.raises(ValueError, match="padding_side='middle'"):
        visual_spans(input_ids, None, [5, 5], padding_side="middle")


def announce_spans_after_splice(model):
    """The wiring of the upstream backend in miniature: count features, call upstream, announce the spans."""
    original_encode = model.encode_images
    original_prepare = model.prepare_inputs_labels_for_multimodal
    counts = []

    def encode_images(images):
        features = original_encode(images)
        counts.extend([features.shape[1]] * features.shape[0])
        return features

    def prepare(input_ids, position_ids, attention_mask, past_key_values, labels, images, image_sizes=None):
        counts.clear()
        out = original_prepare(input_ids, position_ids, attention_mask, past_key_values, labels, images,
                               image_sizes)
        if out[4] is not None:  # a prefill with images was spliced
            spans = visual_spans(input_ids, attention_mask, counts,
                                 getattr(model.config, "tokenizer_model_max_length", None),
                                 getattr(model.config, "tokenizer_padding_side", "right"))
            begin_prefill(model, spans)
        return out

    model.encode_images = encode_images
    model.prepare_inputs_labels_for_multimodal = prepare


@torch.no_grad()
def test_upstream_generate_prunes_through_the_splice():
    model = tiny_llava(seed=1)
    model.get_model().vision_tower = torch.nn.Identity()
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(1, 40, model.config.hidden_size, generator=generator)
    model.encode_images = lambda images: features.expand(images.shape[0], -1, -1)
    announce_spans_after_splice(model)
    model.config.tokenizer_model_max_length = 2048
    deletions = [0] * 32
    deletions[0], deletions[3] = 10, 15
    attach(model, FitPrunePolicy(Recipe("tiny", 40, deletions)))
    input_ids = torch.tensor([ids(6, None, 5, seed=4)])
    output = model.generate(input_ids, images=torch.zeros(1, 3, 2, 2), max_new_tokens=4, do_sample=False,
                            pad_token_id=0)
    record = last_record(model)
    assert record.visual_out[0][3] == 15 and record.visual_in[0][0] == 40
    # same tokens as pruning the spliced embeddings directly
    embeds = torch.cat([model.get_model().embed_tokens(input_ids[0, :6]), features[0],
                        model.get_model().embed_tokens(input_ids[0, 7:])])[None]
    begin_prefill(model, [[(6, 46)]])
    direct = GenerationMixin.generate(model, inputs_embeds=embeds, max_new_tokens=4, do_sample=False,
                                      pad_token_id=0)
    assert output[0, -4:].tolist() == direct[0, -4:].tolist()
    assert last_record(model).drop_layer == record.drop_layer
    detach(model)
