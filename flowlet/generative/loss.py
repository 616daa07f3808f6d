"""Flow-matching loss split into the low-pass (LLL) band and the seven detail bands."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from flowlet.errors import FlowletError
from flowlet.generative.wavelets import NUM_BANDS


def wavelet_flow_loss(
    pred: torch.Tensor, target: torch.Tensor, lll_weight: float = 1.0, detail_weight: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(total, lll_mse, detail_mse)`` with total = lll_weight * lll_mse + detail_weight * detail_mse.

    LLL channels are every 8th channel starting at 0 (channel = c*8 + band); each MSE is the mean over
    its own channels, computed in float32.
    """
    if pred.shape != target.shape or pred.dim() < 2 or pred.shape[1] % NUM_BANDS:
        raise FlowletError(
            f"wavelet_flow_loss needs equal (N, 8C, ...) shapes, got {tuple(pred.shape)} and {tuple(target.shape)}"
        )
    squared = F.mse_loss(pred.float(), target.float(), reduction="none")
    by_band = squared.unflatten(1, (-1, NUM_BANDS))
    lll = by_band[:, :, 0].mean()
    detail = by_band[:, :, 1:].mean()
    return lll_weight * lll + detail_weight * detail, lll, detail
