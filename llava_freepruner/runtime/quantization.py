"""Quantized weights: what ``FREEPRUNER_QUANT`` asks of a loader, and what a model holds.

Pruning itself does not change with quantization: the capture hooks read the
outputs of the query/key projections (whatever module computes them) and the
sequence is shortened on activations. This module only checks that a requested
quantization can be served, names the refusals, and reports which parts of a
loaded model are quantized.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import sys
from typing import Dict, List

from ..config import Config, ConfigError

BITSANDBYTES_MIN = "0.47"       # the first release with CPU kernels for 4-bit and LLM.int8


class _TorchaoImportNoise(logging.Filter):
    """Drops what importing torchao logs that no user can act on: "Failed to load
    <kernels>.so" for kernels that cannot load here (CUDA kernels beside a torch
    without CUDA, kernels built for another Python), and torch's notice that the
    Enums torchao registers need no registration any more (meant for torchao's
    authors). torchao's PyPI wheels carry such files, and transformers imports
    torchao at every model load when it is installed; the int8 weight-only
    quantization it serves on CPUs needs none of these kernels."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.name == "torch.utils._pytree":
            return not ("is an Enum subclass" in message and _inside_torchao())
        failed = re.match(r"Failed to load (\S+\.so)\b", message)
        if failed is None:
            return True
        python = re.search(r"\.cpython-(\d+)", os.path.basename(failed.group(1)))
        other_python = python is not None and python.group(1) != f"{sys.version_info[0]}{sys.version_info[1]}"
        torch = sys.modules.get("torch")
        without_cuda = torch is not None and torch.version.cuda is None
        return not (other_python or without_cuda)


def _inside_torchao() -> bool:
    frame = sys._getframe()
    while frame is not None and not frame.f_globals.get("__name__", "").startswith("torchao"):
        frame = frame.f_back
    return frame is not None


def quiet_torchao_import() -> None:
    """Install the filter above on the loggers it reads (torchao need not be imported yet)."""
    for name in ("torchao", "torch.utils._pytree"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _TorchaoImportNoise) for f in logger.filters):
            logger.addFilter(_TorchaoImportNoise())


def require_bitsandbytes(what: str) -> None:
    """Refuse, naming ``what`` asked for it, when bitsandbytes is not installed."""
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError(
            f"{what} needs bitsandbytes, which is not installed: pip install 'bitsandbytes>={BITSANDBYTES_MIN}' "
            "(or unset it to load unquantized weights)."
        )


def check_upstream(config: Config, cuda_available: bool) -> None:
    """Refuse a ``FREEPRUNER_QUANT`` that upstream llava's loader cannot serve here.

    Upstream pins transformers 4.37.2, whose bitsandbytes integration raises
    "No GPU found" without CUDA; it is refused here instead, before any model is
    loaded, so a run never goes on unquantized."""
    if config.quant is None:
        return
    variable = f"FREEPRUNER_QUANT={config.quant}"
    if config.device == "cpu" or not cuda_available:
        reason = "FREEPRUNER_DEVICE=cpu is set" if config.device == "cpu" else "torch sees no CUDA device"
        raise ConfigError(
            f"{variable} cannot be served: {reason}, and upstream llava's transformers 4.37.2 quantizes with "
            "bitsandbytes on a CUDA GPU only. Unset FREEPRUNER_QUANT to run unquantized on this machine, or use "
            "transformers' LLaVA classes (transformers >= 4.57 with bitsandbytes >= 0.47 quantize on CPUs too)."
        )
    require_bitsandbytes(variable)


def loader_flags(config: Config) -> Dict[str, bool]:
    """The keyword arguments of upstream ``load_pretrained_model`` for ``config.quant``."""
    return {"load_4bit": config.quant == "4bit", "load_8bit": config.quant == "8bit"}


def refuse_for_caller_loaded(config: Config) -> None:
    """transformers' classes are loaded by the caller: ``FREEPRUNER_QUANT`` cannot reach their loader."""
    if config.quant is not None:
        raise ConfigError(
            f"FREEPRUNER_QUANT={config.quant} applies to upstream llava's load_pretrained_model only; transformers' "
            "LLaVA classes are loaded by your code: pass quantization_config=BitsAndBytesConfig(...) (or a torchao "
            "config) to from_pretrained and unset FREEPRUNER_QUANT. Quantized models prune as unquantized ones."
        )


def quantized_parts(model) -> List[str]:
    """Names of the top-level parts of ``model`` (language model, vision tower, projector...)
    that hold quantized linear layers, in model order."""
    parts = []
    for name, module in model.named_modules():
        if is_quantized_linear(module):
            part = _part_of(name)
            if part not in parts:
                parts.append(part)
    return parts


def is_quantized_linear(module) -> bool:
    """A bitsandbytes 4-/8-bit linear layer, or a linear whose weight is a torchao quantized tensor."""
    kind = type(module).__name__
    if kind in ("Linear4bit", "Linear8bitLt"):
        return True
    weight = getattr(module, "weight", None)
    return weight is not None and type(weight).__module__.startswith("torchao")


def _part_of(name: str) -> str:
    pieces = name.split(".")
    # transformers >= 4.52 nests the parts under ``model``
    if pieces[0] == "model" and len(pieces) > 1:
        pieces = pieces[1:]
    return pieces[0]


def quantize_in_place(model, mode: str, skip=("lm_head", "vision_tower")) -> int:
    """Replace the ``nn.Linear`` layers of ``model`` by bitsandbytes ones, as upstream's
    ``load_4bit`` (NF4, double quantization) / ``load_8bit`` (LLM.int8) loads them:
    every linear layer but those under a module named in ``skip`` (upstream quantizes
    the language model and the projector; its vision tower is loaded unquantized).
    For models built in memory (random weights); compute runs in each layer's dtype.
    Returns the number of layers replaced."""
    import torch
    import bitsandbytes as bnb

    if mode not in ("4bit", "8bit"):
        raise ValueError(f"quantization {mode!r} is not valid: expected 4bit or 8bit")
    replaced = 0
    for parent_name, parent in list(model.named_modules()):
        if any(part in skip for part in parent_name.split(".")):
            continue
        for name, child in list(parent.named_children()):
            if type(child) is not torch.nn.Linear or name in skip:
                continue
            weight, device = child.weight.data, child.weight.device
            if mode == "4bit":
                layer = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=child.bias is not None,
                                          compute_dtype=weight.dtype, compress_statistics=True, quant_type="nf4",
                                          device="meta")
                layer.weight = bnb.nn.Params4bit(weight.cpu(), requires_grad=False, compress_statistics=True,
                                                 quant_type="nf4")
            else:
                layer = bnb.nn.Linear8bitLt(child.in_features, child.out_features, bias=child.bias is not None,
                                            has_fp16_weights=False, threshold=6.0, device="meta")
                layer.weight = bnb.nn.Int8Params(weight.cpu(), requires_grad=False, has_fp16_weights=False)
            if child.bias is not None:
                layer.bias = torch.nn.Parameter(child.bias.data.cpu(), requires_grad=False)
            setattr(parent, name, layer.to(device))     # the move quantizes the weight
            replaced += 1
    return replaced
