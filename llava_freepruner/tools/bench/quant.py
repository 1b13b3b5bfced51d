"""``bench --quant``: one model per weight quantization, rows tagged with it.

Random weights are quantized in place as upstream's loader would quantize a
checkpoint (:func:`llava_freepruner.runtime.quantization.quantize_in_place`); a checkpoint
goes through upstream's own ``load_4bit`` / ``load_8bit`` (CUDA only, as
transformers 4.37.2 allows).
"""

from __future__ import annotations

import gc
from typing import Dict, List

import torch

from ...runtime import quantization
from ...config import Config, ConfigError

NONE = "none"
CHOICES = (NONE, "8bit", "4bit")


def parse(text: str, checkpoint: bool, device: str) -> List[str]:
    """The quantizations of ``--quant``, checked against this machine before anything is built."""
    quants = [q.strip().lower() for q in text.split(",") if q.strip()]
    bad = [q for q in quants if q not in CHOICES]
    if not quants or bad or len(set(quants)) != len(quants):
        raise ValueError(f"--quant {text!r} is not valid: expected distinct values among {', '.join(CHOICES)}, "
                         "comma-separated (e.g. none,8bit,4bit)")
    for quant in quants:
        if quant == NONE:
            continue
        try:
            if checkpoint:
                quantization.check_upstream(Config(quant=quant, device=device), torch.cuda.is_available())
            else:
                quantization.require_bitsandbytes(f"--quant {quant}")
        except ConfigError as err:
            raise ValueError(str(err).replace(f"FREEPRUNER_QUANT={quant}", f"--quant {quant}")) from None
    return quants


def loader_flags(quant: str) -> Dict[str, bool]:
    """``load_pretrained_model`` keyword arguments for a checkpoint."""
    return quantization.loader_flags(Config(quant=None if quant == NONE else quant))


def quantize_random(model, quant: str) -> None:
    if quant != NONE:
        quantization.quantize_in_place(model, quant)


def weights_mb(model) -> float:
    """Bytes held by the model's parameters and buffers (quantized storage as stored), in MiB."""
    tensors = list(model.parameters()) + list(model.buffers())
    return sum(t.numel() * t.element_size() for t in tensors) / 2 ** 20


def tag(records: List[dict], quant: str, model) -> List[dict]:
    """Each row with its quantization, the model's weight memory and its quantized parts."""
    weights = round(weights_mb(model), 1)
    parts = quantization.quantized_parts(model)
    return [dict(r, quant=quant, weights_mb=weights, quantized_parts=parts) for r in records]


def release(device: str) -> None:
    """Return the previous model's memory before the next one is built."""
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def versions(quants: List[str]) -> Dict[str, str]:
    if all(q == NONE for q in quants):
        return {}
    import bitsandbytes

    return {"bitsandbytes": bitsandbytes.__version__}
