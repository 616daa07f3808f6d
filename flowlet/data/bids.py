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
# A longitudinal dataset's scan table adds who (subject) and when (session) beside the scan's participant_id.
SESSION_COLUMNS = ("subject", "session")


@dataclass(frozen=True)
class ColumnNames:
    """Which participants.tsv columns hold age and sex: datasets name them differently."""

    age: str = "age"
    sex: str = "sex"
    # The config key that names the age column, for the error when the column is missing.
    age_key: str = "data.age_column"
    # The age column of a longitudinal subject's sub-<label>_sessions.tsv (age at each session).
    session_age: str = "age"


def participants_path(bids_dir: str | Path) -> Path:
    return Path(bids_dir) / "participants.tsv"


def parse_ages(raw: pd.Series, ids: pd.Series, path: Path, column: str) -> pd.Series:
    """Ages in years from a text column; n/a and empty are unknown (NaN); anything else non-numeric is an error."""
    raw = raw.str.strip()
    missing = raw.isin(MISSING_VALUES)
    age = pd.to_numeric(raw.where(~missing), errors="coerce")
    bad = ~missing & age.isna()
    if bad.any():
        listing = ", ".join(f"{name} ({value!r})" for name, value in zip(ids[bad], raw[bad]))
        raise FlowletError(f"{path}: column '{column}' holds non-numeric ages: {listing}")
    negative = age < 0
    if negative.any():
        raise FlowletError(f"{path}: negative ages for {', '.join(ids[negative])}")
    return age.astype(float)


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

    age = parse_ages(table[columns.age], ids, path, columns.age)
    sex = (
        table[columns.sex].str.strip().str.upper() if columns.sex in table.columns else pd.Series("", index=table.index)
    )
    sex = sex.map(lambda value: {"MALE": "M", "FEMALE": "F", "0": "F", "1": "M"}.get(value, value))
    sex = sex.where(sex.isin(["M", "F"]), "")
    return pd.DataFrame({"participant_id": ids, "age": age, "sex": sex})


def first_t1w(anat_dir: Path, scan: str) -> Path | None:
    """The T1w image of one anat/ folder; the first run if there are several, with a note."""
    candidates = sorted(anat_dir.glob("*_T1w.nii.gz")) + sorted(anat_dir.glob("*_T1w.nii"))
    if len(candidates) > 1:
        log.info("%s: %d T1w images, using %s", scan, len(candidates), candidates[0].name)
    return candidates[0] if candidates else None


def session_t1ws(bids_dir: str | Path, participant_id: str) -> dict[str, Path]:
    """A longitudinal subject's T1w image per session (``ses-*`` folders with one), in session order."""
    found = {}
    for session_dir in sorted((Path(bids_dir) / participant_id).glob("ses-*")):
        image = first_t1w(session_dir / "anat", f"{participant_id}_{session_dir.name}")
        if image is not None:
            found[session_dir.name] = image
    return found


def sessions_path(bids_dir: str | Path, participant_id: str) -> Path:
    return Path(bids_dir) / participant_id / f"{participant_id}_sessions.tsv"


def session_ages(bids_dir: str | Path, participant_id: str, sessions: list[str], column: str) -> pd.Series | None:
    """Age at each session from the subject's sessions.tsv; None when there is no such file or age column (the
    participants.tsv age then applies to every session)."""
    path = sessions_path(bids_dir, participant_id)
    if not path.exists():
        return None
    try:
        table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise FlowletError(f"{path}: not a readable tab-separated table ({error})") from error
    if "session_id" not in table.columns:
        raise FlowletError(f"{path}: no 'session_id' column (columns: {', '.join(table.columns)})")
    if column not in table.columns:
        log.info("%s has no column '%s': the participants.tsv age applies to every session", path, column)
        return None
    ids = table["session_id"].str.strip()
    ids = ids.where(ids.str.startswith("ses-"), "ses-" + ids)
    unlisted = [session for session in sessions if session not in set(ids)]
    if unlisted:
        raise FlowletError(
            f"{path} does not list session(s) {', '.join(unlisted)}, which have a T1w image; add a row for each "
            "(or remove the session folder)"
        )
    return pd.Series(parse_ages(table[column], ids, path, column).to_numpy(), index=ids)


def participant_scans(bids_dir: str | Path, subjects: pd.DataFrame, columns: ColumnNames) -> pd.DataFrame:
    """One row per T1w scan: a subject's anat/ image, else one per session (``sub-<label>_ses-<label>``, its age
    from the subject's sessions.tsv when that has one). Datasets without sessions keep one row per subject and
    no subject or session columns."""
    rows = []
    for subject in subjects.itertuples(index=False):
        image = first_t1w(Path(bids_dir) / subject.participant_id / "anat", subject.participant_id)
        sessions = {} if image else session_t1ws(bids_dir, subject.participant_id)
        if not sessions:
            rows.append({**subject._asdict(), "subject": subject.participant_id, "session": "", "image": image})
            continue
        ages = session_ages(bids_dir, subject.participant_id, list(sessions), columns.session_age)
        for session, session_image in sessions.items():
            rows.append(
                {
                    **subject._asdict(),
                    "participant_id": f"{subject.participant_id}_{session}",
                    "age": subject.age if ages is None else ages[session],
                    "subject": subject.participant_id,
                    "session": session,
                    "image": session_image,
                }
            )
    scans = pd.DataFrame(rows, columns=[*subjects.columns, *SESSION_COLUMNS, "image"])
    if not (scans["session"] != "").any():
        scans = scans.drop(columns=list(SESSION_COLUMNS))
    return scans


def participant_table(
    bids_dir: str | Path,
    columns: ColumnNames = ColumnNames(),
    exclude: list[str] | tuple[str, ...] = (),
) -> pd.DataFrame:
    """Every listed participant's T1w scans with their paths; a listed subject without an image is an error.

    A longitudinal subject (``ses-*`` folders, no anat/ of its own) gives one row per session, named
    ``sub-<label>_ses-<label>`` in ``participant_id`` (the scan, which every later stage keys on), with the
    ``subject`` and ``session`` columns beside it; see :func:`participant_scans`. Subjects with an image but no row in participants.tsv are reported and left out, as are those in
    ``exclude``. Ages stay NaN where unknown: such subjects are still preprocessed, but age-conditioned
    training and brain-age evaluation leave them out.
    """
    bids_dir = Path(bids_dir)
    if not bids_dir.is_dir():
        raise FlowletError(f"{bids_dir}: the BIDS directory does not exist")
    listed = read_participants(bids_dir, columns)
    excluded = set(exclude)
    unknown_exclusions = excluded - set(listed["participant_id"])
    if unknown_exclusions:
        raise FlowletError(
            f"data.exclude_subjects names subjects not in {participants_path(bids_dir)}: {', '.join(sorted(unknown_exclusions))}"
        )
    listed = listed[~listed["participant_id"].isin(excluded)].reset_index(drop=True)
    table = participant_scans(bids_dir, listed, columns)

    without = table["participant_id"][table["image"].isna()].tolist()
    if without:
        raise FlowletError(
            f"{participants_path(bids_dir)} lists subjects without a T1w image "
            f"(expected {bids_dir}/<subject>/anat/<subject>_T1w.nii.gz, or ses-<label>/anat/ per session): "
            f"{', '.join(without)}; add the images, remove the rows, or list them in data.exclude_subjects"
        )
    table["image"] = table["image"].astype(str)

    on_disk = {path.name for path in bids_dir.glob("sub-*") if path.is_dir()}
    unlisted = sorted(on_disk - set(listed["participant_id"]) - excluded)
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
