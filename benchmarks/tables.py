"""Per-subject rows and their summary, printed the same way by every scoring benchmark."""

from __future__ import annotations

from pathlib import Path

import pandas as pd


def print_row(row: dict, digits: int) -> None:
    print(
        "\t".join(f"{value:.{digits}f}" if isinstance(value, float) else str(value) for value in row.values()),
        flush=True,
    )


def summarise(rows: list[dict], output: Path | None, targets: dict[str, str], digits: int) -> pd.DataFrame:
    """Write the rows as TSV (when asked) and print min / median / mean / max of each target column."""
    table = pd.DataFrame(rows)
    if output:
        table.to_csv(output, sep="\t", index=False)
    print()
    for column, target in targets.items():
        values = table[column].dropna()
        print(
            f"{column:>20}: min {values.min():.{digits}f}  median {values.median():.{digits}f}  "
            f"mean {values.mean():.{digits}f}  max {values.max():.{digits}f}   (target {target})"
        )
    return table
