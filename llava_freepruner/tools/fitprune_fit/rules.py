"""FitPrune's fitting rules: attention statistics, the deletion rule, the budget
stop rule and the bisection on the tolerance alpha. Pure tensor code."""

import math

import torch

from ...runtime.budget import layer_flops


def self_cross_scores(attention, visual_rows, text_rows):
    """Attention each visual token receives from the visual and from the text queries.

    ``attention``: (rows, n_visual) post-softmax attention, already max-reduced over
    heads, of some query rows to the visual key columns. ``visual_rows`` and
    ``text_rows`` are boolean masks over those rows. Returns ``(self, cross)``, each
    (n_visual,): the mean over visual queries and the mean over text queries. A
    prompt without text queries after the image gets zero cross attention.
    """
    attention = attention.float()
    self_scores = attention[visual_rows].mean(dim=0) if visual_rows.any() else attention.new_zeros(attention.shape[1])
    cross_scores = attention[text_rows].mean(dim=0) if text_rows.any() else attention.new_zeros(attention.shape[1])
    return self_scores, cross_scores


def removable_lowest(scores, keep_mass):
    """Indices of the longest run of lowest scores whose removal leaves >= ``keep_mass``."""
    order = torch.argsort(scores, stable=True)
    remaining = scores.sum() - torch.cumsum(scores[order], dim=0)
    count = int((remaining >= keep_mass).sum())
    return order[:count]


def fit_deletions(self_scores, cross_scores, ref_self_mass, ref_cross_mass, alpha):
    """Visual tokens to delete at one layer: low in self AND low in cross attention.

    ``ref_*_mass`` are the totals the unpruned model had at this layer; a token set
    is removable while the remaining mass stays >= (1 - alpha) times the reference.
    Returns sorted indices into the visual tokens alive at the layer.
    """
    low_self = removable_lowest(self_scores, (1.0 - alpha) * ref_self_mass)
    low_cross = removable_lowest(cross_scores, (1.0 - alpha) * ref_cross_mass)
    in_cross = torch.zeros(self_scores.shape[0], dtype=torch.bool, device=self_scores.device)
    in_cross[low_cross] = True
    both = low_self[in_cross[low_self]]
    return torch.sort(both).values


class FlopsBudget:
    """The stop rule: prune until spent-so-far plus the forecast fits the budget.

    ``reduction`` r means: remove r of the unpruned visual-token FLOPs. At each layer
    the forecast assumes the current count stays alive for the remaining layers.
    """

    def __init__(self, num_visual_tokens, num_layers, hidden_size, intermediate_size, reduction):
        self.sizes = (hidden_size, intermediate_size)
        self.num_layers = num_layers
        self.allowed = (1.0 - reduction) * num_layers * layer_flops(num_visual_tokens, num_visual_tokens, *self.sizes)
        self.spent = 0.0

    def met(self, layer_idx, n_alive):
        forecast = (self.num_layers - layer_idx) * layer_flops(n_alive, n_alive, *self.sizes)
        return self.spent + forecast <= self.allowed

    def spend(self, n_in, n_out):
        self.spent += layer_flops(n_in, n_out, *self.sizes)


def rounds_for(tolerance):
    """Bisection rounds that narrow [0, 1] to ``tolerance``."""
    if not 0 < tolerance < 1:
        raise ValueError(f"tolerance={tolerance!r} must lie in (0, 1)")
    return math.ceil(math.log2(1.0 / tolerance))


def smallest_passing_alpha(evaluate, rounds):
    """Bisection on alpha in [0, 1] for the smallest alpha whose result meets the budget.

    ``evaluate(alpha) -> (met, result)``. Only alphas that met the budget are ever
    returned: ``(alpha, result)`` of the smallest one tried. Raises ValueError when
    even alpha = 1 misses it.
    """
    met, result = evaluate(1.0)
    if not met:
        raise ValueError("the FLOPs budget cannot be met even with tolerance alpha = 1")
    best, low, high = (1.0, result), 0.0, 1.0
    for _ in range(rounds):
        mid = (low + high) / 2
        met, result = evaluate(mid)
        if met:
            high, best = mid, (mid, result)
        else:
            low = mid
    return best
