"""The preprocessing options and the IXI sample the benchmarks share, and the settings they make."""

from __future__ import annotations

import argparse
from pathlib import Path

from flowlet.preprocess.pipeline import PreprocessSettings
from flowlet.preprocess.register import RegistrationSettings
from flowlet.preprocess.skullstrip import BACKENDS, SkullstripSettings

IXI_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "ixi"


def add_preprocess_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--backend", default="deepbet", choices=BACKENDS)
    parser.add_argument(
        "--registration-sampling",
        type=float,
        default=RegistrationSettings.sampling_rate,
        help="fraction of template voxels the registration metric samples",
    )
    parser.add_argument(
        "--registration-fine-sampling",
        type=float,
        default=RegistrationSettings.fine_sampling_rate,
        help="the same fraction at the registration's finest level",
    )


def preprocess_settings(args: argparse.Namespace, **registration) -> PreprocessSettings:
    """The settings the arguments name; ``registration`` overrides RegistrationSettings fields (a seed, a rate)."""
    return PreprocessSettings(
        threads=args.threads,
        skullstrip=SkullstripSettings(backend=args.backend),
        registration=RegistrationSettings(
            **{
                "sampling_rate": args.registration_sampling,
                "fine_sampling_rate": args.registration_fine_sampling,
                **registration,
            }
        ),
    )
