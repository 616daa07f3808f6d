"""`flowlet generate`: reference file naming, MNI space, intensity conventions, determinism, chunking and user
errors; `flowlet synthetic-qc`: QC metrics of synthetic volumes judged against real brains, and the gate."""

from __future__ import annotations

import argparse
import csv
import json
import logging
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from flowlet.brainage.tables import read_synthetic
from flowlet.cli import main
from flowlet.data.nifti import save_nifti
from flowlet.data.templates import mni_grid, template_brain_mask, template_t1
from flowlet.errors import FlowletError
from flowlet.generative import synthetic_qc_cli
from flowlet.generative.chunks import chunks_per_bin, select_chunk
from flowlet.generative.synthetic_qc import (
    QC_METRICS,
    TemplateQC,
    flag_outliers,
    gate_manifests,
    generator_view,
    qc_metrics,
    synthetic_brain_mask,
)
from flowlet.qc_metrics import dice, normalised_cross_correlation

AGES = (20.0, 40.0, 60.0, 80.0)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """A briefly trained tiny generator (8 mm working grid) on the z-scored template, via `flowlet train`."""
    work = tmp_path_factory.mktemp("generator")
    data = np.asarray(template_t1(2).dataobj, dtype=np.float32)
    mask = np.asarray(template_brain_mask(2).dataobj) > 0
    image = save_nifti(
        np.where(mask, (data - data[mask].mean()) / data[mask].std(), 0.0), mni_grid(2)[1], work / "brain.nii.gz"
    )
    table = work / "train.tsv"
    table.write_text("image\tage\n" + "".join(f"{image}\t{age}\n" for age in AGES))
    run_dir = work / "run"
    code = main(
        [
            "train",
            str(table),
            "--output-dir",
            str(run_dir),
            "--preset",
            "smoke",
            "--downsample",
            "4",
            "--steps",
            "6",
            "--batch-size",
            "2",
            "--lr",
            "1e-3",
            "--warmup-steps",
            "2",
            "--val-split",
            "0.25",
            "--val-every",
            "3",
            "--log-every",
            "2",
            "--condition-dropout",
            "0.2",
            "--device",
            "cpu",
            "--threads",
            "1",
        ]
    )
    assert code == 0
    return run_dir


def generate(run_dir: Path, output: Path, *extra: str) -> int:
    return main(
        [
            "generate",
            "--checkpoint_path",
            str(run_dir / "checkpoint_last.pth"),
            "--output_dir",
            str(output),
            "--num_flow_steps",
            "2",
            "--device",
            "cpu",
            *extra,
        ]
    )


def load(path: Path) -> nib.Nifti1Image:
    return nib.load(str(path))


@pytest.mark.slow
def test_reference_naming_mni_affine_and_zscore_convention(trained_run, tmp_path):
    output = tmp_path / "synthetic"
    assert generate(trained_run, output, "--generation_conditions", "Age=45", "Age=70.5", "--num_synthetic", "2") == 0
    expected = [
        output / folder / f"FlowLet_synthetic_brain_{i}.nii.gz" for folder in ("Age_45.00", "Age_70.50") for i in (0, 1)
    ]
    assert sorted(output.rglob("*.nii.gz")) == sorted(expected)
    mask = np.asarray(template_brain_mask(2).dataobj) > 0
    shape, affine = mni_grid(2)
    for path in expected:
        image = load(path)
        assert image.shape == shape
        np.testing.assert_allclose(image.affine, affine)
        data = np.asarray(image.dataobj)
        assert np.all(data[~mask] == 0)
        assert data[mask].mean() == pytest.approx(0.0, abs=1e-4) and data[mask].std() == pytest.approx(1.0, abs=1e-3)
    with (output / "manifest.tsv").open() as stream:
        manifest = list(csv.DictReader(stream, delimiter="\t"))
    assert [row["image"] for row in manifest] == [str(p.relative_to(output)) for p in expected]
    assert [float(row["age"]) for row in manifest] == [45.0, 45.0, 70.5, 70.5]
    assert len({row["seed"] for row in manifest}) == 4


