# Cohort-level QC: one table of every subject's metrics, outliers flagged and listed first.


rule qc_table:
    input:
        [preprocessed(subject)["qc_tsv"] for subject in SUBJECTS],
    output:
        report(
            f"{RESULTS}/qc/qc.tsv",
            caption="../report/qc_table.rst",
            category="Preprocessing QC",
            subcategory="Cohort",
        ),
    log:
        f"{LOGS}/qc_table.log",
    conda:
        f"{ENVS}/preprocess.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        flags=cli_flags("qc"),
    shell:
        "python -m flowlet qc --inputs {input} --output {output} {params.flags} > {log} 2>&1"
