"""The result of a Taylor ranking: mean absolute coefficients per term, ranked.

:class:`TaylorResult` is what :func:`hepnn.taylor.mean_abs_taylor` returns and
the writers in :mod:`hepnn.taylor.tables` read; :class:`TaylorRecord` is one
ranked row.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from hepnn.taylor.uncertainty import neighbour_separation, replica_std

__all__ = ["ERROR_COLUMNS", "INPUTS", "TaylorRecord", "TaylorResult", "output_description"]

#: Input conventions: derivatives in the network's standardised inputs, or in the
#: original units (chain rule: times ``1/sigma_i`` per derivative in feature ``i``).
INPUTS = ("standardised", "unscaled")
#: Columns after ``rank, term, order, value`` when a result carries uncertainties.
ERROR_COLUMNS = ("err_stat", "err_train", "err", "defined_fraction", "z_next", "separated")
#: ``separated`` means ``z_next`` above this (see :func:`neighbour_separation`).
SEPARATION_Z = 2.0


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
        ``sum_k w_k m_ak |t_a(x_k)| / sum_k w_k m_ak`` in float64, where
        ``m_ak`` is 1 when every feature of term ``a`` is defined in event ``k``
        (always 1 without a ``defined`` mask).
    output, n_events, sum_weights, weighted, method, input_names
        How the numbers were made (written into the ranking metadata).
    inputs
        ``"standardised"`` (derivatives in the network's inputs) or
        ``"unscaled"`` (in the original units of the features).
    defined_weights
        ``sum_k w_k m_ak`` per term; None when every term is defined in every event.
    boot_sums, boot_weights
        ``(B, T)`` numerator and denominator of ``values`` in ``B`` bootstrap
        replicas of the events (resampling counts times weights); None without.
    train_values, train_labels
        ``(R, T)`` values of the same terms from ``R`` retrained models
        (ensemble members or k-fold models) and their labels; None without.
    train_basis
        How the training replicas were evaluated (written into the metadata).
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
    inputs: str = "standardised"
    defined_weights: np.ndarray | None = None
    boot_sums: np.ndarray | None = None
    boot_weights: np.ndarray | None = None
    train_values: np.ndarray | None = None
    train_labels: list[str] = field(default_factory=list)
    train_basis: str = ""

    # ------------------------------------------------------------ uncertainties
    @property
    def has_errors(self) -> bool:
        """Whether the result carries a defined mask, bootstrap or training replicas."""
        return (
            self.defined_weights is not None
            or self.boot_sums is not None
            or self.train_values is not None
        )

    @property
    def defined_fraction(self) -> np.ndarray:
        """``sum_k w_k m_ak / sum_k w_k`` per term (1 where nothing is masked)."""
        if self.defined_weights is None or not self.sum_weights > 0:
            return np.ones(len(self.terms))
        return np.asarray(self.defined_weights, dtype=np.float64) / self.sum_weights

    @property
    def bootstrap_values(self) -> np.ndarray | None:
        """``(B, T)`` values of the bootstrap replicas (NaN where a replica has no event)."""
        if self.boot_sums is None or self.boot_weights is None:
            return None
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.boot_sums / self.boot_weights

    @property
    def err_stat(self) -> np.ndarray:
        """Bootstrap standard deviation (ddof=1) of each value; NaN without bootstrap."""
        return replica_std(self.bootstrap_values, len(self.terms))

    @property
    def err_train(self) -> np.ndarray:
        """Standard deviation (ddof=1) over the training replicas; NaN with fewer than 2."""
        return replica_std(self.train_values, len(self.terms))

    @property
    def err(self) -> np.ndarray:
        """``err_stat`` and ``err_train`` in quadrature (a missing part counts as 0)."""
        stat, train = self.err_stat, self.err_train
        both = np.isnan(stat) & np.isnan(train)
        out = np.sqrt(np.nan_to_num(stat) ** 2 + np.nan_to_num(train) ** 2)
        return np.where(both, np.nan, out)

    def separation(self) -> np.ndarray:
        """``z_next`` of every term, in term order (see :func:`neighbour_separation`)."""
        order = np.argsort(-self.values, kind="stable")
        z_ranked = neighbour_separation(
            self.values[order],
            None if self.bootstrap_values is None else self.bootstrap_values[:, order],
            None if self.train_values is None else self.train_values[:, order],
        )
        z = np.full(len(self.terms), np.nan)
        z[order] = z_ranked
        return z

    def ranked(self, top: int | None = None) -> list[TaylorRecord]:
        """Terms sorted by decreasing value (ties keep term order), ranks from 1."""
        order = np.argsort(-self.values, kind="stable")
        if top is not None:
            order = order[:top]
        return [
            TaylorRecord(r + 1, self.names[i], self.orders[i], float(self.values[i]))
            for r, i in enumerate(order)
        ]

    def columns(self) -> list[str]:
        """Table columns: ``rank, term, order, value`` and, with uncertainties, :data:`ERROR_COLUMNS`."""
        base = list(TaylorRecord._fields)
        return [*base, *ERROR_COLUMNS] if self.has_errors else base

    def to_records(self, top: int | None = None) -> list[dict[str, Any]]:
        """Ranked rows as dicts with keys :meth:`columns` (JSON-ready; NaN as None).

        ``separated`` is True when ``z_next`` (the difference to the next-ranked
        term over its uncertainty) exceeds 2, None for the last term or without
        uncertainties.
        """
        records = [rec._asdict() for rec in self.ranked(top)]
        if not self.has_errors:
            return records
        order = np.argsort(-self.values, kind="stable")[: len(records)]
        extra = {
            "err_stat": self.err_stat,
            "err_train": self.err_train,
            "err": self.err,
            "defined_fraction": self.defined_fraction,
            "z_next": self.separation(),
        }
        for rec, i in zip(records, order, strict=True):
            for key, arr in extra.items():
                v = float(arr[i])
                rec[key] = v if np.isfinite(v) else None
            z = rec["z_next"]
            rec["separated"] = None if z is None else bool(z > SEPARATION_Z)
        return records

    def value(self, name: str) -> float:
        """Value of the term called ``name`` (e.g. ``"x0*x1"``)."""
        return float(self.values[self.names.index(name)])

    def metadata(self) -> dict[str, Any]:
        """The convention and provenance of the numbers, for writers."""
        return {
            "method": "Taylor coefficients, Wunsch et al., arXiv:1803.08782",
            "metric": "<t_a> = sum_k w_k |t_a(x_k)| / sum_k w_k",
            "output": output_description(self.output),
            "inputs": input_description(self.inputs),
            "taylor_factors": "t_ii = (1/2) d2y/dxi2; t_ij (i<j) = d2y/dxi dxj counted once; "
            "t_iii = 1/6, t_iij = 1/2, t_ijk = 1 times the third derivative",
            "orders": sorted(set(self.orders)),
            "n_terms": len(self.terms),
            "n_events": self.n_events,
            "sum_weights": self.sum_weights,
            "weights": "event weights" if self.weighted else "unweighted",
            "computation": self.method,
            "input_names": list(self.input_names),
            **self._error_metadata(),
        }

    def _error_metadata(self) -> dict[str, Any]:
        if not self.has_errors:
            return {}
        n_boot = 0 if self.boot_sums is None else int(self.boot_sums.shape[0])
        return {
            "defined": "each term averaged over the events where all of its features are "
            "defined (not missing, not imputed); defined_fraction = sum_k w_k m_ak / sum_k w_k",
            "bootstrap_replicas": n_boot,
            "err_stat": "standard deviation (ddof=1) of the value over bootstrap replicas of "
            "the ranked events (per-event coefficients resampled, not recomputed)",
            "training_replicas": list(self.train_labels),
            "err_train": "standard deviation (ddof=1) of the value over retrained models: "
            + (self.train_basis or "none available"),
            "err": "err_stat and err_train in quadrature",
            "z_next": "(value - value of the next-ranked term) / uncertainty of that difference "
            "(bootstrap and training replicas of the difference, so correlations count)",
            "separated": f"z_next > {SEPARATION_Z:g}",
        }


def input_description(inputs: str) -> str:
    """Human-readable name of the differentiation variables."""
    if inputs == "unscaled":
        return (
            "derivatives in the original (unscaled) inputs: the standardised derivative "
            "times 1/sigma_i for every derivative in feature i (sigma_i of the training events)"
        )
    return "derivatives in the network's prepared, standardised inputs"


def output_description(output: str) -> str:
    """Human-readable name of the differentiated output."""
    return "y = sigmoid(logit) (classifier score)" if output == "sigmoid" else "y = logit"
