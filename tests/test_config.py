"""The shipped config and every test config validate; bad configs are rejected naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from flowlet.config import SCHEMA_PATH, load_config, validate_config
from flowlet.errors import FlowletError

REPO = Path(__file__).resolve().parents[1]
CONFIGS = [REPO / "config" / "config.yaml", *sorted((REPO / "tests" / "configs").glob("*.yaml"))]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda path: path.name)
def test_shipped_and_test_configs_validate(path):
    config = load_config(path, {"data": {"bids_dir": ""}})
    assert config["split"]["bin_edges"] == sorted(config["split"]["bin_edges"])


def test_every_schema_key_has_a_default_and_a_description():
    schema = yaml.safe_load(SCHEMA_PATH.read_text())

    def walk(node, trail):
        for name, sub in node.get("properties", {}).items():
            assert "description" in sub, f"{'.'.join(trail + [name])} lacks a description"
            assert "default" in sub, f"{'.'.join(trail + [name])} lacks a default"
            walk(sub, trail + [name])

    walk(schema, [])


def test_empty_config_gets_all_defaults():
    config = validate_config({})
    assert config["preprocess"]["skullstrip_backend"] == "deepbet"
    assert config["generate"]["num_flow_steps"] is None  # the generator config's, else 10
    assert config["data"]["bids_dir"] == ""


def test_demo_values_fill_only_the_keys_left_null_and_only_for_the_demo(tmp_path):
    demo = {"demo": {"train_generator": {"steps": 700, "lr": 5e-4}}, "train_generator": {"steps": None, "lr": 1e-3}}
    config = validate_config(demo)
    assert (config["train_generator"]["steps"], config["train_generator"]["lr"]) == (700, 1e-3)
    real = validate_config({**demo, "train_generator": {"steps": None}, "data": {"bids_dir": str(tmp_path)}})
    assert real["train_generator"]["steps"] is None


def test_the_shipped_demo_shortens_n4_and_atropos_and_a_real_dataset_keeps_the_schema_defaults(tmp_path):
    demo = load_config(REPO / "config" / "config.yaml", {"data": {"bids_dir": ""}})
    real = load_config(REPO / "config" / "config.yaml", {"data": {"bids_dir": str(tmp_path)}})
    schema = yaml.safe_load(SCHEMA_PATH.read_text())["properties"]
    for section, key, demo_value in [
        ("preprocess", "n4_iterations", [50, 50]),
        ("regional_measures", "atropos_iterations", 3),
    ]:
        assert demo[section][key] == demo_value
        assert real[section][key] == schema[section]["properties"][key]["default"] != demo_value


def test_numbers_booleans_and_null_given_as_strings_are_read_as_the_schema_asks():
    # What `snakemake --config train_generator='{"downsample": 4, "steps": null}'` hands over (YAML BaseLoader).
    config = validate_config(
        {
            "train_generator": {"downsample": "4", "steps": "null", "lr": "1e-3", "preset": "cpu"},
            "preprocess": {"n4_iterations": ["50", "50"]},
            "generate": {"qc_gate": "false"},
        }
    )
    assert config["train_generator"]["downsample"] == 4 and config["train_generator"]["steps"] is None
    assert config["train_generator"]["lr"] == 1e-3 and config["train_generator"]["preset"] == "cpu"
    assert config["preprocess"]["n4_iterations"] == [50, 50] and config["generate"]["qc_gate"] is False
    with pytest.raises(FlowletError, match="train_generator.downsample: 3 is not one of"):
        validate_config({"train_generator": {"downsample": "3"}})


def test_a_missing_init_checkpoint_is_rejected_before_any_job(tmp_path):
    with pytest.raises(FlowletError, match="train_generator.init_checkpoint: .*missing.pth does not exist"):
        validate_config({"train_generator": {"init_checkpoint": str(tmp_path / "missing.pth")}})


@pytest.mark.parametrize(
    "overrides, key",
    [
        ({"preprocess": {"skullstrip": "deepbet"}}, "preprocess"),
        ({"unknown_section": {}}, "(top level)"),
        ({"split": {"test_fraction": "a quarter"}}, "split.test_fraction"),
        ({"split": {"test_fraction": 1.5}}, "split.test_fraction"),
        ({"preprocess": {"resolution": 3}}, "preprocess.resolution"),
        ({"train_generator": {"steps": 0}}, "train_generator.steps"),
        ({"split": {"bin_edges": [30, 20, 40]}}, "split.bin_edges"),
        ({"plan_synthetic": {"target": "fixed", "target_count": None}}, "plan_synthetic.target_count"),
        ({"data": {"bids_dir": "/no/such/dataset"}}, "data.bids_dir"),
        ({"train_generator": {"prediction": "noise"}}, "train_generator.prediction"),
        ({"generate": {"backend": "gan"}}, "generate.backend"),
        ({"split": {"scarcity_bins": ["45-55"]}}, "split.scarcity_bins"),
        ({"split": {"scarcity_keep": 0}}, "split.scarcity_keep"),
        ({"brainage": {"verdict_model": "voxels/lasso"}}, "brainage.verdict_model"),
    ],
)
def test_bad_configs_are_rejected_naming_the_key(overrides, key):
    with pytest.raises(FlowletError) as error:
        load_config(REPO / "config" / "config.yaml", overrides)
    assert key in str(error.value)


def test_config_readme_documents_every_key_as_the_schema_says():
    from flowlet.config import reference_markdown

    assert (REPO / "config" / "README.md").read_text().strip() == reference_markdown().strip(), (
        "config/README.md is out of date: run python -m flowlet.config > config/README.md"
    )


# Sections whose keys are passed to their command as flags of the same name (rules call cli_flags(section)).
# generate and train_generator are compared below: several of their flags default to None (the preset's or the
# options dataclass's value).
FLAG_SECTIONS = [
    ("split", "split"),
    ("regional_measures", "regional-measures"),
    ("regional_measures", "measure-images"),
    ("regions", "regions"),
    ("preprocess", "preprocess"),
    ("qc", "qc"),
    ("phantoms", "phantoms"),
    ("plan_synthetic", "plan"),
    ("brainage", "brainage"),
]


@pytest.mark.parametrize("section, command", FLAG_SECTIONS)
def test_schema_defaults_are_the_commands_defaults(section, command):
    """Running a stage by hand with no flags does what the workflow does with an empty config section."""
    import argparse
    import importlib

    from flowlet.cli import COMMANDS

    parser = argparse.ArgumentParser()
    importlib.import_module(COMMANDS[command][0]).build_parser(parser)
    actions = {action.dest: action for action in parser._actions}
    schema = yaml.safe_load(SCHEMA_PATH.read_text())["properties"][section]["properties"]
    for key, entry in schema.items():
        assert key in actions, f"{section}.{key} has no flag --{key.replace('_', '-')} in `flowlet {command}`"
        flag_default = actions[key].default
        if entry.get("default") is None or actions[key].required:
            continue  # null is not passed (the command's default applies); a required flag is always passed
        if isinstance(flag_default, tuple):
            flag_default = list(flag_default)
        assert entry.get("default") == flag_default, (
            f"{section}.{key}: schema {entry.get('default')!r}, flag {flag_default!r}"
        )


# generate's keys that the workflow reads itself: which generators run (both: one rule per backend, each with
# its own --backend), and what other rules (the QC gate, the scorecard's cohort) use.
WORKFLOW_ONLY_KEYS = {
    "generate": {"backend", "scorecard_samples", "qc_gate", "qc_max_robust_z", "qc_reference_max_images"}
}


@pytest.mark.parametrize("section, command", [("train_generator", "train"), ("generate", "generate")])
def test_generator_schema_defaults_are_what_the_command_does_without_the_flag(section, command, tmp_path):
    """A null schema default means "the command's own" (the preset's, else the options dataclass's); any other
    default must be exactly what the command does when the flag is left out."""
    import argparse
    import dataclasses
    import importlib

    from flowlet.cli import COMMANDS
    from flowlet.generative.train_cli import architecture_from_args, options_from_args

    parser = argparse.ArgumentParser()
    importlib.import_module(COMMANDS[command][0]).build_parser(parser)
    actions = {action.dest: action for action in parser._actions}
    if command == "train":
        args = parser.parse_args(["table.tsv", "--output-dir", str(tmp_path)])
        effective = {**dataclasses.asdict(architecture_from_args(args)), **dataclasses.asdict(options_from_args(args))}
        effective["preset"] = args.preset
    else:
        effective = {key: action.default for key, action in actions.items()}
    schema = yaml.safe_load(SCHEMA_PATH.read_text())["properties"][section]["properties"]
    for key, entry in schema.items():
        if key in WORKFLOW_ONLY_KEYS.get(section, ()):
            continue
        assert key in actions, f"{section}.{key} has no flag --{key.replace('_', '-')} in `flowlet {command}`"
        if entry.get("default") is not None:
            assert effective[key] == entry["default"], (
                f"{section}.{key}: schema {entry['default']!r}, command {effective[key]!r}"
            )
