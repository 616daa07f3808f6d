"""Mixed-precision settings of training: the autocast dtype and whether gradients need scaling."""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware (AMX or AVX512-BF16), where oneDNN's bf16
    convolutions are faster than fp32; elsewhere they are emulated and slower."""
    return torch.backends.mkldnn.is_available() and (
        torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported()
    )


def resolve_precision(name: str, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None for fp32, whether a GradScaler is needed).

    auto: bf16 on a CUDA device that supports it, else fp16 with a scaler; on a CPU, bf16 where the CPU has
    native bf16 arithmetic (the `cpu` preset's U-Net then trains about 1.7x faster on 2 cores), else fp32.
    fp16 is CUDA-only.
    """
    if device.type == "cuda":
        if name == "auto":
            name = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[name], name == "fp16"
    if device.type != "cpu" or name == "fp16":
        if name not in ("auto", "fp32"):
            log.warning("--precision %s applies to CUDA only; training in fp32 on %s", name, device)
        return None, False
    native = cpu_has_native_bf16()
    if name == "auto":
        name = "bf16" if native else "fp32"
    elif name == "bf16" and not native:
        log.warning("this CPU has no native bf16 arithmetic: bf16 autocast is emulated and slower than fp32")
    return (torch.bfloat16 if name == "bf16" else None), False


def precision_name(autocast_dtype: torch.dtype | None) -> str:
    """What a resolved autocast dtype trains in, as `--precision` names it."""
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[autocast_dtype]
