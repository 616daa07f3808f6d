"""Preprocessing on demo phantoms, against their ground truth: brain-mask Dice and the recovered pose.

Three phantoms from `flowlet phantoms` (ages 43, 66 and 24 with seed 0) go through `flowlet preprocess`
with default settings; the saved transform is scored at the template's brain boundary.
"""

from __future__ import annotations

import logging

import nibabel as nib
import numpy as np
import pytest

from flowlet.cli import main as flowlet_main
from flowlet.phantoms.anatomy import build_head_model
from flowlet.phantoms.cohort import (
    brain_template_to_scanner,
    draw_subject,
    scanner_to_brain_template,
    subject_paths,
)
from flowlet.phantoms.scoring import boundary_errors_mm, template_boundary_points
from flowlet.preprocess.qc import dice

N_PHANTOMS = 3
SEED = 0
log = logging.getLogger(__name__)


@pytest.fixture(scope="module")
def preprocessed(tmp_path_factory):
    root = tmp_path_factory.mktemp("phantom-preprocess")
    bids = root / "bids"
    assert (
        flowlet_main(["phantoms", "--output-dir", str(bids), "--n-subjects", str(N_PHANTOMS), "--seed", str(SEED)]) == 0
    )
    results = []
    for index in range(N_PHANTOMS):
        params = draw_subject(SEED, index, 20.0, 80.0)
        paths = subject_paths(bids, params.participant_id)
        out = root / "results" / params.participant_id
        argv = [
            "preprocess",
            str(paths["t1"]),
            "--brain-mask",
            str(out / "mask.nii.gz"),
            "--output",
            str(out / "mni.nii.gz"),
            "--transform",
            str(out / "xfm.mat"),
            "--threads",
            "1",
        ]
        assert flowlet_main(argv) == 0
        results.append((params, paths, out))
    return results


@pytest.mark.slow
def test_brain_mask_matches_phantom_truth(preprocessed):
    for params, paths, out in preprocessed:
        truth = np.asanyarray(nib.load(str(paths["brain_mask"])).dataobj) > 0
        mask = np.asanyarray(nib.load(str(out / "mask.nii.gz")).dataobj) > 0
        score = dice(mask, truth)
        log.info("%s (age %.1f): mask Dice %.4f", params.participant_id, params.age, score)
        assert score >= 0.95, f"{params.participant_id}: mask Dice {score:.4f} with the phantom truth"


@pytest.mark.slow
def test_recovered_pose_is_within_2_mm_at_the_brain_boundary(preprocessed):
    for params, _, out in preprocessed:
        errors = boundary_errors_mm(params, out / "xfm.mat")
        log.info(
            "%s: boundary pose error mean %.2f mm, max %.2f mm; full map mean %.2f mm, max %.2f mm",
            params.participant_id,
            errors["pose"].mean(),
            errors["pose"].max(),
            errors["map"].mean(),
            errors["map"].max(),
        )
        assert errors["pose"].mean() <= 2.0, f"{params.participant_id}: mean {errors['pose'].mean():.2f} mm"
        # No part of the boundary may be badly off (a flip or a wrong scale would put it centimetres away).
        assert errors["pose"].max() <= 5.0, f"{params.participant_id}: max {errors['pose'].max():.2f} mm"
        # The affine cannot follow the individual warp, but it must stay close to the full map too.
        assert errors["map"].mean() <= 3.0


@pytest.mark.slow
def test_true_brain_map_inverts_exactly():
    params = draw_subject(SEED, 1, 20.0, 80.0)  # an older phantom: shrink, ventricle push and thinning all act
    model = build_head_model()
    points = template_boundary_points(2).T.astype(np.float32)
    scanner = brain_template_to_scanner(model, params, points)
    assert np.abs(scanner_to_brain_template(model, params, scanner) - points).max() < 0.01
    # The scanner points differ from the template ones by the head pose: the test is not trivially an identity.
    assert np.linalg.norm(scanner - points, axis=0).mean() > 5.0
