"""Decoder-side pruning on tiny random Llama, Mistral and Qwen2 decoders of the installed
transformers (4.37 in the upstream llava environment, 4.57 and 5.x in the others).

The reference is the unpatched model itself: a token deleted at layer l is hidden from
every query of the layers after l by a per-layer attention mask, so the model's own code
computes what the pruned model must produce at the tokens that stay.
"""

import inspect

import pytest
import torch
import transformers
from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig, PhiConfig, Qwen2Config

from llava_freepruner.runtime.fitprune import Recipe
from llava_freepruner.runtime.llm import (
    DartPolicy, FastVPolicy, FitPrunePolicy, attach, begin_prefill, detach, last_record,
)

VOCAB, LAYERS, VISUAL = 96, 4, 24
SYSTEM, TEXT = 8, 6
FAMILIES = {"llama": LlamaConfig, "mistral": MistralConfig, "qwen2": Qwen2Config}
RECIPE = Recipe("tiny", VISUAL, [3, 5, 4, 0])


def tiny_decoder(family, attn="sdpa", **extra):
    config = FAMILIES[family](vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=LAYERS,
                              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                              pad_token_id=0, bos_token_id=1, eos_token_id=2, **extra)
    model = AutoModelForCausalLM.from_config(config, attn_implementation=attn)
    generator = torch.Generator().manual_seed(list(FAMILIES).index(family))
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            if "norm" in name:
                param.fill_(1.0)
            else:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    return model.eval()


def prompt(model, visual=VISUAL, system=SYSTEM, text=TEXT, seed=1):
    """Embeddings (1, L, D) of [system text | visual tokens | text] and the visual span."""
    generator = torch.Generator().manual_seed(seed)
    embed = model.get_input_embeddings()
    with torch.no_grad():
        embeds = torch.cat([embed(torch.randint(3, VOCAB, (system,), generator=generator)),
                            torch.randn(visual, model.config.hidden_size, generator=generator) * 0.5,
                            embed(torch.randint(3, VOCAB, (text,), generator=generator))])
    return embeds[None], (system, system + visual)


def drop_map(record, sample, span):
    """{position: layer at which it was deleted}."""
    return {p: layer for p, layer in zip(range(*span), record.drop_layer[sample]) if layer >= 0}


def _layer_cache(kwargs):
    return next((kwargs[name] for name in ("cache", "past_key_values", "past_key_value")
                 if kwargs.get(name) is not None), None)


