"""Rank bookkeeping for data-parallel evaluation (deepspeed, torchrun or plain python).

Pure functions of the launcher's environment variables; no torch import.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional


@dataclass(frozen=True)
class World:
    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _int_var(environ: Mapping[str, str], name: str, default: int) -> int:
    raw = environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a whole number (set by the launcher: deepspeed or torchrun)") from None


def world_from_env(environ: Mapping[str, str]) -> World:
    """Rank, world size and local rank from ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``; one process when unset."""
    world_size = _int_var(environ, "WORLD_SIZE", 1)
    rank = _int_var(environ, "RANK", 0)
    local_rank = _int_var(environ, "LOCAL_RANK", rank)
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"RANK={rank} WORLD_SIZE={world_size}: expected 0 <= RANK < WORLD_SIZE")
    return World(rank, world_size, local_rank)


def visible_device_for(environ: Mapping[str, str], world: World) -> Optional[str]:
    """The single ``CUDA_VISIBLE_DEVICES`` entry this rank should see, or None to leave it.

    Each rank then behaves like one of upstream's one-GPU chunk processes
    (``.cuda()`` means its own device, ``device_map='auto'`` stays on it).
    """
    if world.world_size == 1:
        return None
    listed = [d for d in environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    if not listed:
        return str(world.local_rank)
    if world.local_rank >= len(listed):
        raise ValueError(
            f"LOCAL_RANK={world.local_rank} but CUDA_VISIBLE_DEVICES={environ['CUDA_VISIBLE_DEVICES']!r} "
            f"lists {len(listed)} device(s): start at most {len(listed)} ranks per node"
        )
    return listed[world.local_rank].strip()
