"""freePruner's selection against a direct transcription of the spec on full attention maps."""

import math

import pytest
import torch

from llava_freepruner.runtime.methods.base import CropRequest, QueryKeyView, SelectionContext, descending, keep_top
from llava_freepruner.runtime.methods.freepruner import (
    FreePruner, default_contribution_layers, pivot_counts, spread_top,
)

GRID = (6, 6)
N = GRID[0] * GRID[1]
T = N + 1
LAYERS = 6
FEATURE = 4


def random_layers(batch, seed, heads=2, dim=8):
    g = torch.Generator().manual_seed(seed)
    # Scaled logits so some tokens become strong aggregators, as in real towers.
    return [(torch.randn(batch, heads, T, dim, generator=g) * 1.5, torch.randn(batch, heads, T, dim, generator=g) * 1.5)
            for _ in range(LAYERS)]


def run_method(method, layers, requests):
    ctx = SelectionContext(requests=requests, grid=GRID, num_prefix=1, num_layers=LAYERS, feature_layer=FEATURE)
    for layer in method.attention_layers(LAYERS, FEATURE):
        method.observe(layer, QueryKeyView(*layers[layer]), ctx)
    return method.select(ctx)


def reference(layers, sample, budget, band, iqr=1.5, cap=0.5, direction="from_pivots"):
    """The spec, literally: full head-mean maps, loops, sorted lists."""
    def full(layer):
        q, k = layers[layer]
        return torch.softmax(q[sample] @ k[sample].transpose(-1, -2), -1).mean(0)

    r = torch.zeros(N)
    for layer in band:
        a = full(layer)
        for j in range(N):
            r[j] += (a[:, j + 1].sum() - a[j + 1, j + 1]) / N / len(band)
    q1, q3 = torch.quantile(r, torch.tensor([0.25, 0.75]))
    outliers = sorted([j for j in range(N) if r[j] > q3 + iqr * (q3 - q1)], key=lambda j: (-r[j].item(), j))
    pivots = outliers[: max(1, math.floor(cap * budget))] or [int(torch.argmax(r))]
    a = full(FEATURE)
    scores = {}
    for j in range(N):
        if j in pivots:
            continue
        s = 0.0
        if direction in ("from_pivots", "both"):
            s += sum(a[p + 1, j + 1].item() for p in pivots)
        if direction in ("to_pivots", "both"):
            s += sum(a[j + 1, p + 1].item() for p in pivots)
        scores[j] = s
    complement = sorted(scores, key=lambda j: (-scores[j], j))[: budget - len(pivots)]
    return sorted(pivots), sorted(pivots + complement)


@pytest.mark.parametrize("direction", ["from_pivots", "to_pivots", "both"])
@pytest.mark.parametrize("budget", [1, 5, 18, 35])
def test_matches_spec_reference(direction, budget):
    layers = random_layers(batch=2, seed=budget)
    method = FreePruner(direction=direction)
    band = method.contribution_layers(LAYERS, FEATURE)
    selections = run_method(method, layers, [CropRequest(budget)] * 2)
    for sample, selection in enumerate(selections):
        pivots, kept = reference(layers, sample, budget, band, direction=direction)
        assert selection.pivotal.tolist() == pivots
        assert selection.indices.tolist() == kept


def test_counts_raster_order_uniqueness_and_roles():
    selections = run_method(FreePruner(), random_layers(batch=3, seed=1), [CropRequest(18)] * 3)
    for s in selections:
        idx = s.indices.tolist()
        assert len(idx) == 18 and idx == sorted(set(idx))
        assert set(s.pivotal.tolist()) <= set(idx)
        assert 1 <= s.num_pivotal <= 9 and s.num_pivotal + s.num_complementary == 18


def test_full_budget_keeps_everything_and_tiny_budget_keeps_one():
    layers = random_layers(batch=1, seed=2)
    assert run_method(FreePruner(), layers, [CropRequest(N)])[0].indices.tolist() == list(range(N))
    one = run_method(FreePruner(), layers, [CropRequest(1)])[0]
    assert one.indices.numel() == 1 and one.num_pivotal == 1


def test_deterministic_and_independent_of_batch_mates():
    layers = random_layers(batch=3, seed=3)
    batch = run_method(FreePruner(), layers, [CropRequest(12)] * 3)
    again = run_method(FreePruner(), layers, [CropRequest(12)] * 3)
    for i in range(3):
        single_layers = [(q[i:i + 1], k[i:i + 1]) for q, k in layers]
        single = run_method(FreePruner(), single_layers, [CropRequest(12)])[0]
        assert torch.equal(single.indices, batch[i].indices)
        assert torch.equal(again[i].indices, batch[i].indices)


