"""Condition ranges (``condition_ranges.json``) and the min-max normalisation of condition values.

The file looks like ``{"Age": {"min": 5.90, "max": 95.46}}``. Values are mapped to (v - min)/(max - min)
and clamped to [0, 1], as the reference does; clamped values are reported with a warning.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import torch

from flowlet.errors import FlowletError

log = logging.getLogger(__name__)


class ConditionRange(NamedTuple):
    min: float
    max: float

    def normalise(self, values: torch.Tensor) -> torch.Tensor:
        return (values - self.min) / (self.max - self.min)

    def denormalise(self, values: torch.Tensor) -> torch.Tensor:
        return values * (self.max - self.min) + self.min


def _as_number(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise FlowletError(f"{what} must be a finite number, got {value!r}")
    return float(value)


def parse_condition_ranges(data: Mapping[str, object], source: str = "condition ranges") -> dict[str, ConditionRange]:
    if not isinstance(data, Mapping) or not data:
        raise FlowletError(f'{source} must be a non-empty object like {{"Age": {{"min": 5.9, "max": 95.46}}}}')
    ranges = {}
    for name, bounds in data.items():
        if not isinstance(bounds, Mapping) or "min" not in bounds or "max" not in bounds:
            raise FlowletError(f"{source}: condition '{name}' needs 'min' and 'max', got {bounds!r}")
        low = _as_number(bounds["min"], f"{source}: {name}.min")
        high = _as_number(bounds["max"], f"{source}: {name}.max")
        if not high > low:
            raise FlowletError(f"{source}: condition '{name}' has max {high} not above min {low}")
        ranges[str(name)] = ConditionRange(low, high)
    return ranges


def load_condition_ranges(path: str | Path) -> dict[str, ConditionRange]:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise FlowletError(f"condition ranges file {path} does not exist") from None
    except (OSError, json.JSONDecodeError) as error:
        raise FlowletError(f"condition ranges file {path} is not readable JSON: {error}") from None
    return parse_condition_ranges(data, str(path))


def save_condition_ranges(path: str | Path, ranges: Mapping[str, ConditionRange]) -> None:
    data = {name: {"min": float(r.min), "max": float(r.max)} for name, r in ranges.items()}
    Path(path).write_text(json.dumps(data, indent=2) + "\n")


def normalise_conditions(
    values: Mapping[str, float | Sequence[float] | torch.Tensor], ranges: Mapping[str, ConditionRange]
) -> dict[str, torch.Tensor]:
    """Raw condition values (e.g. ages in years) -> ``{name: float32 Tensor (N, 1)}`` in [0, 1].

    Scalars broadcast to the length of the list-valued conditions.
    """
    columns: dict[str, list[float]] = {}
    for name, raw in values.items():
        if name not in ranges:
            raise FlowletError(f"unknown condition '{name}'; the condition ranges define {sorted(ranges)}")
        if isinstance(raw, torch.Tensor):
            raw = raw.detach().cpu().reshape(-1).tolist()
        items = list(raw) if isinstance(raw, (list, tuple)) else [raw]
        if not items:
            raise FlowletError(f"condition '{name}' has no values")
        columns[name] = [_as_number(item, f"condition '{name}' value") for item in items]
    lengths = {len(column) for column in columns.values()} - {1}
    if len(lengths) > 1:
        raise FlowletError(f"conditions have different numbers of values: { {k: len(v) for k, v in columns.items()} }")
    batch = lengths.pop() if lengths else 1
    normalised = {}
    for name, column in columns.items():
        column = column * (batch if len(column) == 1 else 1)
        # Scaled in float32 as the reference does; which values lie outside is decided on the exact values, since
        # the range's own maximum, rounded to float32, can scale to one ulp above 1.
        scaled = ranges[name].normalise(torch.tensor(column, dtype=torch.float32))
        outside = sorted({value for value in column if not ranges[name].min <= value <= ranges[name].max})
        if outside:
            log.warning(
                "condition '%s' values %s lie outside the trained range [%g, %g] and are clamped to it",
                name,
                outside,
                ranges[name].min,
                ranges[name].max,
            )
        normalised[name] = scaled.clamp(0.0, 1.0)[:, None]
    return normalised


def parse_condition_spec(spec: str) -> dict[str, float]:
    """``"Age=45"`` or ``"Age=45,Sex=1"`` -> ``{"Age": 45.0, "Sex": 1.0}`` (the reference's CLI syntax)."""
    parsed: dict[str, float] = {}
    for part in spec.split(","):
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep or not name:
            raise FlowletError(f"condition '{spec}' must look like NAME=VALUE (e.g. Age=45)")
        try:
            parsed[name] = float(value)
        except ValueError:
            raise FlowletError(f"condition '{spec}': value of '{name}' is not a number: {value!r}") from None
        if not math.isfinite(parsed[name]):
            raise FlowletError(f"condition '{spec}': value of '{name}' is not finite")
    return parsed
