"""Low-rank adapters on the language model's attention projections, trained
here and merged into the weights when the toy model is assembled."""

from __future__ import annotations

from typing import Dict, Iterable

import torch
from torch import nn

PREFIX = "lora."
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
RANK = 8
ALPHA = 16.0


class LoRALinear(nn.Module):
    """``base(x) + (alpha / rank) * B(A(x))``; B starts at zero, so training starts from the base."""

    def __init__(self, base: nn.Linear, rank: int = RANK, alpha: float = ALPHA):
        super().__init__()
        self.base = base
        self.scale = alpha / rank
        self.A = nn.Parameter(torch.randn(rank, base.in_features) / base.in_features ** 0.5)
        self.B = nn.Parameter(torch.zeros(base.out_features, rank))

    def forward(self, x):
        return self.base(x) + self.scale * (x @ self.A.t() @ self.B.t())

    def delta(self) -> torch.Tensor:
        return self.scale * (self.B @ self.A)


def _targets(model: nn.Module, targets: Iterable[str]) -> Iterable:
    for name, module in model.named_modules():
        for attr in targets:
            child = getattr(module, attr, None)
            if isinstance(child, (nn.Linear, LoRALinear)):
                yield f"{name}.{attr}" if name else attr, module, attr


def attach(model: nn.Module, rank: int = RANK, targets: Iterable[str] = TARGETS) -> Dict[str, LoRALinear]:
    """Wrap every ``targets`` projection of ``model`` (e.g. a LlamaModel) in place."""
    wrapped = {}
    for path, parent, attr in list(_targets(model, tuple(targets))):
        wrapped[path] = LoRALinear(getattr(parent, attr), rank)
        setattr(parent, attr, wrapped[path])
    return wrapped


def state(wrapped: Dict[str, LoRALinear], dtype: torch.dtype = torch.float16) -> Dict[str, torch.Tensor]:
    """Stored form: ``lora.<path>.A`` / ``.B`` with the scale folded into B, in
    ``dtype`` (half precision keeps the committed weights small)."""
    out = {}
    for path, module in wrapped.items():
        out[f"{PREFIX}{path}.A"] = module.A.detach().to(dtype).contiguous()
        out[f"{PREFIX}{path}.B"] = (module.scale * module.B).detach().to(dtype).contiguous()
    return out


def load(wrapped: Dict[str, LoRALinear], tensors: Dict[str, torch.Tensor]) -> None:
    """Set attached adapters from their stored form (see :func:`state`)."""
    missing = [path for path in wrapped if f"{PREFIX}{path}.A" not in tensors]
    if missing:
        raise ValueError(f"stored LoRA weights lack {len(missing)} adapters, e.g. {missing[0]!r} "
                         "(trained with other --lora-targets?)")
    with torch.no_grad():
        for path, module in wrapped.items():
            module.A.copy_(tensors[f"{PREFIX}{path}.A"].float())
            module.B.copy_(tensors[f"{PREFIX}{path}.B"].float() / module.scale)


def merge(model: nn.Module, tensors: Dict[str, torch.Tensor]) -> None:
    """Add every stored ``B @ A`` to its plain ``nn.Linear`` weight in ``model``."""
    modules = dict(model.named_modules())
    paths = {key[len(PREFIX):].rsplit(".", 1)[0] for key in tensors}
    for path in sorted(paths):
        linear = modules.get(path)
        if not isinstance(linear, nn.Linear):
            raise ValueError(f"LoRA weights for {path!r}: no such linear layer in the language model")
        with torch.no_grad():
            delta = tensors[f"{PREFIX}{path}.B"].float() @ tensors[f"{PREFIX}{path}.A"].float()
            linear.weight += delta.to(linear.weight.dtype)
