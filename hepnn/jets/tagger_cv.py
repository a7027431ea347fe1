"""K-fold cross-validated evaluation of the taggers and baselines (``cross_validation:``).

With a few hundred test jets, one train/validation/test split cannot tell two
classifiers 0.01 in AUC apart. With ``cross_validation: {folds: K}`` a run also
hashes every jet id into one of K folds (:func:`fold_assignment`, seeded like
:func:`hepnn.jets.taggers.split_codes`) and, for k = 0..K-1, trains every tagger
with exactly its configured settings (:func:`hepnn.jets.tagger_training.fit_tagger`)
on the other folds, early stopping on fold k+1 mod K, and scores fold k
(:func:`fold_codes`). The GBT baseline is refit per fold on the same training
jets; the jet mass needs no fit. So every jet gets an out-of-fold score from
models that never saw it, and AUC and 1/ε_B are measured on all jets.

The CV models are for evaluation only: they are not saved, and the deployed
taggers (``models/``, the ``score_*`` columns, ``--models``) keep their single
split. Outputs: the ``cross_validation`` block of ``metrics.json``
(:func:`cross_validate`), ``cross_validation/scores.parquet`` (the out-of-fold
scores with the fold of every jet) and ``plots/roc_taggers_cross_validation``.

AUC differences to the GBT get a paired bootstrap over the jets
(:func:`paired_bootstrap`): the trained models are held fixed, so the error
covers the finite sample of jets, not the spread from retraining with other seeds.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hepnn.errors import ConfigError, InputError
from hepnn.jets.tagger_report import (
    GBT_NAME,
    _gbt,
    _plot_rocs,
    _roc,
    baseline_columns,
    classifier_metrics,
)
from hepnn.jets.tagger_training import TrainingJets, fit_tagger, quick_spec, read_training_jets
from hepnn.jets.taggers import (
    TAGGER_MICRO_BATCH,
    TEST,
    TRAIN,
    VAL,
    TaggerPrep,
    TaggerSpec,
    _forward,
    _hash_uniform,
)
from hepnn.metrics import auc
from hepnn.progress import step_progress

if TYPE_CHECKING:
    from hepnn.config import Config
    from hepnn.samples import Dataset

#: Below this many background jets passing the ε_S cut, 1/ε_B gets a note in the metrics.
FEW_BACKGROUND = 10
#: Name of the mass baseline (the jet mass itself is the score).
MASS_NAME = "mass"


def fold_assignment(ids: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """The fold (0..folds-1, int64) of every jet: ``floor(folds * u)``, ``u`` the seeded id hash.

    A function of each id alone (as :func:`~hepnn.jets.taggers.split_codes`): reordering
    or re-chunking the jets does not move them, and jets of one event share a fold.
    Fold sizes are equal on average, not exactly.
    """
    u = _hash_uniform(np.asarray(ids).astype(np.int64), seed)
    return np.minimum((u * folds).astype(np.int64), folds - 1)


def fold_codes(fold: np.ndarray, k: int, folds: int) -> np.ndarray:
    """:data:`TRAIN` / :data:`VAL` / :data:`TEST` (int8) for round ``k``.

    Test = fold k, validation = fold (k+1) mod ``folds``, train = every other fold.
    """
    return np.where(fold == k, TEST, np.where(fold == (k + 1) % folds, VAL, TRAIN)).astype(np.int8)


def _check_folds(fold: np.ndarray, labels: np.ndarray, folds: int) -> None:
    """Every fold must hold signal and background jets (it tests, validates and trains)."""
    for k in range(folds):
        in_k = fold == k
        n_sig, n_bkg = int(labels[in_k].sum()), int((labels[in_k] == 0).sum())
        if n_sig == 0 or n_bkg == 0:
            msg = (
                f"cross_validation: fold {k} of {folds} has {n_sig} signal and {n_bkg} "
                f"background jets (of {len(labels)}): too few jets for {folds} folds"
            )
            raise InputError(msg)


def cross_validated_scores(
    specs: dict[str, TaggerSpec],
    jets: TrainingJets,
    fold: np.ndarray,
    seed: int,
    *,
    progress: bool = True,
) -> dict[str, np.ndarray]:
    """Out-of-fold scores of every tagger and of the baselines, one float64 array each.

    Parameters
    ----------
    specs
        Taggers to train (their configured settings, unchanged).
    jets
        The jets they train on, with labels (all taggers read the same jets).
    fold
        :func:`fold_assignment` of every jet.
    seed
        Seed of the GBT baseline.
    progress
        Show a bar over the folds.

    Returns
    -------
    dict
        Tagger names, ``mass`` and the GBT name → score of every jet (sigmoid
        output for the taggers), from the round in which the jet's fold tested;
        NaN for empty jets (taggers only).
    """
    folds = int(fold.max()) + 1
    usable = ~jets.batch.empty
    raws = {n: TaggerPrep(s.kind, s.input_settings()).raw(jets.batch) for n, s in specs.items()}
    features = baseline_columns(jets.batch)
    scores = {n: np.full(len(fold), np.nan) for n in specs}
    scores[MASS_NAME] = features["jet_mass"].astype(np.float64)
    scores[GBT_NAME] = np.full(len(fold), np.nan)
    with step_progress(f"cross-validation ({folds} folds)", folds, progress) as advance:
        for k in range(folds):
            codes = fold_codes(fold, k, folds)
            test = codes == TEST
            for name, spec in specs.items():
                advance(0, info=f"fold {k}: training {name}")
                fitted = fit_tagger(
                    f"{name} (fold {k})", spec, raws[name], jets.labels, codes, usable,
                    progress=False,
                )  # fmt: skip
                rows = test & usable
                x = np.ascontiguousarray(fitted.prep.transform(raws[name][rows]))
                scores[name][rows] = _forward(fitted.model, x, TAGGER_MICRO_BATCH, sigmoid=True)
            scores[GBT_NAME][test] = _gbt(features, codes == TRAIN, test, jets.labels, seed)
            advance(1, info=f"fold {k} done")
    return scores


def paired_bootstrap(
    a: np.ndarray, b: np.ndarray, labels: np.ndarray, resamples: int, seed: int
) -> dict[str, Any]:
    """AUC(a) − AUC(b) on the same jets, with a paired bootstrap over the jets.

    Each resample draws ``len(labels)`` jets with replacement (seeded by ``seed``)
    and scores both classifiers on the same draw, so their correlation cancels.

    Returns
    -------
    dict
        ``difference`` (on all jets), ``standard_error`` (sd of the resampled
        differences), ``interval_68`` (their 16th and 84th percentiles), ``resamples``.
    """
    rng = np.random.default_rng(seed)
    n = len(labels)
    diffs = np.empty(resamples)
    for i in range(resamples):
        idx = rng.integers(0, n, n)
        diffs[i] = auc(a[idx], labels[idx]) - auc(b[idx], labels[idx])
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
        entry["rejection_note"] = (
            f"no background jet passes: 1/eps_B > {entry['rejection_lower_bound']}"
        )
    elif passing is not None and passing < FEW_BACKGROUND:
        entry["rejection_note"] = (
            f"counted from {passing} background jets passing (relative error ~1/sqrt({passing}))"
        )
    return entry


def _read_jets(specs: dict[str, TaggerSpec], datasets: dict[str, Dataset]) -> TrainingJets:
    """The jets of the taggers; they must all train on the same jets (a paired comparison)."""
    read = {n: read_training_jets(n, s, datasets) for n, s in specs.items()}
    first, *others = read
    for name in others:
        same = len(read[name].ids) == len(read[first].ids) and np.array_equal(
            read[name].ids, read[first].ids
        )
        if not (same and np.array_equal(read[name].labels, read[first].labels)):
            msg = (
                f"cross_validation: taggers {first} and {name} train on different jets "
                "(datasets, label, max_jets or id_column differ)"
            )
            raise ConfigError(msg)
    return read[first]


def cross_validate(
    cfg: Config,
    datasets: dict[str, Dataset],
    outdir: Path,
    *,
    test: bool = False,
    progress: bool = True,
    plots: bool = True,
    formats: list[str] | tuple[str, ...] = ("png", "pdf"),
) -> tuple[dict[str, Any], list[Path]]:
    """The ``cross_validation`` metrics of ``cfg`` and the files written (see the module docstring).

    Parameters
    ----------
    cfg
        The config; its ``cross_validation`` section and the taggers with ``train: true``.
    datasets
        The resolved datasets the taggers train on.
    outdir
        Run folder: ``cross_validation/scores.parquet`` and ``plots/`` are written there.
    test
        Cap every training at two epochs, as for the deployed taggers.
    progress, plots, formats
        Progress bar over the folds; whether and how to draw the ROC plot.

    Returns
    -------
    metrics, files
        The ``cross_validation`` block of ``metrics.json`` (empty without the
        section) and the files written.
    """
    from hepnn.columns import Columns

    cv = cfg.cross_validation
    if cv is None:
        return {}, []
    seed = cfg.seed if cv.seed is None else cv.seed
    specs = {n: quick_spec(s) if test else s for n, s in cfg.taggers.items() if s.train}
    jets = _read_jets(specs, datasets)
    fold = fold_assignment(jets.ids, cv.folds, seed)
    _check_folds(fold, jets.labels, cv.folds)
    scores = cross_validated_scores(specs, jets, fold, seed, progress=progress)

    # Metrics on the jets every classifier scored (empty jets have no tagger score).
    keep = np.logical_and.reduce([np.isfinite(s) for s in scores.values()])
    y, f = jets.labels[keep], fold[keep]
    scored = {n: s[keep] for n, s in scores.items()}
    classifiers: dict[str, Any] = {}
    for name, s in scored.items():
        entry = _with_note(classifier_metrics(s, y))
        per_fold = [auc(s[f == k], y[f == k]) for k in range(cv.folds)]
        entry["fold_auc"] = per_fold
        entry["fold_auc_mean"] = float(np.mean(per_fold))
        entry["fold_auc_sd"] = float(np.std(per_fold, ddof=1))
        classifiers[name] = entry
    differences = {
        name: paired_bootstrap(scored[name], scored[GBT_NAME], y, cv.bootstrap, seed)
        for name in specs
    }
    block = {
        "folds": cv.folds,
        "seed": seed,
        "n_jets": int(keep.sum()),
        "fold_jets": [int((f == k).sum()) for k in range(cv.folds)],
        "evaluated_on": (
            "every jet, scored by the models of the round in which its fold was the test "
            "fold (trained on the other folds, fold k+1 for early stopping)"
        ),
        "classifiers": classifiers,
        "auc_difference_to_gbt": differences,
        "bootstrap_note": (
            "paired bootstrap over the jets with the trained models fixed; "
            "it does not include the spread from retraining"
        ),
    }

    table = {"id": jets.ids, "label": jets.labels, "fold": fold}
    table |= {f"score_{n}": s for n, s in scores.items()}
    files = [outdir / "cross_validation" / "scores.parquet"]
    Columns(table).write_parquet(files[0])
    if plots and len(np.unique(y)) == 2:
        curves = {n: _roc(s, y) for n, s in scored.items()}
        aucs = {n: classifiers[n]["auc"] for n in scored}
        title = f"{cv.folds}-fold cross-validation: {int(keep.sum())} out-of-fold jets"
        files += _plot_rocs(
            "cross_validation", curves, aucs, outdir / "plots", list(formats),
            stem="roc_taggers_cross_validation", title=title,
        )  # fmt: skip
    return block, files


__all__ = [
    "cross_validate",
    "cross_validated_scores",
    "fold_assignment",
    "fold_codes",
    "paired_bootstrap",
]
