"""``FREEPRUNER_DEVICE=cpu``: run upstream entry points that hard-code CUDA on a CPU.

Upstream's eval scripts call ``.cuda()`` and ``.to(device='cuda')``; here those
calls are redirected to the CPU. Only installed on request, and reversible.
"""

from __future__ import annotations

import functools

import torch

_ORIGINALS = {}


def _is_cuda(device) -> bool:
    if isinstance(device, torch.device):
        return device.type == "cuda"
    if isinstance(device, str):
        return device.startswith("cuda")
    return isinstance(device, int) and not isinstance(device, bool)


def _redirect_to(original):
    @functools.wraps(original)
    def to(self, *args, **kwargs):
        if args and _is_cuda(args[0]):
            args = ("cpu",) + args[1:]
        if _is_cuda(kwargs.get("device")):
            kwargs["device"] = "cpu"
        return original(self, *args, **kwargs)
    return to


def _to_cpu(self, *args, **kwargs):
    return self.to("cpu")


def apply() -> None:
    if _ORIGINALS:
        return
    for owner in (torch.Tensor, torch.nn.Module):
        _ORIGINALS[(owner, "cuda")] = owner.cuda
        _ORIGINALS[(owner, "to")] = owner.to
        owner.cuda = _to_cpu
        owner.to = _redirect_to(owner.to)


def remove() -> None:
    for (owner, name), original in _ORIGINALS.items():
        setattr(owner, name, original)
    _ORIGINALS.clear()


def is_applied() -> bool:
    return bool(_ORIGINALS)
