# The wavelet flow-matching generator: training on the real training split, the per-bin synthetic
# plan, generation as one job per age bin or per chunk of one (so they run in parallel on a cluster), the
# QC gate that merges each bin's chunks, and a preview grid.
# Training runs in generator/training/, which is not a declared output: Snakemake deletes the declared
# outputs of a failed or interrupted job (and any before a job starts), and a rerun resumes from that
# folder's checkpoint_last.pth with its loss log and best checkpoint intact. The declared outputs are
# copied from it once training has finished, so an interrupted run never leaves them looking complete.
# A rerun for changed settings or training subjects does not resume: `flowlet train` moves the old run into
# generator/training/superseded-<UTC time>/ and starts afresh.

from flowlet.generative.chunks import chunks_per_bin  # noqa: E402

# Keys of the generate section that configure the QC rules or choose the backend, not `flowlet generate` options.
GENERATE_QC_KEYS = ("qc_gate", "qc_max_robust_z", "qc_reference_max_images", "backend", "scorecard_samples")
# From the config, not the plan, so that dry runs list every generation job and the DAG is built once (a
# checkpoint on the plan would hide them until it had run); chunks past a bin's actual count are empty.
GENERATION_CHUNKS = range(
    max(
        chunks_per_bin(config["generate"]["chunk_size"], config["plan_synthetic"]),
        chunks_per_bin(config["generate"]["chunk_size"], {"max_per_bin": config["generate"]["scorecard_samples"]}),
    )
)


rule train:
    input:
        split=rules.split.output[0],
    output:
        checkpoint=f"{STUDY}/generator/checkpoint_best.pth",
        config=f"{STUDY}/generator/config.json",
        ranges=f"{STUDY}/generator/condition_ranges.json",
        losses=f"{STUDY}/generator/loss.tsv",
        plot=report(
            f"{STUDY}/generator/loss.png",
            caption="../report/generator_loss.rst",
            category="Generator",
        ),
    log:
        study_log("train_generator"),
    benchmark:
        study_benchmark("train_generator")
    # The study's longest job and on its critical path: it starts as soon as the split exists, before jobs
    # that can as well run while it trains.
    priority: 10
    conda:
        f"{ENVS}/generative.yaml"
    threads: 2
    resources:
        mem_mb=16000,
        runtime=1440,
        gpu=1 if config["train_generator"]["device"] == "cuda" else 0,
    params:
        flags=cli_flags("train_generator", skip=("downsample",)),
        downsample=GENERATOR_DOWNSAMPLE,
        run_dir=f"{STUDY}/generator/training",
    shell:
        "python -m flowlet train {input.split} --output-dir {params.run_dir} {params.flags} "
        "--downsample {params.downsample} --threads {threads} > {log} 2>&1 && "
        "for output in {output}; do cp {params.run_dir}/$(basename $output) $output; done"


rule plan_synthetic:
    input:
        split=rules.split.output[0],
    output:
        plan=report(
            f"{STUDY}/synthetic/plan.tsv",
            caption="../report/synthetic_plan.rst",
            category="Synthetic cohorts",
        ),
        ages=expand(
            f"{STUDY}/synthetic/ages/bin-{{age_bin}}_ages.tsv", age_bin=AGE_BINS + EVALUATION_BINS, allow_missing=True
        ),
    log:
        study_log("plan_synthetic"),
    conda:
        f"{ENVS}/analysis.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        flags=cli_flags("plan_synthetic"),
        bin_edges=" ".join(str(edge) for edge in config["split"]["bin_edges"]),
        ages_dir=lambda wildcards, output: Path(output.ages[0]).parent,
        evaluation=config["generate"]["scorecard_samples"],
    shell:
        "python -m flowlet plan --split {input.split} --bin-edges {params.bin_edges} {params.flags} "
        "--output {output.plan} --ages-dir {params.ages_dir} --evaluation-count {params.evaluation} > {log} 2>&1"


rule generate:
    input:
        checkpoint=rules.train.output.checkpoint,
        config=rules.train.output.config,
        ranges=rules.train.output.ranges,
        ages=f"{STUDY}/synthetic/ages/bin-{{age_bin}}_ages.tsv",
    output:
        manifest=f"{STUDY}/synthetic/bin-{{age_bin}}/chunk-{{chunk}}_manifest.tsv",
    log:
        study_log("generate/bin-{age_bin}_chunk-{chunk}"),
    benchmark:
        study_benchmark("generate/bin-{age_bin}_chunk-{chunk}")
    wildcard_constraints:
        chunk="[0-9]+",
    priority: evaluation_first
    conda:
        f"{ENVS}/generative.yaml"
    # One thread: bins are independent jobs, and a 2-thread job would wait for two free cores while
    # one-thread segmentation jobs hold one (the demo lost minutes that way); a cluster sets more.
    threads: 1
    resources:
        mem_mb=8000,
        runtime=240,
        gpu=1 if config["generate"]["device"] == "cuda" else 0,
    params:
        flags=cli_flags("generate", skip=GENERATE_QC_KEYS),
        output_dir=lambda wildcards, output: Path(output.manifest).parent,
    shell:
        "python -m flowlet generate --checkpoint-path {input.checkpoint} --config-path {input.config} "
        "--condition-ranges-path {input.ranges} --ages-tsv {input.ages} --output-dir {params.output_dir} "
        "--manifest {output.manifest} --chunk {wildcards.chunk} {params.flags} --threads {threads} > {log} 2>&1"


