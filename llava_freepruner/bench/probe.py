"""Timing hooks on a LLaVA model's parts (``host.HostParts``), and a streamer that timestamps tokens.

On CUDA every timestamp is taken after ``torch.cuda.synchronize``, so a time
covers the kernels of its stage and not only their launches.

Clocks: ``wall`` (``time.perf_counter``) by default; ``thread``
(``time.thread_time``, the CPU time of the calling thread) for single-threaded
CPU runs on a shared machine, where wall time mostly measures the other
processes. With one torch thread all the model's work runs on the calling
thread, so its CPU time is the work done, whatever else the machine runs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import List, Optional

import torch


CLOCKS = {"wall": time.perf_counter, "thread": time.thread_time}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Call:
    """What one ``generate`` call did, as observed by the hooks."""

    vision_s: float = 0.0                                    # tower forwards (capture hooks included)
    prefill_s: Optional[float] = None                        # decoder forward over the prompt
    layer_tokens: List[int] = field(default_factory=list)    # positions entering each decoder layer
    head_tokens: Optional[int] = None                        # positions the LM head scores in the prefill
    token_times: List[float] = field(default_factory=list)  # when each new token reached the host


class Probe:
    """Installs the hooks on a model's ``parts``; ``with probe.call() as c:`` around one generate."""

    def __init__(self, parts, device: torch.device, clock=time.perf_counter):
        self.device = device
        self.clock = clock
        self.current: Optional[Call] = None
        self._starts = {}
        llm = parts.decoder
        tower = parts.vision_tower
        self._handles = [
            tower.register_forward_pre_hook(self._start("vision")),
            tower.register_forward_hook(self._stop_vision),
            llm.register_forward_pre_hook(self._start_prefill, with_kwargs=True),
            llm.register_forward_hook(self._stop_prefill),
        ]
        self._handles.append(parts.lm_head.register_forward_pre_hook(self._count_head_tokens))
        for layer in llm.layers:
            self._handles.append(layer.register_forward_pre_hook(self._count_tokens, with_kwargs=True))

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def call(self) -> "_CallScope":
        return _CallScope(self)

    # --- hooks ------------------------------------------------------------------

    def _start(self, name):
        def hook(module, args):
            if self.current is not None:
                sync(self.device)
                self._starts[name] = self.clock()
        return hook

    def _stop_vision(self, module, args, output):
        if "vision" in self._starts:
            sync(self.device)
            self.current.vision_s += self.clock() - self._starts.pop("vision")

    def _start_prefill(self, module, args, kwargs):
        embeds = kwargs.get("inputs_embeds")
        if self.current is not None and self.current.prefill_s is None and embeds is not None and embeds.shape[1] > 1:
            sync(self.device)
            self._starts["prefill"] = self.clock()

    def _stop_prefill(self, module, args, output):
        if "prefill" in self._starts:
            sync(self.device)
            self.current.prefill_s = self.clock() - self._starts.pop("prefill")

    def _count_tokens(self, module, args, kwargs):
        if "prefill" in self._starts:
            hidden = args[0] if args else kwargs["hidden_states"]
            self.current.layer_tokens.append(int(hidden.shape[1]))


    def _count_head_tokens(self, module, args):
        if self.current is not None and self.current.head_tokens is None:
            self.current.head_tokens = int(args[0].shape[1])


class _CallScope:
    def __init__(self, probe: Probe):
        self.probe = probe
        self.call = Call()
        self.streamer = TokenClock(self.call, probe.clock)

    def __enter__(self) -> "_CallScope":
        sync(self.probe.device)
        self.probe.current = self.call
        self.start = self.probe.clock()
        return self

    def __exit__(self, *exc) -> None:
        self.probe.current = None
        self.probe._starts.clear()


class TokenClock:
    """A ``generate`` streamer: the first ``put`` is the prompt, every later one a new token.

    The streamer receives tokens already copied to the host, so on CUDA its
    timestamps follow the device."""

    def __init__(self, call: Call, clock=time.perf_counter):
        self.call = call
        self.clock = clock
        self._prompt_seen = False

    def put(self, value) -> None:
        if self._prompt_seen:
            self.call.token_times.append(self.clock())
        self._prompt_seen = True

    def end(self) -> None:
        pass
