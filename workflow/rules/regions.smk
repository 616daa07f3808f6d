# Region-based anatomy of real and synthetic brains: tissue volumes per atlas region, the paper's
# paired analysis with its real-versus-real floor, and age trajectories.


rule regions:
    input:
        split=rules.split.output[0],
        synthetic=synthetic_manifests(),
        model=rules.brainage.output.model,
    output:
        table=report(
            f"{RESULTS}/regions/paired_region_summary.tsv",
            caption="../report/regions_paired.rst",
            category="Regions",
        ),
        measures=f"{RESULTS}/regions/regional_measures.tsv",
        slopes=report(
            f"{RESULTS}/regions/slopes.tsv",
            caption="../report/regions_slopes.rst",
            category="Regions",
        ),
    log:
        f"{LOGS}/regions.log",
    benchmark:
        f"{BENCHMARKS}/regions.tsv"
    params:
        flags=cli_flags("regions"),
        output_dir=lambda wildcards, output: Path(output.table).parent,
    threads: 2
    resources:
        mem_mb=8000,
        runtime=120,
    conda:
        f"{ENVS}/analysis.yaml"
    shell:
        "python -m flowlet regions --split {input.split} --synthetic {input.synthetic} --brainage-model {input.model} "
        "--output-dir {params.output_dir} {params.flags} --threads {threads} > {log} 2>&1"
