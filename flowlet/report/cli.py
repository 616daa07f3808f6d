"""`flowlet report`: the study summary, environment record and runtime table."""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
import yaml

from flowlet.report.environment import environment_record
from flowlet.report.runtime import runtime_table
from flowlet.report.summary import study_summary

REPO = Path(__file__).resolve().parents[2]


def build_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--results-dir", required=True, type=Path, help="the study's results folder")
    parser.add_argument(
        "--first-fold",
        type=Path,
        default=None,
        help="with repeated splits (split.folds), fold 1's results folder: its split, generator, synthetic "
        "cohort and regions are shown; brain age is the pooled evaluation in --results-dir",
    )
    parser.add_argument("--benchmarks-dir", required=True, type=Path, help="folder of Snakemake benchmark TSVs")
    parser.add_argument("--config", required=True, type=Path, help="the effective config (YAML) the study ran with")
    parser.add_argument("--output", required=True, type=Path, help="summary Markdown to write")
    parser.add_argument("--environment", required=True, type=Path, help="environment record TSV to write")
    parser.add_argument("--runtime", required=True, type=Path, help="per-rule runtime TSV to write")


def run(args: argparse.Namespace) -> int:
    config = yaml.safe_load(args.config.read_text())
    environment = environment_record(config, REPO)
    runtime = runtime_table(args.benchmarks_dir)
    for path in (args.output, args.environment, args.runtime):
        path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(environment.items(), columns=["item", "value"]).to_csv(args.environment, sep="\t", index=False)
    runtime.to_csv(args.runtime, sep="\t", index=False)
    args.output.write_text(study_summary(args.results_dir, config, environment, runtime, args.first_fold))
    return 0
