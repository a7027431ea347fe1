"""Held-out metrics of every network, beside its baselines, from the run's columns.

Called after the merge (:func:`network_report`). For each network and each dataset
whose columns hold its score (``score_<name>``) and a 0/1 label:

* the rows the network did not train on: on a dataset it trained on (matched by
  the content digest of the files in ``model.json``), its held-out rows
  (:func:`hepnn.nets.split.held_out`: all of a k-fold split, the odd ids of a
  parity split, the test rows of a random split); every labelled row of any
  other dataset;
* AUC (and weighted AUC with a weight column), the background efficiency and
  rejection at signal efficiency :data:`WORKING_POINT`, and, with weights, the
  best AMS (b_reg = 10) over score thresholds — on a Higgs-challenge dataset
  (format ``higgs-csv``) with the weights of the evaluated rows renormalised per
  class to the challenge totals (:data:`hepnn.metrics.CHALLENGE_TOTALS`), stated in
  ``ams_normalisation``; on other datasets with the raw weights;
* baselines on the rows every network left out: the jet mass (``jet_mass``
  column) and a seeded gradient-boosted tree on :data:`GBT_FEATURES` trained on
  the split's training rows;
* ROC curves per dataset (``roc_networks``, plot ``roc_<dataset>``), ROC/AMS
  curve histograms from a workflow's ``score_fine_<name>``, and the average jet
  images ``jet_image_mean_<process>`` from ``jet_image_sum``.

Flat networks are also compared, at training time, with a boosted tree on the same
raw features and the same rows (:func:`heldout_comparison`, stored in
``model.json`` and shown in ``metrics.json`` as ``vs_boosted_trees``): per model
of the split the tree is trained on the rows that model may use and scores the
rows the model holds out, and the AUC difference gets a paired bootstrap.

ε_B is counted, not interpolated: the threshold is the score of the
``ceil(ε_S · N_S)``-th most signal-like signal row and every background row at or
above it passes. With no background passing, the rejection is only bounded
(``rejection_lower_bound`` = N_B).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hist
import numpy as np

from hepnn.metrics import (
    B_REG,
    CHALLENGE_TOTALS,
    auc,
    best_ams,
    curve_hists,
    normalised_ams_hist,
)
from hepnn.nets.data import source_digest
from hepnn.nets.flat import FlatBuilder
from hepnn.nets.split import TEST, TRAIN, held_out, route, split_codes
from hepnn.nets.store import model_json_path, parse_model_json

if TYPE_CHECKING:
    from hepnn.columns import ColumnParts, Columns
    from hepnn.nets.data import TrainingData
    from hepnn.nets.train import TrainResult
    from hepnn.samples import Dataset

#: Signal efficiency at which the background rejection is quoted.
WORKING_POINT = 0.3
#: Inputs of the boosted-tree baseline of jet networks (columns of the toptag workflow).
GBT_FEATURES = ("jet_mass", "n_constituents", "jet_ptd")
GBT_NAME = "gbt_mass_nconst_ptd"
MASS_NAME = "mass"
#: ε_S bins of the ``roc_networks`` histogram.
ROC_BINS = 200
#: Sample format whose AMS is quoted at the challenge's weight totals.
HIGGS_FORMAT = "higgs-csv"
#: Paired-bootstrap resamples of :func:`heldout_comparison`.
BOOTSTRAP = 1000


def ams_normalisation(challenge: bool) -> dict[str, Any]:
    """The ``ams_normalisation`` entry of ``metrics.json``: what s and b of the AMS mean."""
    if challenge:
        return {
            "weights": "renormalised per class, on the evaluated rows, to the challenge totals",
            "sum_w_signal": CHALLENGE_TOTALS["signal"],
            "sum_w_background": CHALLENGE_TOTALS["background"],
            "b_reg": B_REG,
        }
    return {"weights": "as stored (raw)", "b_reg": B_REG}


def weighted_ams(
    score: np.ndarray, label: np.ndarray, weight: np.ndarray, challenge: bool
) -> tuple[float, float]:
    """Best AMS and its threshold; weights renormalised to the challenge totals if ``challenge``."""
    try:
        h = normalised_ams_hist(
            score, label, weight, totals=CHALLENGE_TOTALS if challenge else None
        )
    except ValueError:  # a class without positive weight total: no AMS
        return math.nan, math.nan
    return best_ams(h)


def heldout_comparison(
    result: TrainResult, data: TrainingData, *, seed: int, challenge: bool = False,
    resamples: int = BOOTSTRAP,
) -> dict[str, Any]:  # fmt: skip
    """A flat network against a boosted tree on the rows its models held out.

    For model ``m`` of the split the ``HistGradientBoostingClassifier`` (seeded,
    default settings, missing values as NaN, its native handling) is trained on the
    usable rows model ``m`` may use (its training and, unless they are the held-out
    rows themselves, validation rows) and scores the rows routed to ``m`` that it
    holds out (:func:`hepnn.nets.split.held_out`). The network's score of those rows
    is its applied (logit) score. Returns AUC, weighted AUC and best AMS of both,
    and the AUC difference network − tree with a paired bootstrap over the rows
    (:func:`hepnn.nets.cv.paired_bootstrap`: models fixed, rows resampled).
    """
    from hepnn.nets.apply import forward
    from hepnn.nets.cv import paired_bootstrap

    spec = result.spec
    features = data.baseline or {f"x{j}": data.raw[:, j] for j in range(data.raw.shape[1])}
    # With an input symmetry the network sees other features than the raw ones: a second
    # tree on exactly those (rotated angles, signed etas) tells what the symmetry alone gives.
    first = result.models[0].builder
    same: dict[str, np.ndarray] | None = None
    if isinstance(first, FlatBuilder) and first.settings.symmetry is not None:
        sym = first.symmetric(data.raw)[:, first.kept]
        same = {f"x{j}": sym[:, j] for j in range(sym.shape[1])}
    keep = held_out(data.ids, spec.split) & data.usable
    which = route(data.ids, spec.split)
    dnn = np.full(len(data), np.nan)
    gbt = np.full(len(data), np.nan)
    gbt_same = np.full(len(data), np.nan)
    for m, fitted in enumerate(result.models):
        rows = keep & (which == m)
        if not rows.any():
            continue
        codes = split_codes(data.ids, spec.split, m)
        train = data.usable & (codes != TEST) & ~rows
        x = fitted.builder.transform(data.raw[rows])
        dnn[rows] = forward(fitted.model, x, fitted.builder.micro_batch, "logit")
        gbt[rows] = gbt_scores(features, train, rows, data.labels, seed)
        if same is not None:
            gbt_same[rows] = gbt_scores(same, train, rows, data.labels, seed)
    y = data.labels[keep]
    a, b = dnn[keep], gbt[keep]
    scored = {"network": a, "boosted_trees": b}
    if same is not None:
        scored["boosted_trees_same_inputs"] = gbt_same[keep]
    out: dict[str, Any] = {
        "rows": int(keep.sum()),
        "evaluated_on": "rows held out by the model that scores them (both classifiers)",
        "baseline": f"HistGradientBoostingClassifier (default settings, random_state = {seed}) "
        "on the raw features, trained per model on the rows that model may use",
    }
    out.update({key: {"auc": auc(score, y)} for key, score in scored.items()})
    if data.weights is not None:
        w = data.weights[keep]
        with np.errstate(over="ignore"):
            scored["network"] = 1.0 / (1.0 + np.exp(-a))  # the applied score (sigmoid of the logit)
        for key, score in scored.items():
            out[key]["auc_weighted"] = auc(score, y, w)
            out[key]["ams_best"], out[key]["ams_threshold"] = weighted_ams(score, y, w, challenge)
        out["ams_normalisation"] = ams_normalisation(challenge)
    out["auc_difference"] = paired_bootstrap(a, b, y, resamples, seed)
    if same is not None:
        out["boosted_trees_same_inputs"]["inputs"] = (
            "the network's own inputs (inputs.symmetry applied)"
        )
        out["auc_difference_same_inputs"] = paired_bootstrap(a, gbt_same[keep], y, resamples, seed)
    return out


def classifier_metrics(
    score: np.ndarray, label: np.ndarray, eff_s: float = WORKING_POINT
) -> dict[str, Any]:
    """Rows, AUC, and ε_B / rejection at signal efficiency ``eff_s`` (see the module docstring)."""
    score = np.asarray(score, dtype=np.float64)
    sig, bkg = score[label == 1], score[label == 0]
    out: dict[str, Any] = {
        "rows": len(score), "signal": len(sig), "background": len(bkg), "auc": auc(score, label),
        "eff_s": eff_s, "eff_b": None, "rejection": None, "rejection_lower_bound": None,
    }  # fmt: skip
    if len(sig) == 0 or len(bkg) == 0:
        return out
    k = max(1, math.ceil(eff_s * len(sig)))
    threshold = np.sort(sig)[::-1][k - 1]
    passing = int((bkg >= threshold).sum())
    out["eff_b"] = passing / len(bkg)
    out["background_passing"] = passing
    if passing:
        out["rejection"] = len(bkg) / passing
    else:
        out["rejection_lower_bound"] = len(bkg)
    return out


def gbt_scores(
    features: Mapping[str, np.ndarray],
    train: np.ndarray,
    apply: np.ndarray,
    label: np.ndarray,
    seed: int,
) -> np.ndarray:
    """Seeded ``HistGradientBoostingClassifier`` on ``features``, trained on ``train`` rows."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    x = np.stack([np.asarray(v, dtype=np.float64) for v in features.values()], axis=1)
    gbt = HistGradientBoostingClassifier(random_state=seed)
    gbt.fit(x[train], label[train])
    return gbt.predict_proba(x[apply])[:, 1]


