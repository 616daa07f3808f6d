# Shared by every stage: config validation, the subject list, output paths, and config-to-flag mapping.

import os
import shlex
import sys
from pathlib import Path

import yaml

REPO_ROOT = Path(workflow.basedir).parent
sys.path.insert(0, str(REPO_ROOT))

from flowlet.brainage.features import feature_downsample  # noqa: E402
from flowlet.config import validate_config  # noqa: E402
from flowlet.data.bids import ColumnNames, ages_missing_note, participant_table  # noqa: E402
from flowlet.data.split import bin_labels, check_fold_bins  # noqa: E402
from flowlet.data.templates import on_study_grid  # noqa: E402
from flowlet.generative.unet import preset_training  # noqa: E402

# The schema in ../schemas/config.schema.yaml fills defaults and rejects unknown keys, wrong types and
# impossible values before any job runs, naming the key.
validate_config(config)

# Every rule calls `python -m flowlet` with the interpreter of its environment; jobs inherit this
# PYTHONPATH, which makes the checkout importable inside per-rule conda environments too.
inherited_path = dict(os.environ).get("PYTHONPATH")
os.environ.update(PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), inherited_path])))

RESULTS = config["results_dir"].rstrip("/")
LOGS = config["logs_dir"].rstrip("/")
BENCHMARKS = f"{RESULTS}/benchmarks"
ENVS = "../../envs"
TEMPLATE = "MNI152NLin2009aSym"
RESOLUTION = config["preprocess"]["resolution"]
DEMO = not config["data"]["bids_dir"]
BIDS_DIR = f"{RESULTS}/demo/bids" if DEMO else config["data"]["bids_dir"]
AGE_BINS = bin_labels(config["split"]["bin_edges"])
# Repeated splits (split.folds K > 1): every stage after the split runs once per test fold, in
# results/folds/fold-<k>/ (STUDY); rule brainage_pooled pools the folds' brain-age results in results/brainage/.
FOLDS = config["split"]["folds"]
FOLDED = FOLDS > 1
FOLD_IDS = [str(fold) for fold in range(1, FOLDS + 1)]
STUDY = f"{RESULTS}/folds/fold-{{fold}}" if FOLDED else RESULTS


def study_log(name):
    """The log of a per-fold job (``name`` like "train_generator" or "generate/bin-{age_bin}")."""
    return f"{LOGS}/folds/fold-{{fold}}/{name}.log" if FOLDED else f"{LOGS}/{name}.log"


def study_benchmark(name):
    """The benchmark of a per-fold job; the runtime table groups by the first folder, the rule's name."""
    if not FOLDED:
        return f"{BENCHMARKS}/{name}.tsv"
    rule_name, _, per_job = name.partition("/")
    return (
        f"{BENCHMARKS}/{rule_name}/fold-{{fold}}/{per_job}.tsv"
        if per_job
        else f"{BENCHMARKS}/{rule_name}/fold-{{fold}}.tsv"
    )


def every_fold(path):
    """A per-fold path for each fold (other wildcards kept)."""
    return expand(path, fold=FOLD_IDS, allow_missing=True) if FOLDED else [path]


def first_fold(path):
    """A per-fold path in fold 1, whose generator the report shows."""
    return expand(path, fold="1", allow_missing=True)[0] if FOLDED else path


# The generator's working resolution, which the QC reference and the baseline generator share with it: the
# config's, else the preset's, else full resolution. The config's factors are stated on the 2 mm grid (4: 8 mm);
# they become the study grid's here, once, so a 1 mm study trains the cpu preset at its 8 mm too.
GENERATOR_FACTOR = config["train_generator"]["downsample"] or preset_training(config["train_generator"]["preset"]).get(
    "downsample", 1
)
GENERATOR_DOWNSAMPLE = on_study_grid(GENERATOR_FACTOR, RESOLUTION)
# Brain-age features at the generator's resolution when it is the coarser, so real and synthetic images share it.
BRAINAGE_DOWNSAMPLE = on_study_grid(feature_downsample(config["brainage"]["downsample"], GENERATOR_FACTOR), RESOLUTION)
BACKENDS = {"both": ("flowlet", "linear"), "flowlet": ("flowlet",), "linear": ("linear",)}[
    config["generate"]["backend"]
]


