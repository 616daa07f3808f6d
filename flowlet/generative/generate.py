"""Sampling synthetic brains of requested ages from a trained generator and saving them in MNI space.

Path of one sample: Gaussian noise in wavelet space (8 channels at half the model input size) ->
integrate the learned velocity from t = 0 to 1 -> inverse Haar transform -> clamp to [-1, 1] ->
centre-crop to the save size (or, for models trained with ``downsample`` > 1, crop at the working
resolution and upsample to the save grid) -> intensity convention -> NIfTI with the MNI template affine.

Sample k of request i uses noise from its own generator seeded by (seed, i, k), so outputs do not depend
on the batch size, on the chunk of requests a job takes (:mod:`flowlet.generative.chunks`) or on which
other samples are generated in the same run.

Each volume's QC metrics (:mod:`flowlet.generative.synthetic_qc`) are measured on the generator's [-1, 1]
output before the intensity convention and written to the manifest beside its conditions and seed.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from flowlet.data.masks import zscore_in_mask
from flowlet.data.nifti import save_nifti
from flowlet.data.templates import MNI_GRIDS, template_brain_mask
from flowlet.errors import FlowletError
from flowlet.generative.checkpoint import model_from_payload, read_checkpoint
from flowlet.generative.conditions import ConditionRange, load_condition_ranges, normalise_conditions
from flowlet.generative.data import SEX_CODES, upsample_to_grid, working_shape
from flowlet.generative.requests import (
    CONDITION_COLUMNS,
    SOLVER_METHODS,
    SampleRequest,
    read_ages_table,
    write_manifest,
)
from flowlet.generative.sampling_spec import SamplingSpec, sampling_spec
from flowlet.generative.seeds import derived_seed
from flowlet.generative.solvers import guided_velocity, integrate
from flowlet.generative.synthetic_qc import TemplateQC, qc_metrics
from flowlet.generative.unet import FlowUNet, UNetConfig
from flowlet.generative.wavelets import center_crop, idwt3d

log = logging.getLogger(__name__)

INTENSITY_CONVENTIONS = ("zscore", "unit")
OUTPUT_PREFIX = "FlowLet_synthetic_brain"


@dataclass
class Generator:
    model: FlowUNet
    config: UNetConfig
    condition_ranges: dict[str, ConditionRange]
    uses_ema: bool
    spec: SamplingSpec = field(default_factory=SamplingSpec)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def downsample(self) -> int:
        return self.spec.downsample

    @property
    def default_save_size(self) -> tuple[int, int, int]:
        return tuple(self.spec.full_resolution_size or self.config.save_size)


def ode_settings(
    config_extra: Mapping[str, object], sampler: str | None = None, num_steps: int | None = None, where: str = "config"
) -> tuple[str, int]:
    """The solver and step count a generator samples with: those given, else the ones its config records (the
    cpu preset records what its recipe was measured with), else the reference's Euler and 10 steps."""
    sampler = sampler or str(config_extra.get("sampler", "euler"))
    if sampler not in SOLVER_METHODS:
        raise FlowletError(f"{where}: the sampler must be one of {list(SOLVER_METHODS)}, got {sampler!r}")
    num_steps = int(config_extra.get("num_flow_steps", 10)) if num_steps is None else num_steps
    if num_steps < 1:
        raise FlowletError(f"{where}: the number of ODE steps must be at least 1, got {num_steps}")
    return sampler, num_steps


def load_generator(
    checkpoint_path: str | Path,
    config_path: str | Path | None = None,
    condition_ranges_path: str | Path | None = None,
    use_ema: bool = True,
    device: str | torch.device = "cpu",
) -> Generator:
    """The network (EMA weights when present and wanted), its config and the condition ranges.

    Condition ranges come from ``condition_ranges_path``, else the checkpoint folder's
    condition_ranges.json, else the ranges a FlowLet training checkpoint carries.
    """
    device = torch.device(device)
    checkpoint_path = Path(checkpoint_path)
    payload = read_checkpoint(checkpoint_path, map_location=device)
    model, config = model_from_payload(payload, checkpoint_path, config_path, map_location=device)
    uses_ema = use_ema and "ema_state_dict" in payload
    if uses_ema:
        model.load_state_dict(payload["ema_state_dict"])
    elif use_ema:
        log.info("%s has no EMA weights; sampling with the raw weights", checkpoint_path)
    model.eval()

    if condition_ranges_path is not None:
        ranges = load_condition_ranges(condition_ranges_path)
    elif (checkpoint_path.parent / "condition_ranges.json").is_file():
        ranges = load_condition_ranges(checkpoint_path.parent / "condition_ranges.json")
    elif "condition_ranges" in payload:
        ranges = {name: ConditionRange(*bounds) for name, bounds in payload["condition_ranges"].items()}
    else:
        raise FlowletError(
            f"no condition ranges for {checkpoint_path}: pass --condition_ranges_path "
            "(the condition_ranges.json written by training)"
        )
    missing = [name for name in config.condition_vars if name not in ranges]
    if missing:
        raise FlowletError(f"condition ranges lack {missing}, which the model {checkpoint_path} is conditioned on")
    spec = sampling_spec(config.extra, str(checkpoint_path), payload)
    return Generator(model, config, ranges, uses_ema, spec, device)


