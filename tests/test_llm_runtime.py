"""Decoder-side pruning runtime: recipe honoured, lowest dropped, cache and batch consistency."""

import math

import pytest
import torch
from transformers import GenerationMixin
from transformers.models.llama import modeling_llama
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb, repeat_kv

from llava_freepruner.runtime.fitprune import Recipe, load_recipe
from llava_freepruner.runtime.llm import (
    FastVPolicy, FitPrunePolicy, PrunePolicy, attach, begin_prefill, detach, last_record,
)
from llava_freepruner.runtime.llm import runtime as runtime_module
from test_llm_tiny_models import prompt_embeds, tiny_llava

RECIPE_60 = load_recipe("llava-v1.5-7b@60")


@pytest.fixture(scope="module")
def model():
    return tiny_llava(seed=0)


@pytest.fixture(scope="module")
def prompt(model):
    embeds, span = prompt_embeds(model, 576, system=35, text=20)
    return embeds[None], span


@pytest.fixture(autouse=True)
def _detached(model):
    yield
    detach(model)


def _attention_probs(attn, x, positions, total):
    """Causal attention probabilities (heads, n, n) and values of one layer, by hand."""
    n = x.shape[1]
    q = attn.q_proj(x).view(1, n, attn.num_heads, attn.head_dim).transpose(1, 2)
    k = attn.k_proj(x).view(1, n, attn.num_key_value_heads, attn.head_dim).transpose(1, 2)
    v = attn.v_proj(x).view(1, n, attn.num_key_value_heads, attn.head_dim).transpose(1, 2)
    cos, sin = attn.rotary_emb(v, seq_len=total)
    q, k = apply_rotary_pos_emb(q, k, cos, sin, positions[None])
    k, v = repeat_kv(k, attn.num_key_value_groups), repeat_kv(v, attn.num_key_value_groups)
    scores = q @ k.transpose(-1, -2) / math.sqrt(attn.head_dim)
    scores = scores.masked_fill(positions[None, :] > positions[:, None], float("-inf"))
    return scores.softmax(-1)[0], v[0]


def unpruned_attention(model, embeds, layer):
    """Attention probabilities (heads, L, L) of an unpruned forward at one layer."""
    hidden = model(inputs_embeds=embeds, output_hidden_states=True).hidden_states[layer]
    attn = model.get_model().layers[layer]
    x = attn.input_layernorm(hidden)
    return _attention_probs(attn.self_attn, x, torch.arange(x.shape[1]), x.shape[1])[0]


def reference_logits(model, embeds, drop_layer):
    """Pruned forward written out plainly: no cache, no runtime code.

    ``drop_layer``: {position: layer}; a token dropped at layer l takes part in
    layer l's attention and nothing after it. Returns logits of the last token.
    """
    decoder = model.get_model()
    hidden = embeds.clone()
    alive = torch.arange(embeds.shape[0])
    for idx, layer in enumerate(decoder.layers):
        attn = layer.self_attn
        probs, values = _attention_probs(attn, layer.input_layernorm(hidden[alive])[None], alive, embeds.shape[0])
        out = (probs @ values).transpose(0, 1).reshape(len(alive), -1)
        keep = torch.tensor([drop_layer.get(int(p), -1) != idx for p in alive])
        rows = alive[keep]
        h = hidden[rows] + attn.o_proj(out[keep])
        hidden[rows] = h + layer.mlp(layer.post_attention_layernorm(h))
        alive = rows
    return model.lm_head(decoder.norm(hidden[-1]))


def drop_map(record, sample, span_starts):
    """{position: layer} from a record's per-visual-token drop layers."""
    positions = [p for start, end in span_starts for p in range(start, end)]
    return {p: layer for p, layer in zip(positions, record.drop_layer[sample]) if layer >= 0}


def greedy(model, embeds, steps, attention_mask=None):
    out = GenerationMixin.generate(model, inputs_embeds=embeds, attention_mask=attention_mask,
                                   max_new_tokens=steps, min_new_tokens=steps, do_sample=False, pad_token_id=0)
    return out[:, -steps:]


