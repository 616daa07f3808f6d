"""Age bins and the subject-level split into real training and held-out real test sets, stratified by age bin."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from flowlet.data.bins import AgeBins
from flowlet.errors import FlowletError

WITHHELD = "withheld"


def bin_labels(edges: Sequence[float]) -> list[str]:
    """Labels like '20-30' for [20, 30); the last bin is closed on the right."""
    return AgeBins.from_edges(edges).labels


def assign_bins(ages: pd.Series, edges: Sequence[float], ids: pd.Series | None = None) -> pd.Series:
    """The bin label of every age; NaN ages stay NaN; an age outside every bin is an error naming the subject."""
    known = ages.notna().to_numpy()
    names = (ids if ids is not None else ages.index.to_series()).astype(str).to_numpy()[known]
    labels = pd.Series(np.nan, index=ages.index, dtype=object)
    labels[known] = AgeBins.from_edges(edges).assign(ages[known].to_numpy(float), names, "split.bin_edges")
    return labels


def mark_unusable(table: pd.DataFrame, failed: dict[str, str]) -> pd.Series:
    """Set split and reason of subjects without age or with failed preprocessing to excluded; returns who is usable."""
    no_age = table["age"].isna()
    table.loc[no_age, ["split", "reason"]] = ["excluded", "no age"]
    failed_mask = table["participant_id"].isin(list(failed))
    table.loc[failed_mask, "split"] = "excluded"
    table.loc[failed_mask, "reason"] = table.loc[failed_mask, "participant_id"].map(failed)
    return ~(no_age | failed_mask)


def evaluation_only(
    participants: pd.DataFrame, edges: Sequence[float], failed: dict[str, str] | None = None
) -> pd.DataFrame:
    """A second dataset used only for evaluation: every usable subject is a test subject."""
    table = participants.copy()
    table["age_bin"] = assign_bins(table["age"], edges, table["participant_id"])
    table["split"] = "test"
    table["reason"] = ""
    if not mark_unusable(table, failed or {}).any():
        raise FlowletError(
            f"no usable subject to evaluate on among {len(table)} (all without age or failed preprocessing)"
        )
    return table


def stratified_split(
    participants: pd.DataFrame,
    edges: Sequence[float],
    test_fraction: float,
    seed: int,
    failed: dict[str, str] | None = None,
) -> pd.DataFrame:
    """Assign each participant to train, test or excluded (with the reason).

    Within every age bin, round(test_fraction * n) subjects go to test, at least one where the bin has
    two or more, so that every populated bin can be evaluated; a single-subject bin stays in training.
    Subjects without age or whose preprocessing failed are excluded, never silently dropped.
    """
    if not 0 < test_fraction < 1:
        raise FlowletError(f"split.test_fraction must lie between 0 and 1, got {test_fraction}")
    failed = failed or {}
    table = participants.copy()
    table["age_bin"] = assign_bins(table["age"], edges, table["participant_id"])
    table["split"] = "train"
    table["reason"] = ""
    mark_unusable(table, failed)

    rng = np.random.default_rng(seed)
    usable = table["split"] == "train"
    for label in bin_labels(edges):
        members = table.index[usable & (table["age_bin"] == label)].to_numpy()
        if len(members) < 2:
            continue
        n_test = min(len(members) - 1, max(1, int(round(test_fraction * len(members)))))
        chosen = rng.choice(np.sort(members), size=n_test, replace=False)
        table.loc[chosen, "split"] = "test"

    counts = table["split"].value_counts()
    if counts.get("train", 0) < 2 or counts.get("test", 0) < 1:
        raise FlowletError(
            f"too few usable subjects to split: {counts.get('train', 0)} for training and {counts.get('test', 0)} for testing "
            f"out of {len(table)} ({int(table['age'].isna().sum())} without age, "
            f"{int(table['participant_id'].isin(list(failed)).sum())} failed preprocessing)"
        )
    return table


def fold_numbers(table: pd.DataFrame, edges: Sequence[float], folds: int, seed: int) -> pd.Series:
    """Repeated splits: each usable subject's test fold (1..folds), stratified by age bin so that every fold
    tests every populated bin; NaN for the unusable. Subjects are dealt to the folds in turn, continuing from
    bin to bin, so fold sizes differ by at most one."""
    usable = table["split"] == "train"
    check_fold_counts(table.loc[usable, "age_bin"].value_counts().reindex(bin_labels(edges), fill_value=0), folds)
    rng = np.random.default_rng([seed, 2])
    numbers = pd.Series(np.nan, index=table.index)
    dealt = 0
    for label in bin_labels(edges):
        members = np.sort(table.index[usable & (table["age_bin"] == label)].to_numpy())
        numbers[rng.permutation(members)] = (dealt + np.arange(len(members))) % folds + 1
        dealt += len(members)
    return numbers


def check_fold_counts(per_bin: pd.Series, folds: int) -> None:
    """``folds`` folds can each test every populated bin: no count of ``per_bin`` (bin -> usable subjects, in
    bin order) lies between 0 and ``folds``."""
    if folds < 2:
        raise FlowletError(f"split.folds: {folds} fold(s) cannot each test a different subject; use 2 or more")
    for label, count in per_bin.items():
        if 0 < count < folds:
            raise FlowletError(
                f"split.folds: {folds} folds need at least {folds} usable subjects in every populated age bin, "
                f"but bin {label} has {count}; set split.folds to at most {count} or widen the bin "
                "(split.bin_edges)"
            )


def check_fold_bins(participants: pd.DataFrame, edges: Sequence[float], folds: int) -> None:
    """Before any job runs: ``folds`` folds are possible for these participants' ages (one row per scan; a
    longitudinal dataset counts each subject once). Failed preprocessing can still make a fold impossible later."""
    table = participants[participants["age"].notna()]
    if "subject" in table:
        table = table.drop_duplicates("subject")
    labels = assign_bins(table["age"], edges, table["participant_id"])
    check_fold_counts(labels.value_counts().reindex(bin_labels(edges), fill_value=0), folds)


def fold_split(
    participants: pd.DataFrame,
    edges: Sequence[float],
    folds: int,
    fold: int,
    seed: int,
    failed: dict[str, str] | None = None,
) -> pd.DataFrame:
    """Fold ``fold`` of ``folds`` repeated splits: its test subjects are the ones dealt to it, everyone else
    usable trains; over all folds every usable subject is tested exactly once."""
    if not 1 <= fold <= folds:
        raise FlowletError(f"--fold must lie between 1 and split.folds ({folds}), got {fold}")
    table = participants.copy()
    table["age_bin"] = assign_bins(table["age"], edges, table["participant_id"])
    table["split"] = "train"
    table["reason"] = ""
    mark_unusable(table, failed or {})
    table.loc[fold_numbers(table, edges, folds, seed) == fold, "split"] = "test"
    return table


def scarcity_bins(table: pd.DataFrame, edges: Sequence[float], bins: Sequence[str], best_covered: int) -> list[str]:
    """The bins to reduce: those named, else the ``best_covered`` bins with the most real training subjects."""
    labels = bin_labels(edges)
    unknown = [label for label in bins if label not in labels]
    if unknown:
        raise FlowletError(f"split.scarcity_bins: {unknown} are not age bins; the bins are {labels}")
    if bins:
        return list(bins)
    if best_covered < 1:
        return []
    counts = table[table["split"] == "train"]["age_bin"].value_counts()
    # Ties go to the younger bin, so the choice does not depend on the table's order.
    ranked = sorted(labels, key=lambda label: (-int(counts.get(label, 0)), labels.index(label)))
    return ranked[:best_covered]


def withhold_training_subjects(
    table: pd.DataFrame, reduced_bins: Sequence[str], keep: float, seed: int
) -> pd.DataFrame:
    """Controlled scarcity: in each reduced bin keep ``keep`` real training subjects (a count when >= 1, else a
    share, at least one) and mark the rest ``withheld``: they train only the oracle arm, never the generator."""
    if not keep > 0:
        raise FlowletError(f"split.scarcity_keep must be positive (a count >= 1 or a share below 1), got {keep}")
    if keep >= 1 and keep != int(keep):
        raise FlowletError(f"split.scarcity_keep: a count must be a whole number, got {keep}")
    table = table.copy()
    # Its own stream, so turning scarcity on does not change who is in the test set.
    rng = np.random.default_rng([seed, 1])
    for label in reduced_bins:
        members = np.sort(table.index[(table["split"] == "train") & (table["age_bin"] == label)].to_numpy())
        if not ((table["split"] == "test") & (table["age_bin"] == label)).any():
            raise FlowletError(
                f"split.scarcity_bins: bin {label} has no real test subjects, so what withholding its "
                "training subjects costs cannot be measured; choose a bin with test subjects"
            )
        kept = int(keep) if keep >= 1 else max(1, int(round(keep * len(members))))
        if len(members) <= kept:
            raise FlowletError(
                f"split.scarcity_keep: bin {label} has {len(members)} real training subject(s), so keeping "
                f"{kept} withholds none; choose a smaller count or another bin"
            )
        withheld = rng.choice(members, size=len(members) - kept, replace=False)
        table.loc[withheld, "split"] = WITHHELD
        table.loc[withheld, "reason"] = f"controlled scarcity: withheld from bin {label} (oracle arm only)"
    return table


def split_by_subject(
    scans: pd.DataFrame,
    edges: Sequence[float],
    failed: dict[str, str],
    split_subjects: Callable[[pd.DataFrame, dict[str, str]], pd.DataFrame],
) -> pd.DataFrame:
    """A longitudinal dataset's split: ``split_subjects(participants, failed)`` splits the subjects, each
    represented by its first usable scan, and every scan takes its subject's side, so no subject has scans on
    both sides. A scan without age or whose preprocessing failed is excluded on its own."""
    table = scans.copy()
    usable = table["age"].notna() & ~table["participant_id"].isin(list(failed))
    # A subject without a usable scan is represented by its first scan, which the split then excludes.
    representatives = (
        table.assign(unusable=~usable).sort_values(["subject", "unusable"], kind="stable").drop_duplicates("subject")
    )
    subject_failed = {
        subject: failed[scan]
        for subject, scan in zip(representatives["subject"], representatives["participant_id"])
        if scan in failed
    }
    subjects = split_subjects(
        representatives.drop(columns="unusable").assign(participant_id=representatives["subject"]), subject_failed
    )
    side = subjects.set_index("participant_id")
    table["age_bin"] = assign_bins(table["age"], edges, table["participant_id"])
    table["split"] = table["subject"].map(side["split"])
    table["reason"] = table["subject"].map(side["reason"])
    mark_unusable(table, failed)
    return table