def check_conditions(conditions: Mapping[str, float], config: UNetConfig, where: str) -> None:
    unknown = sorted(set(conditions) - set(config.condition_vars))
    if unknown:
        raise FlowletError(
            f"{where}: unknown condition {unknown}; this model is conditioned on {list(config.condition_vars)}"
        )
    missing = [name for name in config.condition_vars if name not in conditions]
    if missing:
        raise FlowletError(
            f"{where}: missing condition {missing}; this model is conditioned on {list(config.condition_vars)}"
        )


def condition_folder(conditions: Mapping[str, float]) -> str:
    """The reference's per-condition folder name, e.g. ``Age_45.00`` (``Age_45.00_Sex_1.00`` with sex)."""
    return "_".join(f"{name}_{value:.2f}" for name, value in conditions.items())


def requests_from_conditions(
    specs: Sequence[Mapping[str, float]], num_synthetic: int, seed: int, config: UNetConfig
) -> list[SampleRequest]:
    """``num_synthetic`` samples per condition set, saved as ``<Age_45.00>/FlowLet_synthetic_brain_<i>.nii.gz``."""
    if num_synthetic < 1:
        raise FlowletError(f"--num_synthetic must be at least 1, got {num_synthetic}")
    requests = []
    for number, spec in enumerate(specs):
        check_conditions(spec, config, f"generation condition {dict(spec)}")
        ordered = {name: float(spec[name]) for name in config.condition_vars}
        folder = condition_folder(ordered)
        requests += [
            SampleRequest(ordered, Path(folder) / f"{OUTPUT_PREFIX}_{index}.nii.gz", derived_seed(seed, number, index))
            for index in range(num_synthetic)
        ]
    return requests


def requests_from_table(path: str | Path, seed: int, config: UNetConfig) -> list[SampleRequest]:
    """One sample per row of a TSV with columns ``age`` [, ``sex``] and ``file`` (output path, relative to the output folder)."""
    path = Path(path)
    table = read_ages_table(path)
    needed = [CONDITION_COLUMNS[name] for name in config.condition_vars]
    missing = [column for column in needed if column not in table.columns]
    if missing:
        raise FlowletError(f"ages table {path} lacks columns {missing} (has {list(table.columns)})")
    ignored = [c for n, c in CONDITION_COLUMNS.items() if c in table.columns and n not in config.condition_vars]
    if ignored:
        log.warning(
            "ages table %s: columns %s are ignored; the model is conditioned on %s",
            path,
            ignored,
            list(config.condition_vars),
        )
    if table.empty:
        # The workflow plans zero synthetic subjects for well-represented bins; that is not an error.
        log.info("ages table %s has no rows: nothing to generate", path)
        return []
    if table["file"].duplicated().any():
        raise FlowletError(
            f"ages table {path} names some output files twice: {sorted(set(table['file'][table['file'].duplicated()]))}"
        )
    requests = []
    for row_number, row in enumerate(table.to_dict("records")):
        where = f"{path} line {row_number + 2}"
        conditions = {}
        for name in config.condition_vars:
            raw = str(row[CONDITION_COLUMNS[name]]).strip()
            if name == "Sex" and raw.lower() in SEX_CODES:
                conditions[name] = SEX_CODES[raw.lower()]
                continue
            try:
                conditions[name] = float(raw)
            except ValueError:
                raise FlowletError(f"{where}: {CONDITION_COLUMNS[name]} is not a number: {raw!r}") from None
            if not math.isfinite(conditions[name]):
                raise FlowletError(f"{where}: {CONDITION_COLUMNS[name]} is not finite: {raw!r}")
        file = Path(str(row["file"]).strip())
        if file.is_absolute() or ".." in file.parts or not file.name:
            raise FlowletError(f"{where}: file {file} must be a relative path inside the output folder")
        metadata = {key: str(value) for key, value in row.items() if key not in needed}
        requests.append(SampleRequest(conditions, file, derived_seed(seed, row_number, 0), metadata))
    return requests


def mni_affine_for(save_size: Sequence[int]) -> tuple[np.ndarray, int]:
    """The template affine and resolution (mm) of the MNI grid with this shape."""
    for resolution, (shape, affine) in MNI_GRIDS.items():
        if tuple(save_size) == tuple(shape):
            return affine.copy(), resolution
    raise FlowletError(
        f"save size {list(save_size)} is not an MNI grid "
        f"({', '.join(f'{list(shape)} at {res} mm' for res, (shape, _) in MNI_GRIDS.items())}); "
        "synthetic volumes are saved in MNI space"
    )


