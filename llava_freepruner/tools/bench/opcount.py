"""Count the aten ops and host syncs a piece of code would pay for on a GPU, on any device.

:class:`OpCounter` is a ``TorchDispatchMode``: it sees every aten op below autograd
and files it under the current phase (``counter.phase``, set by the caller) and
under its owner: ``plugin`` when the first Python frame outside torch (and outside
this module and the plugin's ``cpu`` redirect of ``Tensor.to``) lies in the
``llava_freepruner`` package but not in its ``tools`` (this harness) or ``fixtures``, ``host`` otherwise
(the host model, transformers, generate's loop). A host module the plugin calls
(the projector, the tower) is the host's when the host's own code calls it, and
the plugin's when the plugin calls a torch module (``nn.Sequential``) directly.

What counts as an op: every aten op except views and metadata-only ops (any op
whose schema says it returns a view, and :data:`METADATA_OPS`: ``_unsafe_view``,
allocations, in-place reshapes, ``lift_fresh``). Dtype casts (``_to_copy``) and copies count: they launch
kernels. Composite ops are seen decomposed (what a GPU launches) only outside
``torch.inference_mode``: count under ``torch.no_grad`` (:func:`counting`).

What counts as a sync (also counted as an op when it is an aten op):

- ops whose result size or value the host must read: ``_local_scalar_dense``
  (``.item()``, ``int()``, ``bool()``, ``float()`` of a tensor), ``is_nonzero``,
  ``equal``, ``nonzero``, ``masked_select``, ``bincount``, ``unique*``,
  ``repeat_interleave`` with a tensor of repeats and no ``output_size``, and
  ``index`` / ``index_put`` with a bool or uint8 index (boolean-mask indexing);
  not ``_assert_async`` (the device checks it, the host does not wait);
- Python-level reads and copies no aten op shows: ``Tensor.tolist()``,
  ``Tensor.numpy()``, ``Tensor.cpu()``, ``Tensor.to("cpu")`` (the string: a
  ``torch.device`` could be the model's own), and ``torch.tensor`` /
  ``torch.as_tensor`` with a ``device`` other than the string ``"cpu"`` (a host to
  device copy). They are patched on ``torch.Tensor`` while the counter is active.

On a CPU run every tensor stands for a device tensor: a host-side tensor's
``.tolist()`` counts too (host arithmetic belongs in Python numbers).
"""

from __future__ import annotations

import os
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Dict, Optional

import torch
from torch.utils._python_dispatch import TorchDispatchMode

import llava_freepruner

PLUGIN = "plugin"
HOST = "host"

_aten = torch.ops.aten
METADATA_OPS = frozenset({
    _aten._unsafe_view.default, _aten.empty.memory_format, _aten.empty_like.default, _aten.empty_strided.default,
    _aten.new_empty.default, _aten.new_empty_strided.default, _aten.lift_fresh.default,
    _aten.detach_.default, _aten.squeeze_.dim, _aten.squeeze_.default, _aten.unsqueeze_.default,
    _aten.t_.default, _aten.transpose_.default, _aten.as_strided_.default, _aten.set_.source_Storage,
    _aten.set_.source_Storage_storage_offset, _aten.resize_.default,
})
# ops that always make the host wait for the device (packets: their overloads all sync)
SYNC_PACKETS = frozenset({
    _aten._local_scalar_dense, _aten.is_nonzero, _aten.equal, _aten.nonzero, _aten.masked_select,
    _aten.bincount, _aten._unique, _aten._unique2, _aten.unique_dim, _aten.unique_consecutive,
    _aten.unique_dim_consecutive,
})
_MASK_INDEXED = frozenset({_aten.index, _aten.index_put, _aten.index_put_, _aten._index_put_impl_})
_MASK_DTYPES = (torch.bool, torch.uint8)
_TENSOR_REPEATS = frozenset({_aten.repeat_interleave.Tensor, _aten.repeat_interleave.self_Tensor})

_TORCH_DIR = os.path.dirname(torch.__file__) + os.sep
_PLUGIN_DIR = os.path.dirname(llava_freepruner.__file__) + os.sep
# The tools (this harness among them) and the fixtures run around the model: the host's side.
_HARNESS_DIRS = tuple(os.path.join(_PLUGIN_DIR, room) + os.sep for room in ("tools", "fixtures"))
# Frames that only pass a call through: this module's wrappers, the plugin's CPU redirect of ``.to``.
_TRANSPARENT = frozenset({__file__, os.path.join(_PLUGIN_DIR, "runtime", "cpu.py")})


def is_sync(func, args, kwargs) -> bool:
    """Does this aten op make the host wait for the device?"""
    packet = func.overloadpacket
    if packet in SYNC_PACKETS:
        return True
    if packet in _MASK_INDEXED:
        indices = args[1] if len(args) > 1 else kwargs.get("indices", ())
        return any(isinstance(i, torch.Tensor) and i.dtype in _MASK_DTYPES for i in indices)
    if func in _TENSOR_REPEATS:       # the output's length is the repeats' sum
        return kwargs.get("output_size") is None
    return False


