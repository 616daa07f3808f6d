"""What a generation job is asked for and what it writes: sample requests, the ODE solvers it may use, and the
manifest (one row per synthetic volume: image, conditions, noise seed, metadata, QC metrics). Without torch, so
that a job with nothing to generate writes its empty manifest at once."""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from flowlet.data.tables import read_tsv
from flowlet.generative.synthetic_qc import QC_METRICS

# Model condition -> column of the training, ages and manifest tables.
CONDITION_COLUMNS = {"Age": "age", "Sex": "sex"}
SOLVER_METHODS = ("euler", "heun", "midpoint")


@dataclass(frozen=True)
class SampleRequest:
    """One volume to generate: raw condition values (age in years), where to save it, and its noise seed."""

    conditions: dict[str, float]
    file: Path
    seed: int
    # Columns of the ages table the model is not conditioned on (sex, age bin): carried into the manifest.
    metadata: dict[str, str] = field(default_factory=dict)


def read_ages_table(path: Path) -> pd.DataFrame:
    """A generation job's ages table (one row per volume: ``file``, ``age`` and optional ``sex``, ``age_bin``),
    every value as written."""
    return read_tsv(path, "ages table", required=("file", "age"), dtype=str, keep_default_na=False)


def write_manifest(
    path: Path, output_dir: Path, requests: list[SampleRequest], names: list[str], metrics: list[dict[str, float]]
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as stream:
        writer = csv.writer(stream, delimiter="\t", lineterminator="\n")
        extra = list(dict.fromkeys(key for request in requests for key in request.metadata))
        writer.writerow(["image"] + [CONDITION_COLUMNS[name] for name in names] + ["seed"] + extra + list(QC_METRICS))
        for request, measured in zip(requests, metrics):
            image = Path(os.path.relpath(output_dir / request.file, path.parent)).as_posix()
            writer.writerow(
                [image]
                + [f"{request.conditions[n]:g}" for n in names]
                + [request.seed]
                + [request.metadata.get(key, "") for key in extra]
                + [f"{measured[metric]:.6g}" for metric in QC_METRICS]
            )