def apply_intensity_convention(volume: np.ndarray, convention: str, brain_mask: np.ndarray) -> np.ndarray:
    """``unit``: the reference's (x + 1)/2 in [0, 1]. ``zscore``: z-scored inside the brain mask, 0 outside."""
    if convention == "unit":
        return (volume + 1.0) / 2.0
    if convention != "zscore":
        raise FlowletError(f"--intensity must be one of {INTENSITY_CONVENTIONS}, got {convention}")
    return zscore_in_mask(volume, brain_mask, "a generated volume")


@torch.no_grad()
def sample_batch(
    generator: Generator,
    conditions: Mapping[str, torch.Tensor],
    seeds: Sequence[int],
    num_steps: int,
    method: str = "euler",
    guidance_scale: float = 1.0,
    save_size: Sequence[int] | None = None,
) -> np.ndarray:
    """Volumes (N, *save_size) in [-1, 1] for per-sample normalised (N, 1) conditions and noise seeds."""
    config = generator.config
    save_size = tuple(save_size or generator.default_save_size)
    crop = working_shape(save_size, generator.downsample)
    if any(c > m for c, m in zip(crop, config.model_input_size)):
        raise FlowletError(
            f"save size {list(save_size)} needs a {list(crop)} crop, larger than the model input {list(config.model_input_size)}"
        )
    normalised = {name: value.to(generator.device) for name, value in conditions.items()}
    grid = config.wavelet_grid
    noise = torch.stack(
        [torch.randn((config.in_channels, *grid), generator=torch.Generator().manual_seed(seed)) for seed in seeds]
    ).to(generator.device)
    output = guided_velocity(generator.model, normalised, guidance_scale)
    spec = generator.spec
    bands = integrate(lambda x, t: spec.velocity(output(x, t), x, t), noise, num_steps, method)
    volumes = idwt3d(spec.from_model_units(bands.float())).clamp(-1.0, 1.0)
    volumes = center_crop(volumes, crop)
    volumes = upsample_to_grid(volumes, generator.downsample, save_size)
    return volumes[:, 0].cpu().numpy()


def generate(
    generator: Generator,
    requests: Sequence[SampleRequest],
    output_dir: str | Path,
    num_steps: int,
    method: str = "euler",
    guidance_scale: float = 1.0,
    batch_size: int = 1,
    save_size: Sequence[int] | None = None,
    intensity: str = "zscore",
    manifest: str | Path | None = None,
) -> Path:
    """Generate and save every request, then write the manifest (image, conditions, seed, metadata, QC metrics;
    default ``<output_dir>/manifest.tsv``); returns its path. Image paths in the manifest are relative to its folder.
    """
    if guidance_scale != 1.0 and generator.config.condition_dropout <= 0:
        raise FlowletError(
            f"--guidance-scale {guidance_scale} needs a model trained with condition dropout; this one was not"
        )
    save_size = tuple(save_size or generator.default_save_size)
    names = list(generator.config.condition_vars)
    if requests:
        log.info(
            "generating %d volumes (%s, %d steps, guidance %g, %s weights) into %s",
            len(requests),
            method,
            num_steps,
            guidance_scale,
            "EMA" if generator.uses_ema else "raw",
            output_dir,
        )
    # Normalised once for all requests, so an out-of-range age is reported once, not once per batch.
    normalised = (
        normalise_conditions(
            {name: [request.conditions[name] for request in requests] for name in names}, generator.condition_ranges
        )
        if requests
        else {}
    )

    def sample(start: int, stop: int) -> np.ndarray:
        return sample_batch(
            generator,
            {name: values[start:stop] for name, values in normalised.items()},
            [request.seed for request in requests[start:stop]],
            num_steps,
            method,
            guidance_scale,
            save_size,
        )

    return write_samples(sample, requests, output_dir, names, batch_size, save_size, intensity, manifest)


def write_samples(
    sample: Callable[[int, int], np.ndarray],
    requests: Sequence[SampleRequest],
    output_dir: str | Path,
    names: Sequence[str],
    batch_size: int,
    save_size: Sequence[int],
    intensity: str,
    manifest: str | Path | None,
) -> Path:
    """Save ``sample(start, stop)`` (volumes in [-1, 1] for requests[start:stop]) batch by batch with their QC
    metrics, then the manifest; shared by every generator backend."""
    if batch_size < 1:
        raise FlowletError(f"--batch-size must be at least 1, got {batch_size}")
    output_dir = Path(output_dir)
    affine, resolution = mni_affine_for(save_size)
    brain_mask = np.asarray(template_brain_mask(resolution).dataobj) > 0
    template = TemplateQC.at(resolution)
    manifest = Path(manifest) if manifest is not None else output_dir / "manifest.tsv"
    progress = tqdm(total=len(requests), desc="generating", unit="volume")
    metrics = []
    for start in range(0, len(requests), batch_size):
        chunk = requests[start : start + batch_size]
        for request, volume in zip(chunk, sample(start, start + len(chunk))):
            metrics.append(qc_metrics(volume, template))
            save_nifti(apply_intensity_convention(volume, intensity, brain_mask), affine, output_dir / request.file)
        progress.update(len(chunk))
    progress.close()
    write_manifest(manifest, output_dir, list(requests), list(names), metrics)
    return manifest
