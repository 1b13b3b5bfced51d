"""The grid of runs: one plugin configuration per (method, ratio)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

from ...config import Config, ConfigError, from_env, parse_method, uses_ratio


@dataclass(frozen=True)
class Cell:
    method: str
    ratio: float
    config: Config

    @property
    def name(self) -> str:
        return f"{self.method}@{self.ratio:g}"


def parse_recipes(text: Optional[str]) -> Dict[Optional[float], str]:
    """``--fitprune-recipe``: one recipe for every ratio (``r.json``), or one per
    ratio (``0.5=r50.json,0.25=r75.json``)."""
    if not text:
        return {}
    if "=" not in text:
        return {None: text.strip()}
    recipes = {}
    for part in text.split(","):
        ratio, _, path = part.partition("=")
        try:
            recipes[float(ratio)] = path.strip()
        except ValueError:
            raise ConfigError(f"--fitprune-recipe {part!r}: expected RATIO=FILE (e.g. 0.5=recipe50.json) "
                              "or a single recipe file") from None
    return recipes


def grid(methods: Sequence[str], ratios: Sequence[float], recipes: Dict[Optional[float], str] = None) -> List[Cell]:
    """Cells in run order; every configuration is validated here (ConfigError
    names the bad method or ratio) before any model is loaded. A method that does
    not prune ('none') gets one cell, at ratio 1.0. ``recipes``:
    FITPRUNE_RECIPE per ratio (key None: every ratio), see :func:`parse_recipes`."""
    if not methods or not ratios:
        raise ConfigError("--methods and --ratios need at least one value each")
    recipes = recipes or {}
    cells = []
    for method in methods:
        for ratio in ratios:
            uses_fitprune = "fitprune" in method.split("+")
            recipe = recipes.get(float(ratio), recipes.get(None)) if uses_fitprune else None
            if recipes and recipe is None and uses_fitprune:
                raise ConfigError(f"--fitprune-recipe gives no recipe for ratio {ratio:g} "
                                  f"(it has {', '.join(f'{r:g}' for r in recipes)})")
            variables = {"FREEPRUNER_METHOD": method}
            if uses_ratio(*parse_method(method)):       # fitprune alone: the ratio only picks its recipe
                variables["FREEPRUNER_RATIO"] = repr(float(ratio))
            if recipe is not None:
                variables["FITPRUNE_RECIPE"] = recipe
            config = from_env(variables)
            if config.method == "none":      # it ignores the ratio: one unpruned cell
                if any(c.method == "none" for c in cells):
                    continue
                ratio = 1.0
            cells.append(Cell(config.method, float(ratio), config))
    names = [c.name for c in cells]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"--methods/--ratios repeat {', '.join(duplicates)}")
    return cells
