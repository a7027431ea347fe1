"""K-fold cross-validated evaluation of the networks and baselines (``cross_validation:``).

With a few hundred test rows one split cannot tell two classifiers 0.01 in AUC
apart. With ``cross_validation: {folds: K}`` a run also hashes every row's id into
one of K folds (:func:`hepnn.nets.split.hashed_folds`) and, for k = 0..K-1, trains
every network with exactly its configured settings (:func:`hepnn.nets.train.fit_model`)
on the other folds, early stopping on fold k+1 mod K, and scores fold k. The
boosted-tree baseline is refit per fold on the same training rows (on the jet
mass, multiplicity and p_T^D for jet networks, on the flat features for flat
networks); the jet mass needs no fit. Every row thus gets an out-of-fold score
from models that never saw it, and AUC and 1/ε_B are measured on all rows.

The CV models are for evaluation only: they are not saved, and the deployed
networks keep their own split. All networks compared must train on the same rows
(a paired comparison). AUC differences to the boosted tree get a paired bootstrap
over the rows (:func:`paired_bootstrap`): the trained models are held fixed, so the
error covers the finite sample, not the spread from retraining.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hepnn.errors import ConfigError, InputError
from hepnn.metrics import RankedScores, auc
from hepnn.nets.apply import forward
from hepnn.nets.report import (
    GBT_NAME,
    MASS_NAME,
    classifier_metrics,
    gbt_scores,
    plot_rocs,
    roc_points,
)
from hepnn.nets.split import TEST, TRAIN, fold_codes, hashed_folds
from hepnn.nets.train import fit_model
from hepnn.progress import step_progress

if TYPE_CHECKING:
    from hepnn.config import Config
    from hepnn.nets.data import DataReader, TrainingData
    from hepnn.nets.spec import NetworkSpec

#: Below this many background rows passing the ε_S cut, 1/ε_B gets a note in the metrics.
FEW_BACKGROUND = 10
#: Name of the boosted-tree baseline on flat features.
GBT_FLAT_NAME = "gbt_features"


def check_folds(fold: np.ndarray, labels: np.ndarray, folds: int) -> None:
    """Every fold must hold signal and background rows (it tests, validates and trains)."""
    for k in range(folds):
        in_k = fold == k
        n_sig, n_bkg = int(labels[in_k].sum()), int((labels[in_k] == 0).sum())
        if n_sig == 0 or n_bkg == 0:
            msg = (
                f"cross_validation: fold {k} of {folds} has {n_sig} signal and {n_bkg} "
                f"background rows (of {len(labels)}): too few rows for {folds} folds"
            )
            raise InputError(msg)


def paired_bootstrap(
    a: np.ndarray, b: np.ndarray, labels: np.ndarray, resamples: int, seed: int
) -> dict[str, Any]:
    """AUC(a) − AUC(b) on the same rows, with a paired bootstrap over the rows.

    Each resample draws ``len(labels)`` rows with replacement (seeded by ``seed``)
    and scores both classifiers on the same draw, so their correlation cancels.
    """
    rng = np.random.default_rng(seed)
    n = len(labels)
    ranked_a, ranked_b = RankedScores(a, labels), RankedScores(b, labels)
    diffs = np.empty(resamples)
    for i in range(resamples):
        # the AUC of the drawn rows is the AUC of all rows weighted by their draw counts
        counts = np.bincount(rng.integers(0, n, n), minlength=n).astype(np.float64)
        diffs[i] = ranked_a.auc(counts) - ranked_b.auc(counts)
    lo, hi = np.percentile(diffs, [16, 84])
    return {
        "difference": auc(a, labels) - auc(b, labels),
        "standard_error": float(np.std(diffs, ddof=1)),
        "interval_68": [float(lo), float(hi)],
        "resamples": resamples,
    }


def _with_note(entry: dict[str, Any]) -> dict[str, Any]:
    passing = entry.get("background_passing")
    if entry["rejection"] is None and entry["rejection_lower_bound"] is not None:
        entry["rejection_note"] = f"no background row passes: 1/eps_B > {entry['rejection_lower_bound']}"
    elif passing is not None and passing < FEW_BACKGROUND:
        entry["rejection_note"] = (
            f"counted from {passing} background rows passing (relative error ~1/sqrt({passing}))"
        )
    return entry


def _paired_data(specs: dict[str, NetworkSpec], reader: DataReader) -> dict[str, TrainingData]:
    """The networks' training rows; they must all be the same rows (same ids and labels)."""
    data = {n: reader.training_data(n, s) for n, s in specs.items()}
    first, *others = data
    for name in others:
        same = np.array_equal(data[name].ids, data[first].ids) and np.array_equal(
            data[name].labels, data[first].labels
        )
        if not same:
            msg = (
                f"cross_validation: networks {first} and {name} train on different rows "
                "(datasets, label, max_events or id_column differ)"
            )
            raise ConfigError(msg)
    return data


