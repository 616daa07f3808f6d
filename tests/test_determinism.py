"""Determinism on CPU: the same inputs, config and seeds give bit-identical numeric outputs, run after run.

Each stage runs twice as separate `flowlet` processes (side by side, one thread each), and the SHA-256 of
every numeric output is compared: NIfTI data arrays with their affines, transforms, and TSV tables
(minus wall-time columns, which measure the machine rather than the result).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from test_brainage_experiment import age_volume

from flowlet.data.nifti import save_nifti
from flowlet.data.templates import mni_grid, template_brain_mask, template_t1

ONE_THREAD = {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS": "1",
}
TINY_GENERATOR = [
    "--preset",
    "smoke",
    "--downsample",
    "4",
    "--steps",
    "4",
    "--batch-size",
    "2",
    "--lr",
    "1e-3",
    "--warmup-steps",
    "1",
    "--val-split",
    "0.25",
    "--val-every",
    "2",
    "--log-every",
    "2",
    "--condition-dropout",
    "0.2",
    "--device",
    "cpu",
    "--threads",
    "1",
]


def run_twice(make_command, workdir: Path) -> tuple[Path, Path]:
    """Run `python -m flowlet <make_command(output)>` for two fresh output folders at once; return the folders."""
    outputs = (workdir / "first", workdir / "second")
    environment = {**os.environ, **ONE_THREAD}
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "flowlet", *make_command(output)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=environment,
        )
        for output in outputs
    ]
    for process in processes:
        log, _ = process.communicate(timeout=900)
        assert process.returncode == 0, log[-4000:]
    return outputs


def nifti_digest(path: Path) -> str:
    image = nib.load(str(path))
    data = np.ascontiguousarray(np.asanyarray(image.dataobj))
    digest = hashlib.sha256(f"{data.dtype.str}{data.shape}".encode())
    digest.update(data.tobytes())
    digest.update(np.ascontiguousarray(image.affine).tobytes())
    return digest.hexdigest()


def table_digest(path: Path) -> str:
    table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    timings = [column for column in table.columns if column.startswith("seconds") or column in ("elapsed", "runtime_s")]
    return hashlib.sha256(table.drop(columns=timings).to_csv(sep="\t", index=False).encode()).hexdigest()


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def output_digests(folder: Path) -> dict[str, str]:
    """Digest of every numeric output below ``folder``, keyed by its relative path."""
    digests = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        name = str(path.relative_to(folder))
        if path.name.endswith((".nii", ".nii.gz")):
            digests[name] = nifti_digest(path)
        elif path.suffix == ".tsv":
            digests[name] = table_digest(path)
        elif path.suffix == ".mat":
            digests[name] = file_digest(path)
    return digests


def assert_same_outputs(first: Path, second: Path, expected: set[str]) -> None:
    first_digests, second_digests = output_digests(first), output_digests(second)
    assert expected <= set(first_digests), f"missing outputs: {expected - set(first_digests)}"
    assert set(first_digests) == set(second_digests)
    differing = sorted(name for name in first_digests if first_digests[name] != second_digests[name])
    assert not differing, f"outputs differ between two identical runs: {differing}"


@pytest.mark.slow
def test_preprocessing_is_bit_identical(ixi_dir, tmp_path):
    subject = sorted(p.name for p in ixi_dir.glob("sub-*"))[0]
    t1w = ixi_dir / subject / "anat" / f"{subject}_T1w.nii.gz"

    def command(output: Path) -> list[str]:
        # Shortened N4 and registration schedules keep the test quick; every stage still runs.
        return [
            "preprocess",
            str(t1w),
            "--brain-mask",
            str(output / "mask.nii.gz"),
            "--output",
            str(output / "mni.nii.gz"),
            "--transform",
            str(output / "xfm.mat"),
            "--qc-tsv",
            str(output / "qc.tsv"),
            "--resolution",
            "2",
            "--threads",
            "1",
            "--n4-iterations",
            "20",
            "20",
            "--registration-iterations",
            "40",
            "20",
            "5",
        ]

    first, second = run_twice(command, tmp_path)
    assert_same_outputs(first, second, {"mask.nii.gz", "mni.nii.gz", "xfm.mat", "qc.tsv"})


@pytest.fixture(scope="module")
def training_table(tmp_path_factory) -> Path:
    """Four copies of the z-scored template brain at different ages: enough for a few training steps."""
    work = tmp_path_factory.mktemp("generator_data")
    data = np.asarray(template_t1(2).dataobj, dtype=np.float32)
    mask = np.asarray(template_brain_mask(2).dataobj) > 0
    brain = np.where(mask, (data - data[mask].mean()) / data[mask].std(), 0.0)
    image = save_nifti(brain, mni_grid(2)[1], work / "brain.nii.gz")
    table = work / "train.tsv"
    table.write_text("image\tage\n" + "".join(f"{image}\t{age}\n" for age in (20.0, 40.0, 60.0, 80.0)))
    return table


@pytest.fixture(scope="module")
def trained_pair(training_table, tmp_path_factory) -> tuple[Path, Path]:
    work = tmp_path_factory.mktemp("generator_runs")
    return run_twice(lambda output: ["train", str(training_table), "--output-dir", str(output), *TINY_GENERATOR], work)


def state_digest(checkpoint: Path) -> dict[str, str]:
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    digests = {}
    for group in ("flow_net_state_dict", "ema_state_dict"):
        for name, tensor in state.get(group, {}).items():
            digests[f"{group}.{name}"] = hashlib.sha256(tensor.contiguous().numpy().tobytes()).hexdigest()
    digests["step"] = str(state["step"])
    return digests


@pytest.mark.slow
def test_generator_training_is_bit_identical(trained_pair):
    first, second = trained_pair
    for name in ("checkpoint_last.pth", "checkpoint_best.pth"):
        assert state_digest(first / name) == state_digest(second / name), name
    assert table_digest(first / "loss.tsv") == table_digest(second / "loss.tsv")


@pytest.mark.slow
def test_generation_is_bit_identical(trained_pair, tmp_path):
    run_dir = trained_pair[0]

    def command(output: Path) -> list[str]:
        return [
            "generate",
            "--checkpoint-path",
            str(run_dir / "checkpoint_last.pth"),
            "--output-dir",
            str(output),
            "--generation-conditions",
            "Age=30",
            "Age=70",
            "--num-synthetic",
            "2",
            "--num-flow-steps",
            "2",
            "--seed",
            "5",
            "--device",
            "cpu",
        ]

    first, second = run_twice(command, tmp_path)
    volumes = {f"Age_{age}.00/FlowLet_synthetic_brain_{i}.nii.gz" for age in (30, 70) for i in (0, 1)}
    assert_same_outputs(first, second, volumes | {"manifest.tsv"})


@pytest.fixture(scope="module")
def brainage_cohort(tmp_path_factory) -> Path:
    """24 real subjects aged 20-80 (one in three tested) and 6 synthetic ones for the thin 60-80 bin."""
    root = tmp_path_factory.mktemp("brainage_cohort")
    rng = np.random.default_rng(0)
    mask = template_brain_mask(2).get_fdata() > 0
    affine = mni_grid(2)[1]
    ages = np.concatenate([rng.uniform(20, 40, 10), rng.uniform(40, 60, 10), rng.uniform(60, 80, 4)]).round(2)
    images = [
        str(save_nifti(age_volume(a, rng, mask), affine, root / f"sub-{i:02d}.nii.gz")) for i, a in enumerate(ages)
    ]
    pd.DataFrame(
        {
            "participant_id": [f"sub-{i:02d}" for i in range(len(ages))],
            "age": ages,
            "sex": ["F", "M"] * (len(ages) // 2),
            "split": ["test" if i % 3 == 0 else "train" for i in range(len(ages))],
            "image": images,
        }
    ).to_csv(root / "split.tsv", sep="\t", index=False)
    synthetic_ages = rng.uniform(60, 80, 6).round(2)
    synthetic = [
        save_nifti(age_volume(a, rng, mask), affine, root / f"synth_{i}.nii.gz") for i, a in enumerate(synthetic_ages)
    ]
    pd.DataFrame(
        {
            "image": [path.name for path in synthetic],
            "age": synthetic_ages,
            "sex": "",
            "age_bin": "60-80",
        }
    ).to_csv(root / "synthetic.tsv", sep="\t", index=False)
    return root


@pytest.mark.slow
def test_brain_age_results_are_bit_identical(brainage_cohort, tmp_path):
    def command(output: Path) -> list[str]:
        return [
            "brainage",
            "--split",
            str(brainage_cohort / "split.tsv"),
            "--synthetic",
            str(brainage_cohort / "synthetic.tsv"),
            "--output-dir",
            str(output),
            "--regressors",
            "ridge",
            "cnn",
            "--arms",
            "real",
            "real+synthetic",
            "--seeds",
            "0",
            "--bin-edges",
            "20",
            "40",
            "60",
            "80",
            "--downsample",
            "4",
            "--pca-components",
            "5",
            "--cv-folds",
            "3",
            "--bootstrap",
            "100",
            "--cnn-epochs",
            "1",
            "--cnn-channels",
            "4",
            "8",
            "8",
            "--cnn-batch-size",
            "4",
            "--device",
            "cpu",
        ]

    first, second = run_twice(command, tmp_path)
    assert_same_outputs(first, second, {"metrics.tsv", "predictions.tsv", "models.tsv"})
