"""How sure an accuracy and a difference of accuracies are, for cells that answer the same questions.

Pure Python (the standard library only), deterministic:

* :func:`wilson`: a 95% Wilson score interval for one cell's accuracy;
* :func:`mcnemar_exact`: McNemar's exact two-sided p-value from the discordant
  pairs of two cells (questions one answers right and the other wrong);
* :func:`paired`: one cell against another over the same question ids: the
  difference in accuracy with a percentile bootstrap interval (the questions
  resampled with a seeded ``random.Random``) and McNemar's p-value;
* :func:`bootstrap`: that interval for any per-question scores (e.g. a
  difference averaged over models trained with different seeds).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from statistics import NormalDist
from typing import Mapping, Sequence, Tuple

RESAMPLES = 2000
SEED = 0
LEVEL = 0.95


class DifferentQuestions(ValueError):
    """Two cells to pair did not answer the same question ids."""


def _z(level: float) -> float:
    if not 0.0 < level < 1.0:
        raise ValueError(f"level {level!r} is not valid: expected 0 < level < 1 (e.g. 0.95)")
    return NormalDist().inv_cdf(0.5 + level / 2)


def wilson(correct: int, total: int, level: float = LEVEL) -> Tuple[float, float]:
    """The Wilson score interval of ``correct`` right answers out of ``total``, as fractions."""
    if total < 1 or not 0 <= correct <= total:
        raise ValueError(f"wilson({correct}, {total}): expected 0 <= correct <= total and total >= 1")
    z = _z(level)
    p, z2 = correct / total, z * z
    centre = (p + z2 / (2 * total)) / (1 + z2 / total)
    half = z / (1 + z2 / total) * math.sqrt(p * (1 - p) / total + z2 / (4 * total * total))
    # at 0 or all right the bound is exactly 0 or 1 (centre - half cancels to rounding error)
    return (0.0 if correct == 0 else centre - half), (1.0 if correct == total else centre + half)


def binomial_cdf_half(k: int, n: int) -> float:
    """P[X <= k] for X ~ Bin(n, 0.5), exactly (integer sums, one division)."""
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    return sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n


def mcnemar_exact(b: int, c: int) -> float:
    """McNemar's exact two-sided p-value: ``b`` questions only the first cell
    answers right, ``c`` only the second; ``min(1, 2 P[X <= min(b, c)])`` with
    X ~ Bin(b + c, 0.5), and 1 when no question tells them apart."""
    if b < 0 or c < 0 or int(b) != b or int(c) != c:
        raise ValueError(f"mcnemar_exact({b}, {c}): expected whole numbers >= 0")
    b, c = int(b), int(c)
    if b + c == 0:
        return 1.0
    return min(1.0, 2 * binomial_cdf_half(min(b, c), b + c))


def percentile(ordered: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) of sorted values, interpolated linearly between neighbours."""
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass(frozen=True)
class Paired:
    """Cell minus reference over the same ``questions``: accuracy ``difference``
    (a fraction), its bootstrap interval ``low``..``high``, ``cell_only`` /
    ``reference_only`` (the discordant questions each answers right alone) and
    McNemar's exact ``p``."""

    questions: int
    difference: float
    low: float
    high: float
    cell_only: int
    reference_only: int
    p: float

    def as_dict(self) -> dict:
        return {"questions": self.questions, "difference": self.difference, "interval": [self.low, self.high],
                "cell_only": self.cell_only, "reference_only": self.reference_only, "mcnemar_p": self.p}


def paired(cell: Mapping[str, bool], reference: Mapping[str, bool], resamples: int = RESAMPLES,
           seed: int = SEED, level: float = LEVEL) -> Paired:
    """``cell`` against ``reference``, each question id -> answered right. Refuses
    (:class:`DifferentQuestions`) unless both answered exactly the same ids. The
    interval resamples the questions ``resamples`` times with ``random.Random(seed)``
    over the ids in sorted order, so it does not depend on the order of the answers."""
    if set(cell) != set(reference):
        only_cell, only_reference = sorted(set(cell) - set(reference)), sorted(set(reference) - set(cell))
        raise DifferentQuestions(
            f"the cells did not answer the same questions: {len(only_cell)} only in the first"
            f"{_examples(only_cell)}, {len(only_reference)} only in the second{_examples(only_reference)}")
    scores = [int(bool(cell[q])) - int(bool(reference[q])) for q in sorted(cell)]
    b, c = scores.count(1), scores.count(-1)
    low, high = bootstrap(scores, resamples, seed, level)
    return Paired(len(scores), (b - c) / len(scores), low, high, b, c, mcnemar_exact(b, c))


def bootstrap(scores: Sequence[float], resamples: int = RESAMPLES, seed: int = SEED,
              level: float = LEVEL) -> Tuple[float, float]:
    """The percentile bootstrap interval of the mean of per-question ``scores``
    (in a fixed order): ``resamples`` draws of as many scores with replacement
    from ``random.Random(seed)``; (0, 0) when every score is 0."""
    if not scores:
        raise ValueError("no questions to compare")
    if resamples < 1:
        raise ValueError(f"resamples {resamples!r} is not valid: expected >= 1")
    _z(level)
    if not any(scores):     # every resample is 0 as well
        return 0.0, 0.0
    n, rng = len(scores), random.Random(seed)
    means = sorted(sum(rng.choices(scores, k=n)) / n for _ in range(resamples))
    tail = (1 - level) / 2
    return percentile(means, tail), percentile(means, 1 - tail)


def _examples(ids: Sequence[str]) -> str:
    if not ids:
        return ""
    return " (" + ", ".join(repr(q) for q in ids[:3]) + (", ..." if len(ids) > 3 else "") + ")"
