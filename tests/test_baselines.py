"""Baselines: exact counts per crop, raster order, validity, determinism, batch independence."""

import pytest
import torch

from llava_freepruner.config import Config
from llava_freepruner.runtime.methods import REGISTRY, create
from llava_freepruner.runtime.methods.base import CropRequest, QueryKeyView, SelectionContext
from llava_freepruner.runtime.methods.baselines import ClsTopK, GridTokens, RandomTokens, grid_tokens, lattice

GRID = (24, 24)
HEADS, HEAD_DIM = 4, 8


def left_block(rows: int, cols: int) -> torch.Tensor:
    """Valid mask of the top-left rows x cols patches (like an unpadded tile)."""
    valid = torch.zeros(GRID, dtype=torch.bool)
    valid[:rows, :cols] = True
    return valid.flatten()


def run(method, requests, seed=0):
    """Feed random attention through the method's layers like the capture would."""
    ctx = SelectionContext(requests=requests, grid=GRID, num_prefix=1, num_layers=4, feature_layer=2)
    generator = torch.Generator().manual_seed(seed)
    tokens = 1 + GRID[0] * GRID[1]
    for layer in method.attention_layers(ctx.num_layers, ctx.feature_layer):
        q = torch.randn(len(requests), HEADS, tokens, HEAD_DIM, generator=generator)
        k = torch.randn(len(requests), HEADS, tokens, HEAD_DIM, generator=generator)
        method.observe(layer, QueryKeyView(q, k), ctx)
    return method.select(ctx)


METHODS = [RandomTokens(seed=3), GridTokens(), ClsTopK()]
IDS = [m.name for m in METHODS]


def test_registry_creates_each_baseline_from_config():
    for name, cls in (("random", RandomTokens), ("grid", GridTokens), ("cls_topk", ClsTopK)):
        assert REGISTRY[name] is cls
        assert isinstance(create(Config(vision_method=name, ratio=0.5, seed=7)), cls)
    assert create(Config(vision_method="random", ratio=0.5, seed=7)).seed == 7


@pytest.mark.parametrize("method", METHODS, ids=IDS)
def test_exact_count_per_sample_raster_order_and_validity(method):
    requests = [
        CropRequest(288),
        CropRequest(1),
        CropRequest(100, valid=left_block(24, 13)),
        CropRequest(500, valid=left_block(10, 24)),       # budget above the 240 valid patches
        CropRequest(576),
    ]
    selections = run(method, requests)
    assert [s.indices.numel() for s in selections] == [288, 1, 100, 240, 576]
    for request, selection in zip(requests, selections):
        idx = selection.indices
        assert idx.dtype == torch.long
        assert torch.all(idx[1:] > idx[:-1]), "indices must be strictly ascending (raster order)"
        valid = torch.ones(576, dtype=torch.bool) if request.valid is None else request.valid
        assert bool(valid[idx].all()), "an invalid patch was kept"


@pytest.mark.parametrize("method", METHODS, ids=IDS)
def test_choice_is_deterministic_and_independent_of_batch_mates(method):
    request = CropRequest(150, valid=left_block(20, 20))
    alone = run(method, [request], seed=11)[0].indices
    again = run(method, [request], seed=11)[0].indices
    assert torch.equal(alone, again)
    if isinstance(method, ClsTopK):
        # Attention-driven: feed the same crop at position 1 of a batch of other crops.
        ctx = SelectionContext([CropRequest(40), request], GRID, 1, 4, 2)
        generator = torch.Generator().manual_seed(11)
        q1 = torch.randn(1, HEADS, 577, HEAD_DIM, generator=generator)
        k1 = torch.randn(1, HEADS, 577, HEAD_DIM, generator=generator)
        q = torch.cat([torch.randn(1, HEADS, 577, HEAD_DIM), q1])
        k = torch.cat([torch.randn(1, HEADS, 577, HEAD_DIM), k1])
        method.observe(2, QueryKeyView(q, k), ctx)
        in_batch = method.select(ctx)[1].indices
    else:
        in_batch = run(method, [CropRequest(40), CropRequest(300), request])[2].indices
    assert torch.equal(alone, in_batch)


def test_random_depends_on_seed_and_is_not_a_prefix():
    a = run(RandomTokens(seed=0), [CropRequest(100)])[0].indices
    b = run(RandomTokens(seed=1), [CropRequest(100)])[0].indices
    assert not torch.equal(a, b)
    assert not torch.equal(a, torch.arange(100))
    assert int(a.max()) > 400      # drawn from the whole image


def test_cls_topk_keeps_the_patches_cls_attends_to_most():
    ctx = SelectionContext([CropRequest(3)], GRID, 1, 4, 2)
    q = torch.zeros(1, HEADS, 577, HEAD_DIM)
    k = torch.zeros(1, HEADS, 577, HEAD_DIM)
    q[0, :, 0, 0] = 1.0
    for patch, strength in ((500, 9.0), (7, 8.0), (300, 7.0), (301, 1.0)):
        k[0, :, 1 + patch, 0] = strength
    method = ClsTopK()
    assert method.attention_layers(4, 2) == (2,)
    method.observe(2, QueryKeyView(q, k), ctx)
    assert method.select(ctx)[0].indices.tolist() == [7, 300, 500]


@pytest.mark.parametrize("budget", [144, 288, 64, 10])
def test_grid_spreads_over_rows_and_columns(budget):
    idx = grid_tokens(torch.ones(576, dtype=torch.bool), budget, 24)
    rows, cols = idx // 24, idx % 24
    assert idx.numel() == budget
    # Every row band and column band of the image is reached, and no row holds
    # more than its share: a raster stripe would fail both.
    side = round(budget ** 0.5)
    assert rows.unique().numel() >= side - 1 and cols.unique().numel() >= side - 1
    assert int(torch.bincount(rows).max()) <= -(-budget // (side - 1))
    assert int(rows.min()) <= 24 // side and int(rows.max()) >= 23 - 24 // side
    assert int(cols.min()) <= 24 // side and int(cols.max()) >= 23 - 24 // side


def test_grid_of_a_quarter_is_every_other_row_and_column():
    idx = grid_tokens(torch.ones(576, dtype=torch.bool), 144, 24)
    expected = torch.tensor([r * 24 + c for r in range(0, 24, 2) for c in range(0, 24, 2)])
    assert torch.equal(idx, expected)


def test_grid_handles_irregular_masks_with_exact_count():
    valid = torch.zeros(576, dtype=torch.bool)
    valid[::5] = True                      # scattered: lattice points collide
    idx = grid_tokens(valid, 100, 24)
    assert idx.numel() == 100 and idx.unique().numel() == 100 and bool(valid[idx].all())


def test_lattice_counts_exactly():
    for count, h, w in ((288, 24, 24), (7, 3, 9), (50, 48, 12), (1, 24, 24)):
        points = lattice(count, h, w)
        assert len(points) == count
        assert all(-0.5 <= y <= h - 0.5 and -0.5 <= x <= w - 0.5 for y, x in points)
