"""Names of evaluation runs: model checkpoint plus pruning setting.

Upstream names answer files after the checkpoint only, so runs at different
pruning settings overwrite each other. Every file this harness writes is named
after :func:`run_name`, which adds the :func:`pruning_tag`.
"""

from __future__ import annotations

import hashlib
import re
from typing import Mapping

from ...hosts import ENV_PREFIXES
from ...config import Config, parse_bool

# Variables that change where output goes or which device runs, not the answers.
NON_SEMANTIC = frozenset({"FREEPRUNER_STATS", "FREEPRUNER_DEVICE"})
BUDGET_VARIABLES = ("FREEPRUNER_METHOD", "FREEPRUNER_RATIO", "FREEPRUNER_TOKENS", "FREEPRUNER_DISABLE")
DEFAULT_METHOD = Config().method
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")


def _safe(text: str) -> str:
    return _UNSAFE.sub("_", text.strip())


def pruning_tag(environ: Mapping[str, str]) -> str:
    """A short file-name-safe label of the pruning setting in ``environ``.

    ``none`` when no variable that changes the answers is set (or the plugin
    is disabled); otherwise ``<method>[-r<ratio>|-t<tokens>][-k<hash>]`` where
    the hash covers every other answer-changing ``FREEPRUNER_*``/``FITPRUNE_*``
    variable, so two different settings never share a tag.
    """
    ours = {k: v for k, v in environ.items() if k.startswith(ENV_PREFIXES) and k not in NON_SEMANTIC}
    if not ours or parse_bool("FREEPRUNER_DISABLE", ours.get("FREEPRUNER_DISABLE", "")):
        return "none"
    method = ours.get("FREEPRUNER_METHOD", DEFAULT_METHOD).strip().lower() or DEFAULT_METHOD
    if method == "none":
        return "none"
    parts = [_safe(method)]
    if "FREEPRUNER_RATIO" in ours:
        parts.append("r" + _safe(ours["FREEPRUNER_RATIO"]))
    if "FREEPRUNER_TOKENS" in ours:
        parts.append("t" + _safe(ours["FREEPRUNER_TOKENS"]))
    knobs = sorted(f"{k}={v}" for k, v in ours.items() if k not in BUDGET_VARIABLES)
    if knobs:
        parts.append("k" + hashlib.sha1("\n".join(knobs).encode()).hexdigest()[:8])
    return "-".join(parts)


def model_name_from_path(model_path: str) -> str:
    """The checkpoint name upstream uses (``.../llava-v1.5-7b`` -> ``llava-v1.5-7b``).

    A ``checkpoint-N`` directory is named after its parent too, as upstream does.
    """
    parts = model_path.strip().rstrip("/").split("/")
    if not parts[-1]:
        raise ValueError(f"model path {model_path!r} has no name; pass a checkpoint directory or hub id")
    if parts[-1].startswith("checkpoint-") and len(parts) > 1:
        return f"{parts[-2]}_{parts[-1]}"
    return parts[-1]


def run_name(model_path: str, environ: Mapping[str, str]) -> str:
    """``<model>__<pruning tag>``: the stem of every answer and result file of a run."""
    return f"{model_name_from_path(model_path)}__{pruning_tag(environ)}"