@pytest.mark.slow
def test_outputs_do_not_depend_on_batch_size_and_follow_the_seed(trained_run, tmp_path):
    def volumes(name: str, *extra: str) -> list[np.ndarray]:
        output = tmp_path / name
        assert generate(trained_run, output, "--generation_conditions", "Age=30", "--num_synthetic", "3", *extra) == 0
        return [
            np.asarray(load(output / "Age_30.00" / f"FlowLet_synthetic_brain_{i}.nii.gz").dataobj) for i in range(3)
        ]

    one_by_one = volumes("batch1", "--batch-size", "1")
    together = volumes("batch3", "--batch-size", "3")
    for a, b in zip(one_by_one, together):
        np.testing.assert_allclose(a, b, atol=1e-4)
    assert not np.allclose(one_by_one[0], one_by_one[1])
    other_seed = volumes("seed7", "--seed", "7")
    assert not np.allclose(other_seed[0], one_by_one[0])


@pytest.mark.slow
def test_unit_intensity_ages_table_and_raw_weights(trained_run, tmp_path):
    table = tmp_path / "bin.tsv"
    table.write_text("age\tfile\n33.5\tsub-synth01_T1w.nii.gz\n61\tbin/sub-synth02_T1w.nii.gz\n")
    output = tmp_path / "bin"
    assert generate(trained_run, output, "--ages-tsv", str(table), "--intensity", "unit") == 0
    first = np.asarray(load(output / "sub-synth01_T1w.nii.gz").dataobj)
    assert first.min() >= 0.0 and first.max() <= 1.0
    assert (output / "bin" / "sub-synth02_T1w.nii.gz").is_file()
    with (output / "manifest.tsv").open() as stream:
        assert [(r["image"], r["age"]) for r in csv.DictReader(stream, delimiter="\t")] == [
            ("sub-synth01_T1w.nii.gz", "33.5"),
            ("bin/sub-synth02_T1w.nii.gz", "61"),
        ]
    raw = tmp_path / "raw"
    assert generate(trained_run, raw, "--ages-tsv", str(table), "--intensity", "unit", "--no-use-ema") == 0
    assert not np.allclose(np.asarray(load(raw / "sub-synth01_T1w.nii.gz").dataobj), first)


@pytest.mark.slow
def test_guidance_and_second_order_samplers_change_the_sample(trained_run, tmp_path):
    def volume(name: str, *extra: str) -> np.ndarray:
        assert generate(trained_run, tmp_path / name, "--generation_conditions", "Age=50", *extra) == 0
        return np.asarray(load(tmp_path / name / "Age_50.00" / "FlowLet_synthetic_brain_0.nii.gz").dataobj)

    plain = volume("plain")
    guided = volume("guided", "--guidance-scale", "3")
    heun = volume("heun", "--sampler", "heun")
    assert np.isfinite(guided).all() and np.isfinite(heun).all()
    assert not np.allclose(guided, plain) and not np.allclose(heun, plain)


@pytest.mark.slow
def test_the_solver_defaults_to_the_one_the_generator_config_records(trained_run, tmp_path, capsys):
    def volume(name: str, *extra: str) -> np.ndarray:
        assert generate(trained_run, tmp_path / name, "--generation_conditions", "Age=50", *extra) == 0
        return np.asarray(load(tmp_path / name / "Age_50.00" / "FlowLet_synthetic_brain_0.nii.gz").dataobj)

    config = json.loads((trained_run / "config.json").read_text())
    recorded = tmp_path / "recorded.json"
    recorded.write_text(json.dumps({**config, "sampler": "heun"}))
    from_config = volume("from-config", "--config_path", str(recorded))
    np.testing.assert_array_equal(from_config, volume("heun", "--sampler", "heun"))
    assert not np.allclose(from_config, volume("euler", "--config_path", str(recorded), "--sampler", "euler"))

    recorded.write_text(json.dumps({**config, "sampler": "rk4"}))
    assert (
        generate(trained_run, tmp_path / "bad", "--generation_conditions", "Age=50", "--config_path", str(recorded))
        == 1
    )
    assert (
        "recorded.json: the sampler must be one of ['euler', 'heun', 'midpoint'], got 'rk4'" in capsys.readouterr().err
    )
    assert not (tmp_path / "bad").exists()


