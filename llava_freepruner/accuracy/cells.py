"""The grid of runs: one plugin configuration per (method, ratio)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Sequence

from ..config import Config, ConfigError, from_env


@dataclass(frozen=True)
class Cell:
    method: str
    ratio: float
    config: Config

    @property
    def name(self) -> str:
        return f"{self.method}@{self.ratio:g}"


def grid(methods: Sequence[str], ratios: Sequence[float], extra: Dict[str, str] = None) -> List[Cell]:
    """Cells in run order; every configuration is validated here (ConfigError
    names the bad method or ratio) before any model is loaded. ``extra``: more
    ``FREEPRUNER_*`` / ``FITPRUNE_*`` variables, e.g. a FitPrune recipe."""
    if not methods or not ratios:
        raise ConfigError("--methods and --ratios need at least one value each")
    cells = []
    for method in methods:
        for ratio in ratios:
            variables = {"FREEPRUNER_METHOD": method, "FREEPRUNER_RATIO": repr(float(ratio)), **(extra or {})}
            config = from_env(variables)
            cells.append(Cell(config.method, float(ratio), config))
    names = [c.name for c in cells]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"--methods/--ratios repeat {', '.join(duplicates)}")
    return cells
