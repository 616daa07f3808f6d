"""Preprocessing of T1w images: input checks, N4, skull stripping, MNI registration, z-scoring and QC.

The stage's public entry points are `preprocess_subject` (the whole chain for one
image) and `apply_to_mni` / `apply_to_native` (carry any image of the subject
between its native grid and the MNI grid with the transform a run saved).
"""

from flowlet.preprocess.pipeline import PreprocessResult, PreprocessSettings, preprocess_subject
from flowlet.preprocess.register import apply_to_mni, apply_to_native

__all__ = ["PreprocessResult", "PreprocessSettings", "apply_to_mni", "apply_to_native", "preprocess_subject"]
