"""The synthetic-cohort plan: the per-bin deficit of the real training split, and the ages and sexes of the
synthetic subjects that fill it (`flowlet plan`)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from flowlet.data.bins import AgeBins
from flowlet.data.split import WITHHELD
from flowlet.errors import FlowletError

TARGET_MODES = ("largest", "fixed", "ratio")
AGE_SAMPLING_MODES = ("uniform", "kde")


def split_counts(split: pd.DataFrame, bins: AgeBins) -> pd.DataFrame:
    """Real training, test and withheld (controlled scarcity) subjects per bin (every bin listed, zeros included)."""
    labels = bins.assign(split["age"].to_numpy(), split["participant_id"].tolist(), what="split table")
    table = pd.DataFrame({"age_bin": bins.labels, "low": bins.edges[:-1], "high": bins.edges[1:]})
    for part in ("train", "test", WITHHELD):
        in_part = split["split"].to_numpy() == part
        counts = pd.Series(labels[in_part]).value_counts()
        table[f"n_{part}_real" if part != WITHHELD else "n_withheld"] = [
            int(counts.get(label, 0)) for label in bins.labels
        ]
    return table


def synthetic_counts(
    n_train_real: np.ndarray,
    underrepresented_fraction: float,
    target: str,
    target_count: int | None = None,
    target_ratio: float | None = None,
    max_per_bin: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Under-representation flags and synthetic counts per bin.

    A bin is under-represented when its real training count is below
    ``underrepresented_fraction`` times the largest bin's count. Only those bins get
    synthetic subjects:

    - ``largest``: enough to bring the bin up to the largest bin's real count;
    - ``fixed``: ``target_count`` synthetic subjects each;
    - ``ratio``: ``round(target_ratio * n_train_real)`` (so a bin without real subjects gets none);

    and every count is then capped at ``max_per_bin`` when given.
    """
    n_train_real = np.asarray(n_train_real, dtype=int)
    if not 0 < underrepresented_fraction <= 1:
        raise FlowletError(f"--underrepresented-fraction must lie in (0, 1], got {underrepresented_fraction}")
    if target not in TARGET_MODES:
        raise FlowletError(f"--target must be one of {', '.join(TARGET_MODES)}, got {target!r}")
    largest = int(n_train_real.max()) if len(n_train_real) else 0
    if largest == 0:
        raise FlowletError("the real training split has no subjects in any age bin; nothing to plan against")
    underrepresented = n_train_real < underrepresented_fraction * largest
    if target == "largest":
        wanted = largest - n_train_real
    elif target == "fixed":
        if target_count is None or target_count < 0:
            raise FlowletError(f"--target fixed needs --target-count >= 0, got {target_count}")
        wanted = np.full_like(n_train_real, int(target_count))
    else:
        if target_ratio is None or target_ratio < 0:
            raise FlowletError(f"--target ratio needs --target-ratio >= 0, got {target_ratio}")
        wanted = np.rint(target_ratio * n_train_real).astype(int)
    if max_per_bin is not None:
        if max_per_bin < 0:
            raise FlowletError(f"--max-per-bin must be >= 0, got {max_per_bin}")
        wanted = np.minimum(wanted, int(max_per_bin))
    return underrepresented, np.where(underrepresented, wanted, 0).astype(int)


def sample_ages(
    n: int,
    low: float,
    high: float,
    train_ages: np.ndarray,
    method: str,
    rng: np.random.Generator,
    grid_points: int = 2048,
) -> np.ndarray:
    """Draw ``n`` conditioning ages inside ``[low, high)``.

    ``uniform`` draws uniformly in the bin. ``kde`` draws from a Gaussian kernel
    density fitted to all real training ages (Scott's bandwidth) and restricted to
    the bin, by inverse-CDF sampling on a fine grid; using all ages, not only the
    bin's, keeps the fit defined for bins with few or no real subjects.
    """
    if n == 0:
        return np.zeros(0)
    if method == "uniform":
        return rng.uniform(low, high, size=n)
    if method != "kde":
        raise FlowletError(f"--age-sampling must be one of {', '.join(AGE_SAMPLING_MODES)}, got {method!r}")
    from scipy.stats import gaussian_kde

    train_ages = np.asarray(train_ages, dtype=float)
    if len(train_ages) < 2 or np.ptp(train_ages) == 0:
        raise FlowletError("--age-sampling kde needs at least two distinct real training ages")
    density = gaussian_kde(train_ages)
    step = (high - low) / grid_points
    centres = low + step * (np.arange(grid_points) + 0.5)
    weights = density(centres)
    if not np.isfinite(weights).all() or weights.sum() <= 0:
        weights = np.ones(grid_points)
    cells = rng.choice(grid_points, size=n, p=weights / weights.sum())
    return centres[cells] + rng.uniform(-step / 2, step / 2, size=n)


