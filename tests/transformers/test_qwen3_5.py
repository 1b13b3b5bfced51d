"""Qwen3.5 and Qwen3.5-MoE (transformers >= 5.2) under unchanged processor + generate().

Their decoders are hybrid: Gated DeltaNet layers (linear attention, a causal convolution
and a recurrent state over the whole prefix) around full-attention ones. Masking a
dropped token out of attention is therefore not the same as removing it, so the
reference for a pruned prompt is the unpatched decoder fed only the kept tokens (and the
text), each at its M-RoPE position in the full prompt, one prompt at a time.
"""

import pytest
import torch

from qwen_checks import merged_tokens, pruned_generate
from chat_generation import generate, inputs_for
from llava_freepruner.config import ConfigError
from llava_freepruner.fixtures import hf_tiny_qwen
from llava_freepruner.fixtures.hf_tiny_qwen import TinyQwen

KINDS = list(hf_tiny_qwen.HYBRID_KINDS)
pytestmark = pytest.mark.skipif(not hf_tiny_qwen.available("qwen3_5"),
                                reason="transformers before 5.2 has no Qwen3.5 classes")
PHOTOS = ["astronaut", "rocket"]
QUESTIONS = ["What is in the image?", "Describe the picture in one sentence."]
# visionzip merges rows, so its kept features are not the tower's own: the other methods are compared
SELECTING = ["freepruner", "random", "grid", "cls_topk", "divprune", "vispruner"]


@pytest.fixture
def two_prompts(qwen_models, photos):
    def make(kind):
        model, processor = qwen_models(TinyQwen(kind=kind))
        inputs = inputs_for(processor, [photos[name] for name in PHOTOS], QUESTIONS)
        assert len(set(merged_tokens(inputs))) == 2        # the rows shorten by different amounts
        return model, inputs
    return make


def _decoder_inputs(model, inputs):
    """The embeddings and position ids the unpatched decoder gets for the whole prompt."""
    seen = {}

    def keep(module, args, kwargs):
        seen.update(embeds=kwargs["inputs_embeds"], positions=kwargs["position_ids"])

    handle = model.model.language_model.register_forward_pre_hook(keep, with_kwargs=True)
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        handle.remove()
    return seen["embeds"], seen["positions"]


def _short_prompt_logits(model, embeds, positions, new_tokens):
    """Logits after the prompt and after each of ``new_tokens``, the unpatched model fed
    ``embeds`` (1, n, d) at ``positions`` (rows, 1, n) followed by the new tokens."""
    steps = torch.arange(1, len(new_tokens) + 1).view(1, 1, -1)
    positions = torch.cat([positions, positions[..., -1:] + steps], dim=-1)
    embeds = torch.cat([embeds, model.get_input_embeddings()(new_tokens)[None]], dim=1)
    with torch.no_grad():
        logits = model(inputs_embeds=embeds, position_ids=positions,
                       attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long)).logits[0]
    return logits[-len(new_tokens) - 1:]


@pytest.mark.parametrize("kind", KINDS)
def test_ratio_one_gives_the_unpatched_tokens_and_scores(kind, two_prompts, plugin):
    model, inputs = two_prompts(kind)
    reference = generate(model, inputs)
    plugin(ratio=1.0)
    out = generate(model, inputs)
    assert torch.equal(out.sequences, reference.sequences)
    assert all(torch.equal(a, b) for a, b in zip(out.scores, reference.scores))


@pytest.mark.parametrize("kind,method", [("qwen3_5", m) for m in SELECTING] + [("qwen3_5_moe", "freepruner")])
def test_a_pruned_batch_answers_as_the_decoder_fed_only_the_kept_tokens(kind, method, two_prompts, plugin,
                                                                        monkeypatch):
    model, inputs = two_prompts(kind)
    embeds, positions = _decoder_inputs(model, inputs)
    out, _, keep = pruned_generate(model, inputs, plugin, monkeypatch, method, max_new_tokens=3)
    import llava_freepruner

    llava_freepruner.remove()
    new = out.sequences[:, inputs["input_ids"].shape[1]:]
    for row in range(2):
        reference = _short_prompt_logits(model, embeds[row:row + 1, keep[row]], positions[:, row:row + 1, keep[row]],
                                         new[row, :2])
        for step in range(3):
            torch.testing.assert_close(out.scores[step][row], reference[step], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("method", ["fastv", "dart"])
def test_pruning_inside_the_hybrid_decoder_is_refused_by_name_before_the_weights(kind, method, plugin, tmp_path):
    folder = hf_tiny_qwen.save(TinyQwen(kind=kind), str(tmp_path / kind))
    cls = hf_tiny_qwen._classes(kind)[1]
    plugin(vision_method=None, llm_method=method, ratio=0.5)
    host = cls.__name__.replace("ForConditionalGeneration", "Model")
    with pytest.raises(ConfigError, match=rf"FREEPRUNER_METHOD={method} prunes inside the LLM, which needs softmax "
                                          rf"attention in every decoder layer; {host}'s decoder also has "
                                          r"linear_attention layers"):
        cls.from_pretrained(folder)
    plugin(vision_method="freepruner", ratio=0.5)
    assert cls.from_pretrained(folder) is not None
