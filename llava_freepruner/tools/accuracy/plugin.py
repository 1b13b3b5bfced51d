"""The plugin around one cell: ``apply(config)`` before, ``remove()`` after.

A cell that prunes must leave per-image records in its stats file (the
transformers backend writes one per image at each prefill); otherwise it stops
with :class:`NotPruned` instead of reporting unpruned answers as pruned ones.
"""

from __future__ import annotations

import os
from contextlib import contextmanager

import llava_freepruner

from ...config import Config
from ...runtime.stats import read_jsonl


class NotPruned(RuntimeError):
    """The plugin did not prune the model for a cell that asks for pruning."""


@contextmanager
def applied(config: Config):
    llava_freepruner.apply(config)
    try:
        yield
    finally:
        llava_freepruner.remove()


def stats_records(path: str) -> list:
    return read_jsonl(path) if os.path.isfile(path) else []


def check_pruned(config: Config, stats_path: str) -> None:
    if config.prunes and not stats_records(stats_path):
        raise NotPruned(f"{config.method}: the plugin wrote no stats to {stats_path}, so it did not see this "
                        "model's images; is its transformers backend installed?")