@torch.no_grad()
def test_builtin_recipe_honoured_layer_by_layer_with_sdpa_elsewhere(model, prompt, monkeypatch):
    embeds, span = prompt
    lengths, stat_layers = [], []
    hooks = [layer.register_forward_hook(lambda m, a, out: lengths.append(out[0].shape[1]))
             for layer in model.get_model().layers]

    def no_eager(*args, **kwargs):
        raise AssertionError("eager attention (full attention weights) was computed")
    monkeypatch.setattr(modeling_llama.LlamaAttention, "forward", no_eager)
    original_stats = runtime_module._layer_statistics
    monkeypatch.setattr(runtime_module, "_layer_statistics",
                        lambda state, *a: stat_layers.append(len(state.seq_len) - 1) or original_stats(state, *a))
    attach(model, FitPrunePolicy(RECIPE_60))
    begin_prefill(model, [[span]])
    model(inputs_embeds=embeds, use_cache=True)
    for hook in hooks:
        hook.remove()

    alive = RECIPE_60.alive_after_each_layer()
    non_visual = embeds.shape[1] - 576
    assert lengths[:-1] == [non_visual + n for n in alive[:-1]]
    assert lengths[-1] == embeds.shape[1]  # scattered back to full length after the last layer
    record = last_record(model)
    assert record.visual_out[0] == alive
    assert record.visual_in[0] == [576] + alive[:-1]
    assert record.seq_len == [embeds.shape[1]] + [non_visual + n for n in alive[:-1]]
    assert stat_layers == [i for i, k in enumerate(RECIPE_60.deletions) if k > 0]
    assert 0.6 < record.flops_reduction[0] < 0.8


@pytest.fixture(scope="module")
def small_prompt(model):
    embeds, span = prompt_embeds(model, 96, system=17, text=12, seed=2)
    return embeds[None], span


@pytest.mark.parametrize("spans", [[(17, 113)], [(17, 57), (67, 113)]], ids=["one image", "two images"])
@torch.no_grad()
def test_lowest_self_times_cross_is_dropped(model, small_prompt, spans):
    """Several images: V is the union of the spans, X the other tokens after the first span."""
    embeds, _ = small_prompt
    layer, k = 1, 30
    visual = torch.cat([torch.arange(s, e) for s, e in spans])
    text = torch.tensor([p for p in range(spans[0][0], embeds.shape[1]) if p not in set(visual.tolist())])
    head_max = unpruned_attention(model, embeds, layer).amax(dim=0)
    product = head_max[visual][:, visual].mean(0) * head_max[text][:, visual].mean(0)
    deletions = [0] * 32
    deletions[layer] = k
    attach(model, FitPrunePolicy(Recipe("one-layer", len(visual), deletions)))
    begin_prefill(model, [spans])
    model(inputs_embeds=embeds)
    dropped = {i for i, l in enumerate(last_record(model).drop_layer[0]) if l == layer}
    assert len(dropped) == k
    assert dropped == set(torch.argsort(product)[:k].tolist())
    assert dropped != set(torch.argsort(product, descending=True)[:k].tolist())
    assert max(product[list(dropped)]) <= min(p for i, p in enumerate(product) if i not in dropped)


@torch.no_grad()
def test_fastv_keeps_top_tokens_by_last_query(model, small_prompt):
    embeds, (start, end) = small_prompt
    last_row = unpruned_attention(model, embeds, 2)[:, -1, start:end].mean(0)
    attach(model, FastVPolicy(ratio=0.25, layer=2))
    begin_prefill(model, [[(start, end)]])
    model(inputs_embeds=embeds)
    record = last_record(model)
    kept = {i for i, l in enumerate(record.drop_layer[0]) if l < 0}
    assert len(kept) == 24 and record.visual_out[0][2] == 24 and record.visual_in[0][2] == 96
    assert kept == set(torch.argsort(last_row, descending=True)[:24].tolist())


@pytest.mark.parametrize("attn,kv_heads", [("sdpa", 4), ("eager", 4), ("sdpa", 2)])
@torch.no_grad()
def test_pruned_forward_matches_token_by_token_reference(prompt, attn, kv_heads):
    model = tiny_llava(seed=0, attn=attn, kv_heads=kv_heads)
    embeds, span = prompt
    attach(model, FitPrunePolicy(RECIPE_60))
    begin_prefill(model, [[span]])
    logits = model(inputs_embeds=embeds).logits[0, -1]
    expected = reference_logits(model, embeds[0], drop_map(last_record(model), 0, [span]))
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-4)
    detach(model)


@torch.no_grad()
def test_right_padded_batch_prefill_equals_single(model):
    first, first_span = prompt_embeds(model, 120, system=30, text=15, seed=7)
    second, second_span = prompt_embeds(model, 80, system=12, text=6, seed=8)
    attach(model, FitPrunePolicy(RECIPE_60))
    singles = []
    for embeds, span in ((first, first_span), (second, second_span)):
        begin_prefill(model, [[span]])
        singles.append((model(inputs_embeds=embeds[None]).logits[0, -1], last_record(model).drop_layer[0]))
    batch = torch.zeros(2, first.shape[0], first.shape[1])
    batch[0], batch[1, :second.shape[0]] = first, second
    mask = torch.zeros(2, first.shape[0], dtype=torch.long)
    mask[0], mask[1, :second.shape[0]] = 1, 1
    begin_prefill(model, [[first_span], [second_span]])
    logits = model(inputs_embeds=batch, attention_mask=mask).logits
    record = last_record(model)
    for b, last in enumerate((first.shape[0] - 1, second.shape[0] - 1)):
        torch.testing.assert_close(logits[b, last], singles[b][0], atol=1e-4, rtol=1e-4)
        assert record.drop_layer[b] == singles[b][1]


