"""What a run derives from its tagger columns after processing: metrics, ROC curves, images.

Called by ``hepnn run`` (:func:`tagger_outputs`) after the merge:

* per tagger and labelled dataset, AUC and the background rejection 1/ε_B at
  ε_S = :data:`WORKING_POINT` on the jets the tagger did not train on (the test
  split of a dataset whose files it trained on, every jet of other datasets);
* the same for the jet-mass baseline and a gradient-boosted tree on (mass,
  constituent multiplicity, p_T^D), on the jets *no* tagger trained on;
* ``roc_taggers`` (a hist: classifier x dataset x ε_S, value ε_B) and the plot
  ``roc_taggers_<dataset>``; ``jet_image_mean_<process>`` from the workflow's
  ``jet_image_sum``.

ε_B is counted, not interpolated: the threshold is the score of the
``ceil(ε_S · N_S)``-th most signal-like signal jet and every background jet at or
above it passes. With no background jet passing, the rejection is only bounded
(``rejection_lower_bound`` = N_B): a few hundred test jets cannot measure more.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hist
import numpy as np

from hepnn.metrics import auc

if TYPE_CHECKING:
    from hepnn.columns import Columns
    from hepnn.jets.taggers import JetBatch
    from hepnn.samples import Dataset

#: Signal efficiency at which the background rejection is quoted.
WORKING_POINT = 0.3
#: Baseline inputs (columns written by the toptag workflow).
GBT_FEATURES = ("jet_mass", "n_constituents", "jet_ptd")
GBT_NAME = "gbt_mass_nconst_ptd"
#: ε_S bins of the ``roc_taggers`` histogram.
ROC_BINS = 200


def baseline_columns(batch: JetBatch) -> dict[str, np.ndarray]:
    """The :data:`GBT_FEATURES` of every jet, as the toptag workflow writes them as columns.

    One definition for the columns the baselines read and for the cross-validation
    (:mod:`hepnn.jets.tagger_cv`), so both fit the GBT on the same float32 values.
    """
    return {
        "jet_mass": batch.mass.astype(np.float32),
        "n_constituents": batch.n_constituents.astype(np.int32),
        "jet_ptd": batch.ptd.astype(np.float32),
    }


def classifier_metrics(
    score: np.ndarray, label: np.ndarray, eff_s: float = WORKING_POINT
) -> dict[str, Any]:
    """Jets, AUC, and ε_B / rejection at signal efficiency ``eff_s`` (see the module docstring)."""
    score = np.asarray(score, dtype=np.float64)
    sig, bkg = score[label == 1], score[label == 0]
    out: dict[str, Any] = {
        "jets": len(score),
        "signal": len(sig),
        "background": len(bkg),
        "auc": auc(score, label),
        "eff_s": eff_s,
        "eff_b": None,
        "rejection": None,
        "rejection_lower_bound": None,
    }
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


def _roc(score: np.ndarray, label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(label, score, drop_intermediate=False)
    return tpr, fpr


def _dataset_digests(ds: Dataset | None) -> set[str]:
    from hepnn.jets.tagger_training import source_digest

    if ds is None:
        return set()
    return {source_digest(f, ds.format) for f in ds.files}


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
        label="background efficiency vs signal efficiency (held-out jets)",
        metadata={"plot": False},
    )
    centres = h.axes["eff_s"].centers
    for i, name in enumerate(names):
        for j, per in enumerate(curves.values()):
            if name in per:
                tpr, fpr = per[name]
                h.view()[i, j, :] = np.interp(centres, tpr, fpr)
    return h


def _plot_rocs(
    dataset: str,
    per: dict[str, tuple[np.ndarray, np.ndarray]],
    aucs: dict[str, float],
    plot_dir: Path,
    formats: list[str],
    *,
    stem: str | None = None,
    title: str | None = None,
) -> list[Path]:
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
    ax.set_title(title or f"{dataset}: held-out jets", loc="left")
    ax.legend()
    return save_figure(fig, plot_dir / (stem or f"roc_taggers_{dataset}"), formats)


def tagger_outputs(
    taggers: Mapping[str, str | Path],
    hists: dict[str, Any],
    columns: Mapping[str, Columns],
    datasets: Mapping[str, Dataset],
    plot_dir: Path,
    *,
    plots: bool = True,
    formats: list[str] | tuple[str, ...] = ("png", "pdf"),
) -> tuple[dict[str, Any], list[Path]]:
    """Tagger metrics and ROC curves from the run's columns; average images into ``hists``.

    Parameters
    ----------
    taggers
        Tagger name → model folder (as in ``WorkflowContext.taggers``).
    hists
        The merged histograms; ``roc_taggers`` and ``jet_image_mean_*`` are added.
    columns
        Dataset → per-jet columns (``event``/id column, ``label``, ``score_<name>``...).
    datasets
        The resolved datasets, to tell which files a tagger trained on.
    plot_dir, plots, formats
        Where and whether to draw ``roc_taggers_<dataset>``.

    Returns
    -------
    metrics, files
        ``{"taggers": {...}, "tagger_baselines": {...}}`` (empty without labelled
        tagger columns) and the plot files written.
    """
    from hepnn.jets.taggers import TEST, TRAIN, split_codes
    from hepnn.modelio import model_json_path, parse_model_json

    _average_images(hists)
    if not taggers:
        return {}, []
    metas = {}
    for name, path in taggers.items():
        jp = model_json_path(path)
        metas[name] = parse_model_json(jp, jp.read_bytes())
    per_tagger: dict[str, Any] = {
        name: {
            "model": str(Path(path)),
            "architecture": metas[name]["architecture"]["name"],
            "kind": metas[name]["tagger"]["kind"],
            "split": metas[name]["split"],
            "training": metas[name]["metrics"],
            "datasets": {},
        }
        for name, path in taggers.items()
    }
    baselines: dict[str, Any] = {"mass": {"score": "jet_mass", "datasets": {}}}
    curves: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    files: list[Path] = []
    for dataset, cols in columns.items():
        d = cols.data
        names = [n for n in taggers if f"score_{n}" in d]
        if "label" not in d or not names:
            continue
        label = d["label"]
        labelled = (label == 0) | (label == 1)
        if not labelled.any():  # e.g. CMS data through the toptag workflow: scores, no metrics
            continue
        digests: set[str] | None = None
        heldout: dict[str, np.ndarray] = {}
        trained_split: dict[str, Any] | None = None
        for name in names:
            meta = metas[name]
            id_col = meta["split"]["id_column"]
            trained = {f["digest"] for f in meta.get("training_data", [])}
            if digests is None:
                digests = _dataset_digests(datasets.get(dataset))
            used = bool(trained & digests)
            keep = labelled & np.isfinite(d[f"score_{name}"])
            if used:
                keep &= split_codes(d[id_col], meta["split"]) == TEST
                trained_split = trained_split or meta["split"]
            heldout[name] = keep
            entry = classifier_metrics(d[f"score_{name}"][keep], label[keep])
            entry["evaluated_on"] = (
                "test split (the tagger trained on this dataset)"
                if used
                else "all labelled jets (not used in training)"
            )
            entry["empty_jets"] = int((labelled & ~np.isfinite(d[f"score_{name}"])).sum())
            per_tagger[name]["datasets"][dataset] = entry
        common = np.logical_and.reduce(list(heldout.values()))
        y = label[common]
        scores = {name: d[f"score_{name}"][common] for name in names}
        if "jet_mass" in d:
            scores["mass"] = d["jet_mass"][common]
            baselines["mass"]["datasets"][dataset] = classifier_metrics(scores["mass"], y)
        if trained_split is not None and all(f in d for f in GBT_FEATURES):
            train_rows = labelled & (
                split_codes(d[trained_split["id_column"]], trained_split) == TRAIN
            )
            scores[GBT_NAME] = _gbt(d, train_rows, common, label, int(trained_split["seed"]))
            baselines.setdefault(GBT_NAME, {"features": list(GBT_FEATURES), "datasets": {}})
            entry = classifier_metrics(scores[GBT_NAME], y)
            entry["trained_on"] = int(train_rows.sum())
            baselines[GBT_NAME]["datasets"][dataset] = entry
        for b in baselines.values():
            if dataset in b["datasets"]:
                b["datasets"][dataset]["evaluated_on"] = "jets no tagger trained on"
        if len(np.unique(y)) == 2:
            curves[dataset] = {n: _roc(s, y) for n, s in scores.items()}
            if plots:
                aucs = {n: auc(s, y) for n, s in scores.items()}
                files += _plot_rocs(dataset, curves[dataset], aucs, plot_dir, list(formats))
    if curves:
        hists["roc_taggers"] = _roc_hist(curves)
    if not any(t["datasets"] for t in per_tagger.values()):
        return {}, files
    return {"taggers": per_tagger, "tagger_baselines": baselines}, files


def _gbt(
    d: Mapping[str, np.ndarray], train: np.ndarray, apply: np.ndarray, label: np.ndarray, seed: int
) -> np.ndarray:
    """Seeded gradient-boosted trees on :data:`GBT_FEATURES`, trained on ``train`` rows."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    x = np.stack([np.asarray(d[f], dtype=np.float64) for f in GBT_FEATURES], axis=1)
    gbt = HistGradientBoostingClassifier(random_state=seed)
    gbt.fit(x[train], label[train])
    return gbt.predict_proba(x[apply])[:, 1]
