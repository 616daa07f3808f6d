"""Age bins.

Bins are half-open ``[low, high)`` intervals between consecutive edges, except the
last one, which also includes its upper edge (so an edge list 20 ... 90 covers a
90-year-old). Labels are ``"<low>-<high>"`` with edges printed without trailing zeros.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from flowlet.errors import FlowletError


def _format_edge(value: float) -> str:
    return f"{value:g}"


@dataclass(frozen=True)
class AgeBins:
    """Consecutive age bins defined by strictly increasing edges."""

    edges: tuple[float, ...]

    def __post_init__(self) -> None:
        edges = np.asarray(self.edges, dtype=float)
        if edges.ndim != 1 or len(edges) < 2:
            raise FlowletError(f"age bin edges: need at least two edges, got {list(self.edges)}")
        if not np.all(np.isfinite(edges)) or np.any(np.diff(edges) <= 0):
            raise FlowletError(f"age bin edges must be finite and strictly increasing, got {list(self.edges)}")

    @classmethod
    def from_edges(cls, edges: Sequence[float]) -> AgeBins:
        return cls(tuple(float(edge) for edge in edges))

    @property
    def labels(self) -> list[str]:
        return [f"{_format_edge(low)}-{_format_edge(high)}" for low, high in self.intervals]

    @property
    def intervals(self) -> list[tuple[float, float]]:
        return list(zip(self.edges[:-1], self.edges[1:]))

    def index_of(self, ages: Sequence[float] | np.ndarray) -> np.ndarray:
        """Bin index of every age; -1 for ages outside all bins (or missing)."""
        ages = np.asarray(ages, dtype=float)
        edges = np.asarray(self.edges)
        index = np.searchsorted(edges, ages, side="right") - 1
        index[ages == edges[-1]] = len(edges) - 2
        outside = ~np.isfinite(ages) | (ages < edges[0]) | (ages > edges[-1])
        index[outside] = -1
        return index

    def assign(
        self, ages: Sequence[float] | np.ndarray, ids: Sequence[str] | None = None, what: str = "subjects"
    ) -> np.ndarray:
        """Bin label of every age; a FlowletError naming the subjects whose age lies outside all bins."""
        ages = np.asarray(ages, dtype=float)
        index = self.index_of(ages)
        outside = np.flatnonzero(index < 0)
        if len(outside):
            names = [str(ids[i]) if ids is not None else f"row {i}" for i in outside]
            shown = ", ".join(f"{name} (age {ages[i]:g})" for name, i in zip(names[:10], outside[:10]))
            more = f" and {len(outside) - 10} more" if len(outside) > 10 else ""
            raise FlowletError(
                f"{what}: {len(outside)} age(s) outside the bins {_format_edge(self.edges[0])}-{_format_edge(self.edges[-1])}: "
                f"{shown}{more}; widen the bin edges or remove these subjects"
            )
        labels = np.asarray(self.labels, dtype=object)
        return labels[index]
