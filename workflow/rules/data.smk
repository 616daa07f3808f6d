# Inputs: the demo cohort (when no BIDS directory is configured), the participant table and the split.

if DEMO:

    rule phantoms:
        output:
            participants=f"{BIDS_DIR}/participants.tsv",
            images=[T1W[subject] for subject in SUBJECTS],
        log:
            f"{LOGS}/phantoms.log",
        benchmark:
            f"{BENCHMARKS}/phantoms.tsv"
        conda:
            f"{ENVS}/preprocess.yaml"
        threads: 2
        resources:
            mem_mb=4000,
            runtime=20,
        params:
            flags=cli_flags("phantoms"),
            bids_dir=lambda wildcards, output: Path(output.participants).parent,
        shell:
            "python -m flowlet phantoms --output-dir {params.bids_dir} {params.flags} --threads {threads} > {log} 2>&1"


rule participants:
    input:
        participants=f"{BIDS_DIR}/participants.tsv",
        images=[T1W[subject] for subject in SUBJECTS],
    output:
        f"{RESULTS}/data/participants.tsv",
    log:
        f"{LOGS}/participants.log",
    conda:
        f"{ENVS}/preprocess.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        bids_dir=lambda wildcards, input: Path(input.participants).parent,
        flags=cli_flags("data", skip=("bids_dir", "on_error", "external_bids_dir", "external_age_column")),
    shell:
        "python -m flowlet participants --bids-dir {params.bids_dir} {params.flags} --output {output} > {log} 2>&1"


rule split:
    input:
        participants=rules.participants.output[0],
        qc=f"{RESULTS}/qc/qc.tsv",
        # The split table lists these images for every later stage, so they are its inputs: a changed or
        # missing preprocessed image reruns everything that uses it.
        images=[preprocessed(subject)["image"] for subject in SUBJECTS],
    output:
        f"{STUDY}/data/split.tsv",
    log:
        study_log("split"),
    conda:
        f"{ENVS}/analysis.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        flags=cli_flags("split"),
        fold=lambda wildcards: f"--fold {wildcards.fold}" if FOLDED else "",
        image_pattern=lambda wildcards: preprocessed("{participant_id}")["image"],
    shell:
        "python -m flowlet split --participants {input.participants} --qc {input.qc} "
        "--image-pattern '{params.image_pattern}' {params.flags} {params.fold} --output {output} > {log} 2>&1"