def cross_validated_scores(
    specs: dict[str, NetworkSpec],
    data: dict[str, TrainingData],
    fold: np.ndarray,
    seed: int,
    *,
    progress: bool = True,
) -> dict[str, np.ndarray]:
    """Out-of-fold scores of every network and baseline, one float64 array each (NaN: unscored)."""
    folds = int(fold.max()) + 1
    first = next(iter(data.values()))
    labels = first.labels
    scores = {n: np.full(len(fold), np.nan) for n in specs}
    baseline = first.baseline
    jets = "jet_mass" in baseline
    gbt_name = GBT_NAME if jets else GBT_FLAT_NAME
    if jets:
        scores[MASS_NAME] = np.asarray(baseline["jet_mass"], dtype=np.float64)
    scores[gbt_name] = np.full(len(fold), np.nan)
    with step_progress(f"cross-validation ({folds} folds)", folds, progress) as advance:
        for k in range(folds):
            codes = fold_codes(fold, k, folds)
            test = codes == TEST
            for name, spec in specs.items():
                advance(0, info=f"fold {k}: training {name}")
                fitted = fit_model(f"{name} (fold {k})", spec, data[name], codes, progress=False)
                rows = test & data[name].usable
                x = fitted.builder.transform(data[name].raw[rows])
                scores[name][rows] = forward(fitted.model, x, fitted.builder.micro_batch)
            scores[gbt_name][test] = gbt_scores(baseline, codes == TRAIN, test, labels, seed)
            advance(1, info=f"fold {k} done")
    return scores


def cross_validate(
    cfg: Config,
    reader: DataReader,
    outdir: Path,
    *,
    test: bool = False,
    progress: bool = True,
    formats: list[str] | tuple[str, ...] = ("png", "pdf"),
) -> tuple[dict[str, Any], list[Path]]:
    """The ``cross_validation`` block of ``metrics.json`` and the files written.

    Writes ``cross_validation/scores.parquet`` (id, label, fold and out-of-fold
    score of every row) and the ROC plot ``plots/roc_cross_validation``.
    """
    from hepnn.columns import Columns
    from hepnn.nets.lifecycle import quick_spec

    cv = cfg.cross_validation
    if cv is None:
        return {}, []
    seed = cfg.seed if cv.seed is None else cv.seed
    specs = {n: quick_spec(s) if test else s for n, s in cfg.networks.items() if s.train}
    data = _paired_data(specs, reader)
    first = next(iter(data.values()))
    fold = hashed_folds(first.ids, cv.folds, seed)
    check_folds(fold, first.labels, cv.folds)
    scores = cross_validated_scores(specs, data, fold, seed, progress=progress)
    gbt_name = GBT_NAME if GBT_NAME in scores else GBT_FLAT_NAME

    # Metrics on the rows every classifier scored (unusable rows have no network score).
    keep = np.logical_and.reduce([np.isfinite(s) for s in scores.values()])
    y, f = first.labels[keep], fold[keep]
    scored = {n: s[keep] for n, s in scores.items()}
    classifiers: dict[str, Any] = {}
    for name, s in scored.items():
        entry = _with_note(classifier_metrics(s, y))
        per_fold = [auc(s[f == k], y[f == k]) for k in range(cv.folds)]
        entry["fold_auc"] = per_fold
        entry["fold_auc_mean"] = float(np.mean(per_fold))
        entry["fold_auc_sd"] = float(np.std(per_fold, ddof=1))
        classifiers[name] = entry
    block = {
        "folds": cv.folds,
        "seed": seed,
        "rows": int(keep.sum()),
        "fold_rows": [int((f == k).sum()) for k in range(cv.folds)],
        "evaluated_on": (
            "every row, scored by the models of the round in which its fold was the test "
            "fold (trained on the other folds, fold k+1 for early stopping)"
        ),
        "classifiers": classifiers,
        "auc_difference_to_gbt": {
            name: paired_bootstrap(scored[name], scored[gbt_name], y, cv.bootstrap, seed)
            for name in specs
        },
        "baseline": gbt_name,
        "bootstrap_note": (
            "paired bootstrap over the rows with the trained models fixed; "
            "it does not include the spread from retraining"
        ),
    }
    table = {"id": first.ids, "label": first.labels, "fold": fold}
    table |= {f"score_{n}": s for n, s in scores.items()}
    files = [outdir / "cross_validation" / "scores.parquet"]
    Columns(table).write_parquet(files[0])
    if formats and len(np.unique(y)) == 2:
        curves = {n: roc_points(s, y) for n, s in scored.items()}
        aucs = {n: classifiers[n]["auc"] for n in scored}
        title = f"{cv.folds}-fold cross-validation: {int(keep.sum())} out-of-fold rows"
        files += plot_rocs(curves, aucs, outdir / "plots" / "roc_cross_validation", list(formats), title)
    return block, files
