"""Reading the split table and the synthetic manifests, with errors that name the file, row and reason."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from flowlet.data.split import WITHHELD
from flowlet.data.tables import read_tsv, resolve_image_path, synthetic_qc_passed
from flowlet.errors import FlowletError

log = logging.getLogger(__name__)

SPLIT_COLUMNS = ("participant_id", "age", "split", "image")
MANIFEST_COLUMNS = ("image", "age")


TABLE_TYPES = {"participant_id": str, "sex": str, "image": str, "age_bin": str}


def _numeric_ages(table: pd.DataFrame, path: Path, what: str, id_column: str) -> np.ndarray:
    ages = pd.to_numeric(table["age"], errors="coerce").to_numpy(dtype=float)
    bad = np.flatnonzero(~np.isfinite(ages))
    if len(bad):
        names = ", ".join(str(table[id_column].iloc[i]) for i in bad[:10])
        raise FlowletError(f"{what}: {path} has {len(bad)} row(s) without a numeric age: {names}")
    return ages


def read_split(path: str | Path, what: str = "split table") -> pd.DataFrame:
    """The split table with image paths resolved; every image must exist."""
    path = Path(path)
    table = read_tsv(path, what, required=SPLIT_COLUMNS, dtype=TABLE_TYPES)
    if table.empty:
        raise FlowletError(f"{what}: {path} has a header but no subjects")
    duplicated = table["participant_id"][table["participant_id"].duplicated()].unique()
    if len(duplicated):
        raise FlowletError(
            f"{what}: {path} lists participant(s) more than once: {', '.join(map(str, duplicated[:10]))}"
        )
    table["split"] = table["split"].astype(str).str.strip().str.lower()
    # The workflow's split keeps subjects without age or with failed preprocessing as 'excluded', with the reason.
    table = table[table["split"] != "excluded"].reset_index(drop=True)
    table["age"] = _numeric_ages(table, path, what, "participant_id")
    unknown = table.loc[~table["split"].isin(["train", "test", WITHHELD]), "participant_id"].tolist()
    if unknown:
        raise FlowletError(
            f"{what}: {path}: split must be 'train', 'test' or '{WITHHELD}'; not so for {', '.join(unknown[:10])}"
        )
    if "sex" not in table.columns:
        table["sex"] = ""
    table["sex"] = table["sex"].fillna("").astype(str)
    table["image"] = [str(resolve_image_path(value, path)) for value in table["image"].astype(str)]
    _require_existing(table["image"], table["participant_id"], path, what)
    return table


def _require_existing(images: pd.Series, names: pd.Series, path: Path, what: str) -> None:
    missing = [f"{name} ({image})" for name, image in zip(names, images) if not Path(image).exists()]
    if missing:
        raise FlowletError(f"{what}: {path}: {len(missing)} image(s) do not exist: {', '.join(missing[:10])}")


@dataclass
class SyntheticSet:
    """The synthetic subjects that passed QC, and what was dropped on the way."""

    table: pd.DataFrame
    notes: list[str] = field(default_factory=list)
    n_qc_dropped: int = 0


def read_synthetic(paths: list[str | Path]) -> SyntheticSet:
    """All synthetic manifests together, with rows failing QC (``qc_pass`` false) dropped and counted.

    A manifest with a header and no rows is allowed (a bin that needed no synthetic
    subjects); the caller decides whether an empty total is an error.
    """
    frames = []
    notes = []
    n_dropped = 0
    for path in map(Path, paths):
        table = read_tsv(path, "synthetic manifest", required=MANIFEST_COLUMNS, dtype=TABLE_TYPES)
        if table.empty:
            notes.append(f"synthetic manifest {path} lists no volumes")
            continue
        table["image"] = [str(resolve_image_path(value, path)) for value in table["image"].astype(str)]
        table["age"] = _numeric_ages(table, path, "synthetic manifest", "image")
        passed = synthetic_qc_passed(table, path)
        if (~passed).any():
            n_dropped += int((~passed).sum())
            notes.append(
                f"synthetic QC gate: dropped {int((~passed).sum())} of {len(table)} volume(s) listed in {path}"
            )
        table = table[passed]
        _require_existing(table["image"], table["image"], path, "synthetic manifest")
        table = table.assign(manifest=str(path))
        frames.append(table)
    if frames:
        combined = pd.concat(frames, ignore_index=True)
    else:
        combined = pd.DataFrame(columns=["image", "age", "sex", "manifest"])
    if "sex" not in combined.columns:
        combined["sex"] = ""
    combined["sex"] = combined["sex"].fillna("").astype(str)
    combined["participant_id"] = [
        f"synthetic:{Path(image).name.split('.')[0]}:{i}" for i, image in enumerate(combined["image"])
    ]
    return SyntheticSet(table=combined.reset_index(drop=True), notes=notes, n_qc_dropped=n_dropped)
