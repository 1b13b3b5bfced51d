"""Pruning policies: which statistic a layer needs and which visual tokens it drops.

The runtime asks ``statistic(layer)`` at every prefill layer; when it answers, the
runtime computes that statistic for every sample and calls ``choose``, which returns
per sample the indices (into that sample's visual tokens alive at the layer, in
sequence order) to delete. Deleted tokens take part in the layer's attention and
skip everything after it.

Statistics, per sample:
- ``"self_cross"``: ``{"self": (n,), "cross": (n,)}``, head-max attention each
  visual token receives from the visual queries and from the text queries after
  the first image (means over queries);
- ``"last_query"``: ``{"last": (n,)}``, head-mean attention from the last token.
"""

from abc import ABC, abstractmethod

import torch

from ..budget import scale_deletions

SELF_CROSS = "self_cross"
LAST_QUERY = "last_query"


class PrunePolicy(ABC):
    def check_model(self, num_layers):
        """Raise ValueError if the policy cannot run on a decoder of this depth."""

    @abstractmethod
    def begin(self, visual_counts):
        """Start a prefill whose samples hold these visual-token counts; return notes to log."""

    @abstractmethod
    def statistic(self, layer_idx):
        """The statistic needed at this layer, or None when the layer prunes nothing."""

    @abstractmethod
    def choose(self, layer_idx, stats, alive):
        """Per sample, a LongTensor of visual-token indices to delete at this layer."""


def lowest(scores, count):
    """Indices of the ``count`` lowest scores (ties: earlier tokens first)."""
    count = max(0, min(int(count), scores.shape[0]))
    return torch.argsort(scores, stable=True)[:count]


class FitPrunePolicy(PrunePolicy):
    """Deletes, per layer, the recipe's number of tokens with the lowest self x cross."""

    def __init__(self, recipe):
        self.recipe = recipe
        self._plans = []

    def check_model(self, num_layers):
        if self.recipe.num_layers != num_layers:
            raise ValueError(f"FitPrune recipe {self.recipe.name} has {self.recipe.num_layers} layers, "
                             f"the model's language model has {num_layers}")

    def begin(self, visual_counts):
        self._plans, notes = [], []
        for count in visual_counts:
            deletions, note = scale_deletions(self.recipe, count) if count else ([0] * self.recipe.num_layers, None)
            self._plans.append(deletions)
            if note and note not in notes:
                notes.append(note)
        return notes

    def statistic(self, layer_idx):
        return SELF_CROSS if any(plan[layer_idx] for plan in self._plans) else None

    def choose(self, layer_idx, stats, alive):
        return [lowest(s["self"] * s["cross"], plan[layer_idx]) for s, plan in zip(stats, self._plans)]


class FastVPolicy(PrunePolicy):
    """Keeps ``round(ratio * n)`` visual tokens at one layer, ranked by the last token's attention."""

    def __init__(self, ratio, layer=2):
        if not 0 < ratio <= 1:
            raise ValueError(f"FastV ratio={ratio!r} must lie in (0, 1]")
        if not isinstance(layer, int) or layer < 0:
            raise ValueError(f"FastV layer={layer!r} must be a non-negative integer")
        self.ratio, self.layer = ratio, layer
        self._keep = []

    def check_model(self, num_layers):
        if self.layer >= num_layers:
            raise ValueError(f"FastV layer={self.layer} does not exist: the language model has {num_layers} layers "
                             f"(accepted: 0..{num_layers - 1})")

    def begin(self, visual_counts):
        self._keep = [int(round(self.ratio * n)) for n in visual_counts]
        return []

    def statistic(self, layer_idx):
        return LAST_QUERY if layer_idx == self.layer else None

    def choose(self, layer_idx, stats, alive):
        return [lowest(s["last"], n - keep) for s, n, keep in zip(stats, alive, self._keep)]
