# The wavelet flow-matching generator: training on the real training split, the per-bin synthetic
# plan, generation as one job per age bin (so bins run in parallel on a cluster), and a preview grid.
# checkpoint_last.pth is deliberately not a declared output: Snakemake deletes declared outputs of a
# failed or interrupted job, and training resumes from that file.


rule train:
    input:
        split=rules.split.output[0],
    output:
        checkpoint=f"{RESULTS}/generator/checkpoint_best.pth",
        config=f"{RESULTS}/generator/config.json",
        ranges=f"{RESULTS}/generator/condition_ranges.json",
        losses=f"{RESULTS}/generator/loss.tsv",
        plot=report(
            f"{RESULTS}/generator/loss.png",
            caption="../report/generator_loss.rst",
            category="Generator",
        ),
    log:
        f"{LOGS}/train_generator.log",
    benchmark:
        f"{BENCHMARKS}/train_generator.tsv"
    params:
        flags=cli_flags("train_generator"),
        output_dir=lambda wildcards, output: Path(output.checkpoint).parent,
    threads: 2
    resources:
        mem_mb=16000,
        runtime=1440,
        gpu=1 if config["train_generator"]["device"] == "cuda" else 0,
    conda:
        f"{ENVS}/generative.yaml"
    shell:
        "python -m flowlet train {input.split} --output-dir {params.output_dir} {params.flags} "
        "--threads {threads} > {log} 2>&1"


rule plan_synthetic:
    input:
        split=rules.split.output[0],
    output:
        plan=report(
            f"{RESULTS}/synthetic/plan.tsv",
            caption="../report/synthetic_plan.rst",
            category="Synthetic cohorts",
        ),
        ages=expand(f"{RESULTS}/synthetic/ages/bin-{{age_bin}}_ages.tsv", age_bin=AGE_BINS),
    log:
        f"{LOGS}/plan_synthetic.log",
    params:
        flags=cli_flags("plan_synthetic"),
        bin_edges=" ".join(str(edge) for edge in config["split"]["bin_edges"]),
        ages_dir=lambda wildcards, output: Path(output.ages[0]).parent,
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        f"{ENVS}/analysis.yaml"
    shell:
        "python -m flowlet plan --split {input.split} --bin-edges {params.bin_edges} {params.flags} "
        "--output {output.plan} --ages-dir {params.ages_dir} > {log} 2>&1"


rule generate:
    input:
        checkpoint=rules.train.output.checkpoint,
        config=rules.train.output.config,
        ranges=rules.train.output.ranges,
        ages=f"{RESULTS}/synthetic/ages/bin-{{age_bin}}_ages.tsv",
    output:
        manifest=f"{RESULTS}/synthetic/bin-{{age_bin}}/manifest.tsv",
    log:
        f"{LOGS}/generate/bin-{{age_bin}}.log",
    benchmark:
        f"{BENCHMARKS}/generate/bin-{{age_bin}}.tsv"
    params:
        flags=cli_flags("generate"),
        output_dir=lambda wildcards, output: Path(output.manifest).parent,
    threads: 2
    resources:
        mem_mb=8000,
        runtime=240,
        gpu=1 if config["generate"]["device"] == "cuda" else 0,
    conda:
        f"{ENVS}/generative.yaml"
    shell:
        "python -m flowlet generate --checkpoint_path {input.checkpoint} --config_path {input.config} "
        "--condition_ranges_path {input.ranges} --ages-tsv {input.ages} --output_dir {params.output_dir} "
        "{params.flags} > {log} 2>&1"


rule synthetic_grid:
    input:
        manifests=synthetic_manifests(),
    output:
        report(
            f"{RESULTS}/synthetic/grid.png",
            caption="../report/synthetic_grid.rst",
            category="Synthetic cohorts",
        ),
    log:
        f"{LOGS}/synthetic_grid.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        f"{ENVS}/analysis.yaml"
    shell:
        "python -m flowlet synthetic-grid --manifests {input.manifests} --output {output} > {log} 2>&1"
