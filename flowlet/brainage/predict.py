"""The saved real-only brain-age model: writing it, and predicting the ages of new MNI-space images with it."""

from __future__ import annotations

from pathlib import Path

import joblib
import numpy as np

from flowlet import __version__
from flowlet.brainage.features import load_voxel_features
from flowlet.errors import FlowletError

MODEL_FORMAT = "flowlet-brainage-model/1"


def save_model(
    path: Path,
    estimator,
    regressor: str,
    downsample: int,
    resolution_mm: int,
    slope: float,
    intercept: float,
    applied: bool,
    cv_mae: float,
) -> Path:
    """Write the fitted voxel pipeline with what is needed to rebuild its features and apply its age-bias correction."""
    path.parent.mkdir(parents=True, exist_ok=True)
    joblib.dump(
        {
            "format": MODEL_FORMAT,
            "flowlet_version": __version__,
            "estimator": estimator,
            "regressor": regressor,
            "downsample": downsample,
            "resolution_mm": resolution_mm,
            "correction_slope": slope,
            "correction_intercept": intercept,
            "correction_applied": applied,
            "cv_mae": cv_mae,
        },
        path,
    )
    return path


def load_model(model_path: str | Path) -> dict:
    model_path = Path(model_path)
    if not model_path.exists():
        raise FlowletError(
            f"brain-age model {model_path} does not exist; run `flowlet brainage` with the real arm first"
        )
    try:
        model = joblib.load(model_path)
    except Exception as error:  # joblib surfaces unpickling failures as many exception types
        raise FlowletError(
            f"brain-age model {model_path} could not be read ({type(error).__name__}: {error})"
        ) from error
    if not isinstance(model, dict) or model.get("format") != MODEL_FORMAT:
        raise FlowletError(f"brain-age model {model_path} is not a {MODEL_FORMAT} file")
    return model


def predict_ages(model_path: str | Path, images: list[str | Path], corrected: bool = False) -> np.ndarray:
    """Predicted ages (years) of MNI-space images, with the saved model's training-fitted bias correction if asked."""
    model = load_model(model_path)
    voxels = load_voxel_features(
        [str(image) for image in images], downsample=model["downsample"], what="brain-age input"
    )
    if voxels.resolution_mm != model["resolution_mm"]:
        raise FlowletError(
            f"brain-age model {model_path} was trained on the {model['resolution_mm']} mm grid; the images are on the {voxels.resolution_mm} mm grid"
        )
    predicted = model["estimator"].predict(voxels.matrix)
    if corrected and model["correction_applied"]:
        predicted = (predicted - model["correction_intercept"]) / model["correction_slope"]
    return np.asarray(predicted, dtype=float)
