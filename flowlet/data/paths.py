"""Image paths written in tables: the workflow writes them relative to its working directory, users often
relative to the table; both resolve."""

from __future__ import annotations

from pathlib import Path


def resolve_image_path(value: str, table_path: str | Path) -> Path:
    """An image path from a table: absolute as is; relative to the working directory, else to the table's folder."""
    path = Path(value)
    if path.is_absolute() or path.exists():
        return path
    beside_table = Path(table_path).parent / path
    return beside_table if beside_table.exists() else path