def test_a_study_samples_with_the_solver_its_preset_records_unless_the_config_names_one():
    from flowlet.config import validate_config
    from flowlet.report.summary import sampling_settings

    assert sampling_settings(validate_config({})) == ("heun", 50)  # the cpu preset's measured setting
    assert sampling_settings(validate_config({"train_generator": {"preset": "base"}})) == ("euler", 10)
    chosen = validate_config({"generate": {"sampler": "midpoint", "num_flow_steps": 8}})
    assert sampling_settings(chosen) == ("midpoint", 8)


@pytest.mark.slow
def test_out_of_range_ages_are_clamped_with_a_warning(trained_run, tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    assert generate(trained_run, tmp_path / "old", "--generation_conditions", "Age=97") == 0
    assert (tmp_path / "old" / "Age_97.00" / "FlowLet_synthetic_brain_0.nii.gz").is_file()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("Age" in w and "97" in w and "clamped" in w for w in warnings), warnings


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--generation_conditions", "Weight=70"], "unknown condition"),
        (["--generation_conditions", "Age=old"], "not a number"),
        (["--generation_conditions", "Age=40", "--save_size", "64", "64", "64"], "not an MNI grid"),
        (["--generation_conditions", "Age=40", "--threads", "0"], "--threads must be at least 1"),
    ],
)
def test_bad_requests_fail_with_a_reason(trained_run, tmp_path, capsys, arguments, message):
    assert generate(trained_run, tmp_path / "out", *arguments) == 1
    assert message in capsys.readouterr().err
    assert not list(tmp_path.rglob("*.nii.gz"))


def test_missing_checkpoint_is_an_error(tmp_path, capsys):
    code = main(
        [
            "generate",
            "--checkpoint_path",
            str(tmp_path / "nope.pth"),
            "--output_dir",
            str(tmp_path / "out"),
            "--generation_conditions",
            "Age=40",
            "--device",
            "cpu",
        ]
    )
    assert code == 1
    assert "nope.pth does not exist" in capsys.readouterr().err


# --- QC of synthetic volumes and the gate -------------------------------------------------------------------


def synthetic_qc(*arguments: str) -> int:
    """`flowlet synthetic-qc ...` through its module, as the dispatcher runs it."""
    parser = argparse.ArgumentParser(prog="flowlet synthetic-qc")
    synthetic_qc_cli.build_parser(parser)
    return synthetic_qc_cli.run(parser.parse_args(list(arguments)))


@pytest.fixture(scope="module")
def zscored_template() -> np.ndarray:
    """The template T1 as preprocessing leaves a real brain: z-scored inside its mask, 0 outside."""
    t1 = np.asarray(template_t1(2).dataobj, dtype=np.float32)
    mask = np.asarray(template_brain_mask(2).dataobj) > 0
    return np.where(mask, (t1 - t1[mask].mean()) / t1[mask].std(), 0.0).astype(np.float32)


def real_like(brain: np.ndarray, seed: int) -> np.ndarray:
    """A preprocessed-looking brain: the template moved by up to a voxel per axis, with noise inside the brain."""
    rng = np.random.default_rng(seed)
    moved = np.roll(brain, tuple(rng.integers(-1, 2, size=3)), axis=(0, 1, 2))
    return np.where(moved != 0, moved + rng.normal(0, 0.2, moved.shape), 0.0).astype(np.float32)


@pytest.fixture(scope="module")
def template_qc() -> TemplateQC:
    return TemplateQC.at(2)