@torch.no_grad()
def test_cached_generation_equals_uncached_reference(model, small_prompt):
    embeds, span = small_prompt
    attach(model, FitPrunePolicy(RECIPE_60))
    begin_prefill(model, [[span]])
    generated = greedy(model, embeds, steps=6)[0].tolist()
    drops = drop_map(last_record(model), 0, [span])
    assert drops, "the recipe pruned nothing"
    sequence = embeds[0]
    expected = []
    for _ in range(6):
        token = int(reference_logits(model, sequence, drops).argmax())
        expected.append(token)
        sequence = torch.cat([sequence, model.get_model().embed_tokens(torch.tensor([token]))])
    assert generated == expected
    detach(model)
    assert greedy(model, embeds, steps=6)[0].tolist() != generated or not drops


@torch.no_grad()
def test_batch_with_padding_equals_single(model):
    """Different visual counts per sample (scaled recipe, so different deletions), left padding."""
    long_embeds, long_span = prompt_embeds(model, 144, system=35, text=20, seed=5)
    short_embeds, short_span = prompt_embeds(model, 100, system=20, text=11, seed=6)
    attach(model, FitPrunePolicy(RECIPE_60))
    singles, records = [], []
    for embeds, span in ((long_embeds, long_span), (short_embeds, short_span)):
        begin_prefill(model, [[span]])
        singles.append(greedy(model, embeds[None], steps=5)[0].tolist())
        records.append(last_record(model))
    pad = long_embeds.shape[0] - short_embeds.shape[0]
    batch = torch.stack([long_embeds, torch.cat([torch.zeros(pad, long_embeds.shape[1]), short_embeds])])
    mask = torch.ones(2, long_embeds.shape[0], dtype=torch.long)
    mask[1, :pad] = 0
    shifted = (short_span[0] + pad, short_span[1] + pad)
    begin_prefill(model, [[long_span], [shifted]])
    outputs = greedy(model, batch, steps=5, attention_mask=mask).tolist()
    record = last_record(model)
    assert outputs == singles
    assert record.drop_layer == [records[0].drop_layer[0], records[1].drop_layer[0]]
    assert record.visual_out[1] != record.visual_out[0]
    assert len(record.notes) == 2 and "100" in record.notes[1]


@torch.no_grad()
def test_text_only_and_detach_leave_model_untouched(model, prompt):
    embeds, _ = prompt
    text = embeds[:, :40]
    before = model(inputs_embeds=text).logits
    attach(model, FitPrunePolicy(RECIPE_60))
    begin_prefill(model, [[]])
    assert torch.equal(model(inputs_embeds=text).logits, before)
    assert last_record(model).visual_in == [[0] * 32]
    assert torch.equal(model(inputs_embeds=text).logits, before)  # no begin_prefill at all
    detach(model)
    assert "forward" not in model.get_model().__dict__
    assert all("forward" not in layer.__dict__ for layer in model.get_model().layers)
    assert all(not layer.self_attn.rotary_emb._forward_pre_hooks for layer in model.get_model().layers)
    assert torch.equal(model(inputs_embeds=text).logits, before)


class _DropFirst(PrunePolicy):
    def begin(self, visual_counts):
        return []

    def statistic(self, layer_idx):
        return "self_cross" if layer_idx == 0 else None

    def choose(self, layer_idx, stats, alive):
        return [torch.arange(n) for n in alive]


def test_bad_inputs_are_reported(model, prompt):
    embeds, span = prompt
    with pytest.raises(RuntimeError, match="attach"):
        begin_prefill(model, [[span]])
    with pytest.raises(ValueError, match="layers"):
        attach(model, FitPrunePolicy(Recipe("short", 576, [1, 2])))
    with pytest.raises(ValueError, match="FastV layer=40"):
        attach(model, FastVPolicy(0.5, layer=40))
    attach(model, _DropFirst())
    begin_prefill(model, [[(0, 10_000)]])
    with pytest.raises(ValueError, match="outside"):
        model(inputs_embeds=embeds)
    # every visual token deleted at layer 0: the text still runs
    begin_prefill(model, [[span]])
    with torch.no_grad():
        out = model(inputs_embeds=embeds).logits
    assert torch.isfinite(out).all() and last_record(model).visual_out[0][0] == 0