rule fit_baseline:
    input:
        split=rules.split.output[0],
        # Not read: the baseline's chain of one-thread jobs waits for training. Snakemake does not hold cores
        # back for a job that needs several, so with them ready training waited for two free cores (133 s of
        # the demo). So retraining reruns the baseline's jobs too (the same volumes for the same settings). Not
        # ancient(): while training reruns, Snakemake 9 then skips the baseline's own checks, and a new
        # downsample retrained FlowLet but kept the baseline at the old resolution.
        after_training=rules.train.output.config if "flowlet" in BACKENDS else [],
    output:
        f"{STUDY}/baseline/linear_model.npz",
    log:
        study_log("fit_baseline"),
    benchmark:
        study_benchmark("fit_baseline")
    conda:
        f"{ENVS}/generative.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        downsample=GENERATOR_DOWNSAMPLE,
    shell:
        "python -m flowlet fit-baseline {input.split} --downsample {params.downsample} --output {output} > {log} 2>&1"


rule generate_baseline:
    input:
        model=rules.fit_baseline.output[0],
        ages=f"{STUDY}/synthetic/ages/bin-{{age_bin}}_ages.tsv",
    output:
        manifest=f"{STUDY}/synthetic_baseline/bin-{{age_bin}}/chunk-{{chunk}}_manifest.tsv",
    log:
        study_log("generate_baseline/bin-{age_bin}_chunk-{chunk}"),
    benchmark:
        study_benchmark("generate_baseline/bin-{age_bin}_chunk-{chunk}")
    wildcard_constraints:
        chunk="[0-9]+",
    priority: evaluation_first
    conda:
        f"{ENVS}/generative.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        flags=cli_flags("generate", only=("seed", "batch_size", "chunk_size")),
        output_dir=lambda wildcards, output: Path(output.manifest).parent,
    shell:
        "python -m flowlet generate --backend linear --checkpoint-path {input.model} --ages-tsv {input.ages} "
        "--output-dir {params.output_dir} --manifest {output.manifest} --chunk {wildcards.chunk} {params.flags} "
        "> {log} 2>&1"


rule synthetic_qc_reference:
    input:
        split=rules.split.output[0],
    output:
        f"{STUDY}/synthetic/qc_reference.tsv",
    log:
        study_log("synthetic_qc_reference"),
    benchmark:
        study_benchmark("synthetic_qc_reference")
    conda:
        f"{ENVS}/generative.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=60,
    params:
        max_images=config["generate"]["qc_reference_max_images"],
        downsample=GENERATOR_DOWNSAMPLE,
    shell:
        "python -m flowlet synthetic-qc reference --split {input.split} --downsample {params.downsample} "
        "--max-images {params.max_images} --output {output} > {log} 2>&1"


# One gate for both generators: {generated} is synthetic (FlowLet) or synthetic_baseline (the linear baseline).
rule synthetic_qc:
    input:
        chunks=expand(
            f"{STUDY}/{{{{generated}}}}/bin-{{{{age_bin}}}}/chunk-{{chunk}}_manifest.tsv",
            chunk=GENERATION_CHUNKS,
            allow_missing=True,
        ),
        reference=rules.synthetic_qc_reference.output[0],
    output:
        manifest=f"{STUDY}/{{generated}}/bin-{{age_bin}}/manifest.tsv",
        summary=f"{STUDY}/{{generated}}/bin-{{age_bin}}/qc_summary.tsv",
    log:
        study_log("{generated}_qc/bin-{age_bin}"),
    benchmark:
        study_benchmark("{generated}_qc/bin-{age_bin}")
    wildcard_constraints:
        generated="synthetic|synthetic_baseline",
    priority: evaluation_first
    conda:
        f"{ENVS}/generative.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        flags=qc_gate_flags,
    shell:
        "python -m flowlet synthetic-qc gate --manifests {input.chunks} --reference {input.reference} "
        "--output {output.manifest} --summary {output.summary} --age-bin {wildcards.age_bin} {params.flags} "
        "> {log} 2>&1"


rule synthetic_grid:
    input:
        manifests=synthetic_manifests("flowlet") or synthetic_manifests("linear"),
    output:
        report(
            f"{STUDY}/synthetic/grid.png",
            caption="../report/synthetic_grid.rst",
            category="Synthetic cohorts",
        ),
    log:
        study_log("synthetic_grid"),
    conda:
        f"{ENVS}/analysis.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "python -m flowlet synthetic-grid --manifests {input.manifests} --output {output} > {log} 2>&1"
