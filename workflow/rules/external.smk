# An external cohort (data.external_bids_dir): a second BIDS dataset, preprocessed by the same rules and QC'd
# on its own, used only as the brain-age external test set. Its subjects never reach the split, the
# generator or any training set; their outputs live under results/external/.

if EXTERNAL_DIR:

    use rule participants as participants_external with:
        input:
            participants=f"{EXTERNAL_DIR}/participants.tsv",
            images=list(EXTERNAL_T1W.values()),
        output:
            f"{RESULTS}/{EXTERNAL}/data/participants.tsv",
        log:
            f"{LOGS}/{EXTERNAL}/participants.log",
        params:
            bids_dir=EXTERNAL_DIR,
            flags=EXTERNAL_COLUMN_FLAGS,

    use rule preprocess as preprocess_external with:
        input:
            t1w=lambda wildcards: EXTERNAL_T1W[wildcards.subject],
        output:
            image=preprocessed("{subject}", EXTERNAL)["image"],
            mask=preprocessed("{subject}", EXTERNAL)["mask"],
            transform=preprocessed("{subject}", EXTERNAL)["transform"],
            qc_png=preprocessed("{subject}", EXTERNAL)["qc_png"],
            qc_tsv=preprocessed("{subject}", EXTERNAL)["qc_tsv"],
        log:
            f"{LOGS}/{EXTERNAL}/preprocess/{{subject}}.log",
        benchmark:
            f"{BENCHMARKS}/{EXTERNAL}/preprocess/{{subject}}.tsv"

    use rule qc_table as qc_table_external with:
        input:
            participants=f"{RESULTS}/{EXTERNAL}/data/participants.tsv",
            tables=[preprocessed(subject, EXTERNAL)["qc_tsv"] for subject in EXTERNAL_T1W],
        output:
            report(
                f"{RESULTS}/{EXTERNAL}/qc/qc.tsv",
                caption="../report/qc_table.rst",
                category="Preprocessing QC",
                subcategory="External cohort",
            ),
        log:
            f"{LOGS}/{EXTERNAL}/qc_table.log",
        params:
            flags=cli_flags("qc"),
            pattern=lambda wildcards: preprocessed("{participant_id}", EXTERNAL)["qc_tsv"],

    use rule split as split_external with:
        input:
            participants=f"{RESULTS}/{EXTERNAL}/data/participants.tsv",
            qc=f"{RESULTS}/{EXTERNAL}/qc/qc.tsv",
            images=[preprocessed(subject, EXTERNAL)["image"] for subject in EXTERNAL_T1W],
        output:
            EXTERNAL_SPLIT,
        log:
            f"{LOGS}/{EXTERNAL}/split.log",
        params:
            flags=f"--evaluation-only --bin-edges {' '.join(map(str, config['split']['bin_edges']))}",
            fold="",
            image_pattern=lambda wildcards: preprocessed("{participant_id}", EXTERNAL)["image"],
