"""Decoder-side visual-token pruning (FitPrune, FastV, DART) on Llama, Mistral and Qwen2 decoders
and the language models of Qwen2-VL, Qwen2.5-VL and Qwen3-VL."""

from .dart import DartPolicy
from .policies import FastVPolicy, FitPrunePolicy, PrunePolicy
from .runtime import PrefillRecord, attach, begin_prefill, detach, is_attached, last_record
from .spans import visual_spans

__all__ = ["attach", "detach", "is_attached", "begin_prefill", "last_record", "PrefillRecord",
           "PrunePolicy", "FitPrunePolicy", "FastVPolicy", "DartPolicy", "visual_spans"]
