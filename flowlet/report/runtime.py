"""Per-rule runtime and peak memory, aggregated from Snakemake's `benchmark:` files."""

from __future__ import annotations

from pathlib import Path

import pandas as pd


def runtime_table(benchmarks_dir: Path) -> pd.DataFrame:
    """One row per rule: jobs, total and median wall seconds, CPU seconds, largest peak resident memory."""
    rows = []
    for path in sorted(Path(benchmarks_dir).rglob("*.tsv")):
        rule = path.relative_to(benchmarks_dir).parts[0].removesuffix(".tsv")
        table = pd.read_csv(path, sep="\t")
        for _, row in table.iterrows():
            rows.append(
                {
                    "rule": rule,
                    "seconds": row["s"],
                    "cpu_seconds": row.get("cpu_time", float("nan")),
                    "max_rss_mb": row.get("max_rss", float("nan")),
                }
            )
    if not rows:
        return pd.DataFrame(columns=["rule", "jobs", "total_seconds", "median_seconds", "cpu_seconds", "peak_rss_mb"])
    frame = pd.DataFrame(rows)
    frame["max_rss_mb"] = pd.to_numeric(frame["max_rss_mb"], errors="coerce")
    frame["cpu_seconds"] = pd.to_numeric(frame["cpu_seconds"], errors="coerce")
    grouped = frame.groupby("rule")
    summary = pd.DataFrame(
        {
            "jobs": grouped.size(),
            "total_seconds": grouped["seconds"].sum().round(1),
            "median_seconds": grouped["seconds"].median().round(1),
            "cpu_seconds": grouped["cpu_seconds"].sum().round(1),
            "peak_rss_mb": grouped["max_rss_mb"].max().round(0),
        }
    ).reset_index()
    return summary.sort_values("total_seconds", ascending=False).reset_index(drop=True)
