"""Peak memory of one benchmark configuration.

GPU: ``torch.cuda.max_memory_allocated`` since a reset (tensors only).
CPU: the process's peak resident set (VmHWM), reset per configuration through
``/proc/self/clear_refs`` after returning freed heap to the system; it
includes the weights and everything else the process holds. Where the reset
is unavailable, ``ru_maxrss`` is reported instead: the peak over the process
lifetime, which can only grow from one configuration to the next.
"""

from __future__ import annotations

import ctypes
import resource
import sys

import torch

MiB = 2 ** 20


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(f"/proc/self/status has no {field}")


def _trim_heap() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def rss_mb() -> float:
    return _status_kib("VmRSS") / 1024


class PeakMemory:
    """``reset()`` before a configuration, ``peak_mb()`` after it; ``kind`` says what it is."""

    def __init__(self, device: torch.device):
        self.device = device
        if device.type == "cuda":
            self.kind = "cuda_max_allocated"
        elif self._can_reset_rss():
            self.kind = "rss_peak"
        else:
            self.kind = "ru_maxrss_lifetime"

    @staticmethod
    def _can_reset_rss() -> bool:
        try:
            with open("/proc/self/clear_refs", "w") as handle:
                handle.write("5")
            _status_kib("VmHWM")
            return True
        except OSError:
            return False

    def reset(self) -> float:
        """Start a new peak; returns the memory in use now (MiB)."""
        if self.kind == "cuda_max_allocated":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return torch.cuda.memory_allocated(self.device) / MiB
        _trim_heap()
        if self.kind == "rss_peak":
            with open("/proc/self/clear_refs", "w") as handle:
                handle.write("5")
        return rss_mb()

    def peak_mb(self) -> float:
        if self.kind == "cuda_max_allocated":
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device) / MiB
        if self.kind == "rss_peak":
            return _status_kib("VmHWM") / 1024
        scale = 1 if sys.platform == "darwin" else 1024     # bytes on macOS, KiB on Linux
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / MiB
