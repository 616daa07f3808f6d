"""The Snakemake workflow: dry runs list every stage, lint is clean, and the tiny study runs end to end."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import phantom_dataset, snakemake_command

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "tests" / "configs" / "tiny.yaml"
STAGES = [
    "phantoms",
    "participants",
    "preprocess",
    "qc_table",
    "split",
    "train",
    "plan_synthetic",
    "regional_measures",
    "generate",
    "synthetic_grid",
    "brainage",
    "regions",
    "report_summary",
]


def snakemake(
    workdir: Path, *args: str, configfile: Path | None = None, check: bool = True
) -> subprocess.CompletedProcess:
    """Snakemake on ``workdir`` with ``configfile``, else the config the tiny study ran with there, else TINY."""
    configfile = configfile or next((path for path in [workdir / "tiny.yaml"] if path.is_file()), TINY)
    command = snakemake_command(workdir, "--configfile", str(configfile), *args)
    result = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{result.stdout[-6000:]}\n{result.stderr[-6000:]}")
    return result


def planned_jobs(result: subprocess.CompletedProcess) -> dict[str, int]:
    """Job counts from the 'Job stats' table of a dry run."""
    text = result.stdout + result.stderr
    if "Nothing to be done" in text:
        return {}
    table = text.split("Job stats:")[1].split("total")[0]
    counts = {}
    for line in table.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            counts[parts[0]] = int(parts[1])
    return counts


def test_dry_run_lists_every_stage(tmp_path):
    jobs = planned_jobs(snakemake(tmp_path, "-n"))
    assert set(STAGES) <= set(jobs)
    assert jobs["preprocess"] == 12
    assert jobs["generate"] == 3 + 1  # one per age bin, plus the scorecard's evaluation cohort


def downsample_flags(workdir: Path, *config: str) -> dict[str, str]:
    """The --downsample of every job that block-averages, from a dry run with these --config values."""
    commands = snakemake(workdir, "-n", "-p", "--config", *config).stdout.splitlines()
    found = {}
    for command in ("train", "fit-baseline", "synthetic-qc reference", "scorecard", "regions", "brainage"):
        line = next(line for line in commands if f"python -m flowlet {command} " in line)
        found[command] = line.split("--downsample ")[1].split()[0]
    return found


def test_brain_age_features_share_the_generators_resolution_when_it_is_coarser(tmp_path):
    def feature_block(*config: str) -> str:
        return downsample_flags(tmp_path, *config)["brainage"]

    assert feature_block('train_generator={"downsample": 2}') == "2"  # 4 mm features, as before
    assert feature_block('train_generator={"downsample": 4}') == "4"  # an 8 mm generator: 8 mm features
    assert feature_block('train_generator={"downsample": 4}', 'brainage={"downsample": 3}') == "3"


def test_a_1_mm_study_keeps_the_generators_and_features_millimetres(tmp_path):
    """The config's factors are stated on the 2 mm grid: on a 1 mm grid every job that block-averages gets twice
    the factor, so the cpu preset still trains at 8 mm (at 4 mm it would take about 8 times as long)."""

    def factors(*config: str) -> dict[str, str]:
        return downsample_flags(tmp_path, 'preprocess={"resolution": 1}', *config)

    assert set(factors().values()) == {"4"}  # the tiny study's 4 mm generator and features
    on_8_mm = factors('train_generator={"downsample": 4}', 'brainage={"downsample": 2}')
    assert on_8_mm.pop("brainage") == "4" and set(on_8_mm.values()) == {"8"}
    assert set(factors('train_generator={"preset": "cpu", "downsample": null}').values()) == {"8"}


def test_lint_reports_nothing(tmp_path):
    result = snakemake(tmp_path, "--lint")
    assert "Lints for" not in result.stdout + result.stderr


def test_installed_snakemake_never_runs_more_threads_than_cores(tmp_path):
    # Snakemake 9.10-9.16 started a job that was the only one ready without counting its threads, so after a
    # single-job step two 2-thread jobs ran at once on --cores 2 (the demo had up to 6 threads on 2 cores).
    (tmp_path / "Snakefile").write_text(
        "rule all:\n"
        "    input: expand('job{i}.txt', i=range(3))\n"
        "rule first:\n"
        "    output: 'first.txt'\n"
        "    threads: 2\n"
        "    shell: 'touch {output}'\n"
        "rule job:\n"
        "    input: 'first.txt'\n"
        "    output: 'job{i}.txt'\n"
        "    threads: 2\n"
        "    shell: 'date +%s.%N > {output}; sleep 1; date +%s.%N >> {output}'\n"
    )
    command = [sys.executable, "-m", "snakemake", "--cores", "2", "--directory", str(tmp_path), "--quiet"]
    subprocess.run([*command, "--snakefile", str(tmp_path / "Snakefile")], check=True, capture_output=True)
    spans = sorted(tuple(map(float, (tmp_path / f"job{i}.txt").read_text().split())) for i in range(3))
    assert all(start >= end for (_, end), (start, _) in zip(spans, spans[1:])), f"2-thread jobs overlapped: {spans}"


def test_ixi_by_one_key_names_subjects_without_age(tmp_path, ixi_dir):
    result = snakemake(tmp_path, "-n", "--config", f"data={{'bids_dir': '{ixi_dir}'}}")
    jobs = planned_jobs(result)
    assert jobs["preprocess"] == 84 and "phantoms" not in jobs
    text = result.stdout + result.stderr
    assert "4 subject(s) without age" in text
    for subject in pd.read_csv(ixi_dir / "participants.tsv", sep="\t").query("age != age or age == 'n/a'")[
        "participant_id"
    ]:
        assert subject in text


def test_bad_dataset_is_rejected_before_any_job(tmp_path):
    bids = tmp_path / "bids"
    (bids / "sub-01" / "anat").mkdir(parents=True)
    result = snakemake(tmp_path, "-n", "--config", f"data={{'bids_dir': '{bids}'}}", check=False)
    assert result.returncode != 0
    assert "participants.tsv is missing" in result.stdout + result.stderr


def test_an_external_cohort_is_preprocessed_by_the_same_rules_and_only_evaluated(tmp_path):
    external = phantom_dataset(tmp_path / "external", n_subjects=3, seed=5)
    result = snakemake(tmp_path, "-n", "-p", "--config", f"data={{'external_bids_dir': '{external}'}}")
    jobs = planned_jobs(result)
    assert jobs["preprocess_external"] == 3 and jobs["preprocess"] == 12
    commands = result.stdout + result.stderr
    train = next(line for line in commands.splitlines() if "python -m flowlet train " in line)
    assert "results/data/split.tsv" in train and "external" not in train
    assert commands.count("--external-split results/external/data/split.tsv") == 2  # brain age and regional measures
    participants = pd.read_csv(external / "participants.tsv", sep="\t")
    participants.rename(columns={"age": "years"}).to_csv(external / "participants.tsv", sep="\t", index=False)
    result = snakemake(tmp_path, "-n", "--config", f"data={{'external_bids_dir': '{external}'}}", check=False)
    assert result.returncode != 0 and "data.external_age_column" in result.stdout + result.stderr


def test_bad_config_is_rejected_naming_the_key(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text(TINY.read_text().replace("test_fraction: 0.25", "test_fraction: 2"))
    result = snakemake(tmp_path, "-n", configfile=config, check=False)
    assert result.returncode != 0
    assert "split.test_fraction" in result.stdout + result.stderr


@pytest.mark.slow
def test_regional_slopes_on_the_demo_phantoms_match_the_ageing_put_in(tiny_study):
    """Ventricle growth and brain shrinkage measured in native ml (MNI volumes times each subject's
    native_volume_factor) have the sign and order of magnitude of the phantoms' ground truth."""
    results = tiny_study / "results"
    truth = pd.read_csv(results / "demo" / "bids" / "derivatives" / "phantoms" / "ground_truth.tsv", sep="\t")
    split = pd.read_csv(results / "data" / "split.tsv", sep="\t")
    truth = truth[truth["participant_id"].isin(split.loc[split["split"].isin(["train", "test"]), "participant_id"])]
    slopes = pd.read_csv(results / "regions" / "slopes.tsv", sep="\t")
    native = slopes[slopes["measure"] == "native_volume_ml"].set_index("region")["real_slope"]
    for region, column in (("ventricles", "ventricle_volume_ml"), ("brain", "brain_volume_ml")):
        expected = np.polyfit(truth["age"], truth[column], 1)[0]
        ratio = native[region] / expected
        print(f"{region}: measured {native[region]:.3f} ml/year, phantom truth {expected:.3f} ml/year")
        assert 1 / 3 < ratio < 3, f"{region}: measured slope {native[region]:.3f} vs truth {expected:.3f} ml/year"


