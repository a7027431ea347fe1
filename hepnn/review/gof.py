"""Goodness of fit of simulation to data in the input space of a network.

For one ranked Taylor term (``DER_mass_MMC``, or a pair ``PRI_tau_pt*DER_mass_vis``)
:func:`term_gof` compares the simulation (weighted) with data (unweighted counts)
on the events where every feature of the term is defined:

* **Binning** from the simulation alone (never from data, so the test keeps its
  degrees of freedom): the simulation is normalised to the data total, and bins
  are weighted quantiles of the simulation, as many as give at least
  ``min_expected`` expected data events each (at most ``max_bins``); adjacent bins
  below ``min_expected`` (ties, discrete features) are merged. A pair is binned
  in the first feature, then, inside each of those slices, in quantiles of the
  second feature (merged the same way), and the 2D bins are unrolled slice by
  slice. A squared term (``x*x``) is the 1D histogram of ``x``.
* **Test statistic**: the saturated-model Poisson likelihood ratio (Baker and
  Cousins, NIM 221 (1984) 437) with the simulation's statistical uncertainty
  profiled per bin (Barlow–Beeston "lite": one Gaussian-constrained factor β_i on
  the expected count μ_i, relative width δ_i = sqrt(Σw²)_i / μ_i, as HistFactory's
  ``staterror``). With n_i data events, β_i solves
  ``β² + (μδ² − 1)β − nδ² = 0``, and

      χ² = Σ_i 2[β_i μ_i − n_i + n_i ln(n_i / (β_i μ_i))] + (β_i − 1)² / δ_i²,

  asymptotically χ²-distributed with ``ndf = bins − 1`` (one degree of freedom
  goes to the normalisation of the simulation to data).
* A term is **flagged** when its p-value is below ``flag_p`` (default 0.01).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import stats

from hepnn.errors import InputError

#: Suffix of the 0/1 missing-value flag inputs (never compared: they are not measured).
FLAG_SUFFIX = "_missing"


@dataclass(frozen=True)
class Term:
    """One ranked Taylor term: its name, order, rank and the distinct features it involves."""

    name: str
    order: int
    rank: int

    @property
    def features(self) -> tuple[str, ...]:
        """Distinct features, in the term's order (``x*x`` → ``(x,)``)."""
        return tuple(dict.fromkeys(self.name.split("*")))


@dataclass
class Sample:
    """Rows of flat features: ``raw`` (N, features) float64 with NaN for missing, and weights."""

    raw: np.ndarray
    features: list[str]
    weights: np.ndarray

    def __post_init__(self) -> None:
        self.raw = np.asarray(self.raw, dtype=np.float64)
        self.weights = np.asarray(self.weights, dtype=np.float64)
        if self.raw.ndim != 2 or self.raw.shape != (len(self.weights), len(self.features)):
            msg = f"Sample: raw {self.raw.shape} does not match {len(self.weights)} weights and {len(self.features)} features"
            raise ValueError(msg)

    def __len__(self) -> int:
        return len(self.weights)

    def column(self, feature: str) -> np.ndarray:
        return self.raw[:, self.features.index(feature)]


