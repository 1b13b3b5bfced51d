"""A timing wrapper around the vision method of the applied plugin (CPU runs).

The bench puts it (or the unregistered oracle) in with ``backends.set_vision_method``.
It reads a host clock and never waits for a device: on CUDA the bench does not
install it and derives selection time from its stage events instead.
"""

from __future__ import annotations

from typing import Callable, List, Tuple

from ...runtime.methods.base import AttentionView, SelectionContext, Selection, VisionMethod


class TimedMethod(VisionMethod):
    """Delegates to ``inner`` and adds up, on ``clock``, the time its ``observe``
    and ``select`` take."""

    def __init__(self, inner: VisionMethod, clock: Callable[[], float]):
        self.inner = inner
        self.name = inner.name
        self.needs_hidden = inner.needs_hidden
        self.needs_instruction = inner.needs_instruction
        self.clock = clock
        self.seconds = 0.0

    def attention_layers(self, num_layers: int, feature_layer: int) -> Tuple[int, ...]:
        return self.inner.attention_layers(num_layers, feature_layer)

    def _timed(self, call, *args):
        start = self.clock()
        result = call(*args)
        self.seconds += self.clock() - start
        return result

    def observe(self, layer: int, view: AttentionView, ctx: SelectionContext) -> None:
        self._timed(self.inner.observe, layer, view, ctx)

    def select(self, ctx: SelectionContext) -> List[Selection]:
        return self._timed(self.inner.select, ctx)

    def take_seconds(self) -> float:
        seconds, self.seconds = self.seconds, 0.0
        return seconds
