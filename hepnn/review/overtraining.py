"""Overtraining check: training vs held-out scores of every model of a network's split.

For model *m* of a split (:func:`hepnn.nets.split.split_codes`) the training rows are
those it was fitted on (``TRAIN``) and the held-out rows those it never used:
``TEST`` (the fold *m* of a k-fold split, the test ids of a random split) or, for a
parity split, which has no test rows, ``VAL`` (the odd ids, used only for early
stopping). Both sets are scored by model *m* in eval mode (the network's own
fixed-batch forward pass), and for signal and background separately the two score
samples are compared with the two-sample Kolmogorov–Smirnov test
(:func:`scipy.stats.ks_2samp`, asymptotic p-value, **unweighted**: every event or
jet counts once, whatever its weight). A model is flagged when either class has
p below the review's ``flag_p``. Training on a subset that differs from the rest
shows up as a training score distribution more separated than the held-out one.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import stats

from hepnn.nets.apply import forward
from hepnn.nets.split import TEST, TRAIN, VAL, split_codes
from hepnn.plotting import save_figure

if TYPE_CHECKING:
    from hepnn.nets.data import TrainingData
    from hepnn.nets.store import LoadedNetwork

CLASSES = (("signal", 1), ("background", 0))


def _scores(loaded: LoadedNetwork, m: int, data: TrainingData, rows: np.ndarray) -> np.ndarray:
    builder = loaded.builders[m]
    x = builder.transform(data.raw[rows])
    return np.asarray(forward(loaded.models[m], x, builder.micro_batch), dtype=np.float64)


def overtraining_test(
    loaded: LoadedNetwork, data: TrainingData, *, flag_p: float = 0.01
) -> tuple[dict[str, Any], list[dict[str, np.ndarray]]]:
    """KS tests of training vs held-out scores per model and class (module docstring).

    Returns
    -------
    summary, scores
        ``{"test": ..., "flag_p": ..., "models": [{"model", "held_out", "signal": {"ks",
        "p_value", "n_train", "n_held_out"}, "background": {...}, "flagged"}], "flagged"}``
        and, per model, the score arrays ``{"<class>_train", "<class>_held_out"}``.
    """
    split = loaded.split
    models, arrays = [], []
    for m in range(len(loaded.models)):
        codes = split_codes(data.ids, split, m)
        held_code = TEST if np.any(codes[data.usable] == TEST) else VAL
        entry: dict[str, Any] = {
            "model": m, "held_out": "test rows" if held_code == TEST else "validation rows"
        }  # fmt: skip
        scores: dict[str, np.ndarray] = {}
        for cls, label in CLASSES:
            sel = data.usable & (data.labels == label)
            train = _scores(loaded, m, data, np.flatnonzero(sel & (codes == TRAIN)))
            held = _scores(loaded, m, data, np.flatnonzero(sel & (codes == held_code)))
            scores[f"{cls}_train"], scores[f"{cls}_held_out"] = train, held
            if len(train) and len(held):
                res = stats.ks_2samp(train, held, method="asymp")
                ks, p = float(res.statistic), float(res.pvalue)
            else:
                ks, p = float("nan"), float("nan")
            entry[cls] = {"ks": round(ks, 5), "p_value": float(f"{p:.4g}"),
                          "n_train": len(train), "n_held_out": len(held)}  # fmt: skip
        entry["flagged"] = any(entry[c]["p_value"] < flag_p for c, _ in CLASSES)
        models.append(entry)
        arrays.append(scores)
    summary = {
        "test": "two-sample Kolmogorov-Smirnov (scipy.stats.ks_2samp, asymptotic, unweighted), "
        "training vs held-out scores per model and class",
        "flag_p": flag_p,
        "models": models,
        "flagged": any(e["flagged"] for e in models),
    }
    return summary, arrays


def plot_overtraining(
    name: str, summary: dict[str, Any], arrays: list[dict[str, np.ndarray]], stem: Path,
    formats: tuple[str, ...] | list[str], bins: int = 30,
) -> list[Path]:  # fmt: skip
    """Overlaid training (filled) and held-out (points) score densities, one panel per model."""
    import matplotlib.pyplot as plt

    if not formats:
        return []
    n = len(arrays)
    ncols = min(n, 2)
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(6.0 * ncols, 4.2 * nrows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    edges = np.linspace(0.0, 1.0, bins + 1)
    centres = 0.5 * (edges[1:] + edges[:-1])
    for ax, entry, scores in zip(axes.flat[:n], summary["models"], arrays, strict=True):
        for (cls, _), colour in zip(CLASSES, ("C3", "C0"), strict=True):
            tr, te = scores[f"{cls}_train"], scores[f"{cls}_held_out"]
            if len(tr):
                ax.hist(
                    tr,
                    bins=edges,
                    density=True,
                    alpha=0.35,
                    color=colour,
                    label=f"{cls} (training)",
                )
            if len(te):
                h, _ = np.histogram(te, bins=edges)
                width = edges[1] - edges[0]
                dens = h / (len(te) * width)
                err = np.sqrt(h) / (len(te) * width)
                ax.errorbar(centres, dens, yerr=err, fmt="o", ms=3, color=colour,
                            label=f"{cls} ({entry['held_out']}): KS p = {entry[cls]['p_value']:.3g}")  # fmt: skip
        ax.set_xlabel(f"score_{name}")
        ax.set_ylabel("density")
        ax.set_title(f"{name}: model {entry['model']}", loc="left")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, stem, list(formats))