class masked_reference:
    """Hooks on the unpatched model: at layer i, keys deleted before i are masked for every query."""

    def __init__(self, model, drops):
        self.layers = model.model.layers
        self.drops = drops

    def _hook(self, idx):
        def hook(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            batch, q_len = hidden.shape[:2]
            cache = _layer_cache(kwargs)
            past = cache.get_seq_length(idx) if cache is not None else 0
            keys = torch.arange(past + q_len)
            allowed = keys[None, :] <= torch.arange(past, past + q_len)[:, None]
            hidden_keys = [p for p, layer in self.drops.items() if layer < idx]
            allowed[:, hidden_keys] = False
            allowed |= keys[None, :] == torch.arange(past, past + q_len)[:, None]
            mask = torch.zeros(allowed.shape, dtype=hidden.dtype).masked_fill_(~allowed, torch.finfo(hidden.dtype).min)
            kwargs["attention_mask"] = mask.expand(batch, 1, -1, -1)
            return args, kwargs
        return hook

    def __enter__(self):
        self.handles = [layer.register_forward_pre_hook(self._hook(i), with_kwargs=True)
                        for i, layer in enumerate(self.layers)]
        return self

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()


def layer_lengths(cache):
    if hasattr(cache, "get_seq_length"):
        return [cache.get_seq_length(i) for i in range(LAYERS)]
    return [layer[0].shape[2] for layer in cache]


def output_cache(outputs):
    return outputs.past_key_values if getattr(outputs, "past_key_values", None) is not None else outputs.cache


def generate(model, embeds, mode, steps=5, attention_mask=None):
    options = {"greedy": {"do_sample": False}, "sample": {"do_sample": True, "top_k": 0},
               "beams": {"do_sample": False, "num_beams": 3}}[mode]
    torch.manual_seed(0)
    out = model.generate(inputs_embeds=embeds, attention_mask=attention_mask, max_new_tokens=steps,
                         min_new_tokens=steps, pad_token_id=0, **options)
    return out[:, -steps:].tolist()


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@torch.no_grad()
def test_pruned_prefill_matches_masked_reference_and_cache_holds_survivors(family, attn):
    model = tiny_decoder(family, attn)
    embeds, span = prompt(model)
    attach(model, FitPrunePolicy(RECIPE))
    begin_prefill(model, [[span]])
    outputs = model(inputs_embeds=embeds, use_cache=True)
    record = last_record(model)
    detach(model)

    alive = RECIPE.alive_after_each_layer()
    assert record.visual_in == [[VISUAL] + alive[:-1]] and record.visual_out == [alive]
    drops = drop_map(record, 0, span)
    assert [sum(1 for layer in drops.values() if layer == i) for i in range(LAYERS)] == list(RECIPE.deletions)
    length = embeds.shape[1]
    assert layer_lengths(output_cache(outputs)) == [length - VISUAL + n for n in record.visual_in[0]]

    with masked_reference(model, drops):
        expected = model(inputs_embeds=embeds).logits
    stays = [p for p in range(length) if p not in drops]
    torch.testing.assert_close(outputs.logits[0, stays], expected[0, stays], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
@torch.no_grad()
def test_dart_prefill_matches_masked_reference(family):
    model = tiny_decoder(family)
    embeds, span = prompt(model)
    attach(model, DartPolicy(0.5))
    begin_prefill(model, [[span]])
    logits = model(inputs_embeds=embeds).logits
    record = last_record(model)
    detach(model)
    assert record.visual_out[0] == [VISUAL, VISUAL, 12, 12]
    drops = drop_map(record, 0, span)
    with masked_reference(model, drops):
        expected = model(inputs_embeds=embeds).logits
    stays = [p for p in range(embeds.shape[1]) if p not in drops]
    torch.testing.assert_close(logits[0, stays], expected[0, stays], atol=1e-4, rtol=1e-4)


def unpruned_attention(family, embeds, layer):
    """Post-softmax attention (heads, L, L) the eager model computes at ``layer``."""
    model = tiny_decoder(family, "eager")
    return model(inputs_embeds=embeds, output_attentions=True).attentions[layer][0]


@pytest.mark.parametrize("family", FAMILIES)
@torch.no_grad()
def test_fastv_keeps_top_tokens_by_last_query(family):
    model = tiny_decoder(family)
    embeds, (start, end) = prompt(model)
    last_row = unpruned_attention(family, embeds, 1)[:, -1, start:end].mean(0)
    attach(model, FastVPolicy(ratio=0.25, layer=1))
    begin_prefill(model, [[(start, end)]])
    model(inputs_embeds=embeds)
    record = last_record(model)
    kept = {i for i, layer in enumerate(record.drop_layer[0]) if layer < 0}
    assert record.visual_out[0] == [VISUAL, 6, 6, 6]
    assert kept == set(torch.argsort(last_row, descending=True)[:6].tolist())


@torch.no_grad()
def test_fitprune_drops_lowest_self_times_cross():
    model = tiny_decoder("qwen2")
    embeds, (start, end) = prompt(model)
    head_max = unpruned_attention("qwen2", embeds, 0).amax(dim=0)
    visual = torch.arange(start, end)
    text = torch.arange(end, embeds.shape[1])
    product = head_max[visual][:, visual].mean(0) * head_max[text][:, visual].mean(0)
    attach(model, FitPrunePolicy(Recipe("layer0", VISUAL, [10, 0, 0, 0])))
    begin_prefill(model, [[(start, end)]])
    model(inputs_embeds=embeds)
    dropped = {i for i, layer in enumerate(last_record(model).drop_layer[0]) if layer == 0}
    assert dropped == set(torch.argsort(product)[:10].tolist())


@pytest.mark.parametrize("family,mode,attn", [(family, mode, "sdpa") for family in FAMILIES
                                              for mode in ("greedy", "sample", "beams")]
                         + [("mistral", "greedy", "eager")])
@torch.no_grad()
def test_cached_generation_equals_masked_reference(family, mode, attn):
    model = tiny_decoder(family, attn)
    embeds, span = prompt(model)
    attach(model, FitPrunePolicy(RECIPE))
    begin_prefill(model, [[span]])
    pruned = generate(model, embeds, mode)
    drops = drop_map(last_record(model), 0, span)
    detach(model)
    with masked_reference(model, drops):
        expected = generate(model, embeds, mode)
    assert pruned == expected
    assert generate(model, embeds, mode) != pruned or mode == "sample"


def padded_pair(model):
    """Two prompts with different visual counts: each alone ((embeds, span) pairs), and as a
    left-padded batch (embeds, mask, spans)."""
    long, long_span = prompt(model, visual=24, seed=5)
    short, short_span = prompt(model, visual=16, system=5, seed=6)
    pad = long.shape[1] - short.shape[1]
    batch = torch.cat([long, torch.cat([torch.zeros(1, pad, long.shape[2]), short], dim=1)])
    mask = torch.ones(2, long.shape[1], dtype=torch.long)
    mask[1, :pad] = 0
    spans = [[long_span], [(short_span[0] + pad, short_span[1] + pad)]]
    return [(long, long_span), (short, short_span)], (batch, mask, spans)


def singles_of(model, pairs, mode):
    """Tokens generated for each prompt alone, and the layer that deleted each of its visual tokens."""
    singles, drops = [], []
    for embeds, span in pairs:
        begin_prefill(model, [[span]])
        singles += generate(model, embeds, mode)
        drops.append(last_record(model).drop_layer[0])
    return singles, drops


@pytest.mark.parametrize("family,mode", [(family, "greedy") for family in FAMILIES] + [("llama", "beams")])
@torch.no_grad()
def test_left_padded_batch_equals_singles(family, mode):
    """Different visual counts per sample (the recipe scales), so different deletions and filler slots."""
    model = tiny_decoder(family)
    pairs, (batch, mask, spans) = padded_pair(model)
    attach(model, FitPrunePolicy(RECIPE))
    singles, drops = singles_of(model, pairs, mode)
    begin_prefill(model, spans)
    assert generate(model, batch, mode, attention_mask=mask) == singles
    record = last_record(model)
    per_sample = len(record.drop_layer) // 2  # beam search runs each sample num_beams times
    assert record.drop_layer[::per_sample] == drops
    assert record.visual_out[0] != record.visual_out[per_sample]


@pytest.mark.parametrize("policy", [FastVPolicy(0.5, layer=1), DartPolicy(0.5)], ids=["fastv", "dart"])
@torch.no_grad()
def test_fastv_and_dart_in_a_left_padded_batch_choose_as_for_each_sample_alone(policy):
    model = tiny_decoder("qwen2")
    pairs, (batch, mask, spans) = padded_pair(model)
    attach(model, policy)
    singles, drops = singles_of(model, pairs, "greedy")
    begin_prefill(model, spans)
    assert generate(model, batch, "greedy", attention_mask=mask) == singles
    assert last_record(model).drop_layer == drops
    assert [sum(layer >= 0 for layer in sample) for sample in drops] == [12, 8]


@pytest.mark.parametrize("family", FAMILIES)
@torch.no_grad()
def test_text_only_and_detach_leave_model_untouched(family):
    model = tiny_decoder(family)
    embeds, _ = prompt(model)
    before = model(inputs_embeds=embeds).logits
    attach(model, FitPrunePolicy(RECIPE))
    begin_prefill(model, [[]])
    assert torch.equal(model(inputs_embeds=embeds).logits, before)
    assert last_record(model).visual_in == [[0] * LAYERS]
    assert torch.equal(model(inputs_embeds=embeds).logits, before)  # no begin_prefill at all
    detach(model)
    assert all("forward" not in module.__dict__ for module in [model.model, *model.model.layers])
    assert torch.equal(model(inputs_embeds=embeds).logits, before)


@torch.no_grad()
def test_detach_under_a_later_wrapper_keeps_that_wrapper():
    model = tiny_decoder("llama")
    embeds, span = prompt(model)
    before = model(inputs_embeds=embeds).logits
    attach(model, FitPrunePolicy(RECIPE))
    inner = model.model.forward
    model.model.forward = outer = lambda *args, **kwargs: inner(*args, **kwargs)
    begin_prefill(model, [[span]])
    assert not torch.equal(model(inputs_embeds=embeds).logits, before)
    detach(model)
    assert model.model.forward is outer
    assert torch.equal(model(inputs_embeds=embeds).logits, before)


@pytest.mark.parametrize("attn,expected_calls", [("sdpa", LAYERS), ("eager", 3)])
@torch.no_grad()
def test_layers_that_do_not_prune_keep_their_attention_implementation(attn, expected_calls, monkeypatch):
    """SDPA: every layer runs one SDPA call; eager: only the three pruning layers (the runtime's own)."""
    model = tiny_decoder("llama", attn)
    embeds, span = prompt(model)
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        lambda *a, **k: calls.append(1) or sdpa(*a, **k))
    attach(model, FitPrunePolicy(RECIPE))
    begin_prefill(model, [[span]])
    model(inputs_embeds=embeds)
    assert len(calls) == expected_calls
    assert model.config._attn_implementation == attn


def test_unsupported_decoders_are_refused_by_name():
    phi = AutoModelForCausalLM.from_config(PhiConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                                                     num_hidden_layers=2, num_attention_heads=4))
    # transformers >= 4.54 adds the Qwen-VL language models' attentions to the list
    with pytest.raises(TypeError, match=r"supports LlamaAttention, MistralAttention, Qwen2Attention(, \w+)* decoders; "
                                        "PhiModel has PhiAttention layers"):
        attach(phi, FastVPolicy(0.5, layer=1))
    with pytest.raises(TypeError, match="Linear: no decoder layers found"):
        attach(torch.nn.Linear(2, 2), FastVPolicy(0.5, layer=1))
    model = tiny_decoder("llama")
    model.config._attn_implementation = "flash_attention_2"
    with pytest.raises(TypeError, match="'sdpa' or 'eager', not 'flash_attention_2'"):
        attach(model, FastVPolicy(0.5, layer=1))


