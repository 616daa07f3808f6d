"""Plain Markdown tables, readable on a terminal and rendered by any Markdown viewer."""

from __future__ import annotations

import math

import pandas as pd


def format_cell(value) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value).replace("|", "\\|")


def markdown_table(frame: pd.DataFrame, max_rows: int = 60) -> str:
    if frame.empty:
        return "_(no rows)_"
    shown = frame.head(max_rows)
    header = "| " + " | ".join(map(str, shown.columns)) + " |"
    rule = "|" + "|".join("---" for _ in shown.columns) + "|"
    body = ["| " + " | ".join(format_cell(value) for value in row) + " |" for row in shown.itertuples(index=False)]
    more = [f"\n_{len(frame) - max_rows} more rows in the TSV._"] if len(frame) > max_rows else []
    return "\n".join([header, rule, *body, *more])
