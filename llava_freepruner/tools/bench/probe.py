"""Timing hooks on a LLaVA model's parts (``host.HostParts``), and a streamer that timestamps tokens.

Stages of one ``generate`` call: the tower (every forward of it, capture hooks
included), selection (from the tower's last end to the LLM prefill's start:
the method's ``select``, the projector and the merge into the prompt), the LLM
prefill, and the time to the first token. A hook only takes a mark; the marks
become durations after the call (``Call.finish``).

On CUDA a mark is a CUDA event recorded on the current stream: nothing inside
the call waits for the device, and one ``torch.cuda.synchronize`` after it lets
the events be read. On a CPU a mark is a host clock reading: ``wall``
(``time.perf_counter``) by default, or ``thread`` (``time.thread_time``, the CPU
time of the calling thread) for single-threaded runs on a shared machine, where
wall time mostly measures the other processes.

Token times (decode throughput) are host clock readings: the streamer receives
each token already copied to the host, so they follow the device.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import List, Optional

import torch


CLOCKS = {"wall": time.perf_counter, "thread": time.thread_time}
CUDA_EVENTS = "cuda events"     # the clock a CUDA run's stages are timed on


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class HostMarks:
    """Marks on a host clock; a duration is a difference of readings."""

    def __init__(self, clock=time.perf_counter):
        self.clock = clock

    def mark(self):
        return self.clock()

    def finish(self) -> None:
        pass

    @staticmethod
    def seconds(start, end) -> float:
        return end - start


class CudaMarks:
    """Marks as CUDA events on the current stream; ``finish`` synchronizes once, after the call."""

    def __init__(self, device: torch.device):
        self.device = device

    def mark(self):
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def finish(self) -> None:
        torch.cuda.synchronize(self.device)

    @staticmethod
    def seconds(start, end) -> float:
        return start.elapsed_time(end) / 1000


def marks_for(device: torch.device, clock=time.perf_counter):
    return CudaMarks(device) if device.type == "cuda" else HostMarks(clock)


@dataclass
class Call:
    """What one ``generate`` call did, as observed by the hooks; the ``*_s`` fields are set by ``finish``."""

    start: object = None                                     # marks
    towers: List[list] = field(default_factory=list)        # [start, end] of each tower forward
    prefill: List[object] = field(default_factory=list)     # [start, end] of the prompt's decoder forward
    first_token: object = None
    layer_tokens: List[int] = field(default_factory=list)    # positions entering each decoder layer
    head_tokens: Optional[int] = None                        # positions the LM head scores in the prefill
    token_times: List[float] = field(default_factory=list)  # host clock: when each new token reached the host
    vision_s: float = 0.0
    select_s: Optional[float] = None
    prefill_s: Optional[float] = None
    ttft_s: Optional[float] = None

    def finish(self, marks) -> None:
        """Turn the marks into stage durations (on CUDA: after the one synchronize)."""
        marks.finish()
        seconds = marks.seconds
        self.vision_s = sum(seconds(a, b) for a, b in self.towers)
        if len(self.prefill) == 2:
            self.prefill_s = seconds(*self.prefill)
            if self.towers:
                self.select_s = seconds(self.towers[-1][1], self.prefill[0])
        if self.first_token is not None:
            self.ttft_s = seconds(self.start, self.first_token)


class Probe:
    """Installs the hooks on a model's ``parts``; ``with probe.call() as c:`` around one generate,
    then ``c.call`` holds the stage durations."""

    def __init__(self, parts, device: torch.device, clock=time.perf_counter):
        self.device = device
        self.clock = clock
        self.marks = marks_for(device, clock)
        self.current: Optional[Call] = None
        llm = parts.decoder
        tower = parts.vision_tower
        self._handles = [
            tower.register_forward_pre_hook(self._start_vision),
            tower.register_forward_hook(self._stop_vision),
            llm.register_forward_pre_hook(self._start_prefill, with_kwargs=True),
            llm.register_forward_hook(self._stop_prefill),
            parts.lm_head.register_forward_pre_hook(self._count_head_tokens),
        ]
        for layer in llm.layers:
            self._handles.append(layer.register_forward_pre_hook(self._count_tokens, with_kwargs=True))

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def call(self) -> "_CallScope":
        return _CallScope(self)

    def _in_prefill(self) -> bool:
        return self.current is not None and len(self.current.prefill) == 1

    # --- hooks ------------------------------------------------------------------

    def _start_vision(self, module, args):
        if self.current is not None:
            self.current.towers.append([self.marks.mark()])

    def _stop_vision(self, module, args, output):
        if self.current is not None and self.current.towers:
            self.current.towers[-1].append(self.marks.mark())

    def _start_prefill(self, module, args, kwargs):
        embeds = kwargs.get("inputs_embeds")
        if self.current is not None and not self.current.prefill and embeds is not None and embeds.shape[1] > 1:
            self.current.prefill.append(self.marks.mark())

    def _stop_prefill(self, module, args, output):
        if self._in_prefill():
            self.current.prefill.append(self.marks.mark())

    def _count_tokens(self, module, args, kwargs):
        if self._in_prefill():
            hidden = args[0] if args else kwargs["hidden_states"]
            self.current.layer_tokens.append(int(hidden.shape[1]))

    def _count_head_tokens(self, module, args):
        if self.current is not None and self.current.head_tokens is None:
            self.current.head_tokens = int(args[0].shape[1])


class _CallScope:
    def __init__(self, probe: Probe):
        self.probe = probe
        self.call = Call()
        self.streamer = TokenClock(self.call, probe.clock, probe.marks)

    def __enter__(self) -> "_CallScope":
        sync(self.probe.device)         # before the timed region: the previous call has drained
        self.probe.current = self.call
        self.start = self.probe.clock()
        self.call.start = self.probe.marks.mark()
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self.probe.current = None
        if exc_type is None:
            self.call.finish(self.probe.marks)


class TokenClock:
    """A ``generate`` streamer: the first ``put`` is the prompt, every later one a new token
    (the first of them also takes the first-token mark)."""

    def __init__(self, call: Call, clock=time.perf_counter, marks=None):
        self.call = call
        self.clock = clock
        self.marks = marks or HostMarks(clock)
        self._prompt_seen = False

    def put(self, value) -> None:
        if self._prompt_seen:
            if self.call.first_token is None:
                self.call.first_token = self.marks.mark()
            self.call.token_times.append(self.clock())
        self._prompt_seen = True

    def end(self) -> None:
        pass
