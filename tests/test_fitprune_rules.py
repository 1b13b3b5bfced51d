"""FitPrune's pure parts: FLOPs, statistics, deletion rule, budget stop, bisection, recipes."""

import json

import pytest
import torch

from llava_freepruner.runtime.fitprune import (
    Recipe, RecipeError, builtin_names, flops_reduction, layer_flops, load_recipe, scale_deletions,
)
from llava_freepruner.tools.fitprune_fit.rules import (
    FlopsBudget, fit_deletions, removable_lowest, rounds_for, self_cross_scores, smallest_passing_alpha,
)


def test_layer_flops_hand_computed():
    # n=2, d=3, m=5: 8*2*9 + 4*4*3 + 6*2*3*5 = 144 + 48 + 180
    assert layer_flops(2, 2, 3, 5) == 372
    # 1 of 2 tokens deleted: 6*2*9 + 4*4*3 + 2*1*9 + 6*1*3*5 = 108 + 48 + 18 + 90
    assert layer_flops(2, 1, 3, 5) == 264


def test_flops_reduction_hand_computed():
    # two layers, N=2, d=3, m=5; delete 1 at layer 0: (264 + layer(1,1)) / (2 * 372)
    single = 8 * 9 + 4 * 3 + 6 * 3 * 5
    assert flops_reduction(2, [1, 0], 3, 5) == pytest.approx(1 - (264 + single) / 744)
    assert flops_reduction(2, [0, 0], 3, 5) == 0


@pytest.mark.parametrize("pct,published", [(10, 6.4), (20, 15.3), (30, 27.9), (40, 38.8), (50, 49.7),
                                           (55, 54.5), (60, 59.7), (70, 69.7), (80, 79.7), (90, 89.7)])
def test_official_recipes_reproduce_published_reductions(pct, published):
    recipe = load_recipe(f"llava-v1.5-7b@{pct}")
    assert 100 * flops_reduction(576, recipe.deletions, 4096, 11008) == pytest.approx(published, abs=0.05)


def test_self_cross_scores_hand_computed():
    attention = torch.tensor([[0.2, 0.4], [0.6, 0.0], [0.1, 0.3], [0.5, 0.1], [9.0, 9.0]])
    visual = torch.tensor([True, True, False, False, False])
    text = torch.tensor([False, False, True, True, False])
    self_scores, cross_scores = self_cross_scores(attention, visual, text)
    torch.testing.assert_close(self_scores, torch.tensor([0.4, 0.2]))
    torch.testing.assert_close(cross_scores, torch.tensor([0.3, 0.2]))


def test_removable_lowest_keeps_enough_mass():
    scores = torch.tensor([0.4, 0.1, 0.3, 0.2])  # total 1.0
    assert removable_lowest(scores, 0.7).tolist() == [1, 3]  # removing 0.1 + 0.2 leaves 0.7
    assert removable_lowest(scores, 0.71).tolist() == [1]
    assert removable_lowest(scores, 1.0).tolist() == []
    assert sorted(removable_lowest(scores, 0.0).tolist()) == [0, 1, 2, 3]


def test_fit_deletions_is_the_intersection():
    self_scores = torch.tensor([0.05, 0.10, 0.40, 0.45])  # low self: 0, 1
    cross_scores = torch.tensor([0.50, 0.05, 0.05, 0.40])  # low cross: 1, 2
    # alpha 0.2: keep >= 0.8 of each mass (1.0): self prefix {0, 1}, cross prefix {1, 2}
    assert fit_deletions(self_scores, cross_scores, 1.0, 1.0, 0.2).tolist() == [1]
    assert fit_deletions(self_scores, cross_scores, 1.0, 1.0, 0.0).tolist() == []
    assert fit_deletions(self_scores, cross_scores, 1.0, 1.0, 1.0).tolist() == [0, 1, 2, 3]
    # the reference mass, not the current one, sets the bar
    assert fit_deletions(self_scores, cross_scores, 1.5, 1.5, 0.2).tolist() == []


def test_budget_stop_rule_hand_computed():
    budget = FlopsBudget(num_visual_tokens=2, num_layers=2, hidden_size=3, intermediate_size=5, reduction=0.5)
    assert budget.allowed == pytest.approx(0.5 * 2 * 372)
    assert not budget.met(0, 2)  # forecast 2 * 372 > 372
    budget.spend(2, 1)  # 264 spent
    single = layer_flops(1, 1, 3, 5)
    assert budget.met(1, 1) == (264 + single <= 372)


def test_bisection_returns_smallest_alpha_that_met():
    calls = []

    def evaluate(alpha):
        calls.append(alpha)
        return alpha >= 0.3, f"recipe@{alpha:.4f}"

    alpha, result = smallest_passing_alpha(evaluate, rounds_for(0.01))
    assert rounds_for(0.01) == 7
    assert 0.3 <= alpha < 0.3 + 1 / 128 and result == f"recipe@{alpha:.4f}"
    assert len(calls) == 8


def test_bisection_never_returns_a_miss():
    # not monotone: the last alpha tried misses; the answer is still one that met
    outcomes = {1.0: True, 0.5: True, 0.25: False, 0.375: False, 0.4375: True}

    alpha, _ = smallest_passing_alpha(lambda a: (outcomes.get(a, False), a), rounds=5)
    assert alpha == 0.4375
    with pytest.raises(ValueError, match="alpha = 1"):
        smallest_passing_alpha(lambda a: (False, None), rounds=3)


def test_builtin_recipes_and_errors(tmp_path):
    assert "llava-v1.5-7b@60" in builtin_names() and "llava-next-7b@40" in builtin_names()
    recipe = load_recipe("llava-v1.5-7b@60")
    assert recipe.num_layers == 32 and recipe.deletions[:3] == (14, 33, 89)
    assert load_recipe("llava-next-7b@60").num_visual_tokens == 2880
    with pytest.raises(RecipeError, match="llava-v1.5-7b@10.*llava-next-7b@60"):
        load_recipe("llava-v1.5-7b@65")
    with pytest.raises(RecipeError, match="neither an existing file"):
        load_recipe("missing-recipe.json")
    path = tmp_path / "r.json"
    recipe.save(path)
    assert load_recipe(str(path)) == recipe
    assert json.loads(path.read_text())["deletions"] == list(recipe.deletions)
    for body, message in [("{", "cannot be read as JSON"), ("[]", "expected a JSON object"),
                          ('{"deletions": [1]}', "missing field.*num_visual_tokens"),
                          ('{"num_visual_tokens": 4, "deletions": [1, -1]}', "non-negative"),
                          ('{"num_visual_tokens": 4, "deletions": [3, 3]}', "sum to 6"),
                          ('{"num_visual_tokens": 4, "num_layers": 3, "deletions": [1]}', "num_layers=3")]:
        path.write_text(body)
        with pytest.raises(RecipeError, match=message):
            load_recipe(str(path))


def test_scaling_follows_the_cumulative_schedule():
    recipe = Recipe("r", 100, [10, 0, 30, 5])
    same, note = scale_deletions(recipe, 100)
    assert same == [10, 0, 30, 5] and note is None
    half, note = scale_deletions(recipe, 50)
    assert half == [5, 0, 15, 3] and "fitted for 100" in note and "50" in note
    big, _ = scale_deletions(load_recipe("llava-next-7b@60"), 2340)
    assert sum(big) == round(sum(load_recipe("llava-next-7b@60").deletions) * 2340 / 2880)