def test_invalid_patches_are_never_chosen():
    valid = torch.zeros(N, dtype=torch.bool)
    valid[: 4 * 6] = True       # the top four rows survive unpadding
    selection = run_method(FreePruner(), random_layers(batch=1, seed=4), [CropRequest(10, valid)])[0]
    assert selection.indices.numel() == 10 and selection.indices.max() < 24
    everything = run_method(FreePruner(), random_layers(batch=1, seed=4), [CropRequest(30, valid)])[0]
    assert everything.indices.tolist() == list(range(24))
    assert valid.sum() == 24     # the request's mask is not modified


def pivotal_tokens(r, budget):
    """One crop's pivots: the first ``pivot_counts`` of its ranking, ascending."""
    count = int(pivot_counts(r[None], [budget])[0])
    return torch.sort(descending(r[None])[0][:count]).values


def test_pivots_are_iqr_outliers_capped_at_half_budget():
    r = torch.zeros(20)
    r[[3, 7, 11, 15]] = torch.tensor([5.0, 9.0, 7.0, 6.0])
    assert pivotal_tokens(r, budget=10).tolist() == [3, 7, 11, 15]
    assert pivotal_tokens(r, budget=4).tolist() == [7, 11]      # cap 2: the highest
    assert pivotal_tokens(torch.ones(20), budget=4).tolist() == [0]  # none: argmax, lowest index


def test_pivot_counts_read_only_candidates_and_each_crop_alone():
    r = torch.zeros(2, 20)
    r[:, [3, 7, 11, 15]] = torch.tensor([5.0, 9.0, 7.0, 6.0])
    candidates = torch.ones(2, 20, dtype=torch.bool)
    candidates[1, 10:] = False      # crop 1 sees only 3 and 7 among the high ones
    assert pivot_counts(r, [10, 10], candidates).tolist() == [4, 2]
    assert pivot_counts(r, [10, 2], candidates).tolist() == [4, 1]


def test_pivots_do_not_depend_on_the_default_dtype():
    # transformers 4.37.2 leaves the default at float16 when a model's __init__ raises
    # inside from_pretrained; lmms-eval's `--model llava` does that on its first try.
    r = torch.rand(50, generator=torch.Generator().manual_seed(0))
    expected = pivotal_tokens(r, budget=20)
    torch.set_default_dtype(torch.float16)
    try:
        assert torch.equal(pivotal_tokens(r, budget=20), expected)
    finally:
        torch.set_default_dtype(torch.float32)


def test_complement_ties_take_lower_index_and_spreading():
    scores = torch.tensor([[1.0, 3.0, 3.0, 0.5, 3.0, 0.0]])
    ctx = SelectionContext(requests=[CropRequest(2)], grid=(1, 6), num_prefix=1, num_layers=LAYERS,
                           feature_layer=FEATURE)
    assert keep_top(scores, ctx)[0].indices.tolist() == [1, 2]
    # Radius 1 on a 2x3 grid: after 1, its neighbours 0, 2, 3, 4, 5 are skipped, then filled in ranking order.
    assert spread_top(torch.tensor([1, 2, 4, 0, 3, 5]), 3, grid_width=3, radius=1).tolist() == [1, 2, 4]
    assert spread_top(torch.tensor([0, 1, 5, 2]), 2, grid_width=3, radius=1).tolist() == [0, 5]


@pytest.mark.parametrize("radius", [0, 1])
def test_batch_of_mixed_budgets_and_masks_equals_single_crops(radius):
    layers = random_layers(batch=3, seed=5)
    valid = torch.zeros(N, dtype=torch.bool)
    valid[6:30] = True
    requests = [CropRequest(12), CropRequest(5, valid), CropRequest(20)]
    batch = run_method(FreePruner(radius=radius), layers, requests)
    for i, request in enumerate(requests):
        single = run_method(FreePruner(radius=radius), [(q[i:i + 1], k[i:i + 1]) for q, k in layers], [request])[0]
        assert torch.equal(single.indices, batch[i].indices) and torch.equal(single.pivotal, batch[i].pivotal)
        assert batch[i].indices.numel() == request.budget


def test_default_band():
    assert default_contribution_layers(24, 22) == tuple(range(12, 22))
    assert default_contribution_layers(12, 10) == (6, 7, 8, 9)
    assert default_contribution_layers(4, 2) == (1,)


def test_layers_after_feature_layer_are_refused():
    with pytest.raises(ValueError, match="FREEPRUNER_LAYERS=.*0..4"):
        FreePruner(layers=(3, 5)).attention_layers(LAYERS, FEATURE)
