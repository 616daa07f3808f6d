"""The options of `flowlet regions`, their only home: the CLI's flags take their defaults from here, and this
module stays free of heavy imports so that building the parser is fast."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class AnalysisOptions:
    bins: int = 256
    confidence: float = 0.95
    feature_components: int = 10
    msssim_pairs: int = 30
    msssim_scales: int = 4
    memorisation_max_shift: int = 1
    memorisation_percentile: float = 99.0
    seed: int = 0
    brainage_model: Path | None = None
    brainage_corrected: bool = True
    # The generator's working resolution factor: real images pass through its down- and up-sampling before the
    # memorisation check and MS-SSIM, so that a coarser generator's blur is not taken for copying or uniformity.
    downsample: int = 1
