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
    run:
        # The merged config (files plus --config overrides) is what ran; the report hashes and cites it.
        import yaml

        Path(output[0]).write_text(yaml.safe_dump(config, sort_keys=False))


rule report_summary:
    input:
        qc=rules.qc_table.output[0],
        split=rules.split.output[0],
        losses=rules.train.output.losses if "flowlet" in BACKENDS else [],
        plan=rules.plan_synthetic.output.plan,
        grid=rules.synthetic_grid.output[0],
        synthetic_qc=[
            manifest.replace("manifest.tsv", "qc_summary.tsv")
            for backend in BACKENDS
            for manifest in synthetic_manifests(backend)
        ],
        scorecard=rules.scorecard.output[0],
        brainage=rules.brainage.output.metrics,
        regions=rules.regions.output.table,
        slopes=rules.regions.output.slopes,
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
        results=lambda wildcards, input: Path(input.split).parents[1],
        benchmarks=BENCHMARKS,
    shell:
        "python -m flowlet report --results-dir {params.results} --benchmarks-dir {params.benchmarks} "
        "--config {input.config} --output {output.summary} --environment {output.environment} "
        "--runtime {output.runtime} > {log} 2>&1"
