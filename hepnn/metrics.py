"""Classifier figures of merit: ROC, AUC and the Higgs-challenge AMS.

Curves are computed from finely binned score histograms after the run (so they
are as deterministic as the histograms); AUCs from the per-event columns.

**AMS normalisation.** The AMS depends on the absolute numbers s and b, so it is
only comparable between samples when the weights mean the same luminosity. The
figures in ``metrics.json`` renormalise the weights of the evaluated subset, per
class, to the challenge totals (:data:`CHALLENGE_TOTALS`: Σw_s = 691.988607712,
Σw_b = 410999.847322, the sums of the weights of the challenge's 250,000 training
events, as used by the challenge's own AMS code) with b_reg = :data:`B_REG` =
10 (:func:`renormalise`, :func:`normalised_ams_hist`), and say so in
``ams_normalisation``. With the raw weights of an 18,000-event subsample, s and b
are 1/14 and 1/46 of the challenge's and the AMS is not comparable with anything.

**Negative weights** (NLO simulation) are kept everywhere, with their sign:

* AUC: a weighted AUC is the Mann–Whitney probability
  Σ_{s,b} w_s w_b [x_s > x_b] (ties ½) / (W_s W_b); with a negative weight it is
  computed by :func:`signed_weighted_auc` (a sorted cumulative ROC, exact
  tie handling), which needs only W_s > 0 and W_b > 0. sklearn, which rejects
  negative weights, is used only when every weight is ≥ 0 (the two agree there to
  float rounding). The result can leave [0, 1] only if negative weights dominate
  somewhere, which the metrics then show rather than hide;
* AMS: s and b are signed sums; a threshold where s < 0 or b + b_reg ≤ 0 has no
  AMS (NaN, skipped by :func:`best_ams`);
* histograms sum signed weights (``hist``), variances Σw².
"""

from __future__ import annotations

import math

import hist
import numpy as np
from sklearn.metrics import roc_auc_score

#: The challenge's regularisation term of the AMS.
B_REG = 10.0
#: Signal and background weight totals of the Higgs challenge (its 250,000 training
#: events): the s and b of the challenge's AMS.
CHALLENGE_TOTALS: dict[str, float] = {"signal": 691.988607712, "background": 410999.847322}


def ams(s: np.ndarray | float, b: np.ndarray | float, b_reg: float = B_REG) -> np.ndarray:
    """Approximate median significance, AMS = sqrt(2((s+b+b_reg) ln(1 + s/(b+b_reg)) - s)).

    NaN where the AMS is undefined: ``s < 0`` or ``b + b_reg <= 0`` (possible with
    negative weights).
    """
    s = np.asarray(s, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        radicand = 2.0 * ((s + b + b_reg) * np.log1p(s / (b + b_reg)) - s)
        out = np.sqrt(np.maximum(radicand, 0.0))
    undefined = (s < 0) | (b + b_reg <= 0)
    return np.where(undefined, np.nan, out) if np.any(undefined) else out


def renormalise(
    labels: np.ndarray, weights: np.ndarray, totals: dict[str, float] = CHALLENGE_TOTALS
) -> np.ndarray:
    """Weights scaled per class so that signal (label 1) and background (0) sum to ``totals``.

    The signed sums are scaled (negative weights keep their sign); a class whose
    weights do not sum to a positive number cannot be normalised and raises
    ``ValueError``.
    """
    labels = np.asarray(labels)
    w = np.asarray(weights, dtype=np.float64)
    out = w.copy()
    for cls, name in ((1, "signal"), (0, "background")):
        sel = labels == cls
        total = float(w[sel].sum())
        if not total > 0:
            msg = f"{name} weights sum to {total} in the evaluated rows: cannot renormalise"
            raise ValueError(msg)
        out[sel] = w[sel] * (totals[name] / total)
    return out


class RankedScores:
    """Scores sorted and tie-grouped once, for many weighted AUCs of the same rows.

    A bootstrap resample is a weighting of the rows by how often each was drawn, so its
    AUC is :meth:`auc` of those counts: no re-sort and no sklearn call per resample
    (sklearn's input checks took ~7 ms per call; 4,000 calls per trained network).
    """

    def __init__(self, scores: np.ndarray, labels: np.ndarray) -> None:
        x = np.asarray(scores, dtype=np.float64)
        self.order = np.argsort(-x, kind="mergesort")
        xs = x[self.order]
        self.last = np.r_[np.flatnonzero(np.diff(xs) != 0), len(xs) - 1]  # end of each tie group
        y = np.asarray(labels)
        self.signal, self.background = y == 1, y == 0

    def auc(self, weights: np.ndarray) -> float:
        """Σ w_s w_b [x_s > x_b] (+½ ties) / (W_s W_b); NaN unless W_s > 0 and W_b > 0.

        From the ROC of the cumulative weights per tie group (trapezoids, so tied scores
        count ½). Negative weights are kept with their sign.
        """
        w = np.asarray(weights, dtype=np.float64)
        ws, wb = np.where(self.signal, w, 0.0), np.where(self.background, w, 0.0)
        total_s, total_b = float(ws.sum()), float(wb.sum())
        if not (total_s > 0 and total_b > 0):
            return math.nan
        tpr = np.r_[0.0, np.cumsum(ws[self.order])[self.last]] / total_s
        fpr = np.r_[0.0, np.cumsum(wb[self.order])[self.last]] / total_b
        return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0))


