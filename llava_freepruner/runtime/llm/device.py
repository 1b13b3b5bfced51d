"""Host-to-device copies that do not wait for the device's queue."""

import torch


def upload(host: torch.Tensor, device) -> torch.Tensor:
    """Copy a small host tensor to ``device``; on CUDA from pinned memory, asynchronously."""
    device = torch.device(device)
    if device.type == "cuda":
        return host.pin_memory().to(device, non_blocking=True)
    return host.to(device)
