# Region-based anatomy of real and synthetic brains: tissue volumes per atlas region (measured once, also
# the regional features of the brain-age stage), the paper's paired analysis with its real-versus-real
# floor, and age trajectories.


# Segmenting is per image: one job per real subject and one per synthetic age bin of each generator, so a
# cluster runs them in parallel and new subjects segment only themselves; rule regional_measures merges.


rule regional_measures_subject:
    input:
        image=lambda wildcards: preprocessed(wildcards.subject)["image"],
    output:
        table=measured_subject("{subject}"),
        segmentations=directory(str(Path(measured_subject("{subject}")).parent / "segmentations")),
    log:
        f"{LOGS}/regional_measures/{{subject}}.log",
    benchmark:
        f"{BENCHMARKS}/regional_measures_subject/{{subject}}.tsv"
    conda:
        f"{ENVS}/analysis.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        flags=cli_flags("regional_measures"),
        output_dir=lambda wildcards, output: Path(output.table).parent,
    shell:
        "python -m flowlet measure-images --images {input.image} --output-dir {params.output_dir} "
        "{params.flags} --threads {threads} > {log} 2>&1"


if EXTERNAL_DIR:

    use rule regional_measures_subject as regional_measures_subject_external with:
        input:
            image=lambda wildcards: preprocessed(wildcards.subject, EXTERNAL)["image"],
        output:
            table=measured_subject("{subject}", EXTERNAL),
            segmentations=directory(str(Path(measured_subject("{subject}", EXTERNAL)).parent / "segmentations")),
        log:
            f"{LOGS}/{EXTERNAL}/regional_measures/{{subject}}.log",
        benchmark:
            f"{BENCHMARKS}/{EXTERNAL}/regional_measures_subject/{{subject}}.tsv"


rule regional_measures_synthetic:
    input:
        manifest=f"{STUDY}/{{generated}}/bin-{{age_bin}}/manifest.tsv",
    output:
        table=f"{STUDY_MEASURED}/{{generated}}/bin-{{age_bin}}/measured.tsv",
        segmentations=directory(f"{STUDY_MEASURED}/{{generated}}/bin-{{age_bin}}/segmentations"),
    log:
        study_log("regional_measures/{generated}/bin-{age_bin}"),
    benchmark:
        study_benchmark("regional_measures_synthetic/{generated}/bin-{age_bin}")
    wildcard_constraints:
        generated="|".join(GENERATED_DIRS.values()),
    priority: evaluation_first
    conda:
        f"{ENVS}/analysis.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=60,
    params:
        flags=cli_flags("regional_measures"),
        output_dir=lambda wildcards, output: Path(output.table).parent,
    shell:
        "python -m flowlet measure-images --manifests {input.manifest} --output-dir {params.output_dir} "
        "{params.flags} --threads {threads} > {log} 2>&1"


rule regional_measures:
    input:
        split=rules.split.output[0],
        synthetic=synthetic_manifests("flowlet", AGE_BINS + EVALUATION_BINS),
        baseline=synthetic_manifests("linear", AGE_BINS + EVALUATION_BINS),
        external=EXTERNAL_INPUTS,
        subjects=[measured_subject(subject) for subject in AGED_SUBJECTS],
        external_subjects=[measured_subject(subject, EXTERNAL) for subject in EXTERNAL_AGED_SUBJECTS],
        measured_synthetic=measured_synthetic("flowlet") + measured_synthetic("linear"),
    output:
        measures=f"{STUDY_MEASURED}/regional_measures.tsv",
        features=f"{STUDY_MEASURED}/regional_features.tsv",
    log:
        study_log("regional_measures"),
    benchmark:
        study_benchmark("regional_measures")
    conda:
        f"{ENVS}/analysis.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        flags=cli_flags("regional_measures"),
        output_dir=lambda wildcards, output: Path(output.measures).parent,
        external=external_split_flag,
        # Patterns, not thousands of paths on one command line; every file they name is an input above.
        subjects=lambda wildcards: " ".join(
            shlex.quote(measured_subject("{participant_id}", cohort))
            for cohort in ["", EXTERNAL][: 1 + bool(EXTERNAL_DIR)]
        ),
    shell:
        "python -m flowlet regional-measures --split {input.split} --synthetic {input.synthetic} "
        "--baseline-synthetic {input.baseline} {params.external} "
        "--measured {input.measured_synthetic} {params.subjects} "
        "--output-dir {params.output_dir} {params.flags} --threads {threads} > {log} 2>&1"


