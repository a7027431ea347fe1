"""MC-dropout and ensemble bands as ``hist`` objects.

>>> mc = MCDropout(model, samples=100, seed=1)  # hepnn.bands.replicas
>>> out = replica_hists("dnn", mc.nominal(x), {"mc": mc.scores(x)}, process, w, PROCESSES)
>>> # ... one ``out`` per chunk, added key by key over the chunks (in a fixed order)
>>> reps = out["score_dnn_mcdropout"][{"process": "signal"}]  # axes "mc" x "score"
>>> summary = summarise(reps, h_nominal)  # StrCategory "stat": nominal, mean, std, q16, q84

:func:`replica_hists` fills one full histogram per replica (one bin row per
replica), so the replica histograms add like any other histogram across chunks and
executors. The band statistics are not additive: :func:`summarise` computes them
only once, after accumulation, per bin over the replica axis
(:func:`hepnn.bands.outputs.band_outputs` does so for a whole run).
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
    "summarise",
    "to_root_variations",
]

#: Rows of the summary histogram's ``stat`` axis.
STATS: tuple[str, ...] = ("nominal", "mean", "std", "q16", "q84")
#: Quantile levels of the band edges (numpy's default "linear" method).
QUANTILES: dict[str, float] = {"q16": 0.16, "q84": 0.84}
#: Systematic names, by replica axis name: histogram suffixes of :func:`replica_hists`
#: and the default of :func:`to_root_variations`.
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
    rows = {
        "nominal": nom,
        "mean": reps.mean(axis=0),
        "std": reps.std(axis=0),
        "q16": q16,
        "q84": q84,
    }
    view = out.view(flow=True)
    for i, stat in enumerate(STATS):
        view.value[i] = rows[stat]
    view.variance[0] = nom_var
    return out


def to_root_variations(
    summary: hist.Hist,
    name: str,
    variation: str | None = None,
) -> dict[str, hist.Hist]:
    """Nominal and up/down templates from a 1D summary, named for ROOT-file fits.

    Parameters
    ----------
    summary
        From :func:`summarise`, with exactly one variable axis.
    name
        Template name, e.g. the process (``"ttbar"``).
    variation
        Systematic name; default from the replica axis: ``"mcdropout"`` (``mc``)
        or ``"ensemble"`` (``member``).

    Returns
    -------
    dict[str, hist.Hist]
        ``{name: nominal, f"{name}_{variation}Up": q84, f"{name}_{variation}Down": q16}``,
        1D ``Weight`` histograms (flow bins kept). This is the combine / HistFactory
        ``$PROCESS_$SYSTEMATICUp`` convention, which a cabinetry ``HistPath`` or
        pyhf ``histosys`` template can point at. Write with
        ``uproot.recreate(path)`` and ``f[key] = h`` per item. The nominal carries
        the nominal's variances, the up/down templates zero variances. Up/down are
        the replica quantiles as they are, not re-centred on the nominal.
    """
    if len(summary.axes) != 2 or summary.axes[0].name != "stat":
        msg = "to_root_variations needs a 1D summary: axes ('stat', <variable>)"
        raise ValueError(msg)
    if variation is None:
        meta = summary.metadata if isinstance(summary.metadata, dict) else {}
        variation = VARIATION_NAMES.get(meta.get("replica_axis", "mc"), "mcdropout")
    values, variances = _values_variances(summary)
    stats = list(summary.axes[0])
    keys = {name: "nominal", f"{name}_{variation}Up": "q84", f"{name}_{variation}Down": "q16"}
    out = {}
    for key, stat in keys.items():
        h = hist.Hist(summary.axes[1], storage=hist.storage.Weight(), name=key)
        view = h.view(flow=True)
        view.value = values[stats.index(stat)]
        view.variance = variances[stats.index(stat)]
        out[key] = h
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
        ``score`` ``Regular(25, 0, 1)`` x per-event replica std (``ddof=0``)
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
        h2.fill(process=process, score=score, score_std=replicas["mc"].std(axis=0), weight=weight)
        out[f"score_std_{net}"] = h2
    return out
