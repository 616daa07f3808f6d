"""Flow-matching loss split into the low-pass (LLL) band and the seven detail bands."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from flowlet.errors import FlowletError
from flowlet.generative.sampling_spec import MIN_REMAINING_TIME, clean_data
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


LOSS_SPACES = ("velocity", "data", "min_snr")
# Min-SNR-gamma weighting (Hang et al. 2023, "Efficient Diffusion Training via Min-SNR Weighting Strategy"):
# their recommended gamma.
MIN_SNR_GAMMA = 5.0


def prediction_and_target(
    output: torch.Tensor,
    x1: torch.Tensor,
    x_t: torch.Tensor,
    t: torch.Tensor,
    target_velocity: torch.Tensor,
    prediction: str,
    loss_space: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The network's output and its target, both expressed in ``loss_space``, for a straight path.

    A data prediction x1_hat stands for the velocity (x1_hat - x_t) / (1 - t); a velocity v_hat for the data
    x_t + (1 - t) v_hat. A loss in data space weighs every t alike; in velocity space it is the data error
    divided by (1 - t)^2, which puts weight on the nearly clean end (1 - t floored, as in sampling). ``min_snr``
    is the data error weighted by min(SNR, gamma) / gamma with SNR = (t / (1 - t))^2: from t = 0.69 on it weighs
    like data space, below less, so the nearly clean end, where a data-predicting network is weakest, is not
    outvoted by the noisy middle; both sides are scaled by the weight's square root.
    """
    if loss_space not in LOSS_SPACES:
        raise FlowletError(f"loss space must be one of {list(LOSS_SPACES)}, got {loss_space!r}")
    if prediction == loss_space == "velocity":
        return output, target_velocity
    remaining = (1 - t.to(output.dtype)).reshape(-1, *([1] * (output.dim() - 1)))
    data = x_t + remaining * output if prediction == "velocity" else clean_data(output, x_t, t, prediction)
    if loss_space == "data":
        return data, x1
    if loss_space == "min_snr":
        snr = (t.to(output.dtype) / (1 - t.to(output.dtype)).clamp_min(MIN_REMAINING_TIME)) ** 2
        scale = (snr.clamp_max(MIN_SNR_GAMMA) / MIN_SNR_GAMMA).sqrt().reshape(remaining.shape)
        return scale * data, scale * x1
    return (data - x_t) / remaining.clamp_min(MIN_REMAINING_TIME), target_velocity
