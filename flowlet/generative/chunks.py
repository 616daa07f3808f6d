"""Splitting one age bin's generation over several jobs. Light on imports: the workflow calls
:func:`chunks_per_bin` while it builds the DAG.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TypeVar

from flowlet.errors import FlowletError

T = TypeVar("T")


def select_chunk(requests: Sequence[T], chunk_size: int, chunk: int) -> list[T]:
    """Requests ``chunk * chunk_size`` up to ``(chunk + 1) * chunk_size`` (all of them when ``chunk_size`` is 0).

    Seeds are assigned before the split, so a sample is the same whichever chunk generates it. A chunk past
    the end is empty: the workflow sizes chunks from the largest count the plan allows, not the actual one.
    """
    if chunk_size < 0 or chunk < 0:
        raise FlowletError(f"--chunk-size and --chunk must not be negative, got {chunk_size} and {chunk}")
    if chunk_size == 0:
        if chunk != 0:
            raise FlowletError(f"--chunk {chunk} needs --chunk-size > 0 (0 means a single chunk, number 0)")
        return list(requests)
    return list(requests[chunk * chunk_size : (chunk + 1) * chunk_size])


def chunks_per_bin(chunk_size: int, plan: Mapping[str, object]) -> int:
    """How many generation jobs each age bin gets, before the plan exists: enough chunks of ``chunk_size`` for the
    most synthetic subjects the plan settings (the config's ``plan_synthetic`` section) can give one bin."""
    if chunk_size == 0:
        return 1
    bounds = [plan["max_per_bin"]] if plan.get("max_per_bin") is not None else []
    if plan.get("target") == "fixed" and plan.get("target_count") is not None:
        bounds.append(plan["target_count"])
    if not bounds:
        raise FlowletError(
            "generate.chunk_size: chunking needs an upper bound on the synthetic subjects of a bin, known before "
            "the plan is made: set plan_synthetic.max_per_bin (or use target fixed), or set generate.chunk_size: 0"
        )
    return max(1, math.ceil(min(bounds) / chunk_size))
