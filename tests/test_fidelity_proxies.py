"""The fidelity proxies and the report's averaging/table on hand-computed cases."""

import math

import pytest
import torch

from llava_freepruner.tools.vision import fidelity, proxies


def test_patch_saliency_is_the_mean_over_each_cell_in_raster_order():
    saliency_map = torch.tensor([
        [1.0, 3.0, 0.0, 0.0],
        [1.0, 3.0, 0.0, 4.0],
        [2.0, 2.0, 8.0, 8.0],
        [2.0, 2.0, 8.0, 8.0],
    ])
    assert proxies.patch_saliency(saliency_map, (2, 2)).tolist() == [2.0, 1.0, 2.0, 8.0]


def test_patch_saliency_rejects_a_map_that_does_not_split_into_the_grid():
    with pytest.raises(ValueError, match="5x4.*2x2"):
        proxies.patch_saliency(torch.zeros(5, 4), (2, 2))


def test_saliency_kept_is_the_kept_share_of_the_mass():
    saliency = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert proxies.saliency_kept(saliency, torch.tensor([3])) == pytest.approx(0.4)
    assert proxies.saliency_kept(saliency, torch.tensor([0, 3])) == pytest.approx(0.5)
    assert proxies.saliency_kept(saliency, torch.arange(4)) == pytest.approx(1.0)


def test_coverage_averages_the_best_cosine_of_each_dropped_token():
    features = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-2.0, 0.0]])
    # kept {0}: dropped 1 -> cos 0, dropped 2 -> 1/sqrt2, dropped 3 -> -1
    assert proxies.coverage(features, torch.tensor([0])) == pytest.approx((0 + 1 / math.sqrt(2) - 1) / 3)
    # kept {0, 1}: dropped 2 -> 1/sqrt2 (either), dropped 3 -> max(-1, 0) = 0
    assert proxies.coverage(features, torch.tensor([0, 1])) == pytest.approx((1 / math.sqrt(2) + 0) / 2)


def test_coverage_is_one_when_nothing_is_dropped():
    assert proxies.coverage(torch.randn(5, 3), torch.arange(5)) == 1.0


def test_reconstruction_error_is_nearest_kept_squared_error_over_variance():
    features = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0]])
    # mean (2/3, 2/3): squared deviations 8/9 + 20/9 + 20/9 = 16/3
    # kept {0}: errors 0, 4, 4 -> 8 / (16/3)
    assert proxies.reconstruction_error(features, torch.tensor([0])) == pytest.approx(1.5)
    # kept {1}: errors 4, 0, |(0,2)-(2,0)|^2 = 8 -> 12 / (16/3)
    assert proxies.reconstruction_error(features, torch.tensor([1])) == pytest.approx(2.25)
    # kept {1, 2}: token 0 is 4 from either -> 4 / (16/3)
    assert proxies.reconstruction_error(features, torch.tensor([1, 2])) == pytest.approx(0.75)
    assert proxies.reconstruction_error(features, torch.arange(3)) == 0.0


def test_cosine_of_two_vectors():
    assert proxies.cosine(torch.tensor([1.0, 0.0]), torch.tensor([3.0, 3.0])) == pytest.approx(1 / math.sqrt(2))
    assert proxies.cosine(torch.tensor([1.0, 2.0]), torch.tensor([-2.0, -4.0])) == pytest.approx(-1.0)


def _record(method, ratio, saliency, coverage):
    return {"method": method, "ratio": ratio, "kept": int(ratio * 8), "saliency": saliency,
            "coverage": coverage, "recon_error": 1 - coverage, "cls_cosine": coverage / 2}


def test_average_groups_by_method_and_ratio_in_first_seen_order():
    rows = fidelity.average([
        _record("grid", 0.5, 0.2, 0.9), _record("freepruner", 0.5, 0.6, 0.7),
        _record("grid", 0.5, 0.4, 0.7), _record("freepruner", 0.5, 0.8, 0.5),
    ])
    assert [(r["method"], r["photos"]) for r in rows] == [("grid", 2), ("freepruner", 2)]
    assert rows[0]["saliency"] == pytest.approx(0.3)
    assert rows[0]["coverage"] == pytest.approx(0.8)
    assert rows[0]["recon_error"] == pytest.approx(0.2)
    assert rows[1]["cls_cosine"] == pytest.approx(0.3)


def test_average_and_table_report_a_missing_saliency_as_not_available():
    rows = fidelity.average([_record("grid", 0.25, None, 0.9), _record("grid", 0.25, None, 0.8)])
    assert rows[0]["saliency"] is None
    table = fidelity.markdown_table(rows)
    assert table.splitlines()[2] == "| grid | 0.25 | 2 | n/a | 0.850 | 0.150 | 0.425 |"
