"""The measures table's wide brain-age features and how `flowlet regions` reads measures back (no segmentation: fast)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from flowlet.errors import FlowletError
from flowlet.regions.measures import (
    EXTERNAL,
    SYNTHETIC,
    ImageEntry,
    read_external,
    read_measures,
    regional_features,
    segmentation_file,
)


def _long_table() -> pd.DataFrame:
    """Two regions of a small-headed real subject and a big-headed synthetic one with the same tissue proportions."""
    rows = []
    for image_id, group, scale in (("sub-01", "train", 1.0), ("/synthetic/Age_50/brain_0.nii.gz", SYNTHETIC, 1.5)):
        for region, csf, grey, white in (("hippocampus", 0.5, 4.0, 0.5), ("ventricles", 20.0, 1.0, 3.0)):
            rows.append(
                {"image_id": image_id, "group": group, "age": 50.0, "region": region, "csf_ml": csf * scale, "grey_ml": grey * scale,
                 "white_ml": white * scale, "brain_mask_ml": 1500.0 * scale, "image": f"/data/{image_id.strip('/')}", "segmentation": "x"}
            )  # fmt: skip
    return pd.DataFrame(rows)


def test_features_are_tissue_volumes_over_the_brain_mask_so_head_size_cancels():
    features = regional_features(_long_table())
    assert list(features.columns[:4]) == ["participant_id", "image", "group", "segmentation"]
    assert list(features.columns[4:]) == [
        f"{region}_{tissue}" for region in ("hippocampus", "ventricles") for tissue in ("csf", "grey", "white")
    ]
    assert list(features["participant_id"]) == ["sub-01", ""]
    np.testing.assert_allclose(features.iloc[0, 4:].to_numpy(float), features.iloc[1, 4:].to_numpy(float))
    assert features.loc[0, "ventricles_csf"] == pytest.approx(20.0 / 1500.0)
    # No age column: every numeric column of this table is a brain-age feature.
    assert "age" not in features.columns


def test_synthetic_segmentations_get_distinct_files_although_generators_reuse_names():
    paths = [Path(f"/syn/Age_{age}/brain_0.nii.gz") for age in (30, 70)]
    names = [segmentation_file(path, index) for index, path in enumerate(paths)]
    assert names == ["segmentations/00000_brain_0_dseg.nii.gz", "segmentations/00001_brain_0_dseg.nii.gz"]


def test_measures_of_other_images_or_another_split_are_refused(tmp_path: Path):
    path = tmp_path / "regional_measures.tsv"
    table = _long_table().assign(volume_ml=1.0, native_volume_ml=np.nan, tissue_fraction=0.5, mean_intensity=0.0)
    table.to_csv(path, sep="\t", index=False)
    real = ImageEntry("sub-01", "train", 50.0, "F", "50s", Path("/data/sub-01"))
    assert set(read_measures(path, [real])["image_id"]) == {"sub-01"}
    with pytest.raises(FlowletError, match=r"no rows for 1 image\(s\).*sub-02.*rerun `flowlet regional-measures`"):
        read_measures(path, [real, ImageEntry("sub-02", "test", 60.0, "M", "60s", Path("/data/sub-02"))])
    with pytest.raises(FlowletError, match="measured with another split: sub-01 changed group"):
        read_measures(path, [ImageEntry("sub-01", "test", 50.0, "F", "50s", Path("/data/sub-01"))])
    table.drop(columns="segmentation").to_csv(path, sep="\t", index=False)
    with pytest.raises(FlowletError, match="lacks the column.*segmentation"):
        read_measures(path, [real])


def test_external_subjects_are_told_apart_from_study_subjects_of_the_same_name(tmp_path: Path):
    image = tmp_path / "sub-01.nii.gz"
    image.write_bytes(b"")
    pd.DataFrame(
        {
            "participant_id": ["sub-01", "sub-02"],
            "age": [50.0, np.nan],
            "sex": "",
            "age_bin": "40-60",
            "split": ["test", "excluded"],
            "image": [str(image)] * 2,
        }
    ).to_csv(tmp_path / "external.tsv", sep="\t", index=False)
    (entry,) = read_external(tmp_path / "external.tsv")
    assert entry.group == EXTERNAL and entry.image_id == "external/sub-01"
    assert entry.participant_id == "sub-01" and entry.what == "external image external/sub-01"
    rows = _long_table().assign(
        image_id=lambda t: t["image_id"].where(t["group"] != "train", entry.image_id),
        group=lambda t: t["group"].where(t["group"] != "train", EXTERNAL),
    )
    # Matched by image, never by a participant_id it may share with a study subject.
    assert regional_features(rows)["participant_id"].tolist() == ["", ""]
