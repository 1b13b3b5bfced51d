"""The user-facing configuration: environment variables -> one frozen object.

This is the only module that reads the environment. Every value is parsed and
validated here, once; a bad value raises :class:`ConfigError` naming the
variable, the value and what is accepted.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import numbers
import os
from dataclasses import dataclass
from typing import Mapping, Optional, Tuple

from .hosts import ENV_PREFIXES as PREFIXES

VISION_METHODS = ("freepruner", "random", "grid", "cls_topk", "visionzip", "divprune", "vispruner", "cdpruner")
LLM_METHODS = ("fitprune", "fastv", "dart")
RATIO_LLM_METHODS = ("fastv", "dart")   # keep FREEPRUNER_RATIO of the visual tokens at one LLM layer
DIRECTIONS = ("from_pivots", "to_pivots", "both")
DEVICES = ("cuda", "cpu")
VIDEO_MODES = ("frame", "temporal")
DEFAULT_VIDEO_TAU = 0.9
QUANTIZATIONS = ("4bit", "8bit")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")


class ConfigError(ValueError):
    """A configuration value that cannot be used; the message says why."""


@dataclass(frozen=True)
class Config:
    """Effective plugin settings. Build with :func:`from_env` or directly."""

    vision_method: Optional[str] = "freepruner"
    llm_method: Optional[str] = None
    ratio: Optional[float] = None
    tokens: Optional[int] = None
    layers: Optional[Tuple[int, ...]] = None
    iqr: float = 1.5
    pivot_cap: float = 0.5
    direction: str = "from_pivots"
    radius: int = 0
    seed: int = 0
    fastv_layer: int = 2
    fitprune_recipe: Optional[str] = None
    clip_text: Optional[str] = None
    stats: Optional[str] = None
    device: str = "cuda"
    quant: Optional[str] = None     # upstream loader: bitsandbytes "4bit" (NF4) or "8bit"
    enabled: bool = True
    video: Optional[str] = None          # FREEPRUNER_VIDEO; None: not set (videos are pruned per frame)
    video_tau: Optional[float] = None    # FREEPRUNER_VIDEO_TAU; None: not set (DEFAULT_VIDEO_TAU)

    def __post_init__(self):
        _validate(self)

    @property
    def method(self) -> str:
        """The method spelled as ``FREEPRUNER_METHOD`` accepts it."""
        return "+".join(m for m in (self.vision_method, self.llm_method) if m) or "none"

    @property
    def prunes(self) -> bool:
        return self.enabled and (self.vision_method is not None or self.llm_method is not None)

    def budget(self, num_tokens: int) -> int:
        """Visual tokens kept from ``num_tokens`` by the vision-side method."""
        if self.tokens is not None:
            return max(1, min(self.tokens, num_tokens))
        ratio = 1.0 if self.ratio is None else self.ratio
        # Round half up (Python's round() would send 287.5 to 288 but 288.5 to 288).
        return max(1, min(num_tokens, math.floor(ratio * num_tokens + 0.5)))

    def crop_budget(self, valid_tokens: int, crop_tokens: int) -> int:
        """Tokens kept from a crop with ``valid_tokens`` of its ``crop_tokens``
        patches left by unpadding (LLaVA-NeXT tiles): RATIO applies to the valid
        part, TOKENS counts per full crop and is scaled to the valid part."""
        if valid_tokens <= 0:
            return 0
        if self.tokens is not None:
            return max(1, min(valid_tokens, math.floor(self.tokens * valid_tokens / crop_tokens + 0.5)))
        return self.budget(valid_tokens)

    @property
    def video_mode(self) -> str:
        return self.video or "frame"

    @property
    def tau(self) -> float:
        return DEFAULT_VIDEO_TAU if self.video_tau is None else self.video_tau

    @property
    def video_variables(self) -> Tuple[str, ...]:
        """The video variables that were set (refused by image-only models)."""
        return tuple(name for name, value in (("FREEPRUNER_VIDEO", self.video), ("FREEPRUNER_VIDEO_TAU", self.video_tau))
                     if value is not None)

    def replace(self, **changes) -> "Config":
        return dataclasses.replace(self, **changes)


def _fail(var: str, value, accepted: str) -> None:
    raise ConfigError(f"{var}={value!r} is not valid: expected {accepted}.")


# Numeric fields -> (their variable, whole numbers only, what is accepted); None is accepted
# where the field's default is None.
_NUMBERS = {
    "ratio": ("FREEPRUNER_RATIO", False, "a fraction of visual tokens to keep, 0 < r <= 1"),
    "tokens": ("FREEPRUNER_TOKENS", True, "a whole number of visual tokens to keep, >= 1"),
    "iqr": ("FREEPRUNER_IQR", False, "a multiplier >= 0"),
    "pivot_cap": ("FREEPRUNER_PIVOT_CAP", False, "a fraction of the budget, 0 < cap <= 1"),
    "radius": ("FREEPRUNER_RADIUS", True, "a Chebyshev radius in patches, >= 0 (0 = off)"),
    "seed": ("FREEPRUNER_SEED", True, "a whole number"),
    "fastv_layer": ("FREEPRUNER_FASTV_LAYER", True, "an LLM layer index >= 0"),
    "video_tau": ("FREEPRUNER_VIDEO_TAU", False, "a cosine similarity threshold, 0 < tau <= 1"),
}


def _check_types(c: Config) -> None:
    """Every numeric field holds a number of its kind (no text, no bool, no fraction of a token)."""
    for field, (var, whole, accepted) in _NUMBERS.items():
        value = getattr(c, field)
        if value is None and Config.__dataclass_fields__[field].default is None:
            continue
        kind = numbers.Integral if whole else numbers.Real
        if isinstance(value, bool) or not isinstance(value, kind) or not math.isfinite(value):
            raise ConfigError(f"{var}={value!r} (Config.{field}, {type(value).__name__}) is not valid: "
                              f"expected {accepted}.")


def _refuse(c: Config, field: str) -> None:
    var, _, accepted = _NUMBERS[field]
    _fail(var, getattr(c, field), accepted)


def uses_ratio(vision_method: Optional[str], llm_method: Optional[str]) -> bool:
    """Whether FREEPRUNER_RATIO means something to this method: the vision methods
    keep that fraction, fastv and dart too (inside the LLM); fitprune alone follows
    its recipe."""
    return vision_method is not None or llm_method in RATIO_LLM_METHODS


def _validate(c: Config) -> None:
    _check_types(c)
    if c.vision_method is not None and c.vision_method not in VISION_METHODS:
        _fail("FREEPRUNER_METHOD", c.vision_method, _method_help())
    if c.llm_method is not None and c.llm_method not in LLM_METHODS:
        _fail("FREEPRUNER_METHOD", c.llm_method, _method_help())
    if c.ratio is not None and not (0.0 < c.ratio <= 1.0):
        _refuse(c, "ratio")
    if c.tokens is not None and c.tokens < 1:
        _refuse(c, "tokens")
    if c.ratio is not None and c.tokens is not None:
        raise ConfigError(
            "FREEPRUNER_RATIO and FREEPRUNER_TOKENS are both set: set only one "
            "(RATIO is a fraction kept, TOKENS an absolute count kept)."
        )
    if c.layers is not None and (not c.layers or min(c.layers) < 0):
        _fail("FREEPRUNER_LAYERS", c.layers, "encoder layer indices >= 0, e.g. '12-21' or '6,7,8'")
    if c.iqr < 0:
        _refuse(c, "iqr")
    if not (0.0 < c.pivot_cap <= 1.0):
        _refuse(c, "pivot_cap")
    if c.direction not in DIRECTIONS:
        _fail("FREEPRUNER_DIRECTION", c.direction, "one of " + ", ".join(DIRECTIONS))
    if c.radius < 0:
        _refuse(c, "radius")
    if c.fastv_layer < 0:
        _refuse(c, "fastv_layer")
    if c.device not in DEVICES:
        _fail("FREEPRUNER_DEVICE", c.device, "one of " + ", ".join(DEVICES))
    if c.video is not None and c.video not in VIDEO_MODES:
        _fail("FREEPRUNER_VIDEO", c.video, "one of " + ", ".join(VIDEO_MODES))
    if c.video_tau is not None and not (0.0 < c.video_tau <= 1.0):
        _refuse(c, "video_tau")
    if c.video_tau is not None and c.video != "temporal":
        raise ConfigError("FREEPRUNER_VIDEO_TAU is set but FREEPRUNER_VIDEO is not 'temporal': the threshold "
                          "applies to temporal mode only (set FREEPRUNER_VIDEO=temporal or unset the threshold).")
    if c.quant is not None and c.quant not in QUANTIZATIONS:
        _fail("FREEPRUNER_QUANT", c.quant, "one of " + ", ".join(QUANTIZATIONS) + " or none (bitsandbytes weights "
              "for upstream llava's load_pretrained_model)")
    if c.llm_method in RATIO_LLM_METHODS and c.ratio is None:
        layer = "FREEPRUNER_FASTV_LAYER" if c.llm_method == "fastv" else "2"
        raise ConfigError(
            f"FREEPRUNER_METHOD includes {c.llm_method} but FREEPRUNER_RATIO is not set: {c.llm_method} keeps that "
            f"fraction of the visual tokens at LLM layer {layer} (0 < r <= 1)."
        )
    if c.clip_text is not None and not os.path.isdir(c.clip_text):
        _fail("FREEPRUNER_CLIP_TEXT", c.clip_text, "a local folder holding a CLIP checkpoint (text tower, tokenizer)")
    if c.llm_method == "fitprune" and c.vision_method is None and (c.ratio is not None or c.tokens is not None):
        var = "FREEPRUNER_RATIO" if c.ratio is not None else "FREEPRUNER_TOKENS"
        raise ConfigError(
            f"{var} is set, but FREEPRUNER_METHOD=fitprune alone would ignore it: FitPrune prunes inside the "
            f"LLM as its FITPRUNE_RECIPE says. Unset {var}, or prune the vision side too with "
            "FREEPRUNER_METHOD=freepruner+fitprune (any vision method + fitprune)."
        )
    if c.llm_method == "fitprune" and not c.fitprune_recipe:
        raise ConfigError(
            "FREEPRUNER_METHOD includes fitprune but FITPRUNE_RECIPE is not set: give a "
            "built-in recipe such as 'llava-v1.5-7b@60' or a recipe JSON file path."
        )


def _method_help() -> str:
    return (
        "a vision method (" + ", ".join(VISION_METHODS) + "), an LLM method ("
        + ", ".join(LLM_METHODS) + "), one of each joined by '+' "
        "(e.g. freepruner+fitprune), or 'none'"
    )


# --- parsing ---------------------------------------------------------------


def _parse_float(var: str, raw: str, accepted: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        _fail(var, raw, accepted)
    return value


def _parse_int(var: str, raw: str, accepted: str) -> int:
    try:
        return int(raw.strip())
    except ValueError:
        _fail(var, raw, accepted)


def parse_bool(var: str, raw: str) -> bool:
    """A switch variable: 1/true/yes/on or 0/false/no/off (empty: off)."""
    low = raw.strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    _fail(var, raw, "1/true/yes/on or 0/false/no/off")


def _parse_layers(var: str, raw: str) -> Tuple[int, ...]:
    accepted = "comma-separated layer indices and ranges, e.g. '12-21' or '6,7,9'"
    layers = []
    for part in raw.split(","):
        part = part.strip()
        lo, sep, hi = part.partition("-")
        try:
            start, stop = int(lo), int(hi if sep else lo)
        except ValueError:
            _fail(var, raw, accepted)
        if start > stop:
            _fail(var, raw, accepted)
        layers.extend(range(start, stop + 1))
    return tuple(sorted(set(layers)))


def parse_method(raw: str) -> Tuple[Optional[str], Optional[str]]:
    name = raw.strip().lower()
    if name == "none":
        return None, None
    vision = llm = None
    for part in name.split("+"):
        if part in VISION_METHODS and vision is None:
            vision = part
        elif part in LLM_METHODS and llm is None:
            llm = part
        else:
            _fail("FREEPRUNER_METHOD", raw, _method_help())
    return vision, llm


# variable -> (Config field, parser)
_VARIABLES: dict = {
    "FREEPRUNER_RATIO": ("ratio", lambda v, r: _parse_float(v, r, "a fraction 0 < r <= 1")),
    "FREEPRUNER_TOKENS": ("tokens", lambda v, r: _parse_int(v, r, "a whole number >= 1")),
    "FREEPRUNER_LAYERS": ("layers", _parse_layers),
    "FREEPRUNER_IQR": ("iqr", lambda v, r: _parse_float(v, r, "a multiplier >= 0")),
    "FREEPRUNER_PIVOT_CAP": ("pivot_cap", lambda v, r: _parse_float(v, r, "a fraction 0 < cap <= 1")),
    "FREEPRUNER_DIRECTION": ("direction", lambda v, r: r.strip().lower()),
    "FREEPRUNER_RADIUS": ("radius", lambda v, r: _parse_int(v, r, "a whole number >= 0")),
    "FREEPRUNER_SEED": ("seed", lambda v, r: _parse_int(v, r, "a whole number")),
    "FREEPRUNER_FASTV_LAYER": ("fastv_layer", lambda v, r: _parse_int(v, r, "a layer index >= 0")),
    "FREEPRUNER_STATS": ("stats", lambda v, r: r),
    "FREEPRUNER_DEVICE": ("device", lambda v, r: r.strip().lower()),
    "FREEPRUNER_QUANT": ("quant", lambda v, r: None if r.strip().lower() in ("none", "") else r.strip().lower()),
    "FREEPRUNER_DISABLE": ("enabled", lambda v, r: not parse_bool(v, r)),
    "FITPRUNE_RECIPE": ("fitprune_recipe", lambda v, r: r.strip()),
    "FREEPRUNER_CLIP_TEXT": ("clip_text", lambda v, r: r.strip()),
    "FREEPRUNER_VIDEO": ("video", lambda v, r: r.strip().lower()),
    "FREEPRUNER_VIDEO_TAU": ("video_tau", lambda v, r: _parse_float(v, r, "a threshold 0 < tau <= 1")),
}
KNOWN_VARIABLES = tuple(sorted(("FREEPRUNER_METHOD",) + tuple(_VARIABLES)))


def is_requested(environ: Optional[Mapping[str, str]] = None) -> bool:
    """True when any variable under the plugin's prefixes is set."""
    environ = os.environ if environ is None else environ
    return any(name.startswith(PREFIXES) for name in environ)


