"""The synthetic-cohort plan: bins, the under-representation rule, targets and caps, conditioning ages, `flowlet plan`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from flowlet.cli import main
from flowlet.data.bins import AgeBins
from flowlet.errors import FlowletError
from flowlet.generative.plan import make_plan, sample_ages, synthetic_counts


def split_table(
    counts_train: list[int], counts_test: list[int], edges: list[float], tmp_path: Path | None = None
) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for part, counts in (("train", counts_train), ("test", counts_test)):
        for low, high, count in zip(edges[:-1], edges[1:], counts):
            for age in rng.uniform(low, high, count):
                rows.append(
                    {
                        "participant_id": f"sub-{len(rows):03d}",
                        "age": age,
                        "sex": "F" if len(rows) % 4 else "M",
                        "split": part,
                    }
                )
    table = pd.DataFrame(rows)
    if tmp_path is not None:
        image = tmp_path / "image.nii.gz"
        image.write_bytes(b"")
        table["image"] = str(image)
    return table


def test_bins_label_and_assign_with_inclusive_last_edge():
    bins = AgeBins.from_edges([20, 30, 40.5])
    assert bins.labels == ["20-30", "30-40.5"]
    assert list(bins.assign([20, 29.99, 30, 40.5])) == ["20-30", "20-30", "30-40.5", "30-40.5"]
    with pytest.raises(FlowletError, match=r"sub-b \(age 41\)"):
        bins.assign([25, 41], ids=["sub-a", "sub-b"])
    with pytest.raises(FlowletError, match="strictly increasing"):
        AgeBins.from_edges([20, 20, 30])


def test_underrepresented_bins_are_filled_up_to_the_largest_and_never_beyond():
    real = np.array([20, 9, 10, 0, 15])
    flags, counts = synthetic_counts(real, underrepresented_fraction=0.5, target="largest")
    # 9 < 0.5 * 20 and 0 < 10 are under-represented; 10 is exactly the threshold and is not.
    assert list(flags) == [False, True, False, True, False]
    assert list(counts) == [0, 11, 0, 20, 0]
    assert (real + counts <= real.max()).all()
    _, capped = synthetic_counts(real, 0.5, "largest", max_per_bin=12)
    assert list(capped) == [0, 11, 0, 12, 0]


def test_fixed_and_ratio_targets():
    real = np.array([20, 4, 0])
    _, fixed = synthetic_counts(real, 0.5, "fixed", target_count=7)
    assert list(fixed) == [0, 7, 7]
    _, ratio = synthetic_counts(real, 0.5, "ratio", target_ratio=1.5)
    assert list(ratio) == [0, 6, 0]
    with pytest.raises(FlowletError, match="--target-count"):
        synthetic_counts(real, 0.5, "fixed")
    with pytest.raises(FlowletError, match="no subjects"):
        synthetic_counts(np.zeros(3, int), 0.5, "largest")


@pytest.mark.parametrize("method", ["uniform", "kde"])
def test_conditioning_ages_stay_inside_their_bin(method: str):
    train_ages = np.concatenate([np.full(30, 25.0), np.linspace(20, 80, 10)])
    ages = sample_ages(500, 40, 50, train_ages, method, np.random.default_rng(1))
    assert len(ages) == 500 and ages.min() >= 40 and ages.max() < 50


def test_kde_ages_follow_the_real_density_within_the_bin():
    train_ages = np.concatenate([np.random.default_rng(0).normal(31, 1.0, 200), [20, 60]])
    kde = sample_ages(2000, 30, 40, train_ages, "kde", np.random.default_rng(2))
    uniform = sample_ages(2000, 30, 40, train_ages, "uniform", np.random.default_rng(2))
    assert np.mean(kde < 33) > 0.8
    assert abs(np.mean(uniform < 33) - 0.3) < 0.05


def test_plan_counts_add_up_and_are_deterministic(tmp_path: Path):
    edges = [20, 30, 40, 50, 60]
    split = split_table([12, 3, 8, 1], [3, 1, 2, 0], edges)
    bins = AgeBins.from_edges(edges)
    plan, ages = make_plan(split, bins, 0.5, "largest", age_sampling="kde", seed=5)
    assert list(plan["n_train_real"]) == [12, 3, 8, 1]
    assert list(plan["n_test_real"]) == [3, 1, 2, 0]
    assert list(plan["underrepresented"]) == [False, True, False, True]
    assert list(plan["n_synthetic"]) == [0, 9, 0, 11]
    for row in plan.itertuples():
        table = ages[row.age_bin]
        assert len(table) == row.n_synthetic
        assert ((table["age"] >= row.low) & (table["age"] < row.high)).all()
        assert table["file"].is_unique
    assert set(ages["50-60"]["sex"]) <= {"F", "M"}
    again_plan, again_ages = make_plan(split, bins, 0.5, "largest", age_sampling="kde", seed=5)
    pd.testing.assert_frame_equal(plan, again_plan)
    pd.testing.assert_frame_equal(ages["30-40"], again_ages["30-40"])
    _, other = make_plan(split, bins, 0.5, "largest", age_sampling="kde", seed=6)
    assert not np.allclose(other["30-40"]["age"], ages["30-40"]["age"])


def test_sexes_follow_the_training_proportion():
    split = split_table([40, 2], [1, 1], [20, 40, 60])
    split["sex"] = ["F"] * 32 + ["M"] * 8 + ["F", "M", "F", "M"]
    _, ages = make_plan(split, AgeBins.from_edges([20, 40, 60]), 0.5, "fixed", target_count=4000, seed=0)
    share = np.mean(ages["40-60"]["sex"] == "F")
    expected = np.mean(split.loc[split["split"] == "train", "sex"] == "F")
    assert abs(share - expected) < 0.03


def test_plan_command_writes_the_table_and_one_ages_file_per_bin(tmp_path: Path):
    edges = [20, 30, 40, 50]
    split_table([10, 2, 6], [2, 1, 1], edges, tmp_path).to_csv(tmp_path / "split.tsv", sep="\t", index=False)
    code = main(
        [
            "plan",
            "--split",
            str(tmp_path / "split.tsv"),
            "--bin-edges",
            *map(str, edges),
            "--target",
            "ratio",
            "--target-ratio",
            "3",
            "--max-per-bin",
            "5",
            "--output",
            str(tmp_path / "plan.tsv"),
            "--ages-dir",
            str(tmp_path / "ages"),
        ]
    )
    assert code == 0
    plan = pd.read_csv(tmp_path / "plan.tsv", sep="\t")
    assert list(plan.columns) == [
        "age_bin",
        "low",
        "high",
        "n_train_real",
        "n_test_real",
        "n_withheld",
        "underrepresented",
        "reduced",
        "n_synthetic",
        "note",
    ]
    assert list(plan["n_synthetic"]) == [0, 5, 0]
    assert len(pd.read_csv(tmp_path / "ages" / "bin-30-40_ages.tsv", sep="\t")) == 5
    empty = (tmp_path / "ages" / "bin-20-30_ages.tsv").read_text().splitlines()
    assert empty == ["age\tsex\tage_bin\tfile"]


def test_plan_command_names_subjects_outside_the_bins(tmp_path: Path, capsys):
    table = split_table([5, 5], [1, 1], [20, 30, 40], tmp_path)
    table.loc[2, "age"] = 95.0
    table.to_csv(tmp_path / "split.tsv", sep="\t", index=False)
    code = main(
        [
            "plan",
            "--split",
            str(tmp_path / "split.tsv"),
            "--bin-edges",
            "20",
            "30",
            "40",
            "--output",
            str(tmp_path / "plan.tsv"),
            "--ages-dir",
            str(tmp_path / "ages"),
        ]
    )
    assert code == 1
    assert "sub-002 (age 95)" in capsys.readouterr().err


def test_synthetic_ages_stay_inside_the_real_training_ages():
    ages = [22, 24, 26, 28, 31, 33, 35, 37, 45, 62]
    split = pd.DataFrame(
        {"participant_id": [f"sub-{i}" for i in range(len(ages))], "age": ages, "sex": "F", "split": "train"}
    )
    plan, ages_per_bin = make_plan(
        split, AgeBins.from_edges([20, 30, 40, 50, 60, 70, 80, 90]), 0.5, "fixed", target_count=4
    )
    plan = plan.set_index("age_bin")
    assert plan.loc["80-90", "n_synthetic"] == 0 and plan.loc["70-80", "n_synthetic"] == 0
    assert "outside the real training ages (22.0-62.0)" in plan.loc["80-90", "note"]
    assert plan.loc["60-70", "n_synthetic"] == 4
    assert ages_per_bin["60-70"]["age"].between(60, 62).all()


def test_plan_leaves_out_excluded_subjects_without_age(tmp_path: Path):
    edges = [20, 30, 40, 50]
    split = split_table([10, 2, 6], [2, 1, 1], edges, tmp_path)
    excluded = split.iloc[:1].assign(participant_id="sub-noage", age="n/a", split="excluded")
    pd.concat([split, excluded]).to_csv(tmp_path / "split.tsv", sep="\t", index=False)
    code = main(
        [
            "plan",
            "--split",
            str(tmp_path / "split.tsv"),
            "--bin-edges",
            *map(str, edges),
            "--output",
            str(tmp_path / "plan.tsv"),
            "--ages-dir",
            str(tmp_path / "ages"),
        ]
    )
    assert code == 0
    assert pd.read_csv(tmp_path / "plan.tsv", sep="\t")["n_train_real"].sum() == 18
