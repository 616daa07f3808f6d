# Cohort-level QC: one table of every subject's metrics, outliers flagged and listed first.


rule qc_table:
    input:
        participants=rules.participants.output[0],
        tables=[preprocessed(subject)["qc_tsv"] for subject in SUBJECTS],
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
        # A pattern, not thousands of paths on one command line; every file it names is an input above.
        pattern=lambda wildcards: preprocessed("{participant_id}")["qc_tsv"],
    shell:
        "python -m flowlet qc --participants {input.participants} --input-pattern '{params.pattern}' "
        "--output {output} {params.flags} > {log} 2>&1"
