"""Generator speed and memory: training-step time, peak memory and sampling time per volume.

For the `smoke` preset (16 channels, multipliers 1,2) on the 8 mm working grid of --downsample 4, the `cpu` preset
(on its 8 mm grid, and its network on the 4 mm grid) and the paper's base configuration at 112^3 (356 M parameters), on the CPU and, when
available, on CUDA, in these dtypes: on CUDA bf16 where supported (else fp32); on a CPU fp32, and also bf16 where
the CPU has native bf16 arithmetic (not for the base network). Each figure is printed with its device, dtype and
batch size. The base network is far too slow on a CPU to sample 100 steps, so there it times single steps (with
--quick only a sampling step) and states the extrapolated sampling time as such.

    python benchmarks/bench_generator.py [--quick] [--threads N]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time

import torch

from flowlet.data.templates import mni_grid
from flowlet.generative.flows import get_flow
from flowlet.generative.loss import wavelet_flow_loss
from flowlet.generative.precision import cpu_has_native_bf16
from flowlet.generative.solvers import integrate
from flowlet.generative.training_setup import fit_config_to_data
from flowlet.generative.unet import FlowUNet, parameter_count, preset_config
from flowlet.generative.wavelets import idwt3d


def on_working_grid(config, downsample: int):
    """``config`` on the working grid of 2 mm MNI images at 1/``downsample``, fitted as training fits it."""
    return fit_config_to_data(config, mni_grid(2)[0], downsample)


def smoke_at_8mm():
    """The smoke network on the 8 mm working grid (downsample 4)."""
    return on_working_grid(preset_config("smoke"), 4)


def configurations():
    return {
        "smoke (8 mm grid 24x28x24)": smoke_at_8mm(),
        "cpu preset (8 mm, model input 24x32x24)": preset_config("cpu"),
        "cpu network at 4 mm (model input 48x56x48)": on_working_grid(preset_config("cpu"), 2),
        "base (112^3)": preset_config("base"),
    }


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB allocated (CUDA peak)"
    return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB process peak RSS so far"


def timed(function, repeats: int, device: torch.device, warm_up: bool = True) -> float:
    """Median seconds over ``repeats`` calls, after one untimed warm-up call when ``warm_up``."""
    if warm_up:
        function()
    times = []
    for _ in range(repeats):
        synchronise(device)
        start = time.perf_counter()
        function()
        synchronise(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench(
    name: str,
    config,
    device: torch.device,
    dtype: torch.dtype,
    batch: int,
    repeats: int,
    full_sampling: bool,
    warm_up: bool,
    time_training: bool = True,
) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    model = FlowUNet(config).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    flow = get_flow("rectified")
    shape = (batch, config.in_channels, *config.wavelet_grid)
    conditions = {"Age": torch.full((batch, 1), 0.5, device=device)}
    autocast = dtype != torch.float32
    x1 = torch.randn(shape, device=device)

    def train_step() -> None:
        x0 = torch.randn(shape, device=device)
        t = torch.rand(batch, device=device)
        x_t, target = flow.sample_path(x0, x1, t)
        with torch.autocast(device.type, dtype=dtype, enabled=autocast):
            loss, _, _ = wavelet_flow_loss(model(x_t, t, conditions), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    label = f"[{name}; {parameter_count(config) / 1e6:.1f} M params; device {device}; dtype {str(dtype).removeprefix('torch.')}; batch {batch}]"
    if time_training:
        step_seconds = timed(train_step, repeats, device, warm_up)
        print(f"{label} training step: {step_seconds:.3f} s median of {repeats}; {peak_memory(device)}", flush=True)
    else:
        print(f"{label} training step: not timed (--quick; one step takes minutes here)", flush=True)

    model.eval()
    noise = torch.randn((1, *shape[1:]), device=device)
    one = {"Age": conditions["Age"][:1]}

    def sample(num_steps: int) -> None:
        with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=autocast):
            idwt3d(integrate(lambda x, t: model(x, t, one), noise, num_steps).float())

    if full_sampling:
        for steps in (10, 100):
            seconds = timed(lambda steps=steps: sample(steps), max(1, repeats // 2) if steps == 10 else 1, device)
            print(f"{label} sampling {steps} Euler steps: {seconds:.2f} s per volume (batch 1)", flush=True)
    else:
        seconds = timed(lambda: sample(1), 1, device, warm_up)
        for steps in (10, 100):
            print(
                f"{label} sampling {steps} Euler steps: ~{steps * seconds:.1f} s per volume, extrapolated from "
                f"one timed step of {seconds:.2f} s (batch 1)",
                flush=True,
            )


def dtypes_to_time(device: torch.device, is_base: bool) -> list[torch.dtype]:
    if device.type == "cuda":
        return [torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32]
    return [torch.float32] + ([torch.bfloat16] if cpu_has_native_bf16() and not is_base else [])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="fewer repeats; the base network: single steps on CUDA, only one sampling step on a CPU",
    )
    parser.add_argument("--threads", type=int, help="CPU threads for torch")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads", flush=True)
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    for device in devices:
        on_gpu = device.type == "cuda"
        for name, config in configurations().items():
            is_base = name.startswith("base")
            slow = is_base and (args.quick or not on_gpu)  # the base network on a CPU: single timed steps only
            repeats = 1 if slow else (3 if args.quick else 5)
            batch = 1 if is_base and not on_gpu else 4
            for dtype in dtypes_to_time(device, is_base):
                bench(
                    name,
                    config,
                    device,
                    dtype,
                    batch,
                    repeats,
                    full_sampling=not slow,
                    warm_up=not slow,
                    time_training=not (is_base and args.quick and not on_gpu),
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