@pytest.fixture(scope="module")
def reference(zscored_template, template_qc) -> pd.DataFrame:
    """QC metrics of eight real-like brains as a generator with a 4 mm working grid sees them."""
    return pd.DataFrame(
        [qc_metrics(generator_view(real_like(zscored_template, seed), 2), template_qc) for seed in range(8)]
    )


def test_brain_mask_of_a_real_brain_in_generator_space_is_its_preprocessing_mask(zscored_template, template_qc):
    brain = real_like(zscored_template, 0)
    estimated = synthetic_brain_mask(generator_view(brain, 1), template_qc.background)
    assert dice(estimated, brain != 0) > 0.995
    # NCC is measured as the real QC measures it on the preprocessed image (the mapping to [-1, 1] clips a little).
    expected = normalised_cross_correlation(brain, template_qc.t1, template_qc.mask)
    assert qc_metrics(generator_view(brain, 1), template_qc)["ncc_template"] == pytest.approx(expected, abs=0.01)


def test_real_like_volumes_pass_and_broken_ones_are_flagged(zscored_template, template_qc, reference):
    shape = zscored_template.shape
    candidates = {f"real-like {seed}": generator_view(real_like(zscored_template, seed), 2) for seed in (100, 101, 102)}
    candidates["all noise"] = np.clip(np.random.default_rng(0).normal(0, 0.5, shape), -1, 1).astype(np.float32)
    candidates["blank"] = np.full(shape, 0.3, dtype=np.float32)
    candidates["inverted contrast"] = generator_view(-real_like(zscored_template, 103), 2)
    table = pd.DataFrame([{"image": name, **qc_metrics(volume, template_qc)} for name, volume in candidates.items()])
    flagged = flag_outliers(table, reference, max_robust_z=3.0).set_index("image")
    assert not flagged.loc[[name for name in candidates if name.startswith("real-like")], "qc_outlier"].any()
    assert flagged.loc[["all noise", "blank", "inverted contrast"], "qc_outlier"].all()
    assert (
        "dice_template" in flagged.loc["all noise", "qc_reasons"]
        and "ncc_template" in flagged.loc["all noise", "qc_reasons"]
    )
    assert "ncc_template missing" in flagged.loc["blank", "qc_reasons"]
    assert flagged.loc["inverted contrast", "qc_reasons"].startswith("ncc_template=")