def counts_as_op(func) -> bool:
    return not func.is_view and func not in METADATA_OPS


@dataclass
class Tally:
    """Ops and syncs of one phase, per owner; ``names`` and ``sync_sites`` say which."""

    ops: Counter = field(default_factory=Counter)           # owner -> ops
    syncs: Counter = field(default_factory=Counter)         # owner -> syncs
    names: Counter = field(default_factory=Counter)         # (owner, op name) -> ops
    sync_sites: Counter = field(default_factory=Counter)    # "file:line (what)" -> plugin syncs


class OpCounter(TorchDispatchMode):
    """``with OpCounter() as counter:`` counts what runs inside, per ``counter.phase``.

    >>> import torch
    >>> with OpCounter() as counter, torch.no_grad():
    ...     x = torch.ones(4)
    ...     _ = (x * 2).sum().item()
    >>> counter.tallies["all"].syncs["host"]     # .item(), from a frame outside the plugin
    1
    """

    def __init__(self, phase: str = "all"):
        super().__init__()
        self.phase = phase
        self.tallies: Dict[str, Tally] = defaultdict(Tally)
        self._owners: Dict[object, Optional[str]] = {}      # code object -> owner (None: skip the frame)
        self._saved = []

    # --- attribution -----------------------------------------------------------------

    def _owner_of(self, code) -> Optional[str]:
        path = code.co_filename
        if path in _TRANSPARENT or path.startswith(_TORCH_DIR):
            return None
        return PLUGIN if path.startswith(_PLUGIN_DIR) and not path.startswith(_HARNESS_DIRS) else HOST

    def _caller(self, frame):
        """(owner, frame) of the first frame outside torch and this module."""
        owners = self._owners
        while frame is not None:
            code = frame.f_code
            owner = owners.get(code, False)
            if owner is False:
                owner = owners[code] = self._owner_of(code)
            if owner is not None:
                return owner, frame
            frame = frame.f_back
        return HOST, None

    def _record(self, frame, name: str, op: bool, sync: bool) -> None:
        owner, caller = self._caller(frame)
        tally = self.tallies[self.phase]
        if op:
            tally.ops[owner] += 1
            tally.names[owner, name] += 1
        if sync:
            tally.syncs[owner] += 1
            if owner == PLUGIN:
                where = os.path.relpath(caller.f_code.co_filename, os.path.dirname(_PLUGIN_DIR.rstrip(os.sep)))
                tally.sync_sites[f"{where}:{caller.f_lineno} ({name})"] += 1

    # --- aten ops ----------------------------------------------------------------------

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        op = counts_as_op(func)
        sync = is_sync(func, args, kwargs)
        if op or sync:
            self._record(sys._getframe(1), func.overloadpacket.__name__, op, sync)
        return func(*args, **kwargs)

    # --- Python-level reads and copies ------------------------------------------------

    def _patch(self, owner, name: str, wrap) -> None:
        original = getattr(owner, name)
        self._saved.append((owner, name, owner.__dict__.get(name)))
        setattr(owner, name, wrap(original))

    def _sync_when(self, name: str, syncs):
        def wrap(original):
            def counted(*args, **kwargs):
                if syncs(*args, **kwargs):
                    self._record(sys._getframe(1), name, False, True)
                return original(*args, **kwargs)
            return counted
        return wrap

    def __enter__(self):
        always = lambda *args, **kwargs: True
        self._patch(torch.Tensor, "tolist", self._sync_when("tolist", always))
        self._patch(torch.Tensor, "numpy", self._sync_when("numpy", always))
        self._patch(torch.Tensor, "cpu", self._sync_when("cpu", always))
        self._patch(torch.Tensor, "to", self._sync_when("to_cpu", _to_host))
        self._patch(torch, "tensor", self._sync_when("tensor_to_device", _to_device))
        self._patch(torch, "as_tensor", self._sync_when("tensor_to_device", _to_device))
        return super().__enter__()

    def __exit__(self, *exc):
        try:
            return super().__exit__(*exc)
        finally:
            while self._saved:
                owner, name, original = self._saved.pop()
                if original is None:
                    delattr(owner, name)
                else:
                    setattr(owner, name, original)


def _to_host(tensor, *args, **kwargs) -> bool:
    """``tensor.to("cpu")`` (the string; ``.to(other.device)`` is the model's own device)."""
    return kwargs.get("device") == "cpu" or any(arg == "cpu" for arg in args if isinstance(arg, str))


def _to_device(data, *args, device=None, **kwargs) -> bool:
    return device is not None and device != "cpu"