def demo_subjects():
    return [f"sub-demo{index:03d}" for index in range(1, config["phantoms"]["n_subjects"] + 1)]


def dataset_table(bids_dir, columns, exclude=()):
    table = participant_table(bids_dir, columns, exclude)
    note = ages_missing_note(table)
    if note:
        logger.info(f"Note ({bids_dir}): {note}")
    return table


def images_and_aged(table):
    """Each scan's T1w image, and the scans with an age (only they can be trained on or tested)."""
    return dict(zip(table["participant_id"], table["image"])), list(table["participant_id"][table["age"].notna()])


if DEMO:
    SUBJECTS = AGED_SUBJECTS = demo_subjects()
    T1W = {subject: f"{BIDS_DIR}/{subject}/anat/{subject}_T1w.nii.gz" for subject in SUBJECTS}
else:
    DATASET = dataset_table(
        BIDS_DIR,
        ColumnNames(
            config["data"]["age_column"],
            config["data"]["sex_column"],
            session_age=config["data"]["session_age_column"],
        ),
        config["data"]["exclude_subjects"],
    )
    T1W, AGED_SUBJECTS = images_and_aged(DATASET)
    SUBJECTS = list(T1W)
    if FOLDED:
        check_fold_bins(DATASET, config["split"]["bin_edges"], FOLDS)

# The external cohort (rules/external.smk): evaluation only, its outputs under results/external/.
EXTERNAL = "external"
EXTERNAL_DIR = config["data"]["external_bids_dir"]
EXTERNAL_COLUMNS = ColumnNames(
    config["data"]["external_age_column"] or config["data"]["age_column"],
    config["data"]["sex_column"],
    "data.external_age_column",
    config["data"]["session_age_column"],
)
EXTERNAL_COLUMN_FLAGS = (
    f"--age-column {shlex.quote(EXTERNAL_COLUMNS.age)} --sex-column {shlex.quote(EXTERNAL_COLUMNS.sex)} "
    f"--session-age-column {shlex.quote(EXTERNAL_COLUMNS.session_age)}"
)
EXTERNAL_T1W, EXTERNAL_AGED_SUBJECTS = (
    images_and_aged(dataset_table(EXTERNAL_DIR, EXTERNAL_COLUMNS)) if EXTERNAL_DIR else ({}, [])
)
EXTERNAL_SPLIT = f"{RESULTS}/{EXTERNAL}/data/split.tsv"
# What rules brainage and regional_measures add for it: inputs, and the flag that passes them.
EXTERNAL_INPUTS = [EXTERNAL_SPLIT] if EXTERNAL_DIR else []


def external_split_flag(wildcards, input):
    return f"--external-split {input.external}" if input.external else ""


wildcard_constraints:
    # A scan: the subject, and its session in longitudinal datasets.
    subject="sub-[A-Za-z0-9]+(_ses-[A-Za-z0-9]+)?",
    age_bin="[0-9.]+-[0-9.]+|evaluation",
    fold="[0-9]+",


def cli_flags(section, skip=(), only=None):
    """A config section (or the keys ``only`` of it) as command-line flags: snake_case keys become --kebab-case flags."""
    parts = []
    for key, value in config[section].items():
        if key in skip or (only is not None and key not in only) or value is None:
            continue
        name = key.replace("_", "-")
        if isinstance(value, bool):
            parts.append(f"--{name}" if value else f"--no-{name}")
        elif isinstance(value, list):
            if value:
                parts.append(f"--{name} {' '.join(shlex.quote(str(item)) for item in value)}")
        else:
            parts.append(f"--{name} {shlex.quote(str(value))}")
    return " ".join(parts)


