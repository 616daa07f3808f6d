"""The one place that turns a --device name into a torch device, for every stage that runs a network."""

from __future__ import annotations

import torch

from flowlet.errors import FlowletError


def resolve_device(name: str | None, local_rank: int | None = None) -> torch.device:
    """``auto`` (or None): CUDA when present, else the CPU; ``cpu``, ``cuda`` or ``cuda:N``.

    ``local_rank``: a distributed worker's GPU, used when the name gives no index.
    """
    if name in (None, "auto"):
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise FlowletError(f"--device {name!r} is not a device name (auto, cpu, cuda, cuda:1, ...)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise FlowletError(f"--device {name}: CUDA is not available on this machine; use --device cpu or auto")
        if device.index is None and local_rank is not None:
            device = torch.device("cuda", local_rank)
    return device
