"""The standalone study summary (Markdown) with its auto-generated methods paragraph."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from flowlet.report.markdown import format_cell, markdown_table

CITATIONS = {
    "flowlet": "Danese et al. FlowLet: Conditional 3D Brain MRI Synthesis using Wavelet Flow Matching. Medical Image Analysis, 2026 (arXiv:2601.05212).",
    "n4": "Tustison et al. N4ITK: improved N3 bias correction. IEEE TMI 29(6), 2010.",
    "ants": "Avants et al. A reproducible evaluation of ANTs similarity metric performance in brain image registration. NeuroImage 54(3), 2011.",
    "deepbet": "Fisch et al. deepbet: Fast brain extraction of T1-weighted MRI using Convolutional Neural Networks. Computers in Biology and Medicine 179, 2024.",
    "mni": "Fonov et al. Unbiased average age-appropriate atlases for pediatric studies. NeuroImage 54(1), 2011 (MNI152 2009a).",
    "rectified": "Liu et al. Flow straight and fast: learning to generate and transfer data with rectified flow. ICLR 2023; Lipman et al. Flow matching for generative modeling. ICLR 2023.",
    "sfcn": "Peng et al. Accurate brain age prediction with lightweight deep neural networks. Medical Image Analysis 68, 2021.",
    "bias": "Smith et al. Estimation of brain age delta from brain imaging. NeuroImage 200, 2019 (linear age-bias correction).",
    "snakemake": "Mölder et al. Sustainable data analysis with Snakemake. F1000Research 10:33, 2021.",
    "sklearn": "Pedregosa et al. Scikit-learn: machine learning in Python. JMLR 12, 2011.",
    "ixi": "IXI dataset, brain-development.org/ixi-dataset (CC BY-SA 3.0).",
}


def training_settings(section: dict) -> dict:
    """The generator's training settings as they ran: the config's keys, the preset's where a key is null, else
    the trainer's defaults."""
    from flowlet.generative.training_options import settings_over_preset
    from flowlet.generative.unet import preset_training

    return settings_over_preset(section["preset"], preset_training(section["preset"]), section)


def sampling_settings(config: dict) -> tuple[str, int]:
    """The solver and steps generation ran with: the config's, else those the preset records in the generator's
    config (as `flowlet generate` reads them)."""
    from flowlet.generative.generate import ode_settings
    from flowlet.generative.unet import preset_config

    sample = config["generate"]
    recorded = preset_config(config["train_generator"]["preset"]).extra
    return ode_settings(recorded, sample.get("sampler"), sample.get("num_flow_steps"), "the generate section")


def scarcity_sentence(split: pd.DataFrame, keep: float) -> str:
    """Controlled scarcity in words, when the split withheld anyone."""
    withheld = split[split["split"] == "withheld"]
    if withheld.empty:
        return ""
    bins = ", ".join(sorted(withheld["age_bin"].astype(str).unique()))
    kept = f"{keep:g} subjects" if keep >= 1 else f"a share of {keep:g}"
    return (
        f" Under controlled scarcity, the real training subjects of bin(s) {bins} were cut to {kept} each; the "
        f"{len(withheld)} withheld subjects trained only an oracle brain-age arm, never a generator."
    )