def from_env(environ: Optional[Mapping[str, str]] = None) -> Config:
    """Parse the ``FREEPRUNER_*`` / ``FITPRUNE_*`` variables into a :class:`Config`."""
    environ = os.environ if environ is None else environ
    ours = {k: v for k, v in environ.items() if k.startswith(PREFIXES)}
    for name in sorted(ours):
        if name not in KNOWN_VARIABLES:
            close = difflib.get_close_matches(name, KNOWN_VARIABLES, n=1)
            hint = f" Did you mean {close[0]}?" if close else ""
            raise ConfigError(
                f"{name} is not a variable of llava_freepruner.{hint} "
                f"Known variables: {', '.join(KNOWN_VARIABLES)}."
            )
    values = {}
    if "FREEPRUNER_METHOD" in ours:
        values["vision_method"], values["llm_method"] = parse_method(ours["FREEPRUNER_METHOD"])
    for name, (field, parse) in _VARIABLES.items():
        if name in ours:
            values[field] = parse(name, ours[name])
    return Config(**values)


def describe(config: Config, num_tokens: Optional[int] = None, anyres: bool = False) -> str:
    """The one start-up log line that states the effective setting.

    ``anyres``: phrase the budget per crop, as LLaVA-NeXT applies it."""
    if not config.enabled:
        return "freePruner: disabled by FREEPRUNER_DISABLE; the model runs unpruned."
    parts = []
    if config.vision_method is not None:
        n = 576 if num_tokens is None else num_tokens
        if anyres:
            rule = ("FREEPRUNER_TOKENS counts per full crop and is scaled to each tile's part left by unpadding"
                    if config.tokens is not None else "each tile keeps that fraction of its tokens left by unpadding")
            parts.append(f"{config.vision_method} keeping {config.budget(n)} of {n} visual tokens per anyres crop ({rule})")
        else:
            parts.append(f"{config.vision_method} keeping {config.budget(n)} of {n} visual tokens per image")
    if config.llm_method == "fitprune":
        parts.append(f"FitPrune recipe {config.fitprune_recipe} inside the LLM")
    elif config.llm_method == "fastv":
        parts.append(f"FastV at LLM layer {config.fastv_layer}")
    elif config.llm_method == "dart":
        parts.append("DART at LLM layer 2")
    if not parts:
        return "freePruner: method 'none', visual tokens are not pruned."
    return "freePruner: " + "; ".join(parts) + "."
