"""What a per-subject segmentation job costs with and without the cache of derived templates.

A study runs one `flowlet measure-images` job per real subject and per synthetic age bin, so what each job
pays before it segments anything (imports, the template's tissue priors and the atlas on FSL's grid) is paid
hundreds of times. This runs the job the workflow runs on one image, alternating: the cache off
(``FLOWLET_CACHE_DIR=off``: nilearn imported, 1 mm images resampled, as before the cache) and a warm cache
(a temporary folder filled by a first run), and prints each run's wall and CPU seconds and the medians. The
image is the MNI152 template itself, z-scored inside its brain mask (any MNI-grid image segments the same way).

    python benchmarks/bench_job_startup.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from flowlet.data.cache import CACHE_ENV, DISABLED  # noqa: E402
from flowlet.data.masks import zscore_in_mask  # noqa: E402
from flowlet.data.nifti import save_nifti  # noqa: E402
from flowlet.data.templates import mni_grid, template_brain_mask, template_t1  # noqa: E402


def run_job(image: Path, output_dir: Path, cache: str) -> tuple[float, float]:
    """(wall, CPU) seconds of one `flowlet measure-images` process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "flowlet", "measure-images", "--images", str(image), "--output-dir", str(output_dir)],
        cwd=REPO,
        env={**os.environ, CACHE_ENV: cache},
        check=True,
        capture_output=True,
    )
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        mask = template_brain_mask(2).get_fdata() > 0
        image = work / "template_z.nii.gz"
        save_nifti(zscore_in_mask(template_t1(2).get_fdata(dtype=np.float32), mask), mni_grid(2)[1], image)
        cache = work / "cache"
        run_job(image, work / "warm-up", str(cache))
        timings: dict[str, list[tuple[float, float]]] = {"cache off": [], "warm cache": []}
        for repeat in range(args.repeats):
            for label, setting in (("cache off", DISABLED), ("warm cache", str(cache))):
                wall, cpu = run_job(image, work / f"{label}-{repeat}", setting)
                timings[label].append((wall, cpu))
                print(f"{label}\trepeat {repeat + 1}\twall {wall:.2f} s\tCPU {cpu:.2f} s", flush=True)
        for label, runs in timings.items():
            print(
                f"{label}: median wall {statistics.median(w for w, _ in runs):.2f} s, "
                f"median CPU {statistics.median(c for _, c in runs):.2f} s per job"
            )


if __name__ == "__main__":
    main()