@pytest.mark.slow
def test_tiny_study_produces_every_result(tiny_study):
    results = tiny_study / "results"
    for path in [
        "qc/qc.tsv",
        "data/split.tsv",
        "generator/loss.png",
        "synthetic/plan.tsv",
        "synthetic/grid.png",
        "brainage/metrics.tsv",
        "brainage/mae_per_bin.png",
        "regions/paired_region_summary.tsv",
        "report/summary.md",
        "report/runtime.tsv",
        "report/environment.tsv",
    ]:
        assert (results / path).stat().st_size > 0, path
    metrics = pd.read_csv(results / "brainage" / "metrics.tsv", sep="\t")
    split = pd.read_csv(results / "data" / "split.tsv", sep="\t")
    tested_bins = set(split.loc[split["split"] == "test", "age_bin"])
    assert tested_bins <= set(metrics["age_bin"])
    assert {"real", "real+synthetic", "oracle"} <= set(metrics["arm"])
    summary = (results / "report" / "summary.md").read_text()
    assert "## Methods" in summary and "N4" in summary
    # The QC pass rate stands beside the share of real test images that pass the same gate.
    card = pd.read_csv(results / "synthetic" / "scorecard.tsv", sep="\t")
    qc = card[card["criterion"] == "QC pass rate"]
    assert set(qc["generator"]) == {"FlowLet", "linear baseline"}
    assert (qc["n_real"] == (split["split"] == "test").sum()).all() and qc["real_reference"].between(0, 1).all()
    # Age fidelity's reference is the real test images at the generator's resolution; the sharp ones' is named too.
    fidelity = card[card["criterion"] == "age fidelity MAE (years)"]
    assert len(fidelity) == 2 and fidelity["real_reference"].notna().all()
    assert fidelity["definition"].str.contains(r"on the sharp real test images: MAE \d", regex=True).all()
    # The flagged count stands beside how often real-like volumes would flag as many.
    memorised = card[card["criterion"] == "memorised (flagged count)"]
    assert memorised["definition"].str.contains(r"\d+ or more with probability [01]\.\d\d", regex=True).all()
    # The runtime table tells the per-subject and per-bin segmentation jobs from their merge.
    runtime = pd.read_csv(results / "report" / "runtime.tsv", sep="\t").set_index("rule")["jobs"]
    assert runtime["regional_measures"] == 1 and runtime["train_generator"] == 1
    assert runtime["regional_measures_subject"] >= split["split"].isin(["train", "test"]).sum()
    assert runtime["regional_measures_synthetic"] >= len(set(split["age_bin"]))


