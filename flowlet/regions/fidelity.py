"""Age fidelity: does a synthetic brain look as old as the age it was generated for?

The real-only brain-age model (written by ``flowlet brainage``) predicts the age of every synthetic image;
its error against the requested age, per age bin, is set beside the same model's error on the real test
images against their true ages (what a perfectly age-faithful generator would reach).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from flowlet.errors import FlowletError
from flowlet.regions.measures import SYNTHETIC, ImageEntry


def predict_ages(model_path: Path, entries: list[ImageEntry], corrected: bool) -> np.ndarray:
    # Imported here: the brain-age stage is only needed when a model is given.
    try:
        from flowlet.brainage.predict import predict_ages as predict_with_model
    except ImportError as error:
        raise FlowletError(
            f"--brainage-model {model_path} was given, but flowlet.brainage.predict.predict_ages cannot be imported ({error})"
        ) from error
    return predict_with_model(model_path, [entry.path for entry in entries], corrected=corrected)


def _agreement(requested: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    errors = predicted - requested
    r = (
        float(stats.pearsonr(requested, predicted)[0])
        if len(requested) >= 3 and np.ptp(requested) > 0 and np.ptp(predicted) > 0
        else np.nan
    )
    return {
        "n": len(requested),
        "mae": float(np.abs(errors).mean()) if len(errors) else np.nan,
        "mean_error": float(errors.mean()) if len(errors) else np.nan,
        "r": r,
    }


def fidelity_tables(entries: list[ImageEntry], predicted: np.ndarray) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per image (age, predicted age, error) and per group and bin (n, MAE, mean error, Pearson r), with an 'all' row."""
    per_image = pd.DataFrame(
        {
            "image_id": [entry.image_id for entry in entries],
            "group": [entry.group for entry in entries],
            "age_bin": [entry.age_bin for entry in entries],
            "age": [entry.age for entry in entries],
            "predicted_age": predicted,
        }
    )
    per_image["error"] = per_image["predicted_age"] - per_image["age"]
    rows = []
    for group, label in ((SYNTHETIC, "synthetic (requested age)"), ("test", "real test (true age)")):
        subset = per_image[per_image["group"] == group]
        for age_bin, table in [("all", subset), *sorted(subset.groupby("age_bin"))]:
            rows.append(
                {
                    "set": label,
                    "age_bin": age_bin,
                    **_agreement(table["age"].to_numpy(float), table["predicted_age"].to_numpy(float)),
                }
            )
    return per_image, pd.DataFrame(rows)
