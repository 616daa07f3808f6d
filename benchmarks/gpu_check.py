"""GPU readiness in one short run: prints device, dtype and batch beside every figure.

On CUDA (an H100/H200 finishes well inside 8 minutes):
1. the base preset's training step at batch 4 in bf16, with PyTorch SDPA attention and, when the xformers package
   is installed (``pip install -e ".[gpu]"``), with xformers: median seconds and peak GiB;
2. one 10-step Euler sample of a 91 x 109 x 91 volume with the base preset;
3. a short training of the ``cpu`` recipe at 2 mm (downsample 1) on ``--split`` (a finished study's split table,
   e.g. results/data/split.tsv of the IXI study; without it, template brains stand in), then samples and the
   share of them that pass the synthetic QC gate against the training images.

On a CPU the same three parts run on the ``smoke`` preset's small network (so the script is tested and works the
day a GPU is lent), labelled as such.

    python benchmarks/gpu_check.py [--split results/data/split.tsv] [--train-steps 300] [--samples 8]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_generator import bench, smoke_at_8mm  # noqa: E402

from flowlet.data.nifti import save_nifti  # noqa: E402
from flowlet.data.templates import mni_grid, template_brain_mask, template_t1  # noqa: E402
from flowlet.generative.data import read_training_table  # noqa: E402
from flowlet.generative.generate import generate, load_generator, ode_settings, requests_from_table  # noqa: E402
from flowlet.generative.synthetic_qc import flag_outliers, read_reference, reference_metrics  # noqa: E402
from flowlet.generative.train import train  # noqa: E402
from flowlet.generative.training_options import TrainingOptions  # noqa: E402
from flowlet.generative.unet import preset_config, preset_training  # noqa: E402


def xformers_installed() -> bool:
    try:
        import xformers.ops  # noqa: F401
    except ImportError:
        return False
    return True


def stand_in_split(folder: Path) -> Path:
    """Six template brains with an age-dependent contrast, as a split table (when no study's split is given)."""
    data = np.asarray(template_t1(2).dataobj, dtype=np.float32)
    mask = np.asarray(template_brain_mask(2).dataobj) > 0
    rows = ["image\tage\tsplit"]
    for index, age in enumerate((22.0, 34.0, 46.0, 58.0, 70.0, 82.0)):
        image = np.where(mask, (data - data[mask].mean()) / data[mask].std() * (1 + (age - 50) / 150), 0.0)
        rows.append(f"{save_nifti(image, mni_grid(2)[1], folder / f'brain_{index}.nii.gz')}\t{age}\ttrain")
    (folder / "split.tsv").write_text("\n".join(rows) + "\n")
    return folder / "split.tsv"


def recipe_check(split: Path, on_gpu: bool, steps: int, samples: int, work: Path, threads: int) -> None:
    settings = {
        **preset_training("cpu"),
        "steps": steps,
        "val_split": 0.0,
        "val_every": 10**6,
        "checkpoint_every": 10**6,
        "log_every": 25,
        "device": "cuda" if on_gpu else "cpu",
    }
    config = preset_config("cpu")
    if on_gpu:
        settings.update(downsample=1, precision="bf16")
        label = "cpu recipe at 2 mm (downsample 1), bf16"
    else:
        settings.update(downsample=4, batch_size=2)
        config = preset_config("smoke")
        label = "cpu recipe, smoke network at 8 mm (CPU stand-in)"
    started = time.perf_counter()
    train(TrainingOptions(table=split, output_dir=work / "run", **settings), config, threads=threads)
    seconds = time.perf_counter() - started
    records = read_training_table(split, ["Age"])
    ages = [record.conditions["Age"] for record in records]
    table = work / "ages.tsv"
    table.write_text(
        "age\tfile\n"
        + "".join(f"{age:.1f}\ts_{i}.nii.gz\n" for i, age in enumerate(np.linspace(min(ages), max(ages), samples)))
    )
    generator = load_generator(work / "run" / "checkpoint_last.pth", device="cuda" if on_gpu else "cpu")
    sampler, flow_steps = ode_settings(generator.config.extra)
    started_sampling = time.perf_counter()
    manifest = generate(
        generator, requests_from_table(table, 1, generator.config), work / "samples", flow_steps, sampler, batch_size=4
    )
    sampling = time.perf_counter() - started_sampling
    reference_path = work / "reference.tsv"
    reference_metrics([record.image for record in records], settings["downsample"]).to_csv(
        reference_path, sep="\t", index=False
    )
    import pandas as pd

    verdicts = flag_outliers(pd.read_csv(manifest, sep="\t"), read_reference(reference_path), 3.0)
    print(
        f"[{label}; {len(records)} training images; batch {settings['batch_size']}] {steps} steps in {seconds:.1f} s "
        f"({steps / seconds:.2f} steps/s); {samples} samples ({flow_steps} {sampler} steps) in {sampling:.1f} s; QC pass rate "
        f"{1 - verdicts['qc_outlier'].mean():.2f}",
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--split", type=Path, help="a study's split table for the recipe check (default: template brains)"
    )
    parser.add_argument("--train-steps", type=int, help="recipe-check steps (default: 600 on CUDA, 20 on a CPU)")
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for torch")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    on_gpu = torch.cuda.is_available()
    device = torch.device("cuda" if on_gpu else "cpu")
    dtype = torch.bfloat16 if on_gpu and torch.cuda.is_bf16_supported() else torch.float32
    name = torch.cuda.get_device_name(device) if on_gpu else "CPU"
    print(
        f"device {device} ({name}); torch {torch.__version__}; dtype {str(dtype).removeprefix('torch.')}; "
        f"xformers {'installed' if xformers_installed() else 'not installed'}",
        flush=True,
    )

    base = preset_config("base") if on_gpu else smoke_at_8mm()
    label = "base (112^3)" if on_gpu else "smoke stand-in for base (CPU)"
    batch = 4 if on_gpu else 2
    attention = [("SDPA", False)] + ([("xformers", True)] if xformers_installed() and on_gpu else [])
    for backend, use_xformers in attention:
        config = dataclasses.replace(base, use_xformers=use_xformers)
        bench(
            f"{label}, {backend}",
            config,
            device,
            dtype,
            batch,
            repeats=3 if on_gpu else 1,
            full_sampling=False,
            warm_up=True,
        )
    if on_gpu:
        # The 10-step sample of a 91 x 109 x 91 volume: bench() above times one step and extrapolates; time it whole.
        from flowlet.generative.solvers import integrate
        from flowlet.generative.unet import FlowUNet
        from flowlet.generative.wavelets import center_crop, idwt3d

        model = FlowUNet(base).to(device).eval()
        noise = torch.randn((1, base.in_channels, *base.wavelet_grid), device=device)
        age = {"Age": torch.full((1, 1), 0.5, device=device)}
        for _ in range(2):  # the first call includes CUDA warm-up
            torch.cuda.synchronize()
            started = time.perf_counter()
            with torch.no_grad(), torch.autocast("cuda", dtype=dtype):
                volume = center_crop(idwt3d(integrate(lambda x, t: model(x, t, age), noise, 10).float()), (91, 109, 91))
            torch.cuda.synchronize()
        print(
            f"[base; device {device}; dtype {str(dtype).removeprefix('torch.')}; batch 1] 10-step sample of "
            f"{list(volume.shape[2:])}: {time.perf_counter() - started:.2f} s",
            flush=True,
        )
        del model

    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        split = args.split or stand_in_split(work)
        steps = args.train_steps or (600 if on_gpu else 20)
        recipe_check(split, on_gpu, steps, args.samples, work, args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
