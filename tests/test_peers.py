"""Peer methods against plain re-implementations of their official code.

Each reference below is written from the official repository (named in the
method's module docstring) with loops over tokens and no helper shared with the
package, on small fixed inputs.
"""

import math

import pytest
import torch

from llava_freepruner.runtime.instruction import clean_instruction, image_instructions
from llava_freepruner.runtime.llm.dart import dart_keep
from llava_freepruner.runtime.methods.base import CropRequest, QueryKeyView, SelectionContext
from llava_freepruner.runtime.methods.cdpruner import CDPruner
from llava_freepruner.runtime.methods.divprune import DivPrune
from llava_freepruner.runtime.methods.vispruner import VisPruner
from llava_freepruner.runtime.methods.visionzip import VisionZip, split_budget
from llava_freepruner.runtime.tower import gather_kept

GRID = (6, 6)
N = 36
T = N + 1
HEADS, HEAD_DIM, DIM = 2, 8, 12
LAYERS, FEATURE = 4, 2


def inputs(batch, seed):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, HEADS, T, HEAD_DIM, generator=g) * 1.5
    k = torch.randn(batch, HEADS, T, HEAD_DIM, generator=g) * 1.5
    hidden = torch.randn(batch, T, DIM, generator=g)
    return q, k, hidden


def run(method, q, k, hidden, requests, projector=None, **context):
    ctx = SelectionContext(requests=requests, grid=GRID, num_prefix=1, num_layers=LAYERS, feature_layer=FEATURE,
                           projector=projector, output_dtype=hidden.dtype, **context)
    ctx.hidden = hidden
    for layer in method.attention_layers(LAYERS, FEATURE):
        method.observe(layer, QueryKeyView(q, k), ctx)
    return method.select(ctx)


def attention(q, k, b):
    """(heads, T, T) softmax attention of sample b (q already scaled)."""
    return torch.softmax(q[b] @ k[b].transpose(-1, -2), dim=-1)


def cosine(a, b):
    return float((a @ b) / (a.norm() * b.norm()))


def descending(scores, pool):
    return sorted(pool, key=lambda j: (-float(scores[j]), j))


# --- VisionZip -------------------------------------------------------------------