def sample_sexes(n: int, train_sexes: pd.Series, rng: np.random.Generator) -> list[str]:
    """Draw sexes with the real training proportions; empty strings when the split has no sex values."""
    observed = train_sexes.dropna().astype(str).str.strip()
    observed = observed[observed != ""]
    if n == 0:
        return []
    if observed.empty:
        return [""] * n
    counts = observed.value_counts().sort_index()
    return list(rng.choice(counts.index.to_numpy(), size=n, p=(counts / counts.sum()).to_numpy()))


def synthetic_filename(label: str, index: int) -> str:
    return f"synth_bin-{label}_{index:04d}.nii.gz"


def make_plan(
    split: pd.DataFrame,
    bins: AgeBins,
    underrepresented_fraction: float = 0.5,
    target: str = "largest",
    target_count: int | None = None,
    target_ratio: float | None = None,
    max_per_bin: int | None = None,
    age_sampling: str = "uniform",
    seed: int = 0,
) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """The plan table and, per bin label, the table of conditioning ages (age, sex, age_bin, file)."""
    table = split_counts(split, bins)
    underrepresented, n_synthetic = synthetic_counts(
        table["n_train_real"].to_numpy(), underrepresented_fraction, target, target_count, target_ratio, max_per_bin
    )
    # Controlled scarcity: a reduced bin gets as many synthetic subjects as it lost, so that real+synthetic
    # trains on the oracle's count there.
    reduced = table["n_withheld"].to_numpy() > 0
    if max_per_bin is not None:
        restored = np.minimum(table["n_withheld"].to_numpy(), max_per_bin)
    else:
        restored = table["n_withheld"].to_numpy()
    table["underrepresented"] = underrepresented | reduced
    table["reduced"] = reduced
    table["n_synthetic"] = np.where(reduced, restored, n_synthetic)
    train = split[split["split"] == "train"]
    train_ages = train["age"].to_numpy(dtype=float)
    train_sexes = train["sex"] if "sex" in train.columns else pd.Series([], dtype=object)
    # The generator is conditioned on ages normalised to the training range; asked for an age outside it,
    # it can only clamp. So synthetic ages stay inside that range, and a bin entirely outside it gets none.
    youngest, oldest = float(train_ages.min()), float(train_ages.max())
    table["note"] = ""
    outside = (table["n_synthetic"] > 0) & ((table["high"] <= youngest) | (table["low"] > oldest))
    table.loc[outside, "note"] = f"no synthetic subjects: outside the real training ages ({youngest:.1f}-{oldest:.1f})"
    table.loc[outside, "n_synthetic"] = 0
    ages_per_bin: dict[str, pd.DataFrame] = {}
    for row in table.itertuples(index=False):
        # One generator per bin, seeded by (seed, bin index), so a bin's ages do not change
        # when another bin's count does.
        bin_index = bins.labels.index(row.age_bin)
        rng = np.random.default_rng([seed, bin_index])
        ages = sample_ages(
            int(row.n_synthetic), max(row.low, youngest), min(row.high, oldest), train_ages, age_sampling, rng
        )
        ages_per_bin[row.age_bin] = pd.DataFrame(
            {
                "age": ages,
                "sex": sample_sexes(int(row.n_synthetic), train_sexes, rng),
                "age_bin": row.age_bin,
                "file": [synthetic_filename(row.age_bin, i) for i in range(int(row.n_synthetic))],
            }
        )
    return table, ages_per_bin