rule regions:
    input:
        split=rules.split.output[0],
        synthetic=synthetic_manifests(),
        measures=rules.regional_measures.output.measures,
        model=rules.brainage.output.model,
    output:
        table=report(
            f"{STUDY}/regions/paired_region_summary.tsv",
            caption="../report/regions_paired.rst",
            category="Regions",
        ),
        slopes=report(
            f"{STUDY}/regions/slopes.tsv",
            caption="../report/regions_slopes.rst",
            category="Regions",
        ),
        realism=report(
            f"{STUDY}/regions/realism.tsv",
            caption="../report/regions_realism.rst",
            category="Regions",
        ),
        memorisation_summary=report(
            f"{STUDY}/regions/memorisation_summary.tsv",
            caption="../report/regions_memorisation_summary.rst",
            category="Regions",
        ),
        paired_dice=report(
            f"{STUDY}/regions/figures/paired_dice.png",
            caption="../report/regions_paired_dice.rst",
            category="Regions",
        ),
        trajectories=report(
            f"{STUDY}/regions/figures/trajectories.png",
            caption="../report/regions_trajectories.rst",
            category="Regions",
        ),
        slope_map=report(
            f"{STUDY}/regions/figures/slope_difference_map.png",
            caption="../report/regions_slope_map.rst",
            category="Regions",
        ),
        slope_correlation=report(
            f"{STUDY}/regions/figures/slope_correlation.png",
            caption="../report/regions_slope_correlation.rst",
            category="Regions",
        ),
        fidelity=report(
            f"{STUDY}/regions/figures/fidelity.png",
            caption="../report/regions_fidelity.rst",
            category="Regions",
        ),
        memorisation=report(
            f"{STUDY}/regions/figures/memorisation.png",
            caption="../report/regions_memorisation.rst",
            category="Regions",
        ),
    log:
        study_log("regions"),
    benchmark:
        study_benchmark("regions")
    conda:
        f"{ENVS}/analysis.yaml"
    # Its array work (MS-SSIM's filters in SciPy, elementwise torch) runs on one core; one thread lets it run
    # beside the scorecard.
    threads: 1
    resources:
        mem_mb=8000,
        runtime=120,
    params:
        flags=cli_flags("regions"),
        output_dir=lambda wildcards, output: Path(output.table).parent,
        downsample=GENERATOR_DOWNSAMPLE,
    shell:
        "python -m flowlet regions --split {input.split} --synthetic {input.synthetic} --measures {input.measures} "
        "--brainage-model {input.model} --downsample {params.downsample} "
        "--output-dir {params.output_dir} {params.flags} --threads {threads} > {log} 2>&1"


rule scorecard:
    input:
        split=rules.split.output[0],
        synthetic=scored_manifests("flowlet"),
        baseline=scored_manifests("linear"),
        measures=rules.regional_measures.output.measures,
        model=rules.brainage.output.model,
        qc_reference=rules.synthetic_qc_reference.output[0],
    output:
        report(
            f"{STUDY}/synthetic/scorecard.tsv",
            caption="../report/scorecard.rst",
            category="Synthetic cohorts",
        ),
    log:
        study_log("scorecard"),
    benchmark:
        study_benchmark("scorecard")
    conda:
        f"{ENVS}/analysis.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        downsample=GENERATOR_DOWNSAMPLE,
        max_robust_z=cli_flags("generate", only=("qc_max_robust_z",)),
    shell:
        "python -m flowlet scorecard --split {input.split} --synthetic {input.synthetic} "
        "--baseline-synthetic {input.baseline} --measures {input.measures} --brainage-model {input.model} "
        "--downsample {params.downsample} --qc-reference {input.qc_reference} {params.max_robust_z} "
        "--output {output} > {log} 2>&1"