@pytest.mark.slow
def test_controlled_scarcity_gives_the_oracle_and_the_verdict_opens_the_summary(tiny_study):
    results = tiny_study / "results"
    split = pd.read_csv(results / "data" / "split.tsv", sep="\t")
    reduced = split.loc[split["split"] == "withheld", "age_bin"].unique().tolist()
    assert len(reduced) == 1 and ((split["age_bin"] == reduced[0]) & (split["split"] == "train")).sum() == 2
    plan = pd.read_csv(results / "synthetic" / "plan.tsv", sep="\t").set_index("age_bin")
    assert plan.loc[reduced[0], "n_synthetic"] == plan.loc[reduced[0], "n_withheld"] > 0
    verdict = pd.read_csv(results / "brainage" / "verdict.tsv", sep="\t")
    assert reduced[0] in verdict["age_bin"].tolist()
    assert (results / "brainage" / "gap_closed.png").stat().st_size > 0
    summary = (results / "report" / "summary.md").read_text()
    assert summary.index("## The answer") < summary.index("## Methods")
    assert verdict["sentence"].iloc[0] in summary


@pytest.mark.slow
def test_the_external_cohort_is_evaluated_and_never_trained_on(tiny_study):
    results = tiny_study / "results"
    external = pd.read_csv(results / "external" / "data" / "split.tsv", sep="\t")
    assert set(external["split"]) <= {"test", "excluded"} and (external["split"] == "test").sum() == 4
    metrics = pd.read_csv(results / "brainage" / "metrics.tsv", sep="\t")
    assert set(metrics["test_set"]) == {"internal", "external"}
    predictions = pd.read_csv(results / "brainage" / "predictions.tsv", sep="\t")
    assert (predictions["test_set"] == "external").sum() > 0
    for name in ("mae_per_bin_external.png", "pred_vs_true_external.png"):
        assert (results / "brainage" / name).stat().st_size > 0
    # Same subject names as the study's, but their own images: nothing of the external dataset is in the split
    # the generator and the regressors train from.
    internal = pd.read_csv(results / "data" / "split.tsv", sep="\t")
    assert not internal["image"].str.contains("external").any()
    assert (results / "external" / "qc" / "qc.tsv").stat().st_size > 0
    regional = pd.read_csv(results / "regional_measures" / "regional_features.tsv", sep="\t")
    assert (regional["group"] == "external").sum() == 4