@pytest.mark.skipif(not hasattr(transformers, "StaticCache"), reason="no StaticCache in this transformers")
@torch.no_grad()
def test_static_cache_is_refused_by_name():
    model = tiny_decoder("llama")
    embeds, span = prompt(model)
    attach(model, FastVPolicy(0.5, layer=1))
    begin_prefill(model, [[span]])
    cache = transformers.StaticCache(config=model.config, max_cache_len=64)
    name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    with pytest.raises(TypeError, match="needs a DynamicCache .* got StaticCache"):
        model(inputs_embeds=embeds, use_cache=True, **{name: cache})


@torch.no_grad()
def test_sequence_beyond_a_sliding_window_is_refused():
    model = tiny_decoder("mistral", sliding_window=32)
    embeds, span = prompt(model)
    attach(model, FastVPolicy(0.5, layer=1))
    begin_prefill(model, [[span]])
    with pytest.raises(ValueError, match="sliding_window=32 tokens and this sequence reaches 38"):
        model(inputs_embeds=embeds)
    short, short_span = prompt(model, visual=12, system=4, text=4)
    begin_prefill(model, [[short_span]])
    model(inputs_embeds=short)
    assert last_record(model).visual_out[0][1] == 6


def _llava_classes():
    """(class name, text family) of transformers' LLaVA classes, on the versions the transformers
    backend serves. The version is checked first: even looking a class up imports its module,
    and the plugin picks its backend by the host modules imported."""
    modern = tuple(int(part) for part in transformers.__version__.split(".")[:2]) >= (4, 54)
    wanted = [("LlavaForConditionalGeneration", "llama"), ("LlavaNextForConditionalGeneration", "mistral"),
              ("LlavaOnevisionForConditionalGeneration", "qwen2")]
    return [pytest.param(name, family, marks=pytest.mark.skipif(not modern or not hasattr(transformers, name),
                                                                 reason=f"{name}: transformers >= 4.54 only"))
            for name, family in wanted]


@pytest.mark.parametrize("class_name,family", _llava_classes())
@torch.no_grad()
def test_decoder_is_found_in_llava_classes(class_name, family):
    cls = getattr(transformers, class_name)
    text = tiny_decoder(family).config
    vision = (transformers.SiglipVisionConfig if "Onevision" in class_name else transformers.CLIPVisionConfig)(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=28,
        patch_size=14)
    model = cls(cls.config_class(vision_config=vision.to_dict(), text_config=text.to_dict())).eval()
    embeds = torch.randn(1, SYSTEM + VISUAL + TEXT, text.hidden_size)
    attach(model, FastVPolicy(0.5, layer=1))
    begin_prefill(model, [[(SYSTEM, SYSTEM + VISUAL)]])
    logits = model(inputs_embeds=embeds).logits
    assert logits.shape[1] == embeds.shape[1]
    assert last_record(model).visual_out[0] == [VISUAL, 12, 12, 12]
    detach(model)