def roc_points(score: np.ndarray, label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(ε_S, ε_B)`` at every threshold."""
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(label, score, drop_intermediate=False)
    return tpr, fpr


def plot_rocs(
    per: dict[str, tuple[np.ndarray, np.ndarray]], aucs: dict[str, float], stem: Path,
    formats: list[str], title: str,
) -> list[Path]:  # fmt: skip
    """Background rejection vs signal efficiency of every classifier, one line each."""
    import matplotlib.pyplot as plt

    from hepnn.plotting import save_figure

    fig, ax = plt.subplots(figsize=(7, 6))
    for name, (tpr, fpr) in per.items():
        keep = fpr > 0
        ax.plot(tpr[keep], 1.0 / fpr[keep], label=f"{name} (AUC {aucs[name]:.3f})")
    ax.axvline(WORKING_POINT, color="grey", ls=":", lw=1)
    ax.set_yscale("log")
    ax.set_xlim(0, 1)
    ax.set_xlabel(r"signal efficiency $\varepsilon_S$")
    ax.set_ylabel(r"background rejection $1/\varepsilon_B$")
    ax.set_title(title, loc="left")
    ax.legend()
    return save_figure(fig, stem, formats)


def _average_images(hists: dict[str, Any]) -> None:
    """``jet_image_mean_<process>`` = ``jet_image_sum`` / jets filled, per process."""
    total = hists.get("jet_image_sum")
    status = hists.get("jet_status")
    if total is None or status is None:
        return
    counts = status[{"dataset": sum, "status": "tagged"}]
    for process in total.axes["process"]:
        n = counts[process].value if hasattr(counts[process], "value") else counts[process]
        if not n:
            continue
        img = total[{"process": process}]
        mean = hist.Hist(*img.axes, label=f"average jet image: {process} ({int(n)} jets)")
        mean.view()[...] = img.values() / n
        hists[f"jet_image_mean_{process}"] = mean


def _roc_hist(curves: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]) -> hist.Hist:
    names = list(dict.fromkeys(n for per in curves.values() for n in per))
    h = hist.Hist(
        hist.axis.StrCategory(names, name="classifier"),
        hist.axis.StrCategory(list(curves), name="dataset"),
        hist.axis.Regular(ROC_BINS, 0.0, 1.0, name="eff_s", label="signal efficiency"),
        label="background efficiency vs signal efficiency (held-out rows)",
        metadata={"plot": False},
    )
    centres = h.axes["eff_s"].centers
    for i, name in enumerate(names):
        for j, per in enumerate(curves.values()):
            if name in per:
                tpr, fpr = per[name]
                h.view()[i, j, :] = np.interp(centres, tpr, fpr)
    return h


def _label_column(data: Mapping[str, np.ndarray], meta: dict[str, Any]) -> str | None:
    for name in (meta.get("label"), "label", "Label"):
        if name and name in data:
            return name
    return None


def network_report(
    networks: Mapping[str, str | Path],
    hists: dict[str, Any],
    columns: Mapping[str, Columns | ColumnParts],
    datasets: Mapping[str, Dataset],
    plot_dir: Path,
    *,
    formats: list[str] | tuple[str, ...] = ("png", "pdf"),
) -> tuple[dict[str, Any], list[Path]]:
    """Metrics of every network and the baselines; curve histograms added to ``hists``.

    Returns
    -------
    metrics, files
        ``{"networks": {...}, "baselines": {...}}`` (empty without labelled score
        columns) and the plot files written (none with empty ``formats``).
    """
    _average_images(hists)
    metas = {}
    challenge_only = bool(datasets) and all(ds.format == HIGGS_FORMAT for ds in datasets.values())
    for name, path in networks.items():
        jp = model_json_path(path)
        metas[name] = parse_model_json(jp, jp.read_bytes())
        fine = hists.get(f"score_fine_{name}")
        if fine is not None:
            hists.update(curve_hists(name, fine, CHALLENGE_TOTALS if challenge_only else None))
    per_net: dict[str, Any] = {
        name: {"model": str(Path(path)), "kind": metas[name]["inputs"]["kind"],
               "architecture": metas[name]["architecture"]["name"], "split": metas[name]["split"],
               "training": metas[name]["metrics"], "datasets": {}}
        for name, path in networks.items()
    }  # fmt: skip
    for name in networks:
        versus = metas[name]["metrics"].get("vs_boosted_trees")
        if versus is not None:
            per_net[name]["vs_boosted_trees"] = versus
    baselines: dict[str, Any] = {}
    curves: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    files: list[Path] = []
    for dataset, cols in columns.items():
        d = cols.read().data
        names = [n for n in networks if f"score_{n}" in d and _label_column(d, metas[n])]
        if not names:
            continue
        label = d[_label_column(d, metas[names[0]])]
        labelled = (label == 0) | (label == 1)
        if not labelled.any():  # e.g. CMS data: scores, no metrics
            continue
        ds = datasets.get(dataset)
        if ds is not None and ds.metadata.get("is_data"):  # collision data: no metrics
            continue
        digests = {source_digest(f, ds.format) for f in ds.files} if ds is not None else set()
        heldout: dict[str, np.ndarray] = {}
        trained_split: dict[str, Any] | None = None
        for name in names:
            meta = metas[name]
            score = d[f"score_{name}"]
            keep = labelled & np.isfinite(score)
            trained = bool({f["digest"] for f in meta.get("training_data", [])} & digests)
            if trained:
                keep &= held_out(d[meta["split"]["id_column"]], meta["split"])
                trained_split = trained_split or meta["split"]
            heldout[name] = keep
            entry = classifier_metrics(score[keep], label[keep])
            entry["evaluated_on"] = (
                "held-out rows (the network trained on this dataset)" if trained
                else "all labelled rows (not used in training)"
            )  # fmt: skip
            entry["unscored"] = int((labelled & ~np.isfinite(score)).sum())
            weight_col = meta["settings"].get("weight", "Weight")
            if weight_col in d:
                w = d[weight_col][keep]
                challenge = ds is not None and ds.format == HIGGS_FORMAT
                entry["auc_weighted"] = auc(score[keep], label[keep], w)
                entry["ams_best"], entry["ams_threshold"] = weighted_ams(
                    score[keep], label[keep], w, challenge
                )
                entry["ams_normalisation"] = ams_normalisation(challenge)
                entry["negative_weights"] = int((w < 0).sum())
            per_net[name]["datasets"][dataset] = entry
        common = np.logical_and.reduce(list(heldout.values()))
        y = label[common]
        scores = {name: d[f"score_{name}"][common] for name in names}
        if "jet_mass" in d:
            scores[MASS_NAME] = d["jet_mass"][common]
        if trained_split is not None and all(f in d for f in GBT_FEATURES):
            train = labelled & (split_codes(d[trained_split["id_column"]], trained_split) == TRAIN)
            features = {f: d[f] for f in GBT_FEATURES}
            scores[GBT_NAME] = gbt_scores(
                features, train, common, label, int(trained_split["seed"])
            )
            baselines.setdefault(GBT_NAME, {"features": list(GBT_FEATURES), "datasets": {}})
            baselines[GBT_NAME]["datasets"][dataset] = {"trained_on": int(train.sum())}
        for base in (MASS_NAME, GBT_NAME):
            if base in scores:
                entry = baselines.setdefault(base, {"datasets": {}})["datasets"].setdefault(
                    dataset, {}
                )
                entry.update(classifier_metrics(scores[base], y))
                entry["evaluated_on"] = "rows no network trained on"
        if len(np.unique(y)) == 2:
            curves[dataset] = {n: roc_points(s, y) for n, s in scores.items()}
            if formats:
                aucs = {n: auc(s, y) for n, s in scores.items()}
                stem = plot_dir / f"roc_{dataset}"
                files += plot_rocs(
                    curves[dataset], aucs, stem, list(formats), f"{dataset}: held-out rows"
                )
    if curves:
        hists["roc_networks"] = _roc_hist(curves)
    if not any(n["datasets"] for n in per_net.values()):
        return {}, files
    return {"networks": per_net, "baselines": baselines}, files
