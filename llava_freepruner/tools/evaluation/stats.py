"""Summaries of the plugin's ``FREEPRUNER_STATS`` files (one JSON line per image)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Optional


def token_summary(paths: Iterable[Path]) -> Optional[dict]:
    """Mean visual tokens in and kept per image over the given stats files.

    ``None`` when no file has a record (the plugin was off or did not record).
    """
    tokens_in, tokens_out = [], []
    for path in paths:
        path = Path(path)
        if not path.exists():
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                tokens_in.append(float(record["tokens_in"]))
                tokens_out.append(float(record["tokens_out"]))
            except (ValueError, KeyError, TypeError) as err:
                raise ValueError(f"{path}:{number}: not a stats record with tokens_in/tokens_out ({err})") from None
    if not tokens_out:
        return None
    n = len(tokens_out)
    return {"images": n, "tokens_in": sum(tokens_in) / n, "tokens_out": sum(tokens_out) / n}
