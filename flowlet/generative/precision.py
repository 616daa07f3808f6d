"""Mixed-precision settings of training: the autocast dtype and whether gradients need scaling."""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)


def resolve_precision(name: str, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None for fp32, whether a GradScaler is needed). Mixed precision is CUDA-only."""
    if device.type != "cuda":
        if name in ("bf16", "fp16"):
            log.warning("--precision %s applies to CUDA only; training in fp32 on %s", name, device)
        return None, False
    if name == "auto":
        name = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[name], name == "fp16"