@pytest.mark.slow
def test_repeated_splits_test_every_subject_once_and_pool_the_brain_age(tiny_study, tmp_path):
    """split.folds: 2 on a copy of the tiny study: per-subject work is reused, each fold trains its own generator,
    and the pooled brain age predicts every subject once, with the verdict and the report built from the pool."""
    workdir = tmp_path / "folds"
    shutil.copytree(tiny_study, workdir, symlinks=True)
    config = workdir / "tiny.yaml"
    # Two bins of six phantoms each (the tiny study's 60-90 bin holds one subject, too few for two folds); each
    # fold then trains on 5 or 6 real subjects, enough for 2-fold cross-validation inside it.
    config.write_text(
        config.read_text()
        .replace("  seed: 0\n  # Controlled", "  seed: 0\n  folds: 2\n  # Controlled")
        .replace("bin_edges: [18, 40, 60, 90]", "bin_edges: [18, 40, 90]")
        .replace("cv_folds: 3", "cv_folds: 2")
    )
    jobs = planned_jobs(snakemake(workdir, "-n"))
    assert jobs["train"] == jobs["brainage"] == jobs["split"] == 2 and jobs["brainage_pooled"] == 1
    assert "preprocess" not in jobs and "regional_measures_subject" not in jobs
    snakemake(workdir, "--cores", "2")
    results = workdir / "results"
    predictions = pd.read_csv(results / "brainage" / "predictions.tsv", sep="\t")
    internal = predictions[predictions["test_set"] == "internal"]
    aged = pd.read_csv(results / "data" / "participants.tsv", sep="\t").dropna(subset=["age"])
    assert set(internal["participant_id"]) == set(aged["participant_id"])
    assert internal.groupby("participant_id")["fold"].nunique().eq(1).all()
    for fold in (1, 2):
        split = pd.read_csv(results / "folds" / f"fold-{fold}" / "data" / "split.tsv", sep="\t")
        tested = set(split.loc[split["split"] == "test", "participant_id"])
        assert tested == set(internal.loc[internal["fold"] == fold, "participant_id"])
        assert (split["split"] == "withheld").any()
    verdict = pd.read_csv(results / "brainage" / "verdict.tsv", sep="\t")
    assert not verdict.empty and verdict["model"].str.endswith("2 folds pooled").all()
    summary = (results / "report" / "summary.md").read_text()
    assert "Repeated splits: 2 stratified test folds" in summary and verdict["sentence"].iloc[0] in summary


@pytest.mark.slow
def test_completed_study_does_nothing_when_repeated_and_reruns_only_dependents(tiny_study):
    assert planned_jobs(snakemake(tiny_study, "-n")) == {}
    image = next((tiny_study / "results" / "preprocess").glob("sub-demo003/anat/*desc-preproc_T1w.nii.gz"))
    kept = image.with_name("kept.nii.gz")
    image.rename(kept)
    try:
        jobs = planned_jobs(snakemake(tiny_study, "-n"))
    finally:
        # Other tests share this study: put the image back, with its old time stamp.
        kept.rename(image)
    assert jobs.get("preprocess") == 1
    assert "phantoms" not in jobs and "participants" not in jobs
    # Both generators work at the training resolution: a new one retrains FlowLet and refits the baseline.
    jobs = planned_jobs(snakemake(tiny_study, "-n", "--config", 'train_generator={"downsample": 4}'))
    assert jobs.get("train") == 1 and jobs.get("fit_baseline") == 1 and jobs.get("synthetic_qc_reference") == 1


