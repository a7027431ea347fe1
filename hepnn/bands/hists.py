"""MC-dropout and ensemble bands as ``hist`` objects.

>>> mc = MCDropout(model, samples=100, seed=1)  # hepnn.bands.replicas
>>> out = replica_hists("dnn", mc.nominal(x), {"mc": mc.scores(x)}, process, w, PROCESSES)
>>> # ... one ``out`` per chunk, added key by key over the chunks (in a fixed order)
>>> reps = out["score_dnn_mcdropout"][{"process": "signal"}]  # axes "mc" x "score"
>>> summary = summarise(reps, h_nominal)  # "stat": nominal, mean, std, q16, q84, up, down
>>> templates = to_root_variations(reps, h_nominal, "score_dnn", "signal")
>>> # {"score_dnn/signal/nominal", ".../mcdropoutUp", ".../mcdropoutDown", ".../mcdropout_replica0", ...}

:func:`replica_hists` fills one full histogram per replica (one bin row per
replica), so the replica histograms add like any other histogram across chunks and
executors. The band statistics are not additive: :func:`summarise` computes them
only once, after accumulation, per bin over the replica axis
(:func:`hepnn.bands.outputs.band_outputs` does so for a whole run).

What a band is: the spread of the score distribution over networks that could
equally have been trained (MC-dropout thinnings, ensemble members with other seeds
and other training folds) — a measure of **training reproducibility** (epistemic),
not a measurement uncertainty: the deployed network is deterministic. Fit
templates are :func:`to_root_variations`' ``Up``/``Down`` (a coherent shape with
the nominal's total), never per-bin quantiles.

Negative event weights (NLO simulation) are filled as they are (``hist`` sums
signed weights; variances are Σw², positive); the templates keep a non-negative
nominal bin non-negative and leave bins with a non-positive nominal unvaried.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import hist
import numpy as np

__all__ = [
    "QUANTILES",
    "STATS",
    "VARIATION_NAMES",
    "replica_hists",
    "shape_variation",
    "summarise",
    "to_root_variations",
]

#: Rows of the summary histogram's ``stat`` axis.
STATS: tuple[str, ...] = ("nominal", "mean", "std", "q16", "q84", "up", "down")
#: Quantile levels of the band edges (numpy's default "linear" method).
QUANTILES: dict[str, float] = {"q16": 0.16, "q84": 0.84}
#: Systematic names, by replica axis name: histogram suffixes of :func:`replica_hists`
#: and the default variation names of :func:`to_root_variations`
#: (``<hist>/<process>/mcdropoutUp``, ``.../ensembleDown``).
VARIATION_NAMES: dict[str, str] = {"mc": "mcdropout", "member": "ensemble"}


def _values_variances(h: hist.Hist) -> tuple[np.ndarray, np.ndarray]:
    """Values and variances including flow bins (zeros for variances of Double storage)."""
    view = h.view(flow=True)
    if view.dtype.names:
        return np.asarray(view.value), np.asarray(view.variance)
    return np.asarray(view), np.zeros(view.shape)


def _same_binning(a: Any, b: Any) -> bool:
    if a.name != b.name or type(a) is not type(b):
        return False
    if hasattr(a, "edges"):
        return bool(np.array_equal(a.edges, b.edges)) and a.traits == b.traits
    return list(a) == list(b)


def summarise(h_replicas: hist.Hist, h_nominal: hist.Hist) -> hist.Hist:
    """Per-bin band statistics over the replica axis, after accumulation.

    Parameters
    ----------
    h_replicas
        Accumulated replica histogram, all chunks summed: axes replica x variable(s),
        e.g. one process of :func:`replica_hists`, ``h[{"process": "signal"}]``.
    h_nominal
        Accumulated histogram of the nominal network, same variable axes.

    Returns
    -------
    hist.Hist
        Axes ``StrCategory(STATS, name="stat")`` + the variable axes, ``Weight``
        storage, flow bins included. Rows: ``nominal`` (values and variances of
        ``h_nominal``), ``mean`` and ``std`` (``ddof=0``) of the replica bin
        contents, ``q16`` and ``q84`` (``numpy.quantile`` at :data:`QUANTILES`).
        Derived rows carry zero variance. ``metadata`` records the replica axis
        name and count. The replica mean may differ from the nominal.
    """
    rep_axis, var_axes = h_replicas.axes[0], list(h_replicas.axes[1:])
    if len(h_nominal.axes) != len(var_axes) or not all(
        _same_binning(a, b) for a, b in zip(h_nominal.axes, var_axes, strict=True)
    ):
        msg = "h_nominal must have the same variable axes (names and binning) as h_replicas"
        raise ValueError(msg)
    reps, _ = _values_variances(h_replicas)
    reps = reps[: len(rep_axis)]  # drop a category overflow bin, if any
    nom, nom_var = _values_variances(h_nominal)

    stat_axis = hist.axis.StrCategory(
        list(STATS), name="stat", label="Band statistic", overflow=False
    )
    out = hist.Hist(
        stat_axis,
        *var_axes,
        storage=hist.storage.Weight(),
        metadata={"replica_axis": rep_axis.name, "replicas": len(rep_axis)},
    )
    q16, q84 = np.quantile(reps, [QUANTILES["q16"], QUANTILES["q84"]], axis=0)
    delta = shape_variation(reps, nom)[0] if len(reps) >= 2 else np.zeros_like(nom)
    rows = {
        "nominal": nom,
        "mean": reps.mean(axis=0),
        "std": reps.std(axis=0, ddof=1) if len(reps) >= 2 else np.zeros_like(nom),
        "q16": q16,
        "q84": q84,
        "up": nom + delta,
        "down": nom - delta,
    }
    view = out.view(flow=True)
    for i, stat in enumerate(STATS):
        view.value[i] = rows[stat]
    view.variance[0] = nom_var
    return out


def shape_variation(
    replicas: np.ndarray, nominal: np.ndarray, *, mode: int = 0
) -> tuple[np.ndarray, dict[str, Any]]:
    """Symmetric, normalisation-preserving shape variation ``Δ`` from replica histograms.

    Parameters
    ----------
    replicas
        Bin contents of every replica, ``(T, B)`` (flow bins included), ``T >= 2``.
    nominal
        Bin contents of the nominal histogram, ``(B,)``.
    mode
        Which eigen-variation (0: the leading one).

    Returns
    -------
    delta, info
        ``Δ`` with ``Σ Δ = 0`` and ``|Δ_i| <= nominal_i``, so that ``nominal ± Δ`` are
        non-negative templates with the nominal's total and the nominal between them
        in every bin; ``info`` holds the eigenvalue, the share of the replica
        variance it explains and the share of ``Σ|Δ|`` removed by the limits.

    Notes
    -----
    Construction (all replica statistics with ``ddof = 1``):

    1. every replica is normalised to unit total, ``p_t = R_t / Σ R_t``: the shape,
       not the normalisation, is what the replicas vary (an MC-dropout replica
       puts every event in some bin, so all replicas have the same total anyway);
    2. ``C = cov_t(p_t)``; its eigenvectors with non-zero eigenvalue are orthogonal
       to ``(1, ..., 1)`` because every ``p_t`` sums to 1, so a variation along them
       moves events between bins without changing the total;
    3. ``Δ = N sqrt(λ_k) v_k`` with ``N = Σ nominal``, the one-standard-deviation
       variation of the replica shapes along mode ``k``; the sign of ``v_k`` is
       chosen so that ``Up`` moves events towards higher bin indices (higher score);
    4. limits: where ``|Δ_i| > nominal_i`` (a bin the nominal hardly fills), ``Δ_i``
       is clipped to ``±nominal_i``, and the excess of one sign this leaves is taken
       off the other bins of that sign in proportion to their size, so that
       ``Σ Δ = 0`` again. ``info["clipped_fraction"]`` says how much this changed.

    Unlike per-bin quantiles (each bin's q84 from a different replica), ``nominal
    ± Δ`` is a coherent shape of the kind a fit's template interpolation assumes.
    """
    reps = np.asarray(replicas, dtype=np.float64)
    nom = np.asarray(nominal, dtype=np.float64)
    if reps.ndim != 2 or reps.shape[1] != nom.shape[0] or reps.shape[0] < 2:
        msg = f"replicas must be (T >= 2, {nom.shape[0]}) bin contents, got {reps.shape}"
        raise ValueError(msg)
    total = float(nom.sum())
    sums = reps.sum(axis=1, keepdims=True)
    info: dict[str, Any] = {"eigenvalue": 0.0, "explained": 0.0, "clipped_fraction": 0.0}
    if not total > 0 or not np.all(sums > 0):
        return np.zeros_like(nom), info
    shapes = reps / sums
    cov = np.atleast_2d(np.cov(shapes, rowvar=False, ddof=1))
    evals, evecs = np.linalg.eigh(cov)  # ascending
    order = np.argsort(evals)[::-1]
    lam = max(float(evals[order[mode]]), 0.0)
    vec = evecs[:, order[mode]]
    trace = float(np.clip(evals, 0.0, None).sum())
    info["eigenvalue"] = lam
    info["explained"] = lam / trace if trace > 0 else 0.0
    if vec @ np.arange(len(vec)) < 0:
        vec = -vec
    raw_delta = total * np.sqrt(lam) * vec
    bound = np.clip(nom, 0.0, None)  # bins with a non-positive nominal stay unvaried
    delta = np.clip(raw_delta, -bound, bound)
    for _ in range(2):  # one pass suffices; a second absorbs rounding
        excess = float(delta.sum())
        if excess > 0:
            pos = np.clip(delta, 0.0, None)
            if pos.sum() > 0:
                delta = delta - excess * pos / pos.sum()
        elif excess < 0:
            neg = np.clip(delta, None, 0.0)
            if neg.sum() < 0:
                delta = delta - excess * neg / neg.sum()
    size = float(np.abs(raw_delta).sum())
    info["clipped_fraction"] = float(np.abs(raw_delta - delta).sum()) / size if size > 0 else 0.0
    return delta, info


def to_root_variations(
    replicas: hist.Hist,
    nominal: hist.Hist,
    hist_name: str,
    process: str,
    variation: str | None = None,
    *,
    with_replicas: bool = True,
) -> dict[str, hist.Hist]:
    """Nominal, up/down shape templates and the replica histograms, keyed by ROOT path.

    Parameters
    ----------
    replicas
        Accumulated replica histogram of one process: axes replica (``mc`` or
        ``member``) x one variable, e.g. ``h["score_dnn_mcdropout"][{"process": "signal"}]``.
    nominal
        Accumulated 1D histogram of the nominal network, same variable axis.
    hist_name, process
        The first two parts of every key (``score_dnn``, ``signal``).
    variation
        Systematic name; default from the replica axis: ``"mcdropout"`` (``mc``)
        or ``"ensemble"`` (``member``).
    with_replicas
        Also return every replica histogram.

    Returns
    -------
    dict[str, hist.Hist]
        1D ``Weight`` histograms (flow bins kept), keys are full paths in the
        combine / cabinetry layout:

        * ``<hist>/<process>/nominal``: the nominal, with its variances;
        * ``<hist>/<process>/<variation>Up`` and ``...Down``: ``nominal ± Δ``, the
          leading eigen-variation of the replicas' normalised shapes
          (:func:`shape_variation`): same total as the nominal, non-negative, the
          nominal between them in every bin; the nominal's variances;
        * ``<hist>/<process>/<variation>_replica<k>``: replica ``k`` as filled.

        ``Up``/``Down`` are never per-bin quantiles: a histogram of per-bin q84
        values is no network's histogram (every replica has the nominal total, yet
        the q84 histogram does not). The metadata of ``Up`` carries the
        eigenvalue, the explained share of the replica variance and the clipped share.
        What the variation measures is training reproducibility (epistemic),
        not a measurement uncertainty of the deterministic nominal network.
    """
    if len(replicas.axes) != 2 or len(nominal.axes) != 1:
        msg = "to_root_variations needs replicas with axes (replica, variable) and a 1D nominal"
        raise ValueError(msg)
    rep_axis, var_axis = replicas.axes
    if not _same_binning(var_axis, nominal.axes[0]):
        msg = "nominal must have the same variable axis (name and binning) as the replicas"
        raise ValueError(msg)
    if variation is None:
        variation = VARIATION_NAMES.get(rep_axis.name, "mcdropout")
    reps, rep_var = _values_variances(replicas)
    reps, rep_var = reps[: len(rep_axis)], rep_var[: len(rep_axis)]
    nom, nom_var = _values_variances(nominal)
    delta, info = shape_variation(reps, nom)
    prefix = f"{hist_name}/{process}"

    def make(key: str, values: np.ndarray, variances: np.ndarray, meta: Any = None) -> hist.Hist:
        h = hist.Hist(var_axis, storage=hist.storage.Weight(), name=key.rsplit("/", 1)[-1])
        if meta is not None:
            h.metadata = meta
        view = h.view(flow=True)
        view.value = values
        view.variance = variances
        return h

    out = {
        f"{prefix}/nominal": make(f"{prefix}/nominal", nom, nom_var),
        f"{prefix}/{variation}Up": make(f"{prefix}/{variation}Up", nom + delta, nom_var, info),
        f"{prefix}/{variation}Down": make(f"{prefix}/{variation}Down", nom - delta, nom_var, info),
    }
    if with_replicas:
        for k in range(len(rep_axis)):
            key = f"{prefix}/{variation}_replica{k}"
            out[key] = make(key, reps[k], rep_var[k])
    return out


def replica_hists(
    net: str,
    score: np.ndarray,
    replicas: Mapping[str, np.ndarray],
    process: np.ndarray,
    weight: np.ndarray,
    processes: Sequence[str],
) -> dict[str, hist.Hist]:
    """Per-process replica histograms of one network's score, filled from one chunk.

    Parameters
    ----------
    net
        Network name, used in the histogram names and labels.
    score
        Nominal score per event ``(N,)``.
    replicas
        Replica axis name -> per-replica scores ``(T, N)``: ``"mc"`` (MC dropout,
        :meth:`MCDropout.scores`) and/or ``"member"`` (ensemble members). Filled
        in the mapping's order.
    process
        Process label per event ``(N,)``, one of ``processes``.
    weight
        Event weight ``(N,)``.
    processes
        Categories of the ``process`` axis.

    Returns
    -------
    dict[str, hist.Hist]
        ``score_<net>_mcdropout`` / ``score_<net>_ensemble``: axes
        ``StrCategory(processes, "process")``, ``IntCategory(range(T), mc|member)``
        (no overflow), ``Regular(50, 0, 1, "score")``, ``Weight`` storage, one fill
        per replica. With ``"mc"`` also ``score_std_<net>``: ``process`` x nominal
        ``score`` ``Regular(25, 0, 1)`` x per-event replica std (``ddof=1``)
        ``Regular(25, 0, 0.25, "score_std")``. Summarise after accumulation with
        :func:`hepnn.bands.outputs.band_outputs`.
    """
    unknown = [name for name in replicas if name not in VARIATION_NAMES]
    if unknown:
        msg = f"unknown replica axis {unknown}; known: {', '.join(VARIATION_NAMES)}"
        raise ValueError(msg)
    out: dict[str, hist.Hist] = {}
    for axis_name, reps in replicas.items():
        h = hist.Hist(
            hist.axis.StrCategory(list(processes), name="process"),
            hist.axis.IntCategory(range(len(reps)), name=axis_name, overflow=False),
            hist.axis.Regular(50, 0.0, 1.0, name="score", label=f"{net} score"),
            storage=hist.storage.Weight(),
            label=f"{net} score, {'MC-dropout replicas' if axis_name == 'mc' else 'ensemble members'}",
        )
        for t in range(len(reps)):
            h.fill(process=process, **{axis_name: t}, score=reps[t], weight=weight)
        out[f"score_{net}_{VARIATION_NAMES[axis_name]}"] = h
    if "mc" in replicas:
        h2 = hist.Hist(
            hist.axis.StrCategory(list(processes), name="process"),
            hist.axis.Regular(25, 0.0, 1.0, name="score", label=f"{net} score (nominal)"),
            hist.axis.Regular(
                25,
                0.0,
                0.25,
                name="score_std",
                label=f"per-event std of the {net} score (MC dropout)",
            ),
            storage=hist.storage.Weight(),
            label=f"{net}: per-event MC-dropout std vs score",
        )
        mc = replicas["mc"]
        std = mc.std(axis=0, ddof=1) if len(mc) > 1 else np.zeros(mc.shape[1:])
        h2.fill(process=process, score=score, score_std=std, weight=weight)
        out[f"score_std_{net}"] = h2
    return out
