"""The workflow on SLURM: the profile's dry run shows every rule's request, sbatch receives it, and the DAG
scales to a cohort of thousands of subjects. No cluster is needed: dry runs never call SLURM, and the
submission test puts stand-ins for sbatch and sacctmgr first on PATH that record what they were given.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import snakemake_command

from flowlet.data.split import bin_labels

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from bench_dag import fake_bids  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SLURM_PROFILE = REPO / "workflow" / "profiles" / "slurm"
TINY = REPO / "tests" / "configs" / "tiny.yaml"
# Rules of the Snakefile that only name targets: Snakemake runs them on the submitting host, never on SLURM.
TARGET_RULES = {"all", "preprocess_all", "train_generator", "generate_all", "brainage_all", "regions_all"}


def snakemake(workdir: Path, *args: str, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    command = snakemake_command(workdir, *args)
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=REPO, env=env)
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{result.stdout[-6000:]}\n{result.stderr[-6000:]}")
    return result


def job_counts(text: str) -> dict[str, int]:
    """The 'Job stats' table of a dry run."""
    table = text.split("Job stats:")[1].split("total")[0]
    rows = [line.split() for line in table.splitlines()]
    return {row[0]: int(row[1]) for row in rows if len(row) == 2 and row[1].isdigit()}


def job_requests(text: str) -> dict[str, dict[str, str]]:
    """Per rule, the threads and resources its (first) job shows in a dry run."""
    requests: dict[str, dict[str, str]] = {}
    for block in re.split(r"\n\s*\n", text):
        rule = re.search(r"^(?:local)?rule (\w+):", block, re.M)
        if not rule or rule.group(1) in requests:
            continue
        resources = re.search(r"^\s+resources: (.*)$", block, re.M)
        threads = re.search(r"^\s+threads: (\d+)$", block, re.M)
        request = dict(item.split("=", 1) for item in resources.group(1).split(", ")) if resources else {}
        request["threads"] = threads.group(1) if threads else "1"
        requests[rule.group(1)] = request
    return requests


def profile() -> dict:
    return yaml.safe_load((SLURM_PROFILE / "config.yaml").read_text())


def workflow_rules() -> set[str]:
    found = set()
    for smk in (REPO / "workflow" / "rules").glob("*.smk"):
        found.update(re.findall(r"^\s*rule\s+(\w+)\s*:", smk.read_text(), re.M))
        found.update(re.findall(r"^\s*use\s+rule\s+\w+\s+as\s+(\w+)", smk.read_text(), re.M))
    return found


def write_config(path: Path, **sections: dict) -> Path:
    path.write_text(yaml.safe_dump(sections))
    return path


@pytest.fixture(scope="module")
def slurm_dry_run(tmp_path_factory) -> str:
    workdir = tmp_path_factory.mktemp("slurm_dry_run")
    result = snakemake(workdir, "--profile", str(SLURM_PROFILE), "--configfile", str(TINY), "-n")
    return result.stdout + result.stderr


def test_profile_sizes_every_rule_of_the_workflow():
    settings = profile()
    assert settings["executor"] == "slurm"
    rules = workflow_rules()
    assert rules - set(settings["set-resources"]) == set(), "rules without memory and wall time in the SLURM profile"
    assert rules - set(settings["set-threads"]) == set(), "rules without a CPU count in the SLURM profile"
    assert set(settings["set-resources"]) <= rules, "the SLURM profile sizes rules the workflow does not have"
    for rule, resources in settings["set-resources"].items():
        assert {"mem_mb", "runtime"} <= set(resources), rule


def test_slurm_dry_run_shows_each_rules_request(slurm_dry_run):
    settings = profile()
    requests = job_requests(slurm_dry_run)
    submitted = set(job_counts(slurm_dry_run)) - TARGET_RULES
    assert submitted == set(requests) - TARGET_RULES and "preprocess" in submitted
    for rule in submitted:
        expected = settings["set-resources"][rule]
        shown = requests[rule]
        assert shown["mem_mb"] == str(expected["mem_mb"]), rule
        assert shown["runtime"] == str(expected["runtime"]), rule
        assert shown["threads"] == str(settings["set-threads"][rule]), rule
    assert int(requests["preprocess"]["threads"]) > 1
    # The tiny study runs on CPUs: no rule may hold a GPU it cannot use.
    assert all(requests[rule].get("gpu", "0") == "0" for rule in submitted)


def test_slurm_dry_run_asks_for_gpus_where_the_config_says_cuda(tmp_path):
    cuda = write_config(
        tmp_path / "cuda.yaml",
        train_generator={"device": "cuda"},
        generate={"device": "cuda"},
        brainage={"device": "cuda"},
    )
    result = snakemake(tmp_path / "work", "--profile", str(SLURM_PROFILE), "--configfile", str(TINY), str(cuda), "-n")
    requests = job_requests(result.stdout + result.stderr)
    assert {rule: requests[rule].get("gpu") for rule in ("train", "generate", "brainage")} == dict.fromkeys(
        ("train", "generate", "brainage"), "1"
    )
    assert requests["preprocess"].get("gpu", "0") == "0"


def edited_profile(folder: Path, *lines: str) -> Path:
    """A copy of the SLURM profile with the first commented-out occurrence of each line switched on."""
    text = (SLURM_PROFILE / "config.yaml").read_text()
    for line in lines:
        assert f"# {line}" in text, f"the SLURM profile no longer offers `# {line}`"
        text = text.replace(f"# {line}", line, 1)
    folder.mkdir()
    (folder / "config.yaml").write_text(text)
    return folder


def test_gres_alternative_replaces_the_gpu_request(tmp_path):
    edited = edited_profile(tmp_path / "profile", "gres: \"'gpu:1'\"", "gpu: 0")
    cuda = write_config(tmp_path / "cuda.yaml", train_generator={"device": "cuda"})
    result = snakemake(tmp_path / "work", "--profile", str(edited), "--configfile", str(TINY), str(cuda), "-n")
    train = job_requests(result.stdout + result.stderr)["train"]
    assert train["gres"] == "gpu:1" and train["gpu"] == "0"


@pytest.mark.slow
def test_submission_passes_partition_account_and_resources_to_sbatch(tmp_path):
    # The README's first edit: partition and account, once, in default-resources.
    edited = edited_profile(tmp_path / "profile", "slurm_partition: \"'compute'\"", "slurm_account: \"'my_project'\"")

    tools = tmp_path / "bin"
    tools.mkdir()
    # One file per call: the executor submits both jobs at once, and two sbatch processes appending their
    # 8 kB command lines to one file interleave them (dash's printf writes in chunks).
    calls = tmp_path / "sbatch_calls"
    calls.mkdir()
    (tools / "sbatch").write_text(
        f'#!/bin/sh\nprintf "%s\\n" "$*" > "{calls}/$$.txt"\necho "sbatch: error: no cluster here" >&2\nexit 1\n'
    )
    (tools / "sacctmgr").write_text("#!/bin/sh\necho my_project\n")
    for tool in tools.iterdir():
        tool.chmod(0o755)

    bids = fake_bids(tmp_path / "bids", 2)
    workdir = tmp_path / "work"
    (workdir / "results" / "data").mkdir(parents=True)
    (workdir / "results" / "data" / "split.tsv").touch()
    config = write_config(tmp_path / "cluster.yaml", data={"bids_dir": str(bids)}, train_generator={"device": "cuda"})
    env = {**os.environ, "PATH": f"{tools}{os.pathsep}{os.environ['PATH']}"}
    # Only preprocess and train are allowed, so both are ready at once (split.tsv stands in for the rest).
    result = snakemake(
        workdir,
        "--profile",
        str(edited),
        "--configfile",
        str(TINY),
        str(config),
        "--slurm-init-seconds-before-status-checks",
        "1",
        "--allowed-rules",
        "preprocess",
        "train",
        "--",
        "results/preprocess/sub-00001/sub-00001_desc-qc_metrics.tsv",
        "results/generator/checkpoint_best.pth",
        check=False,
        env=env,
    )
    assert result.returncode != 0 and "no cluster here" in result.stdout + result.stderr
    submitted = {
        re.search(r"--comment rule_(\w+?)(?:_wildcards|\s)", line).group(1): line
        for line in (call.read_text().strip() for call in calls.iterdir())
    }
    assert set(submitted) == {"preprocess", "train"}
    settings = profile()
    for rule, line in submitted.items():
        resources = settings["set-resources"][rule]
        for flag in (
            "-p compute",
            "-A my_project",
            f"--mem {resources['mem_mb']}",
            f"-t {resources['runtime']}",
            f"--cpus-per-task={settings['set-threads'][rule]}",
        ):
            assert f" {flag} " in f" {line} ", f"{rule}: {flag!r} not in {line}"
    assert "--gpus=1" in submitted["train"] and "--gpus" not in submitted["preprocess"]


@pytest.mark.slow
def test_dag_for_5000_subjects_has_one_job_per_subject_and_per_age_bin(tmp_path):
    n_subjects = 5000
    bids = fake_bids(tmp_path / "bids", n_subjects)
    config = write_config(tmp_path / "cohort.yaml", data={"bids_dir": str(bids)})
    started = time.perf_counter()
    result = snakemake(tmp_path / "work", "--configfile", str(TINY), str(config), "-n", "--quiet", "rules")
    print(f"dry run for {n_subjects} subjects: {time.perf_counter() - started:.1f} s")
    jobs = job_counts(result.stdout + result.stderr)
    assert jobs["preprocess"] == n_subjects
    # One job per age bin and generator, plus each generator's scorecard evaluation cohort.
    bins = len(bin_labels(yaml.safe_load(TINY.read_text())["split"]["bin_edges"]))
    assert jobs["generate"] == jobs["generate_baseline"] == bins + 1
    assert jobs["synthetic_qc"] == 2 * (bins + 1) and jobs["fit_baseline"] == jobs["scorecard"] == 1
    assert jobs["qc_table"] == jobs["train"] == jobs["participants"] == 1 and "phantoms" not in jobs
