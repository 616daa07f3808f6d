"""Speed and memory of `flowlet preprocess` on real IXI scans (2 mm), one process per scan, --threads 2.

Each scan runs as its own `flowlet preprocess` process (so model loading and
imports count, as in the workflow), writing its QC row; the per-step seconds
come from that row, the peak resident memory from the process's rusage.

    python benchmarks/bench_preprocess.py [--ixi ../shared/data/ixi] [--subjects 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from preprocess_options import IXI_DIR

STEPS = ("seconds_n4", "seconds_skullstrip", "seconds_register", "seconds_total")


def run_one(t1w: Path, workdir: Path, threads: int, extra: list[str]) -> tuple[dict, float, float]:
    """(QC row, wall seconds of the whole process, peak resident memory in MiB)."""
    qc_tsv = workdir / "qc.tsv"
    command = [
        sys.executable,
        "-m",
        "flowlet.cli",
        "preprocess",
        str(t1w),
        "--brain-mask",
        str(workdir / "mask.nii.gz"),
        "--output",
        str(workdir / "mni.nii.gz"),
        "--transform",
        str(workdir / "xfm.mat"),
        "--qc-tsv",
        str(qc_tsv),
        "--threads",
        str(threads),
        *extra,
    ]
    environment = dict(os.environ, OMP_NUM_THREADS=str(threads))
    start = time.perf_counter()
    process = subprocess.Popen(command, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    stderr = process.stderr.read()
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{t1w.name} failed:\n{stderr.decode(errors='replace')}")
    # Linux reports ru_maxrss in KiB.
    return pd.read_csv(qc_tsv, sep="\t").iloc[0].to_dict(), wall, usage.ru_maxrss / 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ixi", type=Path, default=IXI_DIR)
    parser.add_argument("--subjects", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("extra", nargs=argparse.REMAINDER, help="further `flowlet preprocess` flags, after --")
    args = parser.parse_args()
    extra = [flag for flag in args.extra if flag != "--"]

    participants = pd.read_csv(args.ixi / "participants.tsv", sep="\t")["participant_id"].tolist()[: args.subjects]
    rows = []
    for subject in participants:
        with tempfile.TemporaryDirectory(prefix="flowlet-bench-") as workdir:
            t1w = args.ixi / subject / "anat" / f"{subject}_T1w.nii.gz"
            qc_row, wall, peak_mib = run_one(t1w, Path(workdir), args.threads, extra)
        rows.append({**{step: qc_row[step] for step in STEPS}, "process_wall": wall, "peak_rss_mib": peak_mib})
        print(f"{subject}: " + "  ".join(f"{k} {v:.2f}" for k, v in rows[-1].items()), flush=True)
    table = pd.DataFrame(rows)
    print(f"\n{len(table)} IXI scans (2 mm), --threads {args.threads}, os.cpu_count() {os.cpu_count()}")
    print(f"{'step':>20}  median   max")
    for column in (*STEPS, "process_wall"):
        print(f"{column:>20}  {np.median(table[column]):6.2f} s  {table[column].max():6.2f} s")
    print(f"{'peak RSS':>20}  {np.median(table['peak_rss_mib']):6.0f} MiB  {table['peak_rss_mib'].max():6.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
