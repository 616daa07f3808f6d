"""Tables the stages exchange: reading them with clear errors, and resolving the image paths they hold
(the workflow writes them relative to its working directory, users often relative to the table; both resolve)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from flowlet.errors import FlowletError


def resolve_image_path(value: str, table_path: str | Path) -> Path:
    """An image path from a table: absolute as is; relative to the working directory, else to the table's folder."""
    path = Path(value)
    if path.is_absolute() or path.exists():
        return path
    beside_table = Path(table_path).parent / path
    return beside_table if beside_table.exists() else path


def read_tsv(path: str | Path, what: str, required: Sequence[str] = (), **options) -> pd.DataFrame:
    """A tab-separated table, every way it can be unreadable turned into an error naming ``what`` and the file.

    ``required``: columns the table must have; a missing one is an error that lists the columns it has.
    """
    path = Path(path)
    if not path.is_file():
        raise FlowletError(f"{what} {path} does not exist")
    try:
        table = pd.read_csv(path, sep="\t", **options)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise FlowletError(f"{what} {path} is not a readable TSV: {error}") from None
    missing = [column for column in required if column not in table.columns]
    if missing:
        raise FlowletError(
            f"{what} {path} lacks the column(s) {', '.join(missing)} (has {', '.join(map(str, table.columns))})"
        )
    return table


def _true_false_column(manifest: pd.DataFrame, column: str, path: str | Path, missing: bool) -> np.ndarray:
    """A manifest's true/false column as booleans; ``missing`` for every row when the column is absent."""
    if column not in manifest.columns:
        return np.full(len(manifest), missing, dtype=bool)
    mapping = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
    text = manifest[column].astype(str).str.strip().str.lower()
    unknown = sorted(set(text) - set(mapping))
    if unknown:
        raise FlowletError(f"synthetic manifest {path}: {column} must be true/false, found {', '.join(unknown[:5])}")
    return text.map(mapping).to_numpy(dtype=bool)


def synthetic_qc_passed(manifest: pd.DataFrame, path: str | Path) -> np.ndarray:
    """Which rows of a synthetic manifest passed the QC gate (all of them when it has no ``qc_pass`` column)."""
    return _true_false_column(manifest, "qc_pass", path, missing=True)


def synthetic_qc_flagged(manifest: pd.DataFrame, path: str | Path) -> np.ndarray:
    """Which rows the QC gate flagged as outliers, kept or not (none when it has no ``qc_outlier`` column)."""
    return _true_false_column(manifest, "qc_outlier", path, missing=False)
