# Brain-age regressors trained on real only, real plus synthetic, and synthetic only data,
# all evaluated on the same held-out real test subjects.

# With an external cohort, the MAE-per-bin and predicted-versus-true figures are drawn for it too.
EXTERNAL_FIGURES = (
    {
        f"{name}_external": report(
            f"{RESULTS}/brainage/{name}_external.png",
            caption=f"../report/brainage_{name}.rst",
            category="Brain age",
            subcategory="External cohort",
        )
        for name in ("mae_per_bin", "pred_vs_true")
    }
    if EXTERNAL_DIR
    else {}
)


rule brainage:
    input:
        split=rules.split.output[0],
        plan=rules.plan_synthetic.output.plan,
        external=EXTERNAL_INPUTS,
        synthetic=synthetic_manifests("flowlet"),
        baseline=synthetic_manifests("linear"),
        # Written by rule regional_measures (regions.smk, included after this file).
        regional_features=f"{RESULTS}/regional_measures/regional_features.tsv",
    output:
        **EXTERNAL_FIGURES,
        metrics=report(
            f"{RESULTS}/brainage/metrics.tsv",
            caption="../report/brainage_metrics.rst",
            category="Brain age",
        ),
        predictions=f"{RESULTS}/brainage/predictions.tsv",
        mae_per_bin=report(
            f"{RESULTS}/brainage/mae_per_bin.png",
            caption="../report/brainage_mae_per_bin.rst",
            category="Brain age",
        ),
        gap_closed=report(
            f"{RESULTS}/brainage/gap_closed.png",
            caption="../report/brainage_gap_closed.rst",
            category="Brain age",
        ),
        pred_vs_true=report(
            f"{RESULTS}/brainage/pred_vs_true.png",
            caption="../report/brainage_pred_vs_true.rst",
            category="Brain age",
        ),
        verdict=f"{RESULTS}/brainage/verdict.tsv",
        model=f"{RESULTS}/brainage/model_real.joblib",
    log:
        f"{LOGS}/brainage.log",
    benchmark:
        f"{BENCHMARKS}/brainage.tsv"
    conda:
        f"{ENVS}/analysis.yaml"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=120,
        gpu=1 if config["brainage"]["device"] == "cuda" else 0,
    params:
        flags=cli_flags("brainage"),
        bin_edges=" ".join(str(edge) for edge in config["split"]["bin_edges"]),
        output_dir=lambda wildcards, output: Path(output.metrics).parent,
        external=external_split_flag,
    shell:
        "python -m flowlet brainage --split {input.split} --synthetic {input.synthetic} "
        "--baseline-synthetic {input.baseline} --plan {input.plan} {params.external} --bin-edges {params.bin_edges} "
        "--regional-features {input.regional_features} --output-dir {params.output_dir} {params.flags} > {log} 2>&1"
