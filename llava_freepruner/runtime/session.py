"""State of the applied plugin: the configured methods, the stats records
waiting for their prefill, and the hooks that time each prefill.

One :class:`Session` lives from ``apply()`` to ``remove()``; the patched llava
methods of every backend (``backends``) read it.
"""

from __future__ import annotations

import logging
import sys
import time
import weakref
from typing import List, Optional

import torch

from .. import config as config_module
from . import llm as llm_runtime
from . import methods
from ..config import Config, ConfigError
from .fitprune import RecipeError, load_recipe
from .llm import DartPolicy, FastVPolicy, FitPrunePolicy
from .stats import open_writer
from .tower import sync

log = logging.getLogger("llava_freepruner")
if not log.handlers:
    _handler = logging.StreamHandler(sys.stderr)
    _handler.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(_handler)
    log.setLevel(logging.INFO)
    log.propagate = False

class Session:
    """What the patched methods need while the plugin is applied."""

    def __init__(self, config: Config):
        self.config = config
        self.vision = (
            methods.create(config)
            if config.enabled and config.vision_method and (config.ratio is not None or config.tokens is not None)
            else None
        )
        self.llm = llm_policy(config) if config.enabled else None
        self.llm_models = weakref.WeakSet()    # models the decoder-side pruning is attached to
        self.stats = open_writer(config.stats) if config.enabled else None
        self.precomputed: Optional[List[torch.Tensor]] = None   # image features for the splice in flight
        self.pending_images = None         # per image (tokens made, kept positions) until the merge
        self.pending_videos = None         # per video, the same
        self.instructions: Optional[List[str]] = None   # per image of the splice in flight (text-conditioned methods)
        self.tokenizers = weakref.WeakKeyDictionary()    # model -> its checkpoint's tokenizer
        self.pending: List[dict] = []      # records waiting for their LLM prefill time
        self.images_seen = 0
        self.announced = set()
        self.timed_models = weakref.WeakKeyDictionary()   # model -> hook handles

    @property
    def active(self) -> bool:
        return self.vision is not None or self.llm is not None or self.stats is not None

    def announce(self, num_tokens: int, anyres: bool = False) -> None:
        self.say_once(config_module.describe(self.config, num_tokens, anyres))

    def say_once(self, message: str) -> None:
        if message not in self.announced:
            self.announced.add(message)
            log.info(message)

    def take_instructions(self, num_images: int) -> List[Optional[str]]:
        """The instruction of each of the next ``num_images`` images (None: not known)."""
        texts, self.instructions = self.instructions, None
        if texts is None:
            return [None] * num_images
        if len(texts) != num_images:
            raise RuntimeError(f"{len(texts)} instructions for {num_images} images: the prompts' image "
                               "placeholders do not match the images passed")
        return texts

    def prompt_tokenizer(self, model, fast: bool = False):
        """The tokenizer saved with ``model``'s checkpoint, to read prompts back as text
        (``fast``: the one transformers' processors use; else the slow one, as upstream llava loads)."""
        if model not in self.tokenizers:
            from transformers import AutoTokenizer

            path = model.config._name_or_path
            try:
                if not path:
                    raise OSError("the model was not loaded from a checkpoint folder (config._name_or_path is empty)")
                self.tokenizers[model] = AutoTokenizer.from_pretrained(path, use_fast=fast)
            except (OSError, ValueError) as err:
                raise RuntimeError(f"FREEPRUNER_METHOD={self.config.vision_method}: the prompt's text is needed, but "
                                   f"the tokenizer of the checkpoint {path!r} cannot be loaded: {err}") from None
        return self.tokenizers[model]

    def tag_samples(self, image_samples: List[int]) -> None:
        """Note which batch sample each of the latest image records belongs to."""
        if self.stats is not None and image_samples:
            for record, sample in zip(self.pending[-len(image_samples):], image_samples):
                record["sample"] = sample

    def record(self, record: dict) -> None:
        if self.stats is None:
            return
        record.update(image=self.images_seen, method=self.config.method)
        self.images_seen += 1
        self.pending.append(record)

    def begin_images(self, model) -> None:
        """New images for ``model``: earlier records are complete, and its prefills are watched."""
        self.flush()
        watch_prefill(self, model)

    def flush(self, prefill_ms: Optional[float] = None, llm_record=None) -> None:
        """Write the waiting records, with what the prefill that used them did."""
        for record in self.pending:
            if prefill_ms is not None:
                record["llm_prefill_ms"] = round(prefill_ms, 3)
            sample = record.pop("sample", None)
            if llm_record is not None and sample is not None and sample < len(llm_record.visual_out):
                record["llm_visual_alive"] = llm_record.visual_out[sample]
                record["llm_flops_reduction"] = round(llm_record.flops_reduction[sample], 4)
            self.stats.write(record)
        self.pending.clear()

    def close(self) -> None:
        if self.stats is not None:
            self.flush()
            self.stats.close()
        for model in list(self.llm_models):
            llm_runtime.detach(model)
        for handles in self.timed_models.values():
            for handle in handles:
                handle.remove()


def llm_policy(config: Config):
    """The decoder-side policy the configuration asks for (None: no LLM-side pruning)."""
    if config.llm_method == "fitprune":
        try:
            return FitPrunePolicy(load_recipe(config.fitprune_recipe))
        except RecipeError as err:
            raise ConfigError(f"FITPRUNE_RECIPE={config.fitprune_recipe!r} cannot be used: {err}") from None
    if config.llm_method == "fastv":
        return FastVPolicy(config.ratio, config.fastv_layer)
    if config.llm_method == "dart":
        return DartPolicy(config.ratio)
    return None


def watch_prefill(session: Session, model) -> None:
    """Hook the decoder once per model: each prefill's time and decoder-side
    pruning land in the stats, and recipe scaling notes in the log."""
    if model in session.timed_models or (session.stats is None and session.llm is None):
        return
    llm = model.get_model()
    started = {}

    def before(module, args, kwargs):
        embeds = kwargs.get("inputs_embeds")
        if embeds is not None and embeds.shape[1] > 1:
            if session.stats is not None:       # only a stats file waits for the device
                sync(embeds)
            started["t"] = time.perf_counter()

    def after(module, args, kwargs, output):
        if "t" not in started:
            return
        if session.stats is not None:
            sync(output[0])
        elapsed_ms = 1000 * (time.perf_counter() - started.pop("t"))
        record = llm_runtime.last_record(model) if model in session.llm_models else None
        for note in record.notes if record is not None else ():
            session.say_once(f"freePruner: {note}")
        if session.stats is not None:
            session.flush(elapsed_ms, record)

    session.timed_models[model] = [
        llm.register_forward_pre_hook(before, with_kwargs=True),
        llm.register_forward_hook(after, with_kwargs=True),
    ]
