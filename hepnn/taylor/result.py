"""The result of a Taylor ranking: mean absolute coefficients per term, ranked.

:class:`TaylorResult` is what :func:`hepnn.taylor.mean_abs_taylor` returns and
the writers in :mod:`hepnn.taylor.tables` read; :class:`TaylorRecord` is one
ranked row.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

__all__ = ["TaylorRecord", "TaylorResult", "output_description"]


class TaylorRecord(NamedTuple):
    """One row of a ranking."""

    rank: int
    term: str
    order: int
    value: float


@dataclass
class TaylorResult:
    """Mean absolute Taylor coefficients ``<|t_a|>`` of every term.

    Attributes
    ----------
    terms
        Index tuples (flattened input indices), e.g. ``(3,)``, ``(0, 3)``.
    names
        Feature names joined by ``*`` in input order (``"m_jj*m_bb"``); a
        first-order term is the bare name; ``x*x`` for ``t_ii``.
    orders
        Order of each term.
    values
        ``sum_k w_k |t_a(x_k)| / sum_k w_k`` in float64.
    output, n_events, sum_weights, weighted, method, input_names
        How the numbers were made (written into the ranking metadata).
    """

    terms: list[tuple[int, ...]]
    names: list[str]
    orders: list[int]
    values: np.ndarray
    output: str = "sigmoid"
    n_events: int = 0
    sum_weights: float = 0.0
    weighted: bool = False
    method: str = "auto"
    input_names: list[str] = field(default_factory=list)

    def ranked(self, top: int | None = None) -> list[TaylorRecord]:
        """Terms sorted by decreasing value (ties keep term order), ranks from 1."""
        order = np.argsort(-self.values, kind="stable")
        if top is not None:
            order = order[:top]
        return [
            TaylorRecord(r + 1, self.names[i], self.orders[i], float(self.values[i]))
            for r, i in enumerate(order)
        ]

    def to_records(self, top: int | None = None) -> list[dict[str, Any]]:
        """Ranked rows as dicts with keys ``rank, term, order, value`` (JSON-ready)."""
        return [rec._asdict() for rec in self.ranked(top)]

    def value(self, name: str) -> float:
        """Value of the term called ``name`` (e.g. ``"x0*x1"``)."""
        return float(self.values[self.names.index(name)])

    def metadata(self) -> dict[str, Any]:
        """The convention and provenance of the numbers, for writers."""
        return {
            "method": "Taylor coefficients, Wunsch et al., arXiv:1803.08782",
            "metric": "<t_a> = sum_k w_k |t_a(x_k)| / sum_k w_k",
            "output": output_description(self.output),
            "inputs": "derivatives in the network's prepared, standardised inputs",
            "taylor_factors": "t_ii = (1/2) d2y/dxi2; t_ij (i<j) = d2y/dxi dxj counted once; "
            "t_iii = 1/6, t_iij = 1/2, t_ijk = 1 times the third derivative",
            "orders": sorted(set(self.orders)),
            "n_terms": len(self.terms),
            "n_events": self.n_events,
            "sum_weights": self.sum_weights,
            "weights": "event weights" if self.weighted else "unweighted",
            "computation": self.method,
            "input_names": list(self.input_names),
        }


def output_description(output: str) -> str:
    """Human-readable name of the differentiated output."""
    return "y = sigmoid(logit) (classifier score)" if output == "sigmoid" else "y = logit"
