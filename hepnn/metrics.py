"""Classifier figures of merit: ROC, AUC and the Higgs-challenge AMS.

Curves are computed from finely binned score histograms after the run (so they
are as deterministic as the histograms); AUCs from the per-event columns.
"""

from __future__ import annotations

import math

import hist
import numpy as np
from sklearn.metrics import roc_auc_score

#: The challenge's regularisation term of the AMS.
B_REG = 10.0


def ams(s: np.ndarray | float, b: np.ndarray | float, b_reg: float = B_REG) -> np.ndarray:
    """Approximate median significance, AMS = sqrt(2((s+b+b_reg) ln(1 + s/(b+b_reg)) - s))."""
    s = np.asarray(s, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    radicand = 2.0 * ((s + b + b_reg) * np.log1p(s / (b + b_reg)) - s)
    return np.sqrt(np.maximum(radicand, 0.0))


def auc(scores: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None) -> float:
    """Area under the ROC curve (sklearn), optionally weighted; NaN with one class only."""
    labels = np.asarray(labels)
    if len(np.unique(labels)) < 2:
        return math.nan
    return float(roc_auc_score(labels, scores, sample_weight=weights))


def above_threshold(h: hist.Hist) -> tuple[np.ndarray, np.ndarray]:
    """Weighted yields above each lower bin edge of a 1D score histogram (incl. overflow).

    Returns ``(thresholds, yields)`` with ``yields[i]`` the sum of bins ``>= i``.
    """
    vals = h.values(flow=True)  # [underflow, bins..., overflow]
    inner = vals[1:]
    cum = np.cumsum(inner[::-1])[::-1]  # bins i..overflow
    return h.axes[0].edges[:-1], cum[:-1]


def curves(score_fine: hist.Hist) -> dict[str, np.ndarray]:
    """Efficiencies and AMS vs threshold from a histogram with a ``process`` axis.

    Returns thresholds, signal/background yields and efficiencies above each
    threshold, and the AMS with :data:`B_REG`.
    """
    sig = score_fine[{"process": "signal"}]
    bkg = score_fine[{"process": "background"}]
    t, s = above_threshold(sig)
    _, b = above_threshold(bkg)
    s_tot = sig.values(flow=True).sum()
    b_tot = bkg.values(flow=True).sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        eff_s = s / s_tot if s_tot > 0 else np.full_like(s, np.nan)
        eff_b = b / b_tot if b_tot > 0 else np.full_like(b, np.nan)
    return {"threshold": t, "s": s, "b": b, "eff_s": eff_s, "eff_b": eff_b, "ams": ams(s, b)}


def best_ams(score_fine: hist.Hist) -> tuple[float, float]:
    """The largest AMS over thresholds and the threshold where it is reached."""
    c = curves(score_fine)
    i = int(np.nanargmax(c["ams"]))
    return float(c["ams"][i]), float(c["threshold"][i])


def curve_hists(name: str, score_fine: hist.Hist) -> dict[str, hist.Hist]:
    """ROC (efficiencies vs threshold) and AMS vs threshold as ``hist`` objects."""
    c = curves(score_fine)
    edges = score_fine.axes["score"].edges
    thr = hist.axis.Variable(edges, name="threshold", label=f"{name} score threshold")
    eff = hist.Hist(
        hist.axis.StrCategory(["signal", "background"], name="process"),
        thr,
        label=f"{name}: efficiency of score > threshold",
        metadata={"plot": "roc"},
    )
    eff.view()[0, :] = c["eff_s"]
    eff.view()[1, :] = c["eff_b"]
    h_ams = hist.Hist(
        thr,
        label=f"{name}: AMS (b_reg = {B_REG:g}) of score > threshold",
        metadata={"plot": "curve"},
    )
    h_ams.view()[:] = c["ams"]
    return {f"roc_{name}": eff, f"ams_{name}": h_ams}
