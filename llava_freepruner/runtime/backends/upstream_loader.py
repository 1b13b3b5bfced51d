"""``FREEPRUNER_QUANT`` for upstream llava: its own loader quantizes.

Upstream's eval entry points call ``load_pretrained_model`` without exposing its
``load_4bit`` / ``load_8bit`` flags. With ``FREEPRUNER_QUANT`` set, the loader is
wrapped so those flags are set (4-bit: upstream's NF4 with double quantization,
fp16 compute; 8-bit: LLM.int8) and the loaded model is checked to hold quantized
layers. The eval modules bind the loader by name when they are imported, after
``llava`` itself: patching ``llava.model.builder`` when ``llava`` is imported
reaches them.
"""

from __future__ import annotations

import functools
import inspect
from typing import Optional

from .. import quantization
from ...config import Config
from ..session import log

_ORIGINAL = None
_config: Optional[Config] = None


def install(config: Config) -> None:
    """Refuse a quantization this machine cannot serve (before any model loads);
    otherwise make ``load_pretrained_model`` quantize as ``config.quant`` asks."""
    global _ORIGINAL, _config
    import torch
    from llava.model import builder

    quantization.check_upstream(config, torch.cuda.is_available())
    _config = config
    if _ORIGINAL is None and config.quant is not None:
        _ORIGINAL = builder.load_pretrained_model
        builder.load_pretrained_model = _wrap(_ORIGINAL)


def uninstall() -> None:
    global _ORIGINAL, _config
    if _ORIGINAL is not None:
        from llava.model import builder

        builder.load_pretrained_model = _ORIGINAL
        _ORIGINAL = None
    _config = None


def _wrap(original):
    signature = inspect.signature(original)

    @functools.wraps(original)
    def load_pretrained_model(*args, **kwargs):
        config = _config
        if config is None or config.quant is None:
            return original(*args, **kwargs)
        call = signature.bind(*args, **kwargs)
        asked = {k: call.arguments.get(k, False) for k in ("load_4bit", "load_8bit")}
        flags = quantization.loader_flags(config)
        if any(asked.values()) and asked != flags:
            log.info(f"freePruner: FREEPRUNER_QUANT={config.quant} replaces the caller's "
                     f"{', '.join(k for k, v in asked.items() if v)}.")
        call.arguments.update(flags)
        log.info(f"freePruner: FREEPRUNER_QUANT={config.quant}: load_pretrained_model loads "
                 f"{'NF4 4-bit' if config.quant == '4bit' else 'LLM.int8 8-bit'} weights (bitsandbytes).")
        loaded = original(*call.args, **call.kwargs)
        model = loaded[1]
        if not quantization.quantized_parts(model):
            raise RuntimeError(f"FREEPRUNER_QUANT={config.quant}: load_pretrained_model returned a model without "
                               "quantized layers; refusing to run it unquantized.")
        return loaded

    return load_pretrained_model