def visionzip_reference(q, k, hidden, b, budget):
    contextual = math.floor(5 * budget / 32 + 0.5)
    dominant = budget - contextual
    att = attention(q, k, b)
    cls_sum = [sum(float(att[h, 0, 1 + j]) for h in range(HEADS)) for j in range(N)]
    top = sorted(descending(cls_sum, range(N))[:dominant - 1])
    rows = [hidden[b, 0]] + [hidden[b, 1 + j] for j in top]
    rest = [j for j in range(N) if j not in top]
    keys = k[b].mean(dim=0)[1:]
    step = max(1, len(rest) // contextual)
    targets = list(range(0, len(rest), step))[:contextual]
    sums = [torch.zeros(DIM) for _ in targets]
    counts = [0 for _ in targets]
    for pos, j in enumerate(rest):
        if pos in targets:
            continue
        sims = [cosine(keys[j], keys[rest[t]]) for t in targets]
        best = sims.index(max(sims))
        sums[best] += hidden[b, 1 + j]
        counts[best] += 1
    for slot, t in enumerate(targets):
        rows.append(hidden[b, 1 + rest[t]] + sums[slot] / max(1, counts[slot]))
    return torch.stack(rows)


@pytest.mark.parametrize("budget", [6, 12, 20])
def test_visionzip_matches_official_reference(budget):
    q, k, hidden = inputs(2, seed=budget)
    selections = run(VisionZip(), q, k, hidden, [CropRequest(budget)] * 2)
    for b, selection in enumerate(selections):
        fed = gather_kept(hidden[b, 1:], selection, with_cls=False)
        assert fed.shape[0] == budget == selection.num_tokens
        torch.testing.assert_close(fed, visionzip_reference(q, k, hidden, b, budget), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("budget", [6, 12, 20])
def test_visionzip_takes_the_cls_the_host_keeps_as_its_own(budget):
    """Video-LLaVA's frames keep their [CLS] outside the budget: that [CLS] plus what
    VisionZip returns is the official selection of budget + 1 tokens, [CLS] not repeated."""
    q, k, hidden = inputs(2, seed=budget)
    selections = run(VisionZip(), q, k, hidden, [CropRequest(budget)] * 2, host_keeps_prefix=True)
    for b, selection in enumerate(selections):
        assert selection.prefix is None and selection.num_tokens == budget
        fed = gather_kept(hidden[b], selection, with_cls=True)          # the host's [CLS] in front
        torch.testing.assert_close(fed, visionzip_reference(q, k, hidden, b, budget + 1), rtol=1e-5, atol=1e-5)


def test_visionzip_official_splits_and_pass_through():
    assert [split_budget(k) for k in (64, 128, 192)] == [(54, 10), (108, 20), (162, 30)]
    q, k, hidden = inputs(1, seed=0)
    full = run(VisionZip(), q, k, hidden, [CropRequest(N)])[0]
    assert full.indices.tolist() == list(range(N)) and full.prefix is None and full.merged is None


# --- VisPruner -------------------------------------------------------------------


def vispruner_reference(q, k, hidden, b, budget):
    att = attention(q, k, b)
    importance = [sum(float(att[h, 0, 1 + j]) for h in range(HEADS)) / HEADS for j in range(N)]
    order = descending(importance, range(N))
    important = int(budget * 0.5)
    kept, residual = order[:important], order[important:]
    feats = [hidden[b, 1 + j] / hidden[b, 1 + j].norm() for j in range(N)]
    diverse = budget - important
    while diverse > 0:
        drop = min(8, len(residual) - diverse)
        if drop <= 0:
            break
        evens, odds = residual[0::2], residual[1::2]
        scores = [max(float(feats[e] @ feats[o]) for o in odds) for e in evens]
        ranked_evens = sorted(range(len(evens)), key=lambda i: (-scores[i], i))
        residual = [evens[i] for i in ranked_evens[drop:]] + odds
    return sorted(kept + residual)


@pytest.mark.parametrize("budget", [5, 13, 18, 30])
def test_vispruner_matches_official_reference(budget):
    q, k, hidden = inputs(2, seed=10 + budget)
    for b, selection in enumerate(run(VisPruner(), q, k, hidden, [CropRequest(budget)] * 2)):
        assert selection.indices.tolist() == vispruner_reference(q, k, hidden, b, budget)


# --- DivPrune --------------------------------------------------------------------


def divprune_reference(tokens, budget):
    n = tokens.shape[0]
    dist = [[1 - cosine(tokens[i], tokens[j]) for j in range(n)] for i in range(n)]
    chosen = []
    for step in range(budget):
        if step == 0:
            scores = [sorted(dist[i][j] for i in range(n))[1] for j in range(n)]
        else:
            scores = [min(dist[i][j] for i in chosen) for j in range(n)]
        chosen.append(max(range(n), key=lambda j: (scores[j], -j)))
    return sorted(chosen)


@pytest.mark.parametrize("budget", [1, 7, 18])
def test_divprune_matches_official_reference_on_projected_tokens(budget):
    q, k, hidden = inputs(2, seed=20 + budget)
    projector = torch.nn.Sequential(torch.nn.Linear(DIM, 16), torch.nn.GELU())
    with torch.no_grad():
        selections = run(DivPrune(), q, k, hidden, [CropRequest(budget)] * 2, projector)
        for b, selection in enumerate(selections):
            assert selection.indices.tolist() == divprune_reference(projector(hidden[b, 1:]), budget)


def test_divprune_chooses_among_valid_patches_only():
    q, k, hidden = inputs(1, seed=3)
    valid = torch.zeros(N, dtype=torch.bool)
    valid[::3] = True
    selection = run(DivPrune(), q, k, hidden, [CropRequest(5, valid)])[0]
    pool = valid.nonzero().flatten().tolist()
    assert selection.indices.tolist() == sorted(pool[i] for i in divprune_reference(hidden[0, 1:][pool], 5))


# --- CDPruner --------------------------------------------------------------------


class FakeClip:
    """Joint-space embeddings from fixed random maps (the real loader is tested through upstream)."""

    def __init__(self):
        g = torch.Generator().manual_seed(7)
        self.image_map = torch.randn(DIM, 10, generator=g)
        self.texts = {"a red bus": torch.randn(1, 10, generator=g), "two segments": torch.randn(2, 10, generator=g)}

    def embed_patches(self, patches):
        return patches.float() @ self.image_map

    def embed_text(self, text):
        return self.texts[text]


def cdpruner_reference(patches, projected, text_embeds, budget):
    n = patches.shape[0]
    image = [p / p.norm() for p in FakeClip().embed_patches(patches)]
    text = [t / t.norm() for t in text_embeds]
    rel = [-sum(float(i @ t) for t in text) / len(text) for i in image]
    low, high = min(rel), max(rel)
    rel = [(r - low + 1e-6) / (high - low) for r in rel]
    sim = [[cosine(projected[i], projected[j]) for j in range(n)] for i in range(n)]
    kernel = [[rel[i] * sim[i][j] * rel[j] for j in range(n)] for i in range(n)]
    cis = []
    di2s = [kernel[i][i] for i in range(n)]
    chosen = []
    for _ in range(budget):
        j = max(range(n), key=lambda x: (di2s[x], -x))
        chosen.append(j)
        e = [(kernel[j][x] - sum(c[j] * c[x] for c in cis)) / math.sqrt(di2s[j]) for x in range(n)]
        cis.append(e)
        di2s = [d - e[x] ** 2 for x, d in enumerate(di2s)]
        di2s[j] = -math.inf
    return sorted(chosen)


@pytest.mark.parametrize("budget, text", [(4, "a red bus"), (11, "two segments")])
def test_cdpruner_matches_official_reference_per_sample(budget, text):
    q, k, hidden = inputs(2, seed=30 + budget)
    projector = torch.nn.Linear(DIM, 16)
    method = CDPruner()
    method._clip = FakeClip()
    method.clip = lambda ctx: method._clip
    with torch.no_grad():
        batch = run(method, q, k, hidden, [CropRequest(budget, instruction=text)] * 2, projector)
        for b, selection in enumerate(batch):
            expected = cdpruner_reference(hidden[b, 1:], projector(hidden[b, 1:]), FakeClip().texts[text], budget)
            assert selection.indices.tolist() == expected
            # Per sample: the same crop alone selects the same (no batch-wide normalisation).
            alone = run(method, q[b:b + 1], k[b:b + 1], hidden[b:b + 1], [CropRequest(budget, instruction=text)],
                        projector)[0]
            assert torch.equal(alone.indices, selection.indices)


def test_cdpruner_without_instruction_is_refused_by_name():
    q, k, hidden = inputs(1, seed=1)
    with pytest.raises(ValueError, match="cdpruner.*instruction"):
        run(CDPruner(), q, k, hidden, [CropRequest(4)], torch.nn.Identity())


# --- DART ------------------------------------------------------------------------


def dart_reference(key_l1_visual, key_l1_text, normed_visual, normed_text, start, keep):
    """The official loop on one sequence: image at [start, start + n), text after it."""
    n, t = key_l1_visual.shape[0], key_l1_text.shape[0]
    states = {start + i: normed_visual[i] for i in range(n)}
    states.update({start + n + j: normed_text[j] for j in range(t)})
    image_pivots = [start + i for i in sorted(range(n), key=lambda i: (-float(key_l1_visual[i]), i))[:4]]
    text_pivots = [start + n + j for j in sorted(range(t), key=lambda j: (-float(key_l1_text[j]), j))[:4]]
    pivots = set(image_pivots + text_pivots)
    valid = set(range(start, start + n)) - set(image_pivots)
    order = list(pivots)
    share, extra = divmod(keep - len(image_pivots), len(order))
    for rank, item in enumerate(order):
        count = share + (1 if rank < extra else 0)
        candidates = list(valid)
        sims = [cosine(states[item], states[c]) for c in candidates]
        picks = [candidates[i] for i in sorted(range(len(candidates)), key=lambda i: sims[i])[:count]]
        pivots.update(picks)
        valid.difference_update(picks)
    pivots.difference_update(text_pivots)
    return sorted(p - start for p in pivots)


@pytest.mark.parametrize("keep", [4, 13, 20, 32])
def test_dart_matches_official_reference_with_exact_count(keep):
    g = torch.Generator().manual_seed(keep)
    n, t, start = 40, 9, 35
    args = (torch.rand(n, generator=g), torch.rand(t, generator=g), torch.randn(n, 16, generator=g),
            torch.randn(t, 16, generator=g))
    kept = dart_keep(*args, list(range(start, start + n)), list(range(start + n, start + n + t)), keep)
    assert kept.tolist() == dart_reference(*args, start, keep)
    assert kept.numel() == keep


# --- instruction text ---------------------------------------------------------------


def test_instruction_is_the_user_turn_without_the_answer_format():
    prompt = "What is this?\nAnswer the question using a single word or phrase. ASSISTANT:"
    assert clean_instruction(prompt) == "What is this?"
    assert clean_instruction("Describe it.<|im_end|><|im_start|>assistant\n") == "Describe it."
    ids = torch.tensor([[5, -200, 7, 8, -200, 9, 0], [5, 6, -200, 4, 4, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 0, 0]])
    texts = image_instructions(ids, mask, lambda row: " ".join(map(str, row)))
    assert texts == ["7 8", "9", "4 4"]


def test_dart_reads_layer_one_keys_as_the_cache_holds_them():
    from transformers import LlamaConfig, LlamaModel

    from llava_freepruner.runtime.llm.dart import key_norms

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=10, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2)
    model = LlamaModel(config).eval()
    embeds = torch.randn(2, 9, 32)
    positions = torch.arange(9)[None].expand(2, -1)
    attn = model.layers[1].self_attn
    captured = []
    handle = attn.k_proj.register_forward_hook(lambda module, args, output: captured.append(output))
    with torch.no_grad():
        out = model(inputs_embeds=embeds, position_ids=positions, use_cache=True)
        if hasattr(attn, "rotary_emb"):         # transformers 4.37: each attention's tables
            cos, sin = attn.rotary_emb(embeds, seq_len=9)
            cos, sin = cos[positions], sin[positions]
        else:
            cos, sin = model.rotary_emb(embeds, positions)
        key_l1 = key_norms(attn, captured[0], cos, sin)
    handle.remove()
    cache = out.past_key_values
    # (batch, kv heads, seq, head_dim), after RoPE
    cached = cache.layers[1].keys if hasattr(cache, "layers") else cache[1][0]
    expected = 2 * cached.abs().sum(dim=-1).sum(dim=1)          # each kv head is repeated for 2 query heads
    torch.testing.assert_close(key_l1, expected)
