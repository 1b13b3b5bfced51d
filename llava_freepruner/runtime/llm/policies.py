"""Pruning policies: which statistic a layer needs and which visual tokens it drops.

The runtime asks ``statistic(layer)`` at every prefill layer; when it answers, the
runtime computes that statistic for all samples at once and calls ``choose``.
Statistics are batched: each is a (batch, V) tensor over the visual tokens alive at
the layer, in sequence order, V the most any sample holds (a sample holding fewer
has padded columns after its own, which ``choose`` may leave as they are):

- ``"self_cross"``: ``{"self", "cross"}``, head-max attention each visual token
  receives from the visual queries and from the text queries after the first image
  (means over queries);
- ``"last_query"``: ``{"last"}``, head-mean attention from each sample's last token.

``choose`` returns either

- a (batch, V) tensor of scores: the runtime deletes, per sample, the number of tokens
  :meth:`PrunePolicy.schedule` gave for this layer, lowest scores first (ties: earlier
  tokens first); computed on the device with no read-back to the host; or
- per sample, a LongTensor of distinct visual-token indices to delete (counts that
  depend on the statistic, as when fitting a recipe).

Deleted tokens take part in the layer's attention and skip everything after it.
"""

from abc import ABC, abstractmethod

from ..budget import scale_deletions

SELF_CROSS = "self_cross"
LAST_QUERY = "last_query"


class PrunePolicy(ABC):
    def check_model(self, num_layers):
        """Raise ValueError if the policy cannot run on a decoder of this depth."""

    @abstractmethod
    def begin(self, visual_counts):
        """Start a prefill whose samples hold these visual-token counts; return notes to log."""

    def schedule(self, num_layers):
        """After :meth:`begin`: per layer, per sample, how many visual tokens it deletes,
        when known before the prefill runs (then ``choose`` returns scores); None when
        ``choose`` decides (it returns indices)."""
        return None

    def key_layer(self):
        """A layer whose keys (before RoPE) a later statistic reads, or None."""
        return None

    @abstractmethod
    def statistic(self, layer_idx):
        """The statistic needed at this layer, or None when the layer prunes nothing."""

    @abstractmethod
    def choose(self, layer_idx, stats, alive):
        """Scores (batch, V) or, per sample, a LongTensor of visual-token indices to delete;
        ``alive``: per sample, the visual tokens alive at this layer."""


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

    def schedule(self, num_layers):
        return [list(per_layer) for per_layer in zip(*self._plans)]

    def statistic(self, layer_idx):
        return SELF_CROSS if any(plan[layer_idx] for plan in self._plans) else None

    def choose(self, layer_idx, stats, alive):
        return stats["self"] * stats["cross"]


class FastVPolicy(PrunePolicy):
    """Keeps ``round(ratio * n)`` visual tokens at one layer, ranked by the last token's attention."""

    def __init__(self, ratio, layer=2):
        if not 0 < ratio <= 1:
            raise ValueError(f"FastV ratio={ratio!r} must lie in (0, 1]")
        if not isinstance(layer, int) or layer < 0:
            raise ValueError(f"FastV layer={layer!r} must be a non-negative integer")
        self.ratio, self.layer = ratio, layer
        self._counts, self._keep = [], []

    def check_model(self, num_layers):
        if self.layer >= num_layers:
            raise ValueError(f"FastV layer={self.layer} does not exist: the language model has {num_layers} layers "
                             f"(accepted: 0..{num_layers - 1})")

    def begin(self, visual_counts):
        self._counts = list(visual_counts)
        self._keep = [int(round(self.ratio * n)) for n in visual_counts]
        return []

    def schedule(self, num_layers):
        return one_layer_schedule(num_layers, self.layer, [n - keep for n, keep in zip(self._counts, self._keep)])

    def statistic(self, layer_idx):
        return LAST_QUERY if layer_idx == self.layer else None

    def choose(self, layer_idx, stats, alive):
        return stats["last"]


def one_layer_schedule(num_layers, layer, deletions):
    """A schedule deleting ``deletions`` (per sample) at ``layer`` only."""
    return [list(deletions) if idx == layer else [0] * len(deletions) for idx in range(num_layers)]
