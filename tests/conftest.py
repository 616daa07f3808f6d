"""Shared fixtures: paths to the real IXI sample and the reference-checkpoint fixtures, which live beside the repo."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
IXI = SHARED / "data" / "ixi"
REFERENCE_CHECKPOINT = SHARED / "fixtures" / "reference_checkpoint"


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
