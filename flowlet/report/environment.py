"""What ran, on what, with which versions: the record a reader needs to reproduce a result."""

from __future__ import annotations

import hashlib
import platform
import subprocess
from importlib import metadata
from pathlib import Path

import yaml

PACKAGES = [
    "flowlet",
    "torch",
    "numpy",
    "scipy",
    "antspyx",
    "nibabel",
    "nilearn",
    "deepbet",
    "scikit-learn",
    "pandas",
    "matplotlib",
    "snakemake",
    "fslpy",
]


def package_versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def torch_record() -> dict[str, str]:
    import torch

    record = {"torch_cuda": torch.version.cuda or "none (CPU build)"}
    if torch.cuda.is_available():
        record["device"] = torch.cuda.get_device_name(0)
        record["cudnn"] = str(torch.backends.cudnn.version())
    else:
        record["device"] = f"CPU ({platform.processor() or platform.machine()})"
    return record


def git_commit(repo: Path) -> str:
    try:
        commit = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return commit + (" with uncommitted changes" if dirty else "")


def config_hash(config: dict) -> str:
    canonical = yaml.safe_dump(config, sort_keys=True).encode()
    return hashlib.sha256(canonical).hexdigest()[:16]


def seeds(config: dict) -> dict[str, str]:
    found = {}
    for section, values in config.items():
        if isinstance(values, dict):
            for key, value in values.items():
                if key in ("seed", "seeds"):
                    found[f"{section}.{key}"] = " ".join(map(str, value)) if isinstance(value, list) else str(value)
    return found


def environment_record(config: dict, repo: Path) -> dict[str, str]:
    record = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "git_commit": git_commit(repo),
        "config_sha256": config_hash(config),
    }
    record.update(torch_record())
    record.update({f"version:{name}": version for name, version in package_versions().items()})
    record.update({f"seed:{name}": value for name, value in seeds(config).items()})
    record["determinism"] = (
        "CPU results are bit-identical for the same config and seeds, given the same thread counts and one thread "
        "per preprocessing job (ANTs registration with several threads varies slightly from run to run); CUDA "
        "convolution and attention kernels are not all deterministic, so GPU runs agree only up to floating-point noise"
    )
    return record
