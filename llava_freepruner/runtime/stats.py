"""``FREEPRUNER_STATS``: one JSON line per image, appended and flushed as it happens."""

from __future__ import annotations

import json
import os
from typing import Optional


class StatsWriter:
    def __init__(self, path: str):
        self.path = path
        parent = os.path.dirname(os.path.abspath(path))
        try:
            os.makedirs(parent, exist_ok=True)
            self._file = open(path, "a", encoding="utf-8")
        except OSError as err:
            raise OSError(f"FREEPRUNER_STATS={path!r} cannot be opened for appending: {err}") from err

    def write(self, record: dict) -> None:
        self._file.write(json.dumps(record, sort_keys=True) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def crop_record(selection, valid_tokens: int) -> dict:
    """One crop's entry in a stats record: tokens it could keep, tokens it feeds, pivots."""
    return {"tokens_in": valid_tokens, "tokens_out": selection.num_tokens,
            "pivotal": selection.num_pivotal, "complementary": selection.num_complementary}


def read_jsonl(path) -> list:
    """All records of a JSON-lines file: a stats file, an answer file."""
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def open_writer(path: Optional[str]) -> Optional[StatsWriter]:
    return StatsWriter(path) if path else None
