"""How long Snakemake takes to build the study's DAG (a dry run) for a cohort of N subjects; the target is
at most 60 s for 5,000.

The cohort is fake: a BIDS folder with participants.tsv and empty `sub-*/anat/*_T1w.nii.gz` placeholders,
which is all a dry run looks at. Each repeat runs `snakemake -n` in a fresh working directory, so no
metadata from an earlier repeat helps. Also timed: reading the participant table (what the workflow does
at parse time, workflow/rules/common.smk), to separate our share from Snakemake's own. With --cprofile,
one more dry run goes under cProfile and the functions taking the most cumulative time are printed.

    python benchmarks/bench_dag.py                          # 5,000 subjects, 3 repeats
    python benchmarks/bench_dag.py --subjects 20000 --repeats 1 --profile workflow/profiles/slurm --cprofile
"""

from __future__ import annotations

import argparse
import pstats
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from flowlet.data.bids import participant_table  # noqa: E402

TARGET_SECONDS = 60.0


def fake_bids(root: Path, n_subjects: int) -> Path:
    rows = ["participant_id\tage\tsex"]
    for index in range(1, n_subjects + 1):
        subject = f"sub-{index:05d}"
        anat = root / subject / "anat"
        anat.mkdir(parents=True)
        (anat / f"{subject}_T1w.nii.gz").touch()
        rows.append(f"{subject}\t{20 + index % 70}\t{'MF'[index % 2]}")
    (root / "participants.tsv").write_text("\n".join(rows) + "\n")
    return root


def dry_run_command(workdir: Path, configfile: Path, bids: Path, profile: Path | None) -> list[str]:
    command = [
        "-m",
        "snakemake",
        "--snakefile",
        str(REPO / "workflow" / "Snakefile"),
        "--directory",
        str(workdir),
        "--configfile",
        str(configfile),
        "--config",
        f"data={{'bids_dir': '{bids}'}}",
        "-n",
        "--quiet",
        "rules",
    ]
    return command + (["--profile", str(profile)] if profile else [])


def job_counts(output: str) -> dict[str, int]:
    table = output.split("Job stats:")[1].split("total")[0]
    rows = [line.split() for line in table.splitlines()]
    return {row[0]: int(row[1]) for row in rows if len(row) == 2 and row[1].isdigit()}


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed_dry_run(command: list[str], prefix: list[str] = ()) -> tuple[float, str]:
    started = time.perf_counter()
    result = subprocess.run([sys.executable, *prefix, *command], capture_output=True, text=True, cwd=REPO)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"the dry run failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return seconds, result.stdout + result.stderr


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=5000, help="subjects in the fake cohort (default 5000)")
    parser.add_argument("--repeats", type=int, default=3, help="dry runs to take the median of (default 3)")
    parser.add_argument(
        "--configfile",
        type=Path,
        default=REPO / "config" / "config.yaml",
        help="study config; its data.bids_dir is replaced by the fake cohort (default config/config.yaml)",
    )
    parser.add_argument(
        "--profile", type=Path, help="a Snakemake profile to dry-run with, e.g. workflow/profiles/slurm"
    )
    parser.add_argument(
        "--cprofile", action="store_true", help="profile one more dry run and print where the time goes"
    )
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench_dag_") as scratch:
        scratch = Path(scratch)
        started = time.perf_counter()
        bids = fake_bids(scratch / "bids", args.subjects)
        print(f"fake cohort: {args.subjects} subjects written in {time.perf_counter() - started:.1f} s")

        started = time.perf_counter()
        table = participant_table(bids)
        print(f"participant table (parse time, ours): {time.perf_counter() - started:.2f} s for {len(table)} subjects")

        seconds, cpu_seconds = [], []
        for repeat in range(args.repeats):
            workdir = scratch / f"work{repeat}"
            cpu_before = children_cpu_seconds()
            elapsed, output = timed_dry_run(dry_run_command(workdir, args.configfile, bids, args.profile))
            seconds.append(elapsed)
            cpu_seconds.append(children_cpu_seconds() - cpu_before)
        jobs = job_counts(output)
        print(
            f"jobs: {sum(jobs.values())} in all; "
            + ", ".join(f"{rule} {count}" for rule, count in sorted(jobs.items()))
        )
        median = statistics.median(seconds)
        print(
            f"dry run (DAG build) for {args.subjects} subjects: median {median:.1f} s "
            f"(min {min(seconds):.1f}, max {max(seconds):.1f}, {args.repeats} runs); "
            f"CPU time median {statistics.median(cpu_seconds):.1f} s (what the wall time approaches on an idle machine)"
        )
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        print(f"peak memory of the dry run: {peak_mb:.0f} MB")
        print(f"target <= {TARGET_SECONDS:.0f} s: {'met' if median <= TARGET_SECONDS else 'MISSED'}")

        if args.cprofile:
            stats_file = scratch / "dry_run.prof"
            command = dry_run_command(scratch / "work_profiled", args.configfile, bids, args.profile)
            elapsed, _ = timed_dry_run(command, prefix=["-m", "cProfile", "-o", str(stats_file)])
            print(f"\nunder cProfile ({elapsed:.1f} s, inflated by the profiler), by cumulative time:")
            where = r"snakemake/(dag|jobs|rules|workflow)\.py|flowlet|common\.smk"
            pstats.Stats(str(stats_file)).sort_stats("cumulative").print_stats(where, 25)
    return 0


if __name__ == "__main__":
    sys.exit(main())