def methods_paragraph(
    config: dict, environment: dict[str, str], n_subjects: int, n_train: int, n_test: int, scarcity: str = ""
) -> str:
    pre = config["preprocess"]
    gen = training_settings(config["train_generator"])
    sampler, num_flow_steps = sampling_settings(config)
    brainage = config["brainage"]
    plan = config["plan_synthetic"]
    version = lambda name: environment.get(f"version:{name}", "unknown")  # noqa: E731
    dataset = (
        f"the BIDS dataset at {config['data']['bids_dir']}"
        if config["data"]["bids_dir"]
        else f"a synthetic demo cohort of {config['phantoms']['n_subjects']} whole-head T1w phantoms built from the MNI152 2009a template (seed {config['phantoms']['seed']})"
    )
    edges = config["split"]["bin_edges"]
    standardised = ""
    if gen["standardise_bands"]:
        per = "voxel" if gen["standardise_per"] == "voxel" else "subband"
        standardised = f" on wavelet bands standardised per {per}"
    folds = int(config["split"].get("folds", 1))
    held_out = (
        f"{folds} test folds, each subject held out once"
        if folds > 1
        else f"{int(config['split']['test_fraction'] * 100)}% of each bin held out"
    )
    return (
        f"We analysed {n_subjects} T1-weighted scans from {dataset} with the FlowLet workflow "
        f"(flowlet {version('flowlet')}, Snakemake {version('snakemake')} [snakemake]). "
        f"Images were bias-corrected with N4 [n4] (ANTsPy {version('antspyx')}, shrink factor {pre.get('n4_shrink_factor')}), "
        f"skull-stripped with {pre.get('skullstrip_backend')}"
        + (" [deepbet]" if pre.get("skullstrip_backend") == "deepbet" else "")
        + ", "
        f"registered ({pre.get('registration')}) to the MNI152 2009a template [mni] with ANTs [ants] and resampled to the "
        f"{pre.get('resolution')} mm FSL grid, and z-scored inside the brain mask. "
        f"Subjects were split by age bin (edges {', '.join(f'{edge:g}' for edge in edges)} years; "
        f"{held_out}; seed {config['split']['seed']}) into {n_train} training and {n_test} test subjects"
        f"{' in fold 1' if folds > 1 else ''}.{scarcity} A conditional wavelet flow-matching generator [flowlet] "
        f"({gen['flow']} flow, preset {gen['preset']}, {gen['prediction']} prediction"
        f"{standardised}, {gen['steps']} steps, batch "
        f"{gen['batch_size']}, learning rate {gen['lr']}, PyTorch {version('torch')}) was trained on the training "
        f"subjects, beside a linear baseline generator (per-voxel age lines plus residual PCA); age bins "
        f"whose training count fell below {plan.get('underrepresented_fraction')} of the largest bin received synthetic "
        f"subjects ({sampler} sampler, {num_flow_steps} steps). "
        f"Brain-age regressors ({', '.join(brainage.get('regressors', []))}; scikit-learn {version('scikit-learn')} [sklearn]) "
        f"were trained on real-only, real-plus-synthetic and synthetic-only data over seeds "
        f"{', '.join(map(str, brainage.get('seeds', [])))} and evaluated on the same held-out real test subjects, "
        f"raw and after linear age-bias correction [bias], with paired bootstrap 95% confidence intervals."
    )


def verdict_section(verdict: pd.DataFrame) -> list[str]:
    """The answer first: one sentence and one row per bin synthetic subjects were meant to help."""
    lines = ["## The answer: did synthetic subjects help where real ones are scarce?", ""]
    if verdict.empty:
        return lines + ["No bin was reduced or under-represented, so synthetic subjects were not asked to help.", ""]
    model = verdict["model"].iloc[0]
    lines += [
        f"Brain-age model: {model}, on the held-out real test subjects; MAE in years with 95% paired "
        "bootstrap intervals; gap closed = (MAE real - MAE real+synthetic) / (MAE real - MAE oracle).",
        "",
    ]
    lines += [f"- {text}" for text in verdict["sentence"]] + [""]
    shown = verdict.drop(columns=["sentence", "model"])
    return lines + [markdown_table(shown), ""]


def _read(path: Path) -> pd.DataFrame | None:
    return pd.read_csv(path, sep="\t") if path.exists() else None


def fold_scorecards(first_fold: Path) -> pd.DataFrame | None:
    """Every fold's generator scorecard side by side: one row per generator and criterion, one column per fold
    holding its value and, in brackets, the fold's real reference; None when no fold has a scorecard."""
    folders = sorted(first_fold.parent.glob("fold-*"), key=lambda folder: int(folder.name.split("-")[-1]))
    columns = {}
    for folder in folders:
        card = _read(folder / "synthetic" / "scorecard.tsv")
        if card is not None:
            cells = [
                definition if criterion == "note" else f"{format_cell(value)} [{format_cell(reference)}]"
                for criterion, value, reference, definition in card[
                    ["criterion", "value", "real_reference", "definition"]
                ].to_numpy()
            ]
            columns[folder.name] = pd.Series(cells, index=pd.MultiIndex.from_frame(card[["generator", "criterion"]]))
    if not columns:
        return None
    return pd.DataFrame(columns).reset_index()


def folds_paragraph(folds: int) -> list[str]:
    return [
        f"Repeated splits: {folds} stratified test folds, every subject with an age tested exactly once by the "
        f"fold that held it out. Brain-age results pool the {folds} folds; the subjects, generator, synthetic "
        f"cohort and regional sections below show fold 1 (every fold's are in `folds/fold-<k>/`).",
        "",
    ]


