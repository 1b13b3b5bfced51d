"""Patches on upstream ``llava`` that route images through the selection.

Only ``LlavaMetaForCausalLM`` is patched (the llama, mistral and mpt classes all
inherit from it). Each wrapper calls the original for everything it does not
change; :func:`remove` puts every original back.
"""

from __future__ import annotations

import logging
import sys
import time
import weakref
from typing import List, Optional

import torch

from . import config as config_module
from . import cpu, methods
from .config import Config, ConfigError
from .methods.base import CropRequest
from .stats import open_writer
from .tower import gather_kept, run_tower

log = logging.getLogger("llava_freepruner")
if not log.handlers:
    _handler = logging.StreamHandler(sys.stderr)
    _handler.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(_handler)
    log.setLevel(logging.INFO)
    log.propagate = False

_ORIGINALS = {}
_runtime: Optional["Runtime"] = None


class Runtime:
    """What the patched methods need while the plugin is applied."""

    def __init__(self, config: Config):
        self.config = config
        self.vision = (
            methods.create(config)
            if config.enabled and config.vision_method and (config.ratio is not None or config.tokens is not None)
            else None
        )
        self.stats = open_writer(config.stats) if config.enabled else None
        self.pending: List[dict] = []      # records waiting for their LLM prefill time
        self.images_seen = 0
        self.announced = set()
        self.timed_models = weakref.WeakKeyDictionary()   # model -> hook handles

    def announce(self, num_tokens: int) -> None:
        if num_tokens not in self.announced:
            self.announced.add(num_tokens)
            log.info(config_module.describe(self.config, num_tokens))

    def record(self, record: dict) -> None:
        if self.stats is None:
            return
        record.update(image=self.images_seen, method=self.config.method)
        self.images_seen += 1
        self.pending.append(record)

    def flush(self, prefill_ms: Optional[float] = None) -> None:
        for record in self.pending:
            if prefill_ms is not None:
                record["llm_prefill_ms"] = round(prefill_ms, 3)
            self.stats.write(record)
        self.pending.clear()

    def close(self) -> None:
        if self.stats is not None:
            self.flush()
            self.stats.close()
        for handles in self.timed_models.values():
            for handle in handles:
                handle.remove()


def _sync(tensor: torch.Tensor) -> None:
    if tensor.is_cuda:
        torch.cuda.synchronize(tensor.device)


def _time_llm_prefill(runtime: Runtime, model) -> None:
    """Hook the decoder once per model so each prefill's time lands in the stats."""
    llm = model.get_model()
    if runtime.stats is None or model in runtime.timed_models:
        return
    started = {}

    def before(module, args, kwargs):
        embeds = kwargs.get("inputs_embeds")
        if embeds is not None and embeds.shape[1] > 1:
            _sync(embeds)
            started["t"] = time.perf_counter()

    def after(module, args, kwargs, output):
        if "t" in started:
            _sync(output[0])
            runtime.flush(1000 * (time.perf_counter() - started.pop("t")))

    runtime.timed_models[model] = [
        llm.register_forward_pre_hook(before, with_kwargs=True),
        llm.register_forward_hook(after, with_kwargs=True),
    ]


def encode_images(self, images):
    """LLaVA-1.5 path: every image keeps its budget of tokens, chosen per image."""
    runtime = _runtime
    if runtime is None or runtime.vision is None:
        return _ORIGINALS["encode_images"](self, images)
    tower = self.get_model().get_vision_tower()
    num_patches = tower.num_patches
    budget = runtime.config.budget(num_patches)
    runtime.announce(num_patches)
    runtime.flush()
    _time_llm_prefill(runtime, self)

    run = run_tower(tower, images, [CropRequest(budget)] * images.shape[0], runtime.vision)
    with_cls = tower.select_feature == "cls_patch"
    kept = torch.stack([gather_kept(f, s, with_cls) for f, s in zip(run.features, run.selections)])
    for selection in run.selections:
        runtime.record({
            "tokens_in": num_patches,
            "tokens_out": int(selection.indices.numel()),
            "pivotal": selection.num_pivotal,
            "complementary": selection.num_complementary,
            "vision_ms": round(1000 * run.vision_seconds / len(run.selections), 3),
            "select_ms": round(1000 * run.select_seconds / len(run.selections), 3),
        })
    return self.get_model().mm_projector(kept)


def _patch(owner, name: str, replacement) -> None:
    if name not in _ORIGINALS:
        _ORIGINALS[name] = getattr(owner, name)
        setattr(owner, name, replacement)


def apply(config: Optional[Config] = None, **overrides) -> Config:
    """Install the patches (once) with ``config`` (default: from the environment)."""
    global _runtime
    from llava.model.llava_arch import LlavaMetaForCausalLM

    config = config_module.from_env() if config is None else config
    if overrides:
        config = config.replace(**overrides)
    if _runtime is not None:
        _runtime.close()
    _runtime = Runtime(config)
    if config.device == "cpu":
        cpu.apply()
    _patch(LlavaMetaForCausalLM, "encode_images", encode_images)
    if _runtime.vision is None and config.llm_method is None:
        log.info("freePruner: no FREEPRUNER_RATIO or FREEPRUNER_TOKENS set; visual tokens are not pruned.")
    else:
        _runtime.announce(576)
    return config


def remove() -> None:
    global _runtime
    from llava.model.llava_arch import LlavaMetaForCausalLM

    for name, original in _ORIGINALS.items():
        setattr(LlavaMetaForCausalLM, name, original)
    _ORIGINALS.clear()
    cpu.remove()
    if _runtime is not None:
        _runtime.close()
        _runtime = None


def is_applied() -> bool:
    return bool(_ORIGINALS)


def activate_from_env() -> None:
    """Apply the environment's configuration; a bad value ends the process
    with a message naming the variable, before any model is loaded."""
    try:
        config = config_module.from_env()
        if config.enabled or config.device == "cpu":
            apply(config)
        else:
            log.info(config_module.describe(config))
    except (ConfigError, OSError) as err:
        raise SystemExit(f"llava_freepruner: {err}") from None
