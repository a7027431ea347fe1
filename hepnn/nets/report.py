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
  best AMS (b_reg = 10) over score thresholds;
* baselines on the rows every network left out: the jet mass (``jet_mass``
  column) and a seeded gradient-boosted tree on :data:`GBT_FEATURES` trained on
  the split's training rows;
* ROC curves per dataset (``roc_networks``, plot ``roc_<dataset>``), ROC/AMS
  curve histograms from a workflow's ``score_fine_<name>``, and the average jet
  images ``jet_image_mean_<process>`` from ``jet_image_sum``.

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

from hepnn.metrics import auc, best_ams, curve_hists
from hepnn.nets.data import source_digest
from hepnn.nets.split import TRAIN, held_out, split_codes
from hepnn.nets.store import model_json_path, parse_model_json

if TYPE_CHECKING:
    from hepnn.columns import Columns
    from hepnn.samples import Dataset

#: Signal efficiency at which the background rejection is quoted.
WORKING_POINT = 0.3
#: Inputs of the boosted-tree baseline of jet networks (columns of the toptag workflow).
GBT_FEATURES = ("jet_mass", "n_constituents", "jet_ptd")
GBT_NAME = "gbt_mass_nconst_ptd"
MASS_NAME = "mass"
#: ε_S bins of the ``roc_networks`` histogram.
ROC_BINS = 200


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
    features: Mapping[str, np.ndarray], train: np.ndarray, apply: np.ndarray, label: np.ndarray, seed: int
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


def _ams(score: np.ndarray, label: np.ndarray, weight: np.ndarray) -> tuple[float, float]:
    h = hist.Hist(
        hist.axis.StrCategory(["signal", "background"], name="process"),
        hist.axis.Regular(1000, 0.0, 1.0, name="score"),
        storage=hist.storage.Weight(),
    )
    h.fill(process=np.where(label == 1, "signal", "background"), score=score, weight=weight)
    return best_ams(h)


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
    columns: Mapping[str, Columns],
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
    for name, path in networks.items():
        jp = model_json_path(path)
        metas[name] = parse_model_json(jp, jp.read_bytes())
        fine = hists.get(f"score_fine_{name}")
        if fine is not None:
            hists.update(curve_hists(name, fine))
    per_net: dict[str, Any] = {
        name: {"model": str(Path(path)), "kind": metas[name]["inputs"]["kind"],
               "architecture": metas[name]["architecture"]["name"], "split": metas[name]["split"],
               "training": metas[name]["metrics"], "datasets": {}}
        for name, path in networks.items()
    }  # fmt: skip
    baselines: dict[str, Any] = {}
    curves: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    files: list[Path] = []
    for dataset, cols in columns.items():
        d = cols.data
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
                entry["auc_weighted"] = auc(score[keep], label[keep], w)
                entry["ams_best"], entry["ams_threshold"] = _ams(score[keep], label[keep], w)
            per_net[name]["datasets"][dataset] = entry
        common = np.logical_and.reduce(list(heldout.values()))
        y = label[common]
        scores = {name: d[f"score_{name}"][common] for name in names}
        if "jet_mass" in d:
            scores[MASS_NAME] = d["jet_mass"][common]
        if trained_split is not None and all(f in d for f in GBT_FEATURES):
            train = labelled & (split_codes(d[trained_split["id_column"]], trained_split) == TRAIN)
            features = {f: d[f] for f in GBT_FEATURES}
            scores[GBT_NAME] = gbt_scores(features, train, common, label, int(trained_split["seed"]))
            baselines.setdefault(GBT_NAME, {"features": list(GBT_FEATURES), "datasets": {}})
            baselines[GBT_NAME]["datasets"][dataset] = {"trained_on": int(train.sum())}
        for base in (MASS_NAME, GBT_NAME):
            if base in scores:
                entry = baselines.setdefault(base, {"datasets": {}})["datasets"].setdefault(dataset, {})
                entry.update(classifier_metrics(scores[base], y))
                entry["evaluated_on"] = "rows no network trained on"
        if len(np.unique(y)) == 2:
            curves[dataset] = {n: roc_points(s, y) for n, s in scores.items()}
            if formats:
                aucs = {n: auc(s, y) for n, s in scores.items()}
                stem = plot_dir / f"roc_{dataset}"
                files += plot_rocs(curves[dataset], aucs, stem, list(formats), f"{dataset}: held-out rows")
    if curves:
        hists["roc_networks"] = _roc_hist(curves)
    if not any(n["datasets"] for n in per_net.values()):
        return {}, files
    return {"networks": per_net, "baselines": baselines}, files