def preprocessed(subject, cohort=""):
    """A subject's preprocessing outputs; ``cohort`` "external" puts them under results/external/."""
    folder = f"{RESULTS}/{cohort}/preprocess/{subject}" if cohort else f"{RESULTS}/preprocess/{subject}"
    base = f"{folder}/anat/{subject}"
    return {
        "image": f"{base}_space-{TEMPLATE}_res-{RESOLUTION}_desc-preproc_T1w.nii.gz",
        "mask": f"{base}_desc-brain_mask.nii.gz",
        "transform": f"{base}_from-T1w_to-{TEMPLATE}_mode-image_xfm.mat",
        "qc_png": f"{folder}/figures/{subject}_desc-qc_T1w.png",
        "qc_tsv": f"{folder}/{subject}_desc-qc_metrics.tsv",
    }


# Each generator's volumes and QC'd manifests live in their own folder.
GENERATED_DIRS = {"flowlet": "synthetic", "linear": "synthetic_baseline"}


# The scorecard's own cohort per generator, spread over all training ages (generate.scorecard_samples).
EVALUATION_BINS = ["evaluation"] if config["generate"]["scorecard_samples"] else []


def evaluation_first(wildcards):
    """Priority of a synthetic bin's jobs: the evaluation cohort is the largest bin and is segmented in one job,
    so its chain starts first; started last, it ended the demo alone on one core."""
    return 1 if wildcards.age_bin in EVALUATION_BINS else 0


def synthetic_manifests(backend="flowlet", bins=AGE_BINS):
    """The QC-gated per-bin manifests of one generator backend; none when the study does not use it."""
    if backend not in BACKENDS:
        return []
    return expand(f"{STUDY}/{GENERATED_DIRS[backend]}/bin-{{age_bin}}/manifest.tsv", age_bin=bins, allow_missing=True)


def scored_manifests(backend):
    """What the scorecard judges: the evaluation cohort when there is one, else the plan's volumes."""
    return synthetic_manifests(backend, EVALUATION_BINS or AGE_BINS)


def qc_gate_flags(wildcards):
    """The scorecard judges a generator by all it makes, so its evaluation cohort is flagged, never dropped."""
    gate = "--no-qc-gate" if wildcards.age_bin == "evaluation" else cli_flags("generate", only=("qc_gate",))
    return f"{cli_flags('generate', only=('qc_max_robust_z',))} {gate}"


# Per-image regional measures (rules/regions.smk): a real subject's table (shared by the folds), and each
# generator's per-bin tables (per fold).
MEASURED = f"{RESULTS}/regional_measures"
STUDY_MEASURED = f"{STUDY}/regional_measures"


def measured_subject(subject, cohort=""):
    folder = f"{RESULTS}/{cohort}/regional_measures" if cohort else MEASURED
    return f"{folder}/subjects/{subject}/measured.tsv"


def measured_synthetic(backend, bins=AGE_BINS + EVALUATION_BINS):
    if backend not in BACKENDS:
        return []
    return expand(
        f"{STUDY_MEASURED}/{GENERATED_DIRS[backend]}/bin-{{age_bin}}/measured.tsv", age_bin=bins, allow_missing=True
    )


def brainage_results(folder, in_report=True):
    """The tables and figures a brain-age evaluation writes in ``folder`` (figures also for the external cohort,
    when there is one); ``in_report``: its figures and metrics appear in the Snakemake report."""

    def shown(name, caption, **subcategory):
        path = f"{folder}/{name}"
        if not in_report:
            return path
        return report(path, caption=f"../report/{caption}.rst", category="Brain age", **subcategory)

    results = {
        "metrics": shown("metrics.tsv", "brainage_metrics"),
        "predictions": f"{folder}/predictions.tsv",
        "models": f"{folder}/models.tsv",
        "counts": f"{folder}/bin_counts.tsv",
        "verdict": f"{folder}/verdict.tsv",
        "mae_per_bin": shown("mae_per_bin.png", "brainage_mae_per_bin"),
        "gap_closed": shown("gap_closed.png", "brainage_gap_closed"),
        "pred_vs_true": shown("pred_vs_true.png", "brainage_pred_vs_true"),
    }
    if EXTERNAL_DIR:
        for name in ("mae_per_bin", "pred_vs_true"):
            results[f"{name}_external"] = shown(
                f"{name}_external.png", f"brainage_{name}", subcategory="External cohort"
            )
    return results