@pytest.mark.slow
def test_html_report_builds(tiny_study):
    snakemake(tiny_study, "--report", "report.html")
    html = (tiny_study / "report.html").read_text(errors="replace")
    for category in ["Preprocessing QC", "Generator", "Synthetic cohorts", "Brain age", "Regions"]:
        assert category in html


def sessions_dataset(folder: Path, n_subjects: int) -> Path:
    """A longitudinal BIDS dataset from demo phantoms: each subject has two sessions (two phantoms, the younger
    first), with each session's age in its sub-*_sessions.tsv and the first in participants.tsv."""
    phantoms = phantom_dataset(folder.parent / "phantoms", n_subjects=2 * n_subjects, seed=11)
    table = pd.read_csv(phantoms / "participants.tsv", sep="\t").sort_values("age")
    rows = []
    for index, (first, second) in enumerate(zip(table.iloc[::2].itertuples(), table.iloc[1::2].itertuples())):
        subject = f"sub-{index + 1:02d}"
        for session, phantom in (("ses-1", first), ("ses-2", second)):
            anat = folder / subject / session / "anat"
            anat.mkdir(parents=True)
            source = phantoms / phantom.participant_id / "anat" / f"{phantom.participant_id}_T1w.nii.gz"
            (anat / f"{subject}_{session}_T1w.nii.gz").write_bytes(source.read_bytes())
        sessions = pd.DataFrame({"session_id": ["ses-1", "ses-2"], "age": [first.age, second.age]})
        sessions.to_csv(folder / subject / f"{subject}_sessions.tsv", sep="\t", index=False)
        rows.append({"participant_id": subject, "age": first.age, "sex": first.sex})
    pd.DataFrame(rows).to_csv(folder / "participants.tsv", sep="\t", index=False)
    return folder


@pytest.mark.slow
def test_a_longitudinal_dataset_runs_every_session_as_a_scan_through_split_and_brain_age(tmp_path, monkeypatch):
    from flowlet.cli import main

    bids = sessions_dataset(tmp_path / "bids", n_subjects=4)
    config = tmp_path / "sessions.yaml"
    config.write_text(
        TINY.read_text()
        .replace('  bids_dir: ""', f'  bids_dir: "{bids}"')
        .replace("bin_edges: [18, 40, 60, 90]", "bin_edges: [18, 90]")
        .replace("scarcity_best_covered: 1", "scarcity_best_covered: null")
        .replace("test_fraction: 0.25", "test_fraction: 0.5")
    )
    snakemake(tmp_path, "--cores", "2", "results/data/split.tsv", configfile=config)
    split = pd.read_csv(tmp_path / "results" / "data" / "split.tsv", sep="\t")
    assert len(split) == 8 and split["participant_id"].str.fullmatch(r"sub-0\d_ses-[12]").all()
    assert (split.groupby("subject")["split"].nunique() == 1).all()
    assert set(split["split"]) == {"train", "test"}
    assert all(Path(tmp_path / image).is_file() for image in split["image"])
    output = tmp_path / "brainage"
    monkeypatch.chdir(tmp_path)  # the split's image paths are relative to the study folder, as in the workflow
    arguments = ["--feature-sets", "voxels", "--regressors", "ridge", "--arms", "real", "--seeds", "0"]
    command = ["brainage", "--split", str(tmp_path / "results" / "data" / "split.tsv"), "--output-dir", str(output)]
    assert main([*command, *arguments, "--cv-folds", "2", "--bootstrap", "50", "--bin-edges", "18", "90"]) == 0
    predictions = pd.read_csv(next(output.glob("*predictions*.tsv")), sep="\t")
    tested = set(split.loc[split["split"] == "test", "participant_id"])
    assert tested and tested <= set(predictions["participant_id"])
