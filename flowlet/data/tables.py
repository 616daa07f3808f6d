"""Tables the stages exchange: reading them with clear errors, and resolving the image paths they hold
(the workflow writes them relative to its working directory, users often relative to the table; both resolve)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from flowlet.errors import FlowletError


def resolve_image_path(value: str, table_path: str | Path) -> Path:
    """An image path from a table: absolute as is; relative to the working directory, else to the table's folder."""
    path = Path(value)
    if path.is_absolute() or path.exists():
        return path
    beside_table = Path(table_path).parent / path
    return beside_table if beside_table.exists() else path


def read_tsv(path: str | Path, what: str, **options) -> pd.DataFrame:
    """A tab-separated table, every way it can be unreadable turned into an error naming ``what`` and the file."""
    path = Path(path)
    if not path.is_file():
        raise FlowletError(f"{what} {path} does not exist")
    try:
        return pd.read_csv(path, sep="\t", **options)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise FlowletError(f"{what} {path} is not a readable TSV: {error}") from None
