"""The preprocessing options (the flags of `flowlet preprocess`), the IXI sample and the preprocessed phantoms the
benchmarks share."""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from tqdm import tqdm

from flowlet.phantoms.cohort import CohortSettings, SubjectParameters, draw_subject, subject_paths, write_cohort
from flowlet.preprocess.cli import settings_from_args
from flowlet.preprocess.pipeline import PreprocessResult, PreprocessSettings, preprocess_subject
from flowlet.preprocess.register import Registration

IXI_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "ixi"


def preprocess_settings(args: argparse.Namespace, **registration) -> PreprocessSettings:
    """The settings the arguments name; ``registration`` overrides RegistrationSettings fields (a seed, a rate)."""
    settings = settings_from_args(args)
    return replace(settings, registration=replace(settings.registration, **registration))


@dataclass(frozen=True)
class PreprocessedPhantom:
    params: SubjectParameters
    paths: dict[str, Path]
    result: PreprocessResult
    registration: Registration


def preprocessed_phantoms(
    settings: PreprocessSettings, n_subjects: int, seed: int, **ages: float
) -> Iterator[PreprocessedPhantom]:
    """A phantom cohort written to a temporary folder (``ages``: age_min, age_max of CohortSettings), each
    subject preprocessed in turn; its registration's files last until the caller asks for the next subject."""
    with tempfile.TemporaryDirectory(prefix="flowlet-phantom-bench-") as workdir:
        cohort = CohortSettings(output_dir=Path(workdir) / "bids", n_subjects=n_subjects, seed=seed, **ages)
        write_cohort(cohort, threads=1)
        for index in tqdm(range(n_subjects), desc="preprocess", file=sys.stderr):
            params = draw_subject(seed, index, cohort.age_min, cohort.age_max)
            paths = subject_paths(cohort.output_dir, params.participant_id)
            result, registration = preprocess_subject(paths["t1"], params.participant_id, settings)
            try:
                yield PreprocessedPhantom(params, paths, result, registration)
            finally:
                registration.cleanup()
