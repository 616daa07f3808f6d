"""on_error: skip — a subject that cannot be preprocessed is recorded with its reason and left out; nothing else is lost."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pandas as pd

from flowlet.cli import main as flowlet


def test_skipped_subject_is_recorded_flagged_and_excluded_from_the_split(tmp_path):
    zeros = tmp_path / "sub-bad_T1w.nii.gz"
    nib.Nifti1Image(np.zeros((20, 20, 20), np.float32), np.eye(4)).to_filename(zeros)
    outputs = {name: tmp_path / "out" / name for name in ("mask.nii.gz", "mni.nii.gz", "xfm.mat", "qc.png", "qc.tsv")}
    command = [
        "preprocess",
        str(zeros),
        "--subject",
        "sub-bad",
        "--brain-mask",
        str(outputs["mask.nii.gz"]),
        "--output",
        str(outputs["mni.nii.gz"]),
        "--transform",
        str(outputs["xfm.mat"]),
        "--qc-png",
        str(outputs["qc.png"]),
        "--qc-tsv",
        str(outputs["qc.tsv"]),
    ]

    assert flowlet(command) == 1
    assert not any(path.exists() for path in outputs.values())

    assert flowlet(command + ["--on-error", "skip"]) == 0
    row = pd.read_csv(outputs["qc.tsv"], sep="\t").iloc[0]
    assert row["subject"] == "sub-bad" and row["status"].startswith("failed:") and "no positive voxels" in row["status"]
    assert outputs["qc.png"].stat().st_size > 0
    assert outputs["mni.nii.gz"].stat().st_size == 0

    good = tmp_path / "good_qc.tsv"
    pd.DataFrame(
        [
            {
                "subject": f"sub-{i:02d}",
                "mask_volume_ml": 1400 + i,
                "dice_template": 0.95,
                "ncc_template": 0.6,
                "seconds_n4": 1,
                "seconds_skullstrip": 1,
                "seconds_register": 1,
                "seconds_total": 3,
                "skullstrip_backend": "deepbet",
                "registration": "affine",
                "status": "ok",
            }
            for i in range(6)
        ]
    ).to_csv(good, sep="\t", index=False)
    cohort_qc = tmp_path / "qc.tsv"
    assert flowlet(["qc", "--inputs", str(good), str(outputs["qc.tsv"]), "--output", str(cohort_qc)]) == 0
    table = pd.read_csv(cohort_qc, sep="\t")
    assert table.iloc[0]["subject"] == "sub-bad" and bool(table.iloc[0]["outlier"])
    assert not table.loc[table["subject"] != "sub-bad", "outlier"].any()

    participants = tmp_path / "participants.tsv"
    ids = [f"sub-{i:02d}" for i in range(6)] + ["sub-bad"]
    pd.DataFrame({"participant_id": ids, "age": [25, 26, 27, 28, 29, 30, 31], "sex": "F", "image": "x"}).to_csv(
        participants, sep="\t", index=False
    )
    split = tmp_path / "split.tsv"
    assert (
        flowlet(
            [
                "split",
                "--participants",
                str(participants),
                "--qc",
                str(cohort_qc),
                "--image-pattern",
                "{participant_id}.nii.gz",
                "--bin-edges",
                "20",
                "40",
                "--output",
                str(split),
            ]
        )
        == 0
    )
    table = pd.read_csv(split, sep="\t").set_index("participant_id")
    assert table.loc["sub-bad", "split"] == "excluded"
    assert "preprocessing failed" in table.loc["sub-bad", "reason"]
