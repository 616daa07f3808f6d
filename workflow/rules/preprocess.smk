# Per-subject preprocessing: N4, skull stripping, registration to MNI152, z-scoring, QC picture and metrics.


rule preprocess:
    input:
        t1w=lambda wildcards: T1W[wildcards.subject],
    output:
        image=preprocessed("{subject}")["image"],
        mask=preprocessed("{subject}")["mask"],
        transform=preprocessed("{subject}")["transform"],
        qc_png=report(
            preprocessed("{subject}")["qc_png"],
            caption="../report/preprocess_qc.rst",
            category="Preprocessing QC",
            subcategory="Subjects",
            labels={"subject": "{subject}"},
        ),
        qc_tsv=preprocessed("{subject}")["qc_tsv"],
    log:
        f"{LOGS}/preprocess/{{subject}}.log",
    benchmark:
        f"{BENCHMARKS}/preprocess/{{subject}}.tsv"
    conda:
        f"{ENVS}/preprocess.yaml"
    # One thread per subject: subjects are independent, so parallel jobs use the cores better than threads.
    threads: 1
    resources:
        mem_mb=3000,
        runtime=30,
    params:
        flags=cli_flags("preprocess"),
        on_error=config["data"]["on_error"],
    shell:
        "python -m flowlet preprocess {input.t1w} --subject {wildcards.subject} "
        "--brain-mask {output.mask} --output {output.image} --transform {output.transform} "
        "--qc-png {output.qc_png} --qc-tsv {output.qc_tsv} --on-error {params.on_error} "
        "{params.flags} --threads {threads} > {log} 2>&1"
