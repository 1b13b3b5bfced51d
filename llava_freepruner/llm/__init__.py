"""Decoder-side visual-token pruning (FitPrune, FastV) for LLaMA-family LLaVA models."""

from .policies import FastVPolicy, FitPrunePolicy, PrunePolicy
from .runtime import PrefillRecord, attach, begin_prefill, detach, is_attached, last_record
from .spans import visual_spans

__all__ = ["attach", "detach", "is_attached", "begin_prefill", "last_record", "PrefillRecord",
           "PrunePolicy", "FitPrunePolicy", "FastVPolicy", "visual_spans"]