def read_ranking(path: Path, top: int, features: Sequence[str] | None = None) -> list[Term]:
    """The first ``top`` terms of ``ranking/<net>.csv`` (columns ``rank, term, order``).

    Terms with a missing-value flag, of order 3, or naming a feature not in
    ``features`` are skipped; the ranks keep the file's numbering.
    """
    try:
        with Path(path).open(newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    except OSError as err:
        msg = f"{path}: cannot read the ranking ({err.strerror})"
        raise InputError(msg) from None
    terms = []
    for i, row in enumerate(rows, start=2):
        try:
            term = Term(str(row["term"]), int(row["order"]), int(row["rank"]))
        except (KeyError, TypeError, ValueError):
            msg = f"{path}: line {i}: expected integer 'rank' and 'order' and a 'term'"
            raise InputError(msg) from None
        parts = term.name.split("*")
        if any(p.endswith(FLAG_SUFFIX) for p in parts) or len(term.features) > 2 or term.order > 2:
            continue
        if features is not None and not set(parts) <= set(features):
            continue
        terms.append(term)
    terms.sort(key=lambda t: t.rank)
    return terms[:top]


def weighted_quantiles(x: np.ndarray, w: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Quantiles ``q`` of ``x`` weighted by ``w`` (inverse of the weighted empirical CDF)."""
    order = np.argsort(x, kind="stable")
    xs, cw = x[order], np.cumsum(w[order])
    idx = np.searchsorted(cw, np.asarray(q) * cw[-1], side="left")
    return xs[np.clip(idx, 0, len(xs) - 1)]


def _merge(inner: np.ndarray, expected: np.ndarray, minimum: float) -> np.ndarray:
    """Drop inner edges until every bin has at least ``minimum`` expected (greedy, left to right)."""
    keep: list[float] = []
    acc = 0.0
    for i, e in enumerate(expected):
        acc += e
        if acc >= minimum and i < len(inner):
            keep.append(float(inner[i]))
            acc = 0.0
    if keep and acc < minimum:
        keep.pop()  # the last group is too small: merge it into the previous one
    return np.asarray(keep, dtype=np.float64)


def _edges_1d(x: np.ndarray, w: np.ndarray, n_target: int, minimum: float) -> np.ndarray:
    if n_target <= 1 or len(x) == 0:
        return np.empty(0)
    inner = np.unique(weighted_quantiles(x, w, np.arange(1, n_target) / n_target))
    expected = np.bincount(
        np.searchsorted(inner, x, side="right"), weights=w, minlength=len(inner) + 1
    )
    return _merge(inner, expected, minimum)


@dataclass
class Binning:
    """Bins of a term: inner edges in x, and per x slice inner edges in y (pairs)."""

    x_inner: np.ndarray
    y_inner: list[np.ndarray] | None = None

    @property
    def n_bins(self) -> int:
        if self.y_inner is None:
            return len(self.x_inner) + 1
        return sum(len(e) + 1 for e in self.y_inner)

    def assign(self, x: np.ndarray, y: np.ndarray | None = None) -> np.ndarray:
        """The unrolled bin index (int64) of every row."""
        ix = np.searchsorted(self.x_inner, x, side="right")
        if self.y_inner is None:
            return ix.astype(np.int64)
        assert y is not None
        offsets = np.cumsum([0] + [len(e) + 1 for e in self.y_inner])
        out = np.empty(len(x), dtype=np.int64)
        for s, inner in enumerate(self.y_inner):
            rows = ix == s
            out[rows] = offsets[s] + np.searchsorted(inner, y[rows], side="right")
        return out


def make_binning(
    x: np.ndarray, w: np.ndarray, n_data: float, *, y: np.ndarray | None = None,
    min_expected: float = 20.0, max_bins: int = 20,
) -> Binning:  # fmt: skip
    """Quantile bins of the simulation ``(x[, y], w)`` normalised to ``n_data`` events (module docstring)."""
    wn = w * (n_data / w.sum()) if w.sum() > 0 else w
    n_target = int(max(1, min(max_bins, n_data // min_expected)))
    if y is None:
        return Binning(_edges_1d(x, wn, n_target, min_expected))
    nx = max(1, int(np.sqrt(n_target)))
    x_inner = _edges_1d(x, wn, nx, min_expected)
    ix = np.searchsorted(x_inner, x, side="right")
    ny = max(1, n_target // max(1, len(x_inner) + 1))
    y_inner = []
    for s in range(len(x_inner) + 1):
        rows = ix == s
        n_s = int(min(ny, wn[rows].sum() // min_expected))
        y_inner.append(_edges_1d(y[rows], wn[rows], n_s, min_expected))
    return Binning(x_inner, y_inner)


def saturated_chi2(n: np.ndarray, mu: np.ndarray, var: np.ndarray) -> float:
    """Poisson likelihood-ratio χ² of counts ``n`` to expectations ``mu`` ± sqrt(``var``) (module docstring)."""
    n, mu, var = (np.asarray(a, dtype=np.float64) for a in (n, mu, var))
    if np.any(mu <= 0):
        msg = "every bin needs a positive expectation"
        raise ValueError(msg)
    d2 = var / mu**2
    with np.errstate(divide="ignore", invalid="ignore"):
        b = 1.0 - mu * d2
        beta = np.where(d2 > 0, 0.5 * (b + np.sqrt(b * b + 4.0 * n * d2)), 1.0)
        lam = beta * mu
        log_term = np.where(n > 0, n * np.log(np.where(n > 0, n, 1.0) / lam), 0.0)
        constraint = np.where(d2 > 0, (beta - 1.0) ** 2 / np.where(d2 > 0, d2, 1.0), 0.0)
    return float(np.sum(2.0 * (lam - n + log_term) + constraint))


@dataclass
class GofResult:
    """The comparison of one term (see :func:`term_gof`)."""

    term: Term
    chi2: float
    ndf: int
    p_value: float
    n_data: int
    n_sim: int
    flagged: bool
    binning: Binning
    data: np.ndarray  # data events per bin
    expected: np.ndarray  # simulation normalised to data, per bin
    variance: np.ndarray  # its Σw² (normalised), per bin
    defined_data: float  # fraction of data events where the term is defined
    defined_sim: float  # weighted fraction of simulation where it is defined

    def row(self) -> dict[str, object]:
        """One row of ``gof.csv``."""
        return {
            "term": self.term.name, "order": self.term.order, "rank": self.term.rank,
            "chi2": round(self.chi2, 4), "ndf": self.ndf, "p_value": float(f"{self.p_value:.4g}"),
            "n_bins": self.binning.n_bins, "n_data": self.n_data, "n_sim": self.n_sim,
            "defined_data": round(self.defined_data, 4), "defined_sim": round(self.defined_sim, 4),
            "flagged": self.flagged,
        }  # fmt: skip


def term_gof(
    term: Term, sim: Sample, data: Sample, *, min_expected: float = 20.0, max_bins: int = 20,
    flag_p: float = 0.01,
) -> GofResult:  # fmt: skip
    """Compare simulation (normalised to data) with data for one term (module docstring).

    Raises
    ------
    InputError
        Fewer than ``2 * min_expected`` data events where the term is defined.
    """
    feats = term.features
    ok_s = np.all(np.isfinite(sim.raw[:, [sim.features.index(f) for f in feats]]), axis=1)
    ok_d = np.all(np.isfinite(data.raw[:, [data.features.index(f) for f in feats]]), axis=1)
    n_data = int(ok_d.sum())
    if n_data < 2 * min_expected or not ok_s.any():
        msg = f"term {term.name}: {n_data} data events where it is defined, need at least {2 * min_expected:g}"
        raise InputError(msg)
    ws = sim.weights[ok_s]
    xs = sim.column(feats[0])[ok_s]
    xd = data.column(feats[0])[ok_d]
    ys = sim.column(feats[1])[ok_s] if len(feats) > 1 else None
    yd = data.column(feats[1])[ok_d] if len(feats) > 1 else None
    binning = make_binning(xs, ws, n_data, y=ys, min_expected=min_expected, max_bins=max_bins)
    nb = binning.n_bins
    scale = n_data / ws.sum()
    bs = binning.assign(xs, ys)
    expected = np.bincount(bs, weights=ws * scale, minlength=nb)
    variance = np.bincount(bs, weights=(ws * scale) ** 2, minlength=nb)
    counts = np.bincount(binning.assign(xd, yd), weights=data.weights[ok_d], minlength=nb)
    if np.any(expected <= 0):  # a simulation bin with only negative weights: merge it away
        msg = f"term {term.name}: a bin has no positive simulated expectation"
        raise InputError(msg)
    chi2 = saturated_chi2(counts, expected, variance)
    ndf = max(nb - 1, 1)
    p = float(stats.chi2.sf(chi2, ndf))
    return GofResult(
        term, chi2, ndf, p, n_data, int(ok_s.sum()), p < flag_p, binning, counts, expected,
        variance, n_data / max(len(data), 1), float(ws.sum() / sim.weights.sum()),
    )  # fmt: skip
