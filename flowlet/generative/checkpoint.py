"""Load and save generator checkpoints in the FlowLet reference layouts, safely.

Reading accepts the training layout (``flow_net_state_dict``), the released layout
(``model_state_dict``) and a raw state dict, in that order. Files are only ever opened with
``torch.load(weights_only=True)``, so a checkpoint that smuggles in arbitrary pickled objects is refused
instead of executed. Writing uses the training layout (``flow_net_state_dict`` + ``config`` + whatever the
trainer adds), through a temporary file and an atomic rename.
"""

from __future__ import annotations

import json
import os
import pickle
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from flowlet.errors import FlowletError
from flowlet.generative.unet import FlowUNet, UNetConfig, load_config

STATE_DICT_KEYS = ("flow_net_state_dict", "model_state_dict")


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The checkpoint's top-level dict, loaded with ``weights_only=True``; FlowletError when unsafe or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise FlowletError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        # torch's message is a long how-to; keep only the line naming the offending object.
        culprit = next((line.strip() for line in str(error).splitlines() if "Unsupported global" in line), "")
        raise FlowletError(
            f"refusing to load checkpoint {path}: it contains objects other than tensors and plain containers, "
            f"which could run arbitrary code when unpickled{f' ({culprit})' if culprit else ''}"
        ) from None
    except Exception as error:  # torch raises RuntimeError, EOFError, zipfile errors ... for damaged files
        raise FlowletError(f"checkpoint {path} is unreadable or corrupt: {type(error).__name__}: {error}") from None
    if not isinstance(payload, dict):
        raise FlowletError(f"checkpoint {path} holds a {type(payload).__name__}, not a dict of weights")
    return payload


def extract_state_dict(payload: Mapping[str, Any], path: str | Path = "checkpoint") -> dict[str, torch.Tensor]:
    for key in STATE_DICT_KEYS:
        if key in payload:
            state = payload[key]
            break
    else:
        state = payload
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)} if isinstance(state, Mapping) else {}
    if not tensors:
        raise FlowletError(
            f"checkpoint {path} has no model weights (looked for {list(STATE_DICT_KEYS)} and a raw state dict)"
        )
    return tensors


def check_compatible(
    model: nn.Module, state: Mapping[str, torch.Tensor], path: Path, against: str = "its configuration"
) -> None:
    """Raise a FlowletError listing missing and unexpected keys and shape mismatches, if there are any."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs config {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if not (missing or unexpected or mismatched):
        return

    def listing(title: str, items: list[str]) -> str:
        shown = ", ".join(items[:20]) + (f", ... ({len(items) - 20} more)" if len(items) > 20 else "")
        return f"{len(items)} {title}: {shown}"

    parts = [
        listing(title, items)
        for title, items in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shape mismatches", mismatched),
        )
        if items
    ]
    raise FlowletError(f"checkpoint {path} does not match {against}; " + "; ".join(parts))


def load_checkpoint(
    path: str | Path, config_path: str | Path | None = None, map_location: str | torch.device = "cpu"
) -> tuple[FlowUNet, UNetConfig]:
    """Build the network described by the config and load the checkpoint's weights strictly.

    The config comes from ``config_path`` when given, else from the checkpoint's ``config`` entry.
    Returns the model in eval mode on ``map_location`` and its config.
    """
    path = Path(path)
    return model_from_payload(read_checkpoint(path, map_location), path, config_path, map_location)


def model_from_payload(
    payload: Mapping[str, Any],
    path: Path,
    config_path: str | Path | None = None,
    map_location: str | torch.device = "cpu",
) -> tuple[FlowUNet, UNetConfig]:
    """:func:`load_checkpoint` for a checkpoint already read (``path`` names it in errors)."""
    if config_path is not None:
        config = load_config(config_path)
    elif isinstance(payload.get("config"), Mapping):
        try:
            config = UNetConfig.from_reference_dict(payload["config"])
        except FlowletError as error:
            raise FlowletError(f"checkpoint {path}: {error}") from None
    else:
        raise FlowletError(f"checkpoint {path} carries no 'config' entry; pass the matching config.json")
    state = extract_state_dict(payload, path)
    with torch.device("meta"):
        model = FlowUNet(config)
    check_compatible(model, state, path)
    model.load_state_dict(state, strict=True, assign=True)
    return model.to(map_location).eval(), config


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain network behind torch.compile / DistributedDataParallel wrappers (their names add prefixes)."""
    while True:
        inner = getattr(model, "_orig_mod", None) or getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def save_checkpoint(
    path: str | Path, model: nn.Module, config: UNetConfig, extra: Mapping[str, Any] | None = None
) -> Path:
    """Write ``{"flow_net_state_dict", "config", **extra}`` atomically; ``extra`` must be weights_only-safe."""
    path = Path(path)
    extra = dict(extra or {})
    clashes = {"flow_net_state_dict", "config"} & set(extra)
    if clashes:
        raise FlowletError(f"save_checkpoint: extra entries {sorted(clashes)} would overwrite the model or config")
    payload = {"flow_net_state_dict": unwrap_model(model).state_dict(), "config": config.to_reference_dict(), **extra}
    # The config must survive a JSON round trip so the file stays loadable with weights_only=True.
    json.dumps(payload["config"])
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            torch.save(payload, stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path
