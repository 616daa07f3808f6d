"""The `flowlet` command line: one entry point, one subcommand per stage.

Each subcommand lives in its stage's subpackage as a module exposing
``build_parser(parser)`` and ``run(args) -> int``. Only the chosen stage is
imported, so `flowlet --help` stays fast and a stage's heavy dependencies
(torch, antspyx) load only when that stage runs.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from flowlet.errors import FlowletError

COMMANDS: dict[str, tuple[str, str]] = {
    "phantoms": ("flowlet.phantoms.cli", "make the demo cohort of synthetic whole-head T1w phantoms (BIDS)"),
    "participants": ("flowlet.data.cli", "validate a BIDS dataset and write the participant table"),
    "split": (
        "flowlet.data.split_cli",
        "split participants into real training and held-out test sets, stratified by age bin",
    ),
    "preprocess": ("flowlet.preprocess.cli", "N4, skull stripping, MNI registration and z-scoring of one T1w image"),
    "qc": ("flowlet.preprocess.qc_cli", "aggregate per-subject QC metrics and flag outliers"),
    "info": ("flowlet.generative.info_cli", "print a generator configuration's parameter count"),
    "train": ("flowlet.generative.train_cli", "train the wavelet flow-matching generator"),
    "generate": ("flowlet.generative.generate_cli", "sample synthetic brains of requested ages"),
    "fit-baseline": ("flowlet.generative.baseline_cli", "fit the linear baseline generator a deep generator must beat"),
    "synthetic-qc": (
        "flowlet.generative.synthetic_qc_cli",
        "QC of synthetic brains against the real cohort; drop outliers",
    ),
    "plan": ("flowlet.generative.plan_cli", "decide how many synthetic subjects each age bin gets"),
    "brainage": ("flowlet.brainage.cli", "train and evaluate brain-age regressors with and without synthetic data"),
    "brainage-pool": ("flowlet.brainage.pool_cli", "pool the brain-age results of repeated splits (split.folds)"),
    "measure-images": (
        "flowlet.regions.measure_images_cli",
        "segment and measure some images on their own (per-subject and per-bin jobs of regional-measures)",
    ),
    "regional-measures": (
        "flowlet.regions.measures_cli",
        "tissue volumes per atlas region of every real and synthetic image",
    ),
    "regions": ("flowlet.regions.cli", "regional anatomy of real and synthetic brains"),
    "scorecard": (
        "flowlet.regions.scorecard_cli",
        "is each generator's synthetic cohort usable? one table against real floors",
    ),
    "synthetic-grid": ("flowlet.generative.grid_cli", "draw synthetic brains per age bin"),
    "report": ("flowlet.report.cli", "write the study summary and environment record"),
}


def _top_level_help() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = ["usage: flowlet COMMAND [options]", "", "commands:"]
    lines += [f"  {name:<{width}}  {summary}" for name, (_, summary) in COMMANDS.items()]
    lines += ["", "Run 'flowlet COMMAND --help' for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_top_level_help())
        return 0
    if argv[0] == "--version":
        from flowlet import __version__

        print(__version__)
        return 0
    name = argv[0]
    if name not in COMMANDS:
        print(f"flowlet: unknown command '{name}'\n\n{_top_level_help()}", file=sys.stderr)
        return 2
    module_name, summary = COMMANDS[name]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"flowlet {name}", description=summary)
    module.build_parser(parser)
    args = parser.parse_args(argv[1:])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(module.run(args) or 0)
    except FlowletError as error:
        logging.getLogger("flowlet").error("%s", error)
        print(f"flowlet {name}: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
