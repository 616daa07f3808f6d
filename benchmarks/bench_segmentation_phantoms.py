"""Atropos tissue segmentation of preprocessed demo phantoms against their true tissue labels, per setting.

Each phantom is preprocessed with the default settings; its true label map (CSF, grey, white, ventricles; the
ventricles count as CSF) is carried to MNI space with the saved transform, and the preprocessed MNI image is
segmented as `regional_measures` segments it, once per Atropos setting (ITERATIONS:MRF, the iterations and the
Markov random field's smoothing weight). Printed per subject and setting: the Dice of each tissue with the truth
and the seconds of the segmentation alone (one thread).

    python benchmarks/bench_segmentation_phantoms.py [--n-subjects 8] [--settings 5:0.1 5:0 3:0.1]
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

import numpy as np
from preprocess_options import preprocess_settings, preprocessed_phantoms
from tables import print_row, summarise

from flowlet.preprocess import apply_to_mni
from flowlet.preprocess.cli import add_settings_arguments
from flowlet.preprocess.qc import dice
from flowlet.regions.atlas import TISSUES
from flowlet.regions.tissue import TissueSegmenter

# The phantoms' label values of each tissue in TISSUES order (4, the ventricles, is CSF).
TRUE_LABELS = {"csf": (1, 4), "grey": (2,), "white": (3,)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-subjects", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--settings", nargs="+", default=["5:0.1", "5:0", "3:0.1"])
    add_settings_arguments(parser)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    settings = preprocess_settings(args)
    segmenters = {}
    for setting in args.settings:
        iterations, mrf = setting.split(":")
        segmenters[setting] = TissueSegmenter(settings.resolution_mm, int(iterations), float(mrf))
    rows = []
    for phantom in preprocessed_phantoms(settings, args.n_subjects, args.seed):
        subject = phantom.params.participant_id
        labels = apply_to_mni(phantom.paths["tissue_labels"], phantom.registration.files, "label")
        truth = np.rint(labels.get_fdata())
        for setting, segmenter in segmenters.items():
            start = time.perf_counter()
            segmentation = segmenter.segment(phantom.result.mni_image, what=subject)
            row = {"subject": subject, "setting": setting}
            for label, tissue in enumerate(TISSUES, start=1):
                row[f"dice_{tissue}"] = dice(segmentation.labels == label, np.isin(truth, TRUE_LABELS[tissue]))
            row["seconds"] = time.perf_counter() - start
            rows.append(row)
            print_row(row, 3)
    for segmenter in segmenters.values():
        segmenter.close()
    for setting in segmenters:
        print(f"\n{setting} (iterations:mrf)", end="")
        summarise(
            [row for row in rows if row["setting"] == setting],
            None,
            {f"dice_{tissue}": "reported" for tissue in TISSUES} | {"seconds": "reported"},
            3,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
