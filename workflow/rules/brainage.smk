# Brain-age regressors trained on real only, real plus synthetic, and synthetic only data,
# all evaluated on the same held-out real test subjects.


# With repeated splits, each fold's evaluation stays out of the report; the pooled one is shown.
rule brainage:
    input:
        split=rules.split.output[0],
        plan=rules.plan_synthetic.output.plan,
        external=EXTERNAL_INPUTS,
        synthetic=synthetic_manifests("flowlet"),
        baseline=synthetic_manifests("linear"),
        # Written by rule regional_measures (regions.smk, included after this file).
        regional_features=f"{STUDY_MEASURED}/regional_features.tsv",
    output:
        **brainage_results(f"{STUDY}/brainage", in_report=not FOLDED),
        model=f"{STUDY}/brainage/model_real.joblib",
    log:
        study_log("brainage"),
    benchmark:
        study_benchmark("brainage")
    conda:
        f"{ENVS}/analysis.yaml"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=120,
        gpu=1 if config["brainage"]["device"] == "cuda" else 0,
    params:
        flags=cli_flags("brainage", skip=("downsample",)),
        downsample=BRAINAGE_DOWNSAMPLE,
        bin_edges=" ".join(str(edge) for edge in config["split"]["bin_edges"]),
        output_dir=lambda wildcards, output: Path(output.metrics).parent,
        external=external_split_flag,
    shell:
        "python -m flowlet brainage --split {input.split} --synthetic {input.synthetic} --downsample {params.downsample} "
        "--baseline-synthetic {input.baseline} --plan {input.plan} {params.external} --bin-edges {params.bin_edges} "
        "--regional-features {input.regional_features} --output-dir {params.output_dir} {params.flags} > {log} 2>&1"


if FOLDED:

    rule brainage_pooled:
        input:
            folds=every_fold(rules.brainage.output.metrics),
            plans=every_fold(rules.plan_synthetic.output.plan),
            predictions=every_fold(rules.brainage.output.predictions),
            models=every_fold(rules.brainage.output.models),
            counts=every_fold(rules.brainage.output.counts),
        output:
            **brainage_results(f"{RESULTS}/brainage"),
        log:
            f"{LOGS}/brainage_pooled.log",
        benchmark:
            f"{BENCHMARKS}/brainage_pooled.tsv"
        conda:
            f"{ENVS}/analysis.yaml"
        threads: 1
        resources:
            mem_mb=4000,
            runtime=30,
        params:
            flags=cli_flags("brainage", only=("bootstrap", "bootstrap_seed", "verdict_model", "verdict_correction")),
            bin_edges=" ".join(str(edge) for edge in config["split"]["bin_edges"]),
            folds=lambda wildcards, input: " ".join(str(Path(path).parent) for path in input.folds),
            output_dir=lambda wildcards, output: Path(output.metrics).parent,
        shell:
            "python -m flowlet brainage-pool --folds {params.folds} --plans {input.plans} "
            "--bin-edges {params.bin_edges} {params.flags} --output-dir {params.output_dir} > {log} 2>&1"
