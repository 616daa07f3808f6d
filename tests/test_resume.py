"""Interruptions: killing the workflow during generator training and rerunning it resumes from the last
checkpoint, and the interrupted job's outputs are never taken for finished ones.

The workflow runs up to its `train_generator` target. To keep the test to about a minute, the test writes
the split table itself (z-scored template brains on an 8 mm grid): Snakemake takes an existing split table
as it is, so only the training job runs, not the preprocessing of a cohort.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import snakemake_command

from flowlet.data.nifti import save_nifti
from flowlet.data.templates import mni_grid, template_brain_mask, template_t1

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "tests" / "configs" / "tiny.yaml"
STEPS, CHECKPOINT_EVERY, VAL_EVERY, LOG_EVERY = 12, 3, 4, 10


def train_generator_command(workdir: Path, configfile: Path, *args: str) -> list[str]:
    return snakemake_command(workdir, "--cores", "2", *args, "train_generator", "--configfile", str(configfile))


@pytest.fixture
def study(tmp_path) -> tuple[Path, Path]:
    """A workdir whose split table lists eight training brains, and a tiny config with frequent checkpoints."""
    # Every fourth voxel of the 2 mm template: an 8 mm grid, which the config's downsampling halves again.
    data = np.asarray(template_t1(2).dataobj, dtype=np.float32)[::4, ::4, ::4]
    mask = np.asarray(template_brain_mask(2).dataobj)[::4, ::4, ::4] > 0
    affine = mni_grid(2)[1] @ np.diag([4.0, 4.0, 4.0, 1.0])
    brain = np.where(mask, (data - data[mask].mean()) / data[mask].std(), 0.0)
    rng = np.random.default_rng(0)
    rows = []
    for index, age in enumerate(np.linspace(20, 85, 8)):
        noisy = np.where(mask, brain + 0.1 * rng.standard_normal(brain.shape), 0.0)
        image = save_nifti(noisy, affine, tmp_path / "brains" / f"sub-{index:02d}.nii.gz")
        rows.append(
            {
                "participant_id": f"sub-{index:02d}",
                "age": round(float(age), 1),
                "sex": "F",
                "split": "train",
                "image": str(image),
            }
        )
    (tmp_path / "results" / "data").mkdir(parents=True)
    pd.DataFrame(rows).to_csv(tmp_path / "results" / "data" / "split.tsv", sep="\t", index=False)
    config = yaml.safe_load(TINY.read_text())
    config["train_generator"].update(
        steps=STEPS,
        checkpoint_every=CHECKPOINT_EVERY,
        val_every=VAL_EVERY,
        batch_size=2,
        warmup_steps=2,
        downsample=2,
    )
    configfile = tmp_path / "resume.yaml"
    configfile.write_text(yaml.safe_dump(config))
    return tmp_path, configfile


def checkpoint_step(path: Path) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=True)["step"])


def kill_process_group(process: subprocess.Popen) -> None:
    """SIGTERM to Snakemake and its jobs, as a scheduler or Ctrl-C would; SIGKILL whatever is left after 30 s."""
    group = os.getpgid(process.pid)
    os.killpg(group, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(group, signal.SIGKILL)
        process.wait(timeout=30)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.killpg(group, signal.SIGKILL)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    raise AssertionError("the training job outlived the killed workflow")


@pytest.mark.slow
def test_killed_training_resumes_from_its_last_checkpoint(study):
    workdir, configfile = study
    run_dir = workdir / "results" / "generator" / "training"
    last = run_dir / "checkpoint_last.pth"
    log_file = workdir / "logs" / "train_generator.log"

    # Kill once the second checkpoint is written, so the loss log already holds rows from before the kill.
    with (workdir / "first_run.log").open("w") as first_output:
        first = subprocess.Popen(
            train_generator_command(workdir, configfile),
            stdout=first_output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 300
        while not (last.exists() and checkpoint_step(last) >= 2 * CHECKPOINT_EVERY):
            if first.poll() is not None:
                raise AssertionError(f"the workflow ended early:\n{(workdir / 'first_run.log').read_text()[-4000:]}")
            if time.monotonic() > deadline:
                kill_process_group(first)
                raise AssertionError(f"no second checkpoint after 300 s; training log:\n{log_file.read_text()[-4000:]}")
            time.sleep(0.5)
        kill_process_group(first)

    interrupted_at = checkpoint_step(last)
    assert 0 < interrupted_at < STEPS, "the kill should land between the first checkpoint and the end of training"
    logged_before_kill = pd.read_csv(run_dir / "loss.tsv", sep="\t").query("step <= @interrupted_at")
    assert len(logged_before_kill) > 0
    for name in ("checkpoint_best.pth", "config.json", "condition_ranges.json", "loss.tsv", "loss.png"):
        assert not (workdir / "results" / "generator" / name).exists(), (
            f"interrupted training left {name} as if finished"
        )
    if (workdir / ".snakemake" / "locks").is_dir() and any((workdir / ".snakemake" / "locks").iterdir()):
        subprocess.run(train_generator_command(workdir, configfile, "--unlock"), check=True, capture_output=True)

    planned = subprocess.run(train_generator_command(workdir, configfile, "-n"), capture_output=True, text=True)
    assert planned.returncode == 0, planned.stdout + planned.stderr
    assert re.search(r"^train\s+1$", planned.stdout + planned.stderr, re.MULTILINE), "the interrupted job must rerun"

    second = subprocess.run(train_generator_command(workdir, configfile), capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, (second.stdout + second.stderr)[-6000:]

    log_text = log_file.read_text()
    resumed = re.search(r"resuming from (\S+) at step (\d+) of (\d+)", log_text)
    assert resumed, f"the rerun started over instead of resuming:\n{log_text[-3000:]}"
    assert (workdir / resumed.group(1)).resolve() == last.resolve()
    assert int(resumed.group(2)) == interrupted_at and int(resumed.group(3)) == STEPS
    assert checkpoint_step(last) == STEPS

    # The loss log kept the rows written before the kill, unchanged: one per logging or validation step, each once.
    losses = pd.read_csv(workdir / "results" / "generator" / "loss.tsv", sep="\t")
    expected_rows = sorted({*range(LOG_EVERY, STEPS + 1, LOG_EVERY), *range(VAL_EVERY, STEPS + 1, VAL_EVERY), STEPS})
    assert losses["step"].tolist() == expected_rows
    assert np.isfinite(losses["train_loss"]).all()
    pd.testing.assert_frame_equal(losses.query("step <= @interrupted_at"), logged_before_kill)

    nothing_left = subprocess.run(train_generator_command(workdir, configfile, "-n"), capture_output=True, text=True)
    assert "Nothing to be done" in nothing_left.stdout + nothing_left.stderr