def study_summary(
    results: Path, config: dict, environment: dict[str, str], runtime: pd.DataFrame, first_fold: Path | None = None
) -> str:
    """The summary of the study in ``results``; with repeated splits, ``first_fold`` is fold 1's folder, which
    shows one split's generator and regions beside the pooled brain age."""
    study = first_fold or results
    split = pd.read_csv(study / "data" / "split.tsv", sep="\t")
    qc = _read(results / "qc" / "qc.tsv")
    plan = _read(study / "synthetic" / "plan.tsv")
    losses = _read(study / "generator" / "loss.tsv")
    metrics = _read(results / "brainage" / "metrics.tsv")
    regions = _read(study / "regions" / "paired_global.tsv")

    n_train = int((split["split"] == "train").sum())
    n_test = int((split["split"] == "test").sum())
    scorecard = _read(study / "synthetic" / "scorecard.tsv")
    verdict = _read(results / "brainage" / "verdict.tsv")
    sections = ["# FlowLet augmentation study: summary", ""]
    if verdict is not None:
        sections += verdict_section(verdict)
    folds = int(config["split"].get("folds", 1))
    if folds > 1:
        sections += folds_paragraph(folds)
    if scorecard is not None:
        sections += [
            "## Are the synthetic brains usable? Generator scorecard",
            "",
            "Each generator's value beside its real reference (real test vs real training, or real slopes); "
            f"definitions in `synthetic/scorecard.tsv`{' (fold 1)' if first_fold else ''}.",
            "",
            markdown_table(scorecard.drop(columns=["definition"])),
            "",
        ]
    by_fold = fold_scorecards(first_fold) if first_fold else None
    if by_fold is not None:
        sections += [
            "Every fold's generator, value [real reference]:",
            "",
            markdown_table(by_fold),
            "",
        ]
    scarcity = scarcity_sentence(split, config["split"].get("scarcity_keep", 2))
    sections += ["## Methods", "", methods_paragraph(config, environment, len(split), n_train, n_test, scarcity), ""]

    sections += ["## Subjects", ""]
    counts = split.groupby(["age_bin", "split"]).size().unstack(fill_value=0).reset_index()
    sections += [markdown_table(counts), ""]
    excluded = split[split["split"] == "excluded"]
    if not excluded.empty:
        sections += ["Excluded subjects:", ""]
        sections += [f"- {row.participant_id}: {row.reason}" for row in excluded.itertuples()] + [""]

    if qc is not None:
        flagged = (
            qc[qc.get("outlier", pd.Series(False, index=qc.index)).astype(bool)] if "outlier" in qc else qc.iloc[0:0]
        )
        sections += [
            "## Preprocessing QC",
            "",
            f"{len(qc)} subjects; {len(flagged)} flagged as outliers (robust z-score above the threshold).",
            "",
        ]
        if not flagged.empty:
            sections += [markdown_table(flagged), ""]

    if losses is not None and not losses.empty:
        last = losses.iloc[-1]
        sections += [
            "## Generator",
            "",
            f"{int(last['step'])} training steps; final training loss {last['train_loss']:.4g}"
            + (
                f", validation loss {last['val_loss']:.4g}"
                if "val_loss" in losses and pd.notna(last.get("val_loss"))
                else ""
            )
            + ".",
            "",
        ]

    if plan is not None:
        sections += ["## Synthetic cohort plan", "", markdown_table(plan), ""]
    synthetic_qc = [
        pd.read_csv(path, sep="\t").assign(generator=generator)
        for folder, generator in (("synthetic", "FlowLet"), ("synthetic_baseline", "linear baseline"))
        for path in sorted((study / folder).glob("bin-*/qc_summary.tsv"))
    ]
    if synthetic_qc:
        gate = (
            "on: outliers were dropped"
            if config["generate"].get("qc_gate")
            else "off: outliers were counted, not dropped"
        )
        sections += [
            "## Synthetic QC",
            "",
            f"Each synthetic volume was measured like a real scan (Dice and correlation with the "
            f"template) against real training brains; robust z-score threshold {config['generate'].get('qc_max_robust_z')}; "
            f"gate {gate}.",
            "",
            markdown_table(pd.concat(synthetic_qc, ignore_index=True)),
            "",
        ]

    if metrics is not None:
        columns = [
            c
            for c in [
                "test_set",
                "feature_set",
                "regressor",
                "arm",
                "correction",
                "n_test",
                "mae",
                "mae_ci_low",
                "mae_ci_high",
                "delta_mae_vs_real",
                "delta_ci_low",
                "delta_ci_high",
                "n_train_real",
                "n_train_synthetic",
            ]
            if c in metrics
        ]
        overall = metrics.loc[metrics["age_bin"] == "all", columns]
        sections += [
            "## Brain age (held-out real test subjects)",
            "",
            markdown_table(overall),
            "",
            "Per-bin rows are in `brainage/metrics.tsv`.",
            "",
        ]

    if regions is not None:
        sections += ["## Regions: paired analysis", "", markdown_table(regions), ""]

    sections += ["## Runtime per rule", "", markdown_table(runtime), ""]
    sections += ["## Environment", "", markdown_table(pd.DataFrame(environment.items(), columns=["item", "value"])), ""]
    sections += ["## References", ""] + [f"- [{key}] {text}" for key, text in CITATIONS.items()] + [""]
    return "\n".join(sections)