def signed_weighted_auc(scores: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> float:
    """Weighted AUC that keeps negative weights: Σ w_s w_b [x_s > x_b] (+½ ties) / (W_s W_b).

    :meth:`RankedScores.auc` of the scores (sorted cumulative ROC, exact tie handling).
    NaN unless both classes have a positive weight total.
    """
    return RankedScores(scores, labels).auc(weights)


def auc(scores: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None) -> float:
    """Area under the ROC curve, optionally weighted; NaN with one class only.

    sklearn's ``roc_auc_score``; with any negative weight :func:`signed_weighted_auc`
    (see the module docstring).
    """
    labels = np.asarray(labels)
    if len(np.unique(labels)) < 2:
        return math.nan
    if weights is not None and np.any(np.asarray(weights) < 0):
        return signed_weighted_auc(scores, labels, weights)
    return float(roc_auc_score(labels, scores, sample_weight=weights))


def above_threshold(h: hist.Hist) -> tuple[np.ndarray, np.ndarray]:
    """Weighted yields above each lower bin edge of a 1D score histogram (incl. overflow).

    Returns ``(thresholds, yields)`` with ``yields[i]`` the sum of bins ``>= i``.
    """
    vals = h.values(flow=True)  # [underflow, bins..., overflow]
    inner = vals[1:]
    cum = np.cumsum(inner[::-1])[::-1]  # bins i..overflow
    return h.axes[0].edges[:-1], cum[:-1]


def curves(score_fine: hist.Hist, totals: dict[str, float] | None = None) -> dict[str, np.ndarray]:
    """Efficiencies and AMS vs threshold from a histogram with a ``process`` axis.

    Returns thresholds, signal/background yields and efficiencies above each
    threshold, and the AMS with :data:`B_REG`. ``totals`` (e.g.
    :data:`CHALLENGE_TOTALS`) scales the yields so that each class sums to its total.
    """
    sig = score_fine[{"process": "signal"}]
    bkg = score_fine[{"process": "background"}]
    t, s = above_threshold(sig)
    _, b = above_threshold(bkg)
    s_tot = sig.values(flow=True).sum()
    b_tot = bkg.values(flow=True).sum()
    if totals is not None and s_tot > 0 and b_tot > 0:
        s, b = s * (totals["signal"] / s_tot), b * (totals["background"] / b_tot)
        s_tot, b_tot = totals["signal"], totals["background"]
    with np.errstate(divide="ignore", invalid="ignore"):
        eff_s = s / s_tot if s_tot > 0 else np.full_like(s, np.nan)
        eff_b = b / b_tot if b_tot > 0 else np.full_like(b, np.nan)
    return {"threshold": t, "s": s, "b": b, "eff_s": eff_s, "eff_b": eff_b, "ams": ams(s, b)}


def best_ams(score_fine: hist.Hist) -> tuple[float, float]:
    """The largest AMS over thresholds and the threshold where it is reached (NaN if none)."""
    c = curves(score_fine)
    if not np.any(np.isfinite(c["ams"])):
        return math.nan, math.nan
    i = int(np.nanargmax(c["ams"]))
    return float(c["ams"][i]), float(c["threshold"][i])


def normalised_ams_hist(
    score: np.ndarray,
    labels: np.ndarray,
    weights: np.ndarray,
    *,
    bins: int = 1000,
    totals: dict[str, float] | None = CHALLENGE_TOTALS,
) -> hist.Hist:
    """A ``process`` x ``score`` histogram of the rows with weights renormalised to ``totals``.

    ``totals=None`` keeps the raw weights. Feed it to :func:`best_ams` / :func:`curves`.
    """
    w = np.asarray(weights, dtype=np.float64)
    if totals is not None:
        w = renormalise(labels, w, totals)
    h = hist.Hist(
        hist.axis.StrCategory(["signal", "background"], name="process"),
        hist.axis.Regular(bins, 0.0, 1.0, name="score"),
        storage=hist.storage.Weight(),
    )
    h.fill(process=np.where(np.asarray(labels) == 1, "signal", "background"), score=score, weight=w)
    return h


def curve_hists(
    name: str, score_fine: hist.Hist, totals: dict[str, float] | None = None
) -> dict[str, hist.Hist]:
    """ROC (efficiencies vs threshold) and AMS vs threshold as ``hist`` objects.

    ``totals``: yields renormalised per class (see :func:`curves`), said in the label.
    """
    c = curves(score_fine, totals)
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
        label=f"{name}: AMS (b_reg = {B_REG:g}"
        + (", weights renormalised to the challenge totals" if totals is not None else "")
        + ") of score > threshold",
        metadata={"plot": "curve"},
    )
    h_ams.view()[:] = c["ams"]
    return {f"roc_{name}": eff, f"ams_{name}": h_ams}
