"""The preprocessing options the in-process benchmarks share, and the settings they make."""

from __future__ import annotations

import argparse

from flowlet.preprocess.pipeline import PreprocessSettings
from flowlet.preprocess.register import RegistrationSettings
from flowlet.preprocess.skullstrip import BACKENDS, SkullstripSettings


def add_preprocess_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--backend", default="deepbet", choices=BACKENDS)
    parser.add_argument(
        "--registration-sampling",
        type=float,
        default=RegistrationSettings.sampling_rate,
        help="fraction of template voxels the registration metric samples",
    )


def preprocess_settings(args: argparse.Namespace) -> PreprocessSettings:
    return PreprocessSettings(
        threads=args.threads,
        skullstrip=SkullstripSettings(backend=args.backend),
        registration=RegistrationSettings(sampling_rate=args.registration_sampling),
    )
