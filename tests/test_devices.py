"""One device resolver for every network: generator training, sampling and the CNN regressor."""

from __future__ import annotations

import pytest
import torch

from flowlet.devices import resolve_device
from flowlet.errors import FlowletError


def test_auto_and_cpu_resolve_on_any_machine():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device(None) == resolve_device("auto")


def test_bad_names_and_missing_cuda_say_what_to_use():
    with pytest.raises(FlowletError, match="'gpu0' is not a device name"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(FlowletError, match="CUDA is not available on this machine; use --device cpu or auto"):
            resolve_device("cuda:1", local_rank=0)
    else:
        assert resolve_device("cuda", local_rank=0) == torch.device("cuda", 0)
