"""Study configuration: schema validation with defaults, plus the checks a schema cannot express."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import yaml

from flowlet.data.split import bin_labels
from flowlet.errors import FlowletError

SCHEMA_PATH = Path(__file__).resolve().parents[1] / "workflow" / "schemas" / "config.schema.yaml"


def _with_defaults(validator_class):
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        for name, subschema in properties.items():
            if isinstance(instance, dict) and "default" in subschema:
                instance.setdefault(name, subschema["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


def _scalar(text: str):
    """A number as Python reads it (YAML 1.1 reads "1e-3" as a string), else what YAML makes of the text."""
    for parse in (int, float):
        try:
            return parse(text)
        except ValueError:
            pass
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _read_typed_strings(value, schema: dict):
    """``value`` with every string that the schema does not allow as a string read as YAML, when that gives an
    allowed type; dicts and lists are changed in place (Snakemake's ``config`` object must stay the same object)."""
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        for key, item in value.items():
            value[key] = _read_typed_strings(item, properties.get(key, {}))
        return value
    if isinstance(value, list):
        value[:] = [_read_typed_strings(item, schema.get("items", {})) for item in value]
        return value
    allowed = schema.get("type", [])
    allowed = [allowed] if isinstance(allowed, str) else allowed
    if not isinstance(value, str) or not allowed or "string" in allowed:
        return value
    parsed = _scalar(value)
    type_checker = jsonschema.Draft202012Validator.TYPE_CHECKER
    return parsed if any(type_checker.is_type(parsed, name) for name in allowed) else value


def validate_config(config: dict) -> dict:
    """Fill defaults and validate; the error names the offending key and what is wrong with it.

    For the demo cohort (no ``data.bids_dir``) the ``demo`` section first fills the keys its sections leave
    null or out. Snakemake reads a nested ``--config`` value with YAML's BaseLoader, so its numbers, booleans and
    nulls arrive as strings; those are read as the type the schema asks for.
    """
    schema = yaml.safe_load(SCHEMA_PATH.read_text())
    _read_typed_strings(config, schema)
    if not (config.get("data") or {}).get("bids_dir"):
        for section, values in (config.get("demo") or {}).items():
            own = config.get(section) or {}
            if isinstance(values, dict) and isinstance(own, dict):
                config[section] = {**own, **{key: value for key, value in values.items() if own.get(key) is None}}
    validator = _with_defaults(jsonschema.Draft202012Validator)(schema)
    errors = sorted(validator.iter_errors(config), key=lambda error: list(error.absolute_path))
    if errors:
        lines = []
        for error in errors:
            key = ".".join(map(str, error.absolute_path)) or "(top level)"
            lines.append(f"{key}: {error.message}")
        raise FlowletError("invalid config:\n  " + "\n  ".join(lines))
    check_config(config)
    return config


def check_config(config: dict) -> None:
    """Rules that span keys: increasing bin edges, target settings that match the chosen target."""
    edges = config["split"]["bin_edges"]
    if any(high <= low for low, high in zip(edges, edges[1:])):
        raise FlowletError(f"split.bin_edges: must be strictly increasing, got {edges}")
    labels = bin_labels(edges)
    unknown = [label for label in config["split"]["scarcity_bins"] if label not in labels]
    if unknown:
        raise FlowletError(f"split.scarcity_bins: {unknown} are not age bins of split.bin_edges; the bins are {labels}")
    plan = config["plan_synthetic"]
    if plan["target"] == "fixed" and plan["target_count"] is None:
        raise FlowletError("plan_synthetic.target_count: required when plan_synthetic.target is 'fixed'")
    if plan["target"] == "ratio" and plan["target_ratio"] is None:
        raise FlowletError("plan_synthetic.target_ratio: required when plan_synthetic.target is 'ratio'")
    init_checkpoint = config["train_generator"]["init_checkpoint"]
    if init_checkpoint and not Path(init_checkpoint).is_file():
        raise FlowletError(f"train_generator.init_checkpoint: {init_checkpoint} does not exist")
    for key in ("bids_dir", "external_bids_dir"):
        folder = config["data"][key]
        if folder and not Path(folder).is_dir():
            raise FlowletError(f"data.{key}: {folder} is not a directory")


def load_config(path: str | Path, overrides: dict | None = None) -> dict:
    path = Path(path)
    try:
        config = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as error:
        raise FlowletError(f"{path}: cannot read the config ({error})") from error
    for section, values in (overrides or {}).items():
        if isinstance(values, dict):
            config.setdefault(section, {}).update(values)
        else:
            config[section] = values
    return validate_config(config)


def reference_markdown() -> str:
    """config/README.md, generated from the schema so that the documentation cannot drift from it."""
    schema = yaml.safe_load(SCHEMA_PATH.read_text())
    lines = [
        "# Configuration reference",
        "",
        "`config/config.yaml` has one section per rule. Every key below is validated against",
        "`workflow/schemas/config.schema.yaml` before any job runs: unknown keys, wrong types and impossible",
        "values are rejected with a message naming the key. Keys you leave out take the default shown.",
        'Override single keys on the command line, e.g. `snakemake --cores 2 --config data=\'{"bids_dir": "/data/bids"}\'`.',
        "Threads and memory are not configured here: they are set per rule and in `workflow/profiles/`.",
        "",
        "Regenerate this file with `python -m flowlet.config > config/README.md` after changing the schema.",
        "",
    ]
    top_level = {name: sub for name, sub in schema["properties"].items() if sub.get("type") != "object"}
    if top_level:
        lines += ["## Top level", "", "| key | type | default | description |", "|---|---|---|---|"]
        lines += [_row(name, sub) for name, sub in top_level.items()] + [""]
    for name, section in schema["properties"].items():
        if section.get("type") != "object":
            continue
        lines += [f"## `{name}`", "", section.get("description", ""), ""]
        if section.get("properties"):
            lines += ["| key | type | default | description |", "|---|---|---|---|"]
            lines += [_row(key, sub) for key, sub in section["properties"].items()]
        else:
            lines += ["No settings yet."]
        lines += [""]
    return "\n".join(lines)


def _row(name: str, schema: dict) -> str:
    kind = schema.get("type", "")
    kind = " or ".join(kind) if isinstance(kind, list) else kind
    if "enum" in schema:
        kind += ": " + ", ".join(f"`{value}`" for value in schema["enum"])
    default = json.dumps(schema.get("default"))
    return f"| `{name}` | {kind} | `{default}` | {schema.get('description', '')} |"


if __name__ == "__main__":
    print(reference_markdown())
