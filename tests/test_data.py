"""Participant tables and the split: bad input is rejected naming the file and the reason."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from flowlet.cli import main as flowlet
from flowlet.data.bids import ColumnNames, check_image_header, participant_table, read_participants
from flowlet.data.cache import CACHE_ENV, DISABLED, cached_array
from flowlet.data.nifti import load_nifti
from flowlet.data.split import assign_bins, bin_labels, stratified_split
from flowlet.errors import FlowletError


def make_bids(root: Path, ages: dict[str, str], images: list[str] | None = None, age_column: str = "age") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    lines = [f"participant_id\t{age_column}\tsex"] + [f"{pid}\t{age}\tF" for pid, age in ages.items()]
    (root / "participants.tsv").write_text("\n".join(lines) + "\n")
    for pid in ages if images is None else images:
        anat = root / pid / "anat"
        anat.mkdir(parents=True, exist_ok=True)
        nib.Nifti1Image(np.ones((8, 8, 8), np.float32), np.eye(4)).to_filename(anat / f"{pid}_T1w.nii.gz")
    return root


def test_ixi_table_keeps_subjects_without_age_and_names_them(ixi_dir, caplog):
    table = participant_table(ixi_dir)
    assert len(table) == 84
    without_age = table.loc[table["age"].isna(), "participant_id"].tolist()
    assert len(without_age) == 4
    assert all(Path(image).exists() for image in table["image"])
    assert set(table["sex"]) <= {"M", "F", ""}


def test_missing_participants_tsv(tmp_path):
    (tmp_path / "sub-01" / "anat").mkdir(parents=True)
    with pytest.raises(FlowletError, match="participants.tsv is missing"):
        participant_table(tmp_path)


def test_missing_age_column_names_the_column_and_lists_the_ones_present(tmp_path):
    make_bids(tmp_path, {"sub-01": "30"}, age_column="years")
    with pytest.raises(FlowletError, match=r"no age column 'age' \(columns: participant_id, years, sex\)"):
        participant_table(tmp_path)
    assert participant_table(tmp_path, ColumnNames(age="years"))["age"].tolist() == [30.0]


def test_listed_subject_without_image_is_named(tmp_path):
    make_bids(tmp_path, {"sub-01": "30", "sub-02": "40"}, images=["sub-01"])
    with pytest.raises(FlowletError, match="without a T1w image.*sub-02"):
        participant_table(tmp_path)


def test_non_numeric_age_names_subject_and_value(tmp_path):
    make_bids(tmp_path, {"sub-01": "30", "sub-02": "forty"})
    with pytest.raises(FlowletError, match="non-numeric ages: sub-02 \\('forty'\\)"):
        read_participants(tmp_path)


def test_missing_age_markers_become_nan(tmp_path):
    make_bids(tmp_path, {"sub-01": "n/a", "sub-02": "", "sub-03": "55.5"})
    assert read_participants(tmp_path)["age"].isna().tolist() == [True, True, False]


def test_unreadable_nifti_is_named(tmp_path):
    bad = tmp_path / "sub-01_T1w.nii.gz"
    bad.write_bytes(b"this is not an image")
    with pytest.raises(FlowletError, match="sub-01.*not a readable NIfTI"):
        check_image_header(bad, "sub-01")
    with pytest.raises(FlowletError, match="not a readable NIfTI"):
        load_nifti(bad, "sub-01 T1w")


def test_truncated_gzip_is_named(tmp_path, ixi_dir):
    source = next(ixi_dir.glob("sub-*/anat/*_T1w.nii.gz")).read_bytes()
    truncated = tmp_path / "truncated_T1w.nii.gz"
    truncated.write_bytes(source[: len(source) // 2])
    with pytest.raises(FlowletError, match="truncated_T1w.nii.gz is not a readable NIfTI"):
        load_nifti(truncated)


def test_participants_cli_writes_table_and_fails_cleanly(tmp_path, capsys):
    bids = make_bids(tmp_path / "bids", {"sub-01": "30", "sub-02": "n/a"})
    output = tmp_path / "participants.tsv"
    assert flowlet(["participants", "--bids-dir", str(bids), "--output", str(output)]) == 0
    table = pd.read_csv(output, sep="\t", na_values=["n/a"], keep_default_na=False)
    assert table["participant_id"].tolist() == ["sub-01", "sub-02"]
    assert np.isnan(table["age"][1])

    (bids / "participants.tsv").unlink()
    assert flowlet(["participants", "--bids-dir", str(bids), "--output", str(output)]) == 1
    assert "participants.tsv is missing" in capsys.readouterr().err


def test_bins_and_out_of_range_ages():
    assert bin_labels([20, 30, 40]) == ["20-30", "30-40"]
    ages = pd.Series([20.0, 29.9, 30.0, 40.0, np.nan])
    assert assign_bins(ages, [20, 30, 40]).tolist()[:4] == ["20-30", "20-30", "30-40", "30-40"]
    with pytest.raises(FlowletError, match="split.bin_edges: 1 age.*sub-x \\(age 95\\)"):
        assign_bins(pd.Series([95.0]), [20, 30, 40], pd.Series(["sub-x"]))


def test_split_is_stratified_deterministic_and_excludes_with_reasons():
    rng = np.random.default_rng(0)
    ages = np.concatenate([rng.uniform(20, 40, 30), rng.uniform(60, 80, 4), [np.nan]])
    participants = pd.DataFrame({"participant_id": [f"sub-{i:02d}" for i in range(len(ages))], "age": ages, "sex": "F"})
    edges = [20, 40, 60, 80]
    first = stratified_split(participants, edges, 0.25, seed=3, failed={"sub-00": "preprocessing failed: empty mask"})
    again = stratified_split(participants, edges, 0.25, seed=3, failed={"sub-00": "preprocessing failed: empty mask"})
    pd.testing.assert_frame_equal(first, again)
    assert first.loc[first["participant_id"] == "sub-34", "reason"].item() == "no age"
    assert first.loc[first["participant_id"] == "sub-00", "split"].item() == "excluded"
    for label, group in first[first["split"] != "excluded"].groupby("age_bin"):
        assert (group["split"] == "test").sum() >= 1, label
        assert (group["split"] == "train").sum() >= 1, label
    assert (first[first["age_bin"] == "60-80"]["split"] == "test").sum() == 1


def test_split_with_too_few_subjects_says_so():
    participants = pd.DataFrame({"participant_id": ["sub-01", "sub-02"], "age": [25.0, np.nan], "sex": ""})
    with pytest.raises(FlowletError, match="too few usable subjects"):
        stratified_split(participants, [20, 30], 0.25, seed=0)


def make_sessions_bids(root: Path, sessions: dict[str, dict[str, str]], ages_file: bool = True) -> Path:
    """A longitudinal BIDS dataset: per subject, per session, the age written in sub-*_sessions.tsv."""
    make_bids(root, {subject: next(iter(ages.values())) for subject, ages in sessions.items()}, images=[])
    for subject, ages in sessions.items():
        for session in ages:
            anat = root / subject / session / "anat"
            anat.mkdir(parents=True)
            image = nib.Nifti1Image(np.ones((8, 8, 8), np.float32), np.eye(4))
            image.to_filename(anat / f"{subject}_{session}_T1w.nii.gz")
        if ages_file:
            lines = ["session_id\tage"] + [f"{session}\t{age}" for session, age in ages.items()]
            (root / subject / f"{subject}_sessions.tsv").write_text("\n".join(lines) + "\n")
    return root


def test_every_session_is_a_scan_with_its_own_age(tmp_path):
    make_sessions_bids(tmp_path, {"sub-01": {"ses-1": "30", "ses-2": "33.5"}, "sub-02": {"ses-a": "61"}})
    table = participant_table(tmp_path)
    assert table["participant_id"].tolist() == ["sub-01_ses-1", "sub-01_ses-2", "sub-02_ses-a"]
    assert table["subject"].tolist() == ["sub-01", "sub-01", "sub-02"]
    assert table["session"].tolist() == ["ses-1", "ses-2", "ses-a"]
    assert table["age"].tolist() == [30.0, 33.5, 61.0]
    assert all(Path(image).name.startswith(pid) for pid, image in zip(table["participant_id"], table["image"]))


def test_without_sessions_tsv_the_participants_age_applies_to_every_session(tmp_path):
    make_sessions_bids(tmp_path, {"sub-01": {"ses-1": "30", "ses-2": "99"}}, ages_file=False)
    assert participant_table(tmp_path)["age"].tolist() == [30.0, 30.0]


def test_a_dataset_without_sessions_keeps_todays_columns(tmp_path):
    make_bids(tmp_path, {"sub-01": "30", "sub-02": "40"})
    assert list(participant_table(tmp_path).columns) == ["participant_id", "age", "sex", "image"]


def test_bad_sessions_tsv_is_named_with_the_reason(tmp_path):
    make_sessions_bids(tmp_path / "a", {"sub-01": {"ses-1": "30", "ses-2": "old"}})
    with pytest.raises(
        FlowletError, match=r"sub-01_sessions.tsv: column 'age' holds non-numeric ages: ses-2 \('old'\)"
    ):
        participant_table(tmp_path / "a")
    bids = make_sessions_bids(tmp_path / "b", {"sub-01": {"ses-1": "30"}})
    (bids / "sub-01" / "ses-2" / "anat").mkdir(parents=True)
    nib.Nifti1Image(np.ones((8, 8, 8), np.float32), np.eye(4)).to_filename(
        bids / "sub-01" / "ses-2" / "anat" / "sub-01_ses-2_T1w.nii.gz"
    )
    with pytest.raises(FlowletError, match=r"sub-01_sessions.tsv does not list session\(s\) ses-2"):
        participant_table(bids)


def test_split_keeps_each_subjects_scans_on_one_side(tmp_path):
    sessions = {f"sub-{index:02d}": {"ses-1": str(20 + 5 * index), "ses-2": str(22 + 5 * index)} for index in range(12)}
    bids = make_sessions_bids(tmp_path / "bids", sessions)
    participants = tmp_path / "participants.tsv"
    assert flowlet(["participants", "--bids-dir", str(bids), "--output", str(participants)]) == 0
    qc = tmp_path / "qc.tsv"
    pd.DataFrame({"subject": ["sub-03_ses-2"], "status": ["failed: truncated"]}).to_csv(qc, sep="\t", index=False)
    split = tmp_path / "split.tsv"
    arguments = ["split", "--participants", str(participants), "--qc", str(qc), "--output", str(split)]
    assert flowlet([*arguments, "--image-pattern", "mni/{participant_id}.nii.gz", "--bin-edges", "18", "90"]) == 0
    table = pd.read_csv(split, sep="\t", keep_default_na=False)
    assert list(table.columns[:5]) == ["participant_id", "subject", "session", "age", "sex"]
    sides = table[table["split"] != "excluded"].groupby("subject")["split"].nunique()
    assert (sides == 1).all() and len(sides) == 12
    assert set(table["split"]) == {"train", "test", "excluded"}
    failed = table.set_index("participant_id").loc["sub-03_ses-2"]
    assert failed["split"] == "excluded" and "truncated" in failed["reason"]


def _counting(array: np.ndarray):
    calls = []

    def compute() -> np.ndarray:
        calls.append(1)
        return array

    return compute, calls


def test_a_derived_array_is_computed_once_then_loaded_from_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    array = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    compute, calls = _counting(array)
    first = cached_array("probe", "numpy", 1, compute, array.shape)
    second = cached_array("probe", "numpy", 1, compute, array.shape)
    assert len(calls) == 1
    np.testing.assert_array_equal(second, array)
    assert second.dtype == array.dtype and first is array
    # Another derivation (or source version) is another file: a changed recipe never reads the old array.
    cached_array("probe", "numpy", 2, compute, array.shape)
    assert len(calls) == 2
    assert len(list(tmp_path.glob("probe_numpy-*.npy"))) == 2


def test_a_corrupt_or_misshapen_cached_array_is_derived_again(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    array = np.ones((3, 3), dtype=np.uint8)
    compute, calls = _counting(array)
    cached_array("probe", "numpy", 1, compute, array.shape)
    (path,) = tmp_path.glob("probe_*.npy")
    path.write_bytes(b"not an array")
    np.testing.assert_array_equal(cached_array("probe", "numpy", 1, compute, array.shape), array)
    assert len(calls) == 2 and "cannot read the cached" in caplog.text
    np.testing.assert_array_equal(cached_array("probe", "numpy", 1, compute, (9,)), array)
    assert len(calls) == 3 and "expected (9,)" in caplog.text


def test_the_cache_can_be_off_and_an_unwritable_folder_is_not_an_error(tmp_path, monkeypatch):
    array = np.zeros(4)
    compute, calls = _counting(array)
    monkeypatch.setenv(CACHE_ENV, DISABLED)
    cached_array("probe", "numpy", 1, compute, array.shape)
    cached_array("probe", "numpy", 1, compute, array.shape)
    assert len(calls) == 2
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv(CACHE_ENV, str(blocker / "cache"))
    np.testing.assert_array_equal(cached_array("probe", "numpy", 1, compute, array.shape), array)
    assert len(calls) == 3


def test_cached_templates_and_atlas_equal_freshly_derived_ones(tmp_path, monkeypatch):
    from flowlet.data import templates
    from flowlet.regions import atlas

    def derive_all() -> list[np.ndarray]:
        for function in (templates.template_t1, templates.template_brain_mask, templates.template_tissue_priors):
            function.cache_clear()
        priors = templates.template_tissue_priors(2)
        return [
            templates.template_t1(2).get_fdata(),
            templates.template_brain_mask(2).get_fdata(),
            *(priors[name].get_fdata() for name in ("grey", "white", "csf")),
            atlas._resample_labels(atlas._atlas_files()[0], 2),
        ]

    monkeypatch.setenv(CACHE_ENV, DISABLED)
    fresh = derive_all()
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    derive_all()
    assert len(list(tmp_path.glob("*.npy"))) == 5
    for expected, cached in zip(fresh, derive_all(), strict=True):
        np.testing.assert_array_equal(cached, expected)


def test_a_factor_on_the_2_mm_grid_gives_the_same_millimetres_on_each_grid():
    from flowlet.data.templates import on_study_grid

    assert [on_study_grid(factor, 2) for factor in (1, 2, 4)] == [1, 2, 4]
    assert [on_study_grid(factor, 1) for factor in (1, 2, 4)] == [2, 4, 8]
    with pytest.raises(FlowletError, match="1 or 2 mm, got 3"):
        on_study_grid(4, 3)
