"""Uncertainties of a Taylor ranking: event bootstrap, training replicas, separation.

Statistical (``err_stat``): the per-event coefficients ``|t_a(x_k)|`` are
computed once; a bootstrap replica resamples the *events* with replacement
(multinomial counts ``c_bk``, :func:`bootstrap_counts`) and re-averages them,
``<|t_a|>_b = sum_k c_bk w_k m_ak |t_a(x_k)| / sum_k c_bk w_k m_ak``. The
streaming sums are accumulated by :class:`hepnn.taylor.accumulate.TermSums`; no
derivative is recomputed.

Training (``err_train``): the same value from models trained again (ensemble
members, k-fold models); the caller supplies them.

Separation of neighbours: for terms ``i`` and ``j`` next to each other in the
ranking, ``z = (v_i - v_j) / sigma(v_i - v_j)`` with the variance of the
*difference* taken over the bootstrap replicas plus the variance of the
difference over the training replicas. Both terms are measured on the same
events by the same models, so their fluctuations are correlated; using the
difference's own spread counts that correlation (a plain quadrature sum of the
two errors would overstate the uncertainty of the difference).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["bootstrap_counts", "neighbour_separation", "replica_std"]


def bootstrap_counts(n_events: int, replicas: int, seed: int | Sequence[int]) -> np.ndarray:
    """Multinomial resampling counts ``(replicas, n_events)`` as float64.

    Replica ``b`` draws ``n_events`` events with replacement;
    ``counts[b, k]`` is how often event ``k`` was drawn. Seeded:
    ``numpy.random.default_rng(seed)``.
    """
    if replicas < 1 or n_events < 1:
        msg = f"bootstrap needs >= 1 replica and event, got {replicas}, {n_events}"
        raise ValueError(msg)
    rng = np.random.default_rng(seed)
    counts = np.empty((replicas, n_events), dtype=np.float64)
    for b in range(replicas):
        counts[b] = np.bincount(rng.integers(0, n_events, size=n_events), minlength=n_events)
    return counts


def replica_std(values: np.ndarray | None, n_terms: int) -> np.ndarray:
    """Standard deviation (ddof=1) over axis 0, ignoring NaN; NaN with < 2 replicas."""
    if values is None:
        return np.full(n_terms, np.nan)
    values = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(values).sum(axis=0)
    out = np.full(values.shape[1], np.nan)
    ok = finite >= 2
    if ok.any():
        out[ok] = np.nanstd(values[:, ok], axis=0, ddof=1)
    return out


def neighbour_separation(
    values: np.ndarray, boot: np.ndarray | None, train: np.ndarray | None
) -> np.ndarray:
    """``z`` of each ranked term against the next one (NaN for the last, or without errors).

    Parameters
    ----------
    values
        Values sorted by decreasing value.
    boot
        ``(B, T)`` bootstrap replicas in the same order, or None.
    train
        ``(R, T)`` training replicas in the same order, or None.

    Returns
    -------
    numpy.ndarray
        ``(v_i - v_{i+1}) / sqrt(var_boot(d_i) + var_train(d_i))`` where
        ``d_i = v_i - v_{i+1}`` per replica (ddof=1). ``inf`` when the difference
        is positive and has no spread at all.
    """
    values = np.asarray(values, dtype=np.float64)
    z = np.full(values.shape, np.nan)
    if values.size < 2:
        return z
    var = np.zeros(values.size - 1)
    have = False
    for reps in (boot, train):
        if reps is None:
            continue
        std = replica_std(reps[:, :-1] - reps[:, 1:], values.size - 1)
        have = have or bool(np.isfinite(std).any())
        var += np.nan_to_num(std) ** 2
    if not have:
        return z
    diff = values[:-1] - values[1:]
    with np.errstate(divide="ignore", invalid="ignore"):
        z[:-1] = np.where(var > 0, diff / np.sqrt(var), np.where(diff > 0, np.inf, 0.0))
    return z
