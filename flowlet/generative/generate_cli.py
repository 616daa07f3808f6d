"""`flowlet generate`: sample synthetic brains of requested ages from a trained generator.

Accepts the reference's flags (``--checkpoint_path``, ``--generation_conditions "Age=45" "Age=70.5"``, ...;
each also in kebab-case) and writes ``<output_dir>/Age_45.00/FlowLet_synthetic_brain_<i>.nii.gz`` on the
MNI grid with the template affine. ``--ages-tsv`` instead takes one row per volume (columns age[, sex],
file). Both modes write ``manifest.tsv`` (file, requested conditions, noise seed, QC metrics).
``--chunk-size N --chunk I`` generates only requests I*N to (I+1)*N - 1, with the seeds they have in the
whole run, so that one bin can be split over several jobs without changing any volume.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from flowlet.errors import FlowletError
from flowlet.generative.requests import SOLVER_METHODS

log = logging.getLogger(__name__)


def build_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint-path",
        "--checkpoint_path",
        dest="checkpoint_path",
        type=Path,
        required=True,
        help="generator checkpoint (ours or the reference's layouts), or with --backend linear the "
        "model of flowlet fit-baseline",
    )
    parser.add_argument(
        "--backend",
        choices=("flowlet", "linear"),
        default="flowlet",
        help="flowlet: the wavelet flow-matching network; linear: the baseline generator",
    )
    parser.add_argument(
        "--config-path",
        "--config_path",
        dest="config_path",
        type=Path,
        help="config.json of the checkpoint (default: the config stored in the checkpoint)",
    )
    parser.add_argument(
        "--condition-ranges-path",
        "--condition_ranges_path",
        dest="condition_ranges_path",
        type=Path,
        help="condition_ranges.json (default: the one beside the checkpoint)",
    )
    parser.add_argument(
        "--output-dir",
        "--output_dir",
        dest="output_dir",
        type=Path,
        required=True,
        help="folder for the synthetic volumes and manifest.tsv",
    )
    parser.add_argument(
        "--manifest",
        type=Path,
        help="where to write the manifest (default: OUTPUT_DIR/manifest.tsv); image paths are relative to it",
    )
    requests = parser.add_mutually_exclusive_group(required=True)
    requests.add_argument(
        "--generation-conditions",
        "--generation_conditions",
        dest="generation_conditions",
        nargs="+",
        metavar="NAME=VALUE",
        help='condition sets, e.g. "Age=45" "Age=70.5" or "Age=45,Sex=1"',
    )
    requests.add_argument(
        "--ages-tsv",
        type=Path,
        help="TSV with one row per volume: age [, sex] and file (output path relative to --output-dir)",
    )
    parser.add_argument(
        "--num-synthetic",
        "--num_synthetic",
        dest="num_synthetic",
        type=int,
        default=1,
        help="volumes per condition set (with --generation-conditions)",
    )
    parser.add_argument(
        "--num-flow-steps",
        "--num_flow_steps",
        dest="num_flow_steps",
        type=int,
        help="ODE steps (default: the config's num_flow_steps, else 10; the cpu preset records 50, the published ones 10)",
    )
    parser.add_argument(
        "--save-size",
        "--save_size",
        dest="save_size",
        type=int,
        nargs=3,
        metavar=("D", "H", "W"),
        help="output grid, an MNI grid: 91 109 91 (2 mm) or 182 218 182 (1 mm) (default: the training grid)",
    )
    parser.add_argument("--seed", type=int, default=1234, help="seed of the noise (per sample: seed, request, index)")
    parser.add_argument(
        "--chunk-size",
        type=int,
        default=0,
        help="requests per chunk; 0: one chunk with every request (seeds do not depend on it)",
    )
    parser.add_argument(
        "--chunk",
        type=int,
        default=0,
        help="which chunk to generate, from 0 (with --chunk-size); a chunk past the end is empty",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    parser.add_argument(
        "--batch-size", type=int, default=4, help="volumes sampled together (does not change the outputs)"
    )
    parser.add_argument(
        "--sampler",
        choices=SOLVER_METHODS,
        help="ODE solver: euler (the reference's), heun or midpoint (2 evaluations per step) (default: the config's "
        "sampler, else euler; the cpu preset records heun)",
    )
    parser.add_argument(
        "--guidance-scale",
        type=float,
        default=1.0,
        help="classifier-free guidance scale (1 = off; needs a model trained with condition dropout)",
    )
    parser.add_argument(
        "--use-ema",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="sample with the EMA weights when the checkpoint has them",
    )
    parser.add_argument(
        "--intensity",
        choices=("zscore", "unit"),
        default="zscore",
        help="zscore: z-scored inside the template brain mask, background 0 (like preprocessed "
        "images); unit: the reference's [0, 1]",
    )


def run(args: argparse.Namespace) -> int:
    if args.ages_tsv is not None and _wrote_empty_manifest(args):
        return 0
    from flowlet.devices import resolve_device
    from flowlet.generative.chunks import select_chunk
    from flowlet.generative.conditions import parse_condition_spec
    from flowlet.generative.generate import (
        generate,
        load_generator,
        ode_settings,
        requests_from_conditions,
        requests_from_table,
    )

    if args.backend == "linear":
        return run_linear(args)
    if args.threads is not None:
        if args.threads < 1:
            raise FlowletError(f"--threads must be at least 1, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    generator = load_generator(
        args.checkpoint_path, args.config_path, args.condition_ranges_path, use_ema=args.use_ema, device=device
    )
    if args.ages_tsv is not None:
        requests = requests_from_table(args.ages_tsv, args.seed, generator.config)
    else:
        specs = [parse_condition_spec(spec) for spec in args.generation_conditions]
        requests = requests_from_conditions(specs, args.num_synthetic, args.seed, generator.config)
    requests = select_chunk(requests, args.chunk_size, args.chunk)
    sampler, num_steps = ode_settings(
        generator.config.extra, args.sampler, args.num_flow_steps, str(args.config_path or args.checkpoint_path)
    )
    manifest = generate(
        generator,
        requests,
        args.output_dir,
        num_steps,
        sampler,
        args.guidance_scale,
        args.batch_size,
        args.save_size,
        args.intensity,
        args.manifest,
    )
    log.info("wrote %d volumes and %s", len(requests), manifest)
    return 0


def _wrote_empty_manifest(args: argparse.Namespace) -> bool:
    """Whether the ages table holds no request for this chunk, in which case its empty manifest is written.

    The plan gives well-covered bins no synthetic subjects, yet each bin has its generation jobs; they finish
    without loading torch or the model. The columns are the ages table's conditions (a model conditioned on
    fewer would list fewer: no rows either way). The table's columns and the checkpoint's presence are still
    checked, so that a broken input fails here and not in a later stage.
    """
    from flowlet.generative.chunks import select_chunk
    from flowlet.generative.requests import CONDITION_COLUMNS, read_ages_table, write_manifest

    table = read_ages_table(args.ages_tsv)
    if select_chunk(list(range(len(table))), args.chunk_size, args.chunk):
        return False
    if not args.checkpoint_path.is_file():
        raise FlowletError(f"generator checkpoint {args.checkpoint_path} does not exist")
    manifest = args.manifest or args.output_dir / "manifest.tsv"
    names = [name for name, column in CONDITION_COLUMNS.items() if column in table.columns]
    write_manifest(manifest, args.output_dir, [], names, [])
    log.info("ages table %s: nothing to generate in chunk %d; wrote the empty %s", args.ages_tsv, args.chunk, manifest)
    return True


def run_linear(args: argparse.Namespace) -> int:
    from flowlet.generative.chunks import select_chunk
    from flowlet.generative.conditions import parse_condition_spec
    from flowlet.generative.generate import requests_from_conditions, requests_from_table
    from flowlet.generative.linear_baseline import LinearBaseline, generate_baseline

    model = LinearBaseline.load(args.checkpoint_path)
    if args.ages_tsv is not None:
        requests = requests_from_table(args.ages_tsv, args.seed, model)
    else:
        specs = [parse_condition_spec(spec) for spec in args.generation_conditions]
        requests = requests_from_conditions(specs, args.num_synthetic, args.seed, model)
    requests = select_chunk(requests, args.chunk_size, args.chunk)
    manifest = generate_baseline(
        model, requests, args.output_dir, args.batch_size, args.save_size, args.intensity, args.manifest
    )
    log.info("wrote %d volumes and %s", len(requests), manifest)
    return 0