def write_chunk(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    for row in rows:
        (path.parent / row["image"]).touch()
    pd.DataFrame(rows).to_csv(path, sep="\t", index=False)
    return path


def test_gate_merges_chunks_drops_outliers_and_counts_them(tmp_path, reference):
    good = dict(zip(QC_METRICS, reference.median()))
    broken = {"dice_template": 0.41, "ncc_template": 0.02}
    chunks = [
        write_chunk(
            tmp_path / "bin-20-30" / "chunk-0_manifest.tsv",
            [
                {"image": "a.nii.gz", "age": 21, "seed": 1, "sex": "F", "age_bin": "20-30", **good},
                {"image": "b.nii.gz", "age": 25, "seed": 2, "sex": "M", "age_bin": "20-30", **broken},
            ],
        ),
        write_chunk(
            tmp_path / "bin-20-30" / "chunk-1_manifest.tsv",
            [
                {"image": "c.nii.gz", "age": 28, "seed": 3, "sex": "F", "age_bin": "20-30", **good},
            ],
        ),
        write_chunk(tmp_path / "bin-20-30" / "chunk-2_manifest.tsv", []),
    ]
    (tmp_path / "bin-20-30" / "chunk-2_manifest.tsv").write_text("image\tage\tseed\tdice_template\tncc_template\n")
    reference_path = tmp_path / "reference.tsv"
    reference.to_csv(reference_path, sep="\t", index=False)
    output = tmp_path / "bin-20-30" / "manifest.tsv"

    summary_path = tmp_path / "bin-20-30" / "qc_summary.tsv"
    assert (
        synthetic_qc(
            "gate",
            "--manifests",
            *map(str, chunks),
            "--reference",
            str(reference_path),
            "--output",
            str(output),
            "--summary",
            str(summary_path),
            "--age-bin",
            "20-30",
        )
        == 0
    )
    manifest = pd.read_csv(output, sep="\t", dtype=str)
    assert list(manifest["image"]) == ["a.nii.gz", "b.nii.gz", "c.nii.gz"]
    assert list(manifest["qc_pass"]) == ["true", "false", "true"]
    assert list(manifest["seed"]) == ["1", "2", "3"]
    summary = pd.read_csv(summary_path, sep="\t").iloc[0]
    assert (summary["generated"], summary["outliers"], summary["dropped"], summary["kept"]) == (3, 1, 1, 2)
    # The brain-age stage reads the bin's manifest: the outlier is left out and counted.
    synthetic = read_synthetic([output])
    assert [Path(image).name for image in synthetic.table["image"]] == ["a.nii.gz", "c.nii.gz"]
    assert synthetic.n_qc_dropped == 1

    summary_off = gate_manifests(
        chunks, reference_path, tmp_path / "off" / "manifest.tsv", tmp_path / "off" / "s.tsv", "20-30", gate=False
    )
    assert (summary_off["outliers"], summary_off["dropped"], summary_off["kept"]) == (1, 0, 3)
    off = pd.read_csv(tmp_path / "off" / "manifest.tsv", sep="\t", dtype=str)
    assert list(off["qc_pass"]) == ["true"] * 3 and list(off["qc_outlier"]) == ["false", "true", "false"]
    assert list(off["image"]) == ["../bin-20-30/a.nii.gz", "../bin-20-30/b.nii.gz", "../bin-20-30/c.nii.gz"]


def test_gate_needs_a_real_reference_of_several_images(tmp_path, reference):
    chunk = write_chunk(
        tmp_path / "chunk-0_manifest.tsv",
        [{"image": "a.nii.gz", "age": 21, "seed": 1, **dict(zip(QC_METRICS, reference.median()))}],
    )
    small = tmp_path / "small.tsv"
    reference.head(3).to_csv(small, sep="\t", index=False)
    with pytest.raises(FlowletError, match="3 real image"):
        gate_manifests([chunk], small, tmp_path / "manifest.tsv", tmp_path / "summary.tsv", "20-30")
    old = tmp_path / "old_manifest.tsv"
    old.write_text("image\tage\tseed\na.nii.gz\t21\t1\n")
    reference.to_csv(tmp_path / "reference.tsv", sep="\t", index=False)
    with pytest.raises(FlowletError, match="old_manifest.tsv lacks the columns"):
        gate_manifests([old], tmp_path / "reference.tsv", tmp_path / "manifest.tsv", tmp_path / "summary.tsv", "20-30")


def test_the_gate_runs_without_importing_torch(tmp_path, reference):
    # Every bin of every generator has a gate job; importing torch was most of each one's time.
    chunk = tmp_path / "chunk-0_manifest.tsv"
    chunk.write_text("image\tage\tseed\tdice_template\tncc_template\n")
    reference.to_csv(tmp_path / "reference.tsv", sep="\t", index=False)
    script = (
        "import sys; from flowlet.cli import main; "
        f"status = main(['synthetic-qc', 'gate', '--manifests', '{chunk}', '--reference', '{tmp_path / 'reference.tsv'}', "
        f"'--output', '{tmp_path / 'manifest.tsv'}', '--summary', '{tmp_path / 'summary.tsv'}', '--age-bin', '40-50']); "
        "assert 'torch' not in sys.modules, 'the gate imported torch'"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert pd.read_csv(tmp_path / "summary.tsv", sep="\t").loc[0, "generated"] == 0


@pytest.mark.parametrize("backend", ["flowlet", "linear"])
def test_a_chunk_with_nothing_to_generate_writes_its_empty_manifest_without_torch_or_the_model(
    tmp_path, backend, capsys
):
    # The plan gives well-covered bins no synthetic subjects; their jobs must not pay for loading a generator.
    checkpoint = tmp_path / "model.pth"
    checkpoint.write_bytes(b"never read: there is nothing to generate")
    ages = tmp_path / "ages.tsv"
    ages.write_text("age\tsex\tfile\n" + "".join(f"{40 + i}\tF\ts{i}.nii.gz\n" for i in range(3)))
    empty = tmp_path / "empty_ages.tsv"
    empty.write_text("age\tsex\tfile\n")
    for table, chunk_flags, name in ((empty, [], "empty"), (ages, ["--chunk-size", "2", "--chunk", "2"], "past")):
        manifest = tmp_path / f"{name}_manifest.tsv"
        arguments = ["generate", "--backend", backend, "--checkpoint-path", str(checkpoint), "--ages-tsv", str(table)]
        arguments += ["--output-dir", str(tmp_path / name), "--manifest", str(manifest), *chunk_flags]
        script = (
            f"import sys; from flowlet.cli import main; status = main({arguments!r}); "
            "assert status == 0 and 'torch' not in sys.modules, 'failed or imported torch'"
        )
        result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        assert manifest.read_text() == "image\tage\tsex\tseed\tdice_template\tncc_template\n"

    def generate(checkpoint_path: Path, table: Path, *chunk_flags: str) -> str:
        arguments = ["generate", "--backend", backend, "--checkpoint-path", str(checkpoint_path)]
        assert main([*arguments, "--ages-tsv", str(table), "--output-dir", str(tmp_path / "x"), *chunk_flags]) == 1
        return capsys.readouterr().err

    # Broken inputs still fail at once, naming the file, though nothing is to be generated.
    assert "absent.pth does not exist" in generate(tmp_path / "absent.pth", empty)
    headless = tmp_path / "headless.tsv"
    headless.write_text("Age\n")
    assert "headless.tsv lacks the column(s) file, age" in generate(checkpoint, headless)
    # A chunk that holds requests loads the model, which this file is not.
    assert "model.pth" in generate(checkpoint, ages, "--chunk-size", "2", "--chunk", "1")


def test_chunks_per_bin_come_from_the_plans_cap():
    assert chunks_per_bin(0, {"max_per_bin": None, "target": "largest"}) == 1
    assert chunks_per_bin(6, {"max_per_bin": 20, "target": "largest"}) == 4
    assert chunks_per_bin(6, {"max_per_bin": 20, "target": "fixed", "target_count": 5}) == 1
    assert chunks_per_bin(5, {"max_per_bin": 0, "target": "largest"}) == 1
    with pytest.raises(FlowletError, match="generate.chunk_size.*plan_synthetic.max_per_bin"):
        chunks_per_bin(5, {"max_per_bin": None, "target": "ratio", "target_ratio": 1.0})
    assert select_chunk(list(range(7)), 3, 2) == [6] and select_chunk(list(range(7)), 3, 3) == []
    with pytest.raises(FlowletError, match="--chunk 1 needs --chunk-size"):
        select_chunk(list(range(7)), 0, 1)


@pytest.mark.slow
def test_chunked_generation_gives_the_same_volumes_and_qc_flags_an_untrained_generator(
    trained_run, zscored_template, tmp_path
):
    table = tmp_path / "bin.tsv"
    table.write_text("age\tsex\tfile\n" + "".join(f"{30 + i}\tF\tsynth_{i}.nii.gz\n" for i in range(5)))
    whole, chunked = tmp_path / "whole", tmp_path / "chunked"
    assert generate(trained_run, whole, "--ages-tsv", str(table), "--batch-size", "2") == 0
    for chunk in range(3):
        assert (
            generate(
                trained_run,
                chunked,
                "--ages-tsv",
                str(table),
                "--batch-size",
                "2",
                "--chunk-size",
                "2",
                "--chunk",
                str(chunk),
                "--manifest",
                str(chunked / f"chunk-{chunk}_manifest.tsv"),
            )
            == 0
        )
    for i in range(5):
        a = np.asarray(load(whole / f"synth_{i}.nii.gz").dataobj)
        b = np.asarray(load(chunked / f"synth_{i}.nii.gz").dataobj)
        np.testing.assert_array_equal(a, b)
    expected = pd.read_csv(whole / "manifest.tsv", sep="\t", dtype=str)
    parts = pd.concat(
        [pd.read_csv(chunked / f"chunk-{c}_manifest.tsv", sep="\t", dtype=str) for c in range(3)], ignore_index=True
    )
    pd.testing.assert_frame_equal(parts, expected)
    assert {"dice_template", "ncc_template"} <= set(expected.columns)

    # The reference: real-like training images measured through this generator's 8 mm working grid.
    rows = ["image\tage\tsplit"]
    for seed in range(6):
        path = save_nifti(real_like(zscored_template, seed), mni_grid(2)[1], tmp_path / "real" / f"sub-{seed}.nii.gz")
        rows.append(f"{path}\t{40 + seed}\ttrain")
    rows.append(f"{tmp_path / 'real' / 'sub-0.nii.gz'}\t50\ttest")
    (tmp_path / "split.tsv").write_text("\n".join(rows) + "\n")
    reference_path = tmp_path / "qc_reference.tsv"
    assert (
        synthetic_qc(
            "reference", "--split", str(tmp_path / "split.tsv"), "--downsample", "4", "--output", str(reference_path)
        )
        == 0
    )
    assert len(pd.read_csv(reference_path, sep="\t")) == 6

    # Six training steps make noise, not brains: QC says so and the gate drops every volume.
    summary = gate_manifests(
        [chunked / f"chunk-{c}_manifest.tsv" for c in range(3)],
        reference_path,
        chunked / "manifest.tsv",
        chunked / "qc_summary.tsv",
        "20-30",
    )
    assert (summary["generated"], summary["outliers"], summary["dropped"], summary["kept"]) == (5, 5, 5, 0)


def test_the_grid_shows_every_volume_and_marks_what_the_gate_dropped(tmp_path):
    from flowlet.generative.grid_cli import draw_grid

    rows = {
        "70-80": [("a.nii.gz", 73.2, "true", "false"), ("b.nii.gz", 74.6, "false", "true")],
        "evaluation": [("c.nii.gz", 30.0, "true", "true")],
        "40-50": [],
    }
    manifests = []
    for label, volumes in rows.items():
        folder = tmp_path / f"bin-{label}"
        folder.mkdir()
        lines = ["image\tage\tqc_outlier\tqc_pass"]
        for name, age, outlier, passed in volumes:
            save_nifti(np.random.default_rng(0).random((6, 7, 6)), np.eye(4), folder / name)
            lines.append(f"{name}\t{age}\t{outlier}\t{passed}")
        (folder / "manifest.tsv").write_text("\n".join(lines) + "\n")
        manifests.append(folder / "manifest.tsv")

    titles = [axis.get_title(loc="left") for axis in draw_grid(manifests, 4).axes if axis.get_title(loc="left")]
    assert titles == [
        "70-80: age 73.2 (dropped by QC)",
        "70-80: age 74.6",
        "evaluation: age 30.0 (QC outlier, kept)",
    ]
    output = tmp_path / "grid.png"
    assert main(["synthetic-grid", "--manifests", *map(str, manifests), "--output", str(output)]) == 0
    assert output.stat().st_size > 0

    broken = manifests[0]
    broken.write_text(broken.read_text().replace("\tfalse\ttrue", "\tmaybe\ttrue"))
    with pytest.raises(FlowletError, match=r"bin-70-80/manifest.tsv: qc_outlier must be true/false, found maybe"):
        draw_grid([broken], 4)
