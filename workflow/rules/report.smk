# The study summary: methods paragraph from the actual config, environment record, runtime table.


rule effective_config:
    output:
        f"{RESULTS}/report/config.yaml",
    log:
        f"{LOGS}/effective_config.log",
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    params:
        # A changed config reruns this rule (Snakemake compares params), so the record never lags the study.
        settings=yaml.safe_dump(config, sort_keys=False),
    run:
        # The merged config (files plus --config overrides) is what ran; the report hashes and cites it.
        Path(output[0]).write_text(params.settings)


rule report_summary:
    input:
        qc=rules.qc_table.output[0],
        split=every_fold(rules.split.output[0]),
        losses=every_fold(rules.train.output.losses) if "flowlet" in BACKENDS else [],
        plan=every_fold(rules.plan_synthetic.output.plan),
        grid=every_fold(rules.synthetic_grid.output[0]),
        synthetic_qc=[
            summary
            for backend in BACKENDS
            for manifest in synthetic_manifests(backend)
            for summary in every_fold(manifest.replace("manifest.tsv", "qc_summary.tsv"))
        ],
        scorecard=every_fold(rules.scorecard.output[0]),
        # One split's evaluation, or the folds' pooled one (rule brainage_pooled): the same folder either way.
        brainage=f"{RESULTS}/brainage/metrics.tsv",
        verdict=f"{RESULTS}/brainage/verdict.tsv",
        regions=every_fold(rules.regions.output.table),
        slopes=every_fold(rules.regions.output.slopes),
        config=rules.effective_config.output[0],
    output:
        summary=report(
            f"{RESULTS}/report/summary.md",
            caption="../report/summary.rst",
            category="Summary",
        ),
        environment=report(
            f"{RESULTS}/report/environment.tsv",
            caption="../report/environment.rst",
            category="Runtime",
        ),
        runtime=report(
            f"{RESULTS}/report/runtime.tsv",
            caption="../report/runtime.rst",
            category="Runtime",
        ),
    log:
        f"{LOGS}/report.log",
    conda:
        f"{ENVS}/analysis.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        results=lambda wildcards, input: Path(input.brainage).parents[1],
        benchmarks=BENCHMARKS,
        first_fold=lambda wildcards, input: f"--first-fold {Path(input.split[0]).parents[1]}" if FOLDED else "",
    shell:
        "python -m flowlet report --results-dir {params.results} {params.first_fold} --benchmarks-dir {params.benchmarks} "
        "--config {input.config} --output {output.summary} --environment {output.environment} "
        "--runtime {output.runtime} > {log} 2>&1"
