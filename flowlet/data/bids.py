"""Reading a BIDS dataset's T1w images and participant table, with errors that name the file and the reason."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from flowlet.errors import FlowletError

log = logging.getLogger(__name__)

MISSING_VALUES = ["n/a", "N/A", "NA", "nan", "NaN", ""]


@dataclass(frozen=True)
class ColumnNames:
    """Which participants.tsv columns hold age and sex: datasets name them differently."""

    age: str = "age"
    sex: str = "sex"
    # The config key that names the age column, for the error when the column is missing.
    age_key: str = "data.age_column"


def participants_path(bids_dir: str | Path) -> Path:
    return Path(bids_dir) / "participants.tsv"


def read_participants(bids_dir: str | Path, columns: ColumnNames = ColumnNames()) -> pd.DataFrame:
    """participant_id, age (float, NaN where unknown) and sex (M/F or empty) for every listed participant."""
    path = participants_path(bids_dir)
    if not path.exists():
        raise FlowletError(
            f"{path}: participants.tsv is missing; a BIDS dataset lists its subjects and their ages there"
        )
    try:
        table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError) as error:
        raise FlowletError(f"{path}: not a readable tab-separated table ({error})") from error
    if "participant_id" not in table.columns:
        raise FlowletError(f"{path}: no 'participant_id' column (columns: {', '.join(table.columns)})")
    if columns.age not in table.columns:
        raise FlowletError(
            f"{path}: no age column '{columns.age}' (columns: {', '.join(table.columns)}); "
            f"set {columns.age_key} in the config to the column that holds age in years"
        )
    ids = table["participant_id"].str.strip()
    ids = ids.where(ids.str.startswith("sub-"), "sub-" + ids)
    duplicated = ids[ids.duplicated()].unique()
    if len(duplicated):
        raise FlowletError(f"{path}: participants listed more than once: {', '.join(duplicated)}")

    raw_age = table[columns.age].str.strip()
    missing = raw_age.isin(MISSING_VALUES)
    age = pd.to_numeric(raw_age.where(~missing), errors="coerce")
    bad = ~missing & age.isna()
    if bad.any():
        listing = ", ".join(f"{pid} ({value!r})" for pid, value in zip(ids[bad], raw_age[bad]))
        raise FlowletError(f"{path}: column '{columns.age}' holds non-numeric ages: {listing}")
    negative = age < 0
    if negative.any():
        raise FlowletError(f"{path}: negative ages for {', '.join(ids[negative])}")

    sex = (
        table[columns.sex].str.strip().str.upper() if columns.sex in table.columns else pd.Series("", index=table.index)
    )
    sex = sex.map(lambda value: {"MALE": "M", "FEMALE": "F", "0": "F", "1": "M"}.get(value, value))
    sex = sex.where(sex.isin(["M", "F"]), "")
    return pd.DataFrame({"participant_id": ids, "age": age.astype(float), "sex": sex})


def find_t1w(bids_dir: str | Path, participant_id: str) -> Path | None:
    """The subject's T1w image: anat/ directly under the subject, else its first session; the first run if several."""
    subject_dir = Path(bids_dir) / participant_id
    candidates = sorted(subject_dir.glob("anat/*_T1w.nii.gz")) + sorted(subject_dir.glob("anat/*_T1w.nii"))
    if not candidates:
        candidates = sorted(subject_dir.glob("ses-*/anat/*_T1w.nii.gz")) + sorted(
            subject_dir.glob("ses-*/anat/*_T1w.nii")
        )
    if len(candidates) > 1:
        log.info("%s: %d T1w images, using %s", participant_id, len(candidates), candidates[0].name)
    return candidates[0] if candidates else None


def participant_table(
    bids_dir: str | Path,
    columns: ColumnNames = ColumnNames(),
    exclude: list[str] | tuple[str, ...] = (),
) -> pd.DataFrame:
    """Every listed participant with its T1w path; a listed subject without an image is an error.

    Subjects with an image but no row in participants.tsv are reported and left out, as are those in
    ``exclude``. Ages stay NaN where unknown: such subjects are still preprocessed, but age-conditioned
    training and brain-age evaluation leave them out.
    """
    bids_dir = Path(bids_dir)
    if not bids_dir.is_dir():
        raise FlowletError(f"{bids_dir}: the BIDS directory does not exist")
    table = read_participants(bids_dir, columns)
    excluded = set(exclude)
    unknown_exclusions = excluded - set(table["participant_id"])
    if unknown_exclusions:
        raise FlowletError(
            f"data.exclude_subjects names subjects not in {participants_path(bids_dir)}: {', '.join(sorted(unknown_exclusions))}"
        )
    table = table[~table["participant_id"].isin(excluded)].reset_index(drop=True)

    images = [find_t1w(bids_dir, pid) for pid in table["participant_id"]]
    without = [pid for pid, image in zip(table["participant_id"], images) if image is None]
    if without:
        raise FlowletError(
            f"{participants_path(bids_dir)} lists subjects without a T1w image "
            f"(expected {bids_dir}/<subject>/anat/<subject>_T1w.nii.gz): {', '.join(without)}; "
            "add the images, remove the rows, or list them in data.exclude_subjects"
        )
    table["image"] = [str(image) for image in images]

    on_disk = {path.name for path in bids_dir.glob("sub-*") if path.is_dir()}
    unlisted = sorted(on_disk - set(table["participant_id"]) - excluded)
    if unlisted:
        log.warning(
            "%s: subjects with a folder but no row are left out: %s", participants_path(bids_dir), ", ".join(unlisted)
        )
    if table.empty:
        raise FlowletError(f"{bids_dir}: no participants left to process")
    return table


def check_image_header(path: str | Path, participant_id: str) -> None:
    """Cheap check that a file is NIfTI with a 3D (or single-volume 4D) image; full reads happen in preprocessing."""
    import nibabel as nib

    try:
        image = nib.load(str(path))
    except Exception as error:  # nibabel raises many types for foreign files
        raise FlowletError(
            f"{participant_id}: {path} is not a readable NIfTI image ({type(error).__name__}: {error})"
        ) from error
    shape = image.shape
    if len(shape) < 3 or (len(shape) > 3 and int(np.prod(shape[3:])) != 1):
        raise FlowletError(f"{participant_id}: {path} has shape {shape}; a single 3D T1w volume is expected")


def ages_missing_note(table: pd.DataFrame) -> str | None:
    """A line naming the subjects without age, who are preprocessed but left out of age-dependent steps."""
    without_age = table.loc[table["age"].isna(), "participant_id"].tolist()
    if not without_age:
        return None
    return (
        f"{len(without_age)} subject(s) without age are preprocessed but left out of generator training "
        f"and brain-age evaluation: {', '.join(without_age)}"
    )
