"""Shared fixtures: paths to the real IXI sample and the reference-checkpoint fixtures, which live beside the repo."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
IXI = SHARED / "data" / "ixi"
REFERENCE_CHECKPOINT = SHARED / "fixtures" / "reference_checkpoint"
TINY_CONFIG = REPO / "tests" / "configs" / "tiny.yaml"


@pytest.fixture(scope="session")
def ixi_dir() -> Path:
    if not (IXI / "participants.tsv").exists():
        pytest.fail(f"the IXI sample is missing at {IXI}; CI and developers have it at ../shared/data/ixi")
    return IXI


@pytest.fixture(scope="session")
def reference_checkpoint_dir() -> Path:
    if not (REFERENCE_CHECKPOINT / "config.json").exists():
        pytest.fail(f"the reference checkpoint fixtures are missing at {REFERENCE_CHECKPOINT}")
    return REFERENCE_CHECKPOINT


def phantom_dataset(folder: Path, n_subjects: int, seed: int) -> Path:
    """A small BIDS dataset of demo phantoms; another seed gives other brains under the same subject names."""
    from flowlet.cli import main

    assert main(["phantoms", "--output-dir", str(folder), "--n-subjects", str(n_subjects), "--seed", str(seed)]) == 0
    return folder


def snakemake_command(workdir: Path, *args: str) -> list[str]:
    """This workflow's Snakemake, run on ``workdir`` with ``args``, as a subprocess command."""
    return [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(REPO / "workflow" / "Snakefile"),
        "--directory",
        str(workdir),
        *args,
    ]


@pytest.fixture(scope="session")
def tiny_study(tmp_path_factory) -> Path:
    """The tiny end-to-end study (every stage, a few minutes), run once for every test that inspects its results;
    with an external cohort of four phantoms from another seed, which reuse the study's subject names."""
    workdir = tmp_path_factory.mktemp("study")
    external = phantom_dataset(workdir / "external_bids", n_subjects=4, seed=99)
    config = workdir / "tiny.yaml"
    config.write_text(
        TINY_CONFIG.read_text().replace('  bids_dir: ""\n', f'  bids_dir: ""\n  external_bids_dir: "{external}"\n')
    )
    command = snakemake_command(workdir, "--configfile", str(config), "--cores", "2")
    result = subprocess.run(command, capture_output=True, text=True, timeout=3600)
    if result.returncode != 0:
        pytest.fail(f"the tiny study failed:\n{result.stdout[-6000:]}\n{result.stderr[-6000:]}")
    return workdir
