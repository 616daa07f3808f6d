"""Single-level orthonormal 3D Haar transform, and the pad/crop that fit volumes to the model grid.

Along each spatial axis the Haar pair is low = (even + odd)/sqrt(2), high = (even - odd)/sqrt(2).
The 8 bands of an (N, C, D, H, W) tensor become channels at half resolution:

    channel = c * 8 + band,   band = 4*d + 2*h + w   (d, h, w = 1 for high-pass along D, H, W)

so for a single input channel the order is LLL, LLH, LHL, LHH, HLL, HLH, HHL, HHH, which equals
``pywt.dwtn(x, 'haar')`` keys 'aaa', 'aad', 'ada', 'add', 'daa', 'dad', 'dda', 'ddd'. LLL channels are
therefore every 8th channel starting at 0. The transform is orthonormal (energy preserving) and its own
transpose, so the inverse uses the same 2 x 2 matrix.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from flowlet.errors import FlowletError

BAND_NAMES = ("LLL", "LLH", "LHL", "LHH", "HLL", "HLH", "HHL", "HHH")
NUM_BANDS = len(BAND_NAMES)


def _haar_matrix(like: torch.Tensor) -> torch.Tensor:
    # Rows are (low, high) filters applied to (even, odd) samples; symmetric and orthonormal, so H^-1 = H.
    return torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=like.dtype, device=like.device) / math.sqrt(2.0)


def dwt3d(x: torch.Tensor) -> torch.Tensor:
    """(N, C, D, H, W) with even D, H, W -> (N, 8C, D/2, H/2, W/2), bands as channels (see module doc)."""
    if x.dim() != 5:
        raise FlowletError(f"dwt3d expects an (N, C, D, H, W) tensor, got shape {tuple(x.shape)}")
    n, c, d, h, w = x.shape
    if d % 2 or h % 2 or w % 2:
        raise FlowletError(f"dwt3d needs even spatial sizes, got {d} x {h} x {w}; pad the volume first (pad_to_size)")
    haar = _haar_matrix(x)
    blocks = x.reshape(n, c, d // 2, 2, h // 2, 2, w // 2, 2)
    bands = torch.einsum("ncixjykz,px,qy,rz->ncpqrijk", blocks, haar, haar, haar)
    return bands.reshape(n, c * NUM_BANDS, d // 2, h // 2, w // 2)


def idwt3d(y: torch.Tensor) -> torch.Tensor:
    """Exact inverse of :func:`dwt3d`: (N, 8C, D, H, W) -> (N, C, 2D, 2H, 2W)."""
    if y.dim() != 5 or y.shape[1] % NUM_BANDS:
        raise FlowletError(f"idwt3d expects an (N, 8C, D, H, W) tensor of wavelet bands, got shape {tuple(y.shape)}")
    n, c8, d, h, w = y.shape
    c = c8 // NUM_BANDS
    haar = _haar_matrix(y)
    bands = y.reshape(n, c, 2, 2, 2, d, h, w)
    blocks = torch.einsum("ncpqrijk,px,qy,rz->ncixjykz", bands, haar, haar, haar)
    return blocks.reshape(n, c, 2 * d, 2 * h, 2 * w)


def _check_size(x: torch.Tensor, size: Sequence[int], what: str) -> tuple[int, int, int]:
    size = tuple(int(s) for s in size)
    if len(size) != 3 or x.dim() < 3:
        raise FlowletError(
            f"{what} needs a tensor with 3 spatial dims and a 3-value size, got {tuple(x.shape)} and {size}"
        )
    return size


def pad_to_size(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Replicate-pad the last three dims up to ``size``: floor(diff/2) in front, the rest behind."""
    target = _check_size(x, size, "pad_to_size")
    current = tuple(x.shape[-3:])
    if any(t < s for t, s in zip(target, current)):
        raise FlowletError(f"pad_to_size: volume {current} is larger than the target size {target}")
    pads: list[int] = []
    for t, s in reversed(list(zip(target, current))):  # F.pad lists the last dim first
        front = (t - s) // 2
        pads += [front, t - s - front]
    lead = x.shape[:-3]
    # Replicate padding of 3 dims requires a (N, C, D, H, W) layout.
    as_5d = x.reshape(-1, 1, *current)
    padded = F.pad(as_5d, pads, mode="replicate")
    return padded.reshape(*lead, *target)


def center_crop(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Crop the last three dims to ``size`` starting at (padded - size)//2, undoing :func:`pad_to_size`."""
    target = _check_size(x, size, "center_crop")
    current = tuple(x.shape[-3:])
    if any(t > s for t, s in zip(target, current)):
        raise FlowletError(f"center_crop: target size {target} is larger than the volume {current}")
    starts = [(s - t) // 2 for t, s in zip(target, current)]
    return x[
        ...,
        starts[0] : starts[0] + target[0],
        starts[1] : starts[1] + target[1],
        starts[2] : starts[2] + target[2],
    ]
