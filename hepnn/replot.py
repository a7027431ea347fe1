"""``hepnn plot OUTDIR``: redraw every plot of a run from the files in its output folder.

No reprocessing and no network: each plot is drawn from what the run wrote.

==============================  ==================================================
plot                            drawn from
==============================  ==================================================
``plots/<hist>[__<cat>]``       ``hists.pkl`` (and ``hists_normalised.pkl`` +
                                ``normalisation.json`` when the run had ``lumi``),
                                with the style/label of ``config.resolved.yaml``
``plots/<base>_bands_<proc>``   the replica histograms in ``hists.pkl``
``plots/roc_<dataset>``         ``roc_networks`` in ``hists.pkl`` (ε_B at 200 ε_S
                                points) and the AUCs of ``metrics.json``
``plots/roc_cross_validation``  ``cross_validation/scores.parquet``
``plots/training_<net>``        ``models/<net>/history.csv``
``ranking/<net>``               ``ranking/<net>.csv`` (+ ``.json`` for the title)
``ranking/<net>_history``       ``ranking/<net>_history.csv``
``ranking/<net>_taylor_map``    ``ranking/<net>_taylor_map.npz`` (jet networks)
==============================  ==================================================
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from hepnn.errors import InputError
from hepnn.plotstyle import new_figure, plot_style

__all__ = ["ranking_figure", "redraw"]

#: Bar colours by Taylor order (as in :mod:`hepnn.taylor.tables`).
ORDER_COLOURS = {1: "C0", 2: "C1", 3: "C2"}
#: Columns that may hold an uncertainty of a ranking value (drawn as error bars).
ERROR_COLUMNS = ("err", "error", "std", "value_err", "value_std", "sd")


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _float(row: dict[str, str], key: str) -> float:
    try:
        return float(row[key])
    except (KeyError, TypeError, ValueError):
        msg = f"column {key!r}: expected a number (got {row.get(key)!r})"
        raise InputError(msg) from None


def ranking_figure(rows: Sequence[dict[str, str]], title: str, top: int = 20) -> Any:
    """Horizontal bars of ``<|t_a|>`` for the ``top`` first rows of a ranking CSV."""
    from matplotlib.patches import Patch

    rows = list(rows)[:top]
    fig = new_figure(figsize=(10, max(3.0, 0.45 * len(rows) + 1.5)))
    ax = fig.subplots()
    ypos = np.arange(len(rows))[::-1]
    values = [_float(r, "value") for r in rows]
    orders = [int(_float(r, "order")) for r in rows]
    err_col = next((c for c in ERROR_COLUMNS if rows and c in rows[0]), None)
    xerr = [_float(r, err_col) for r in rows] if err_col else None
    colours = [ORDER_COLOURS.get(o, "C3") for o in orders]
    ax.barh(ypos, values, xerr=xerr, color=colours, height=0.7)
    ax.set_yticks(ypos, [r["term"] for r in rows])
    ax.set_xlabel(r"$\langle |t_\alpha| \rangle$")
    ax.legend(
        handles=[
            Patch(color=ORDER_COLOURS.get(o, "C3"), label=f"order {o}") for o in sorted(set(orders))
        ],
        loc="lower right",
    )
    ax.set_title(title)
    return fig


def _history_figure(rows: Sequence[dict[str, str]], title: str, top: int = 10) -> Any:
    epochs = sorted({int(_float(r, "epoch")) for r in rows})
    last = [r for r in rows if int(_float(r, "epoch")) == epochs[-1]]
    last.sort(key=lambda r: -_float(r, "value"))
    fig = new_figure(figsize=(10, 7))
    ax = fig.subplots()
    styles = {1: "-", 2: "--", 3: ":"}
    for rec in last[:top]:
        series = {
            int(_float(r, "epoch")): _float(r, "value") for r in rows if r["term"] == rec["term"]
        }
        ys = [series.get(e, np.nan) for e in epochs]
        ax.plot(
            epochs,
            ys,
            styles.get(int(_float(rec, "order")), "-"),
            marker="o",
            ms=3,
            label=rec["term"],
        )
    ax.set_xscale("log" if epochs[0] > 0 else "symlog")
    ax.set_xlabel("epoch")
    ax.set_ylabel(r"$\langle |t_\alpha| \rangle$")
    ax.legend(ncol=2, title="order 1 solid, 2 dashed, 3 dotted", fontsize="small")
    ax.set_title(title)
    return fig


def _taylor_map(path: Path, formats: list[str]) -> list[Path]:
    """A jet network's first-order Taylor map, from the array its run stored."""
    from hepnn.plotting import save_figure
    from hepnn.taylor import image_map_figure, sequence_map_figure

    try:
        with np.load(path, allow_pickle=False) as npz:
            gmap, kind = npz["map"], str(npz["kind"])
            labels, title = [str(x) for x in npz["labels"]], str(npz["title"])
    except (OSError, KeyError, ValueError) as err:
        msg = f"{path}: not a Taylor map written by hepnn ({type(err).__name__}: {err})"
        raise InputError(msg) from None
    draw = image_map_figure if kind == "image" else sequence_map_figure
    return save_figure(draw(gmap, labels, title), path.with_suffix(""), formats)


def _rankings(outdir: Path, formats: list[str], top: int) -> list[Path]:
    from hepnn.plotting import save_figure

    written: list[Path] = []
    for path in sorted((outdir / "ranking").glob("*.csv")):
        if path.stem.endswith("_helpers"):
            continue  # helper inputs (missing flags): a table, never drawn by a run
        rows = _read_csv(path)
        if not rows:
            continue
        stem = path.with_suffix("")
        if path.stem.endswith("_history"):
            fig = _history_figure(rows, f"{path.stem[: -len('_history')]}: ranking per epoch")
        else:
            meta_path = path.with_suffix(".json")
            meta = json.loads(meta_path.read_text())["metadata"] if meta_path.is_file() else {}
            what = f" of the {meta['output']}" if "output" in meta else ""
            events = f", {meta['n_events']} events" if "n_events" in meta else ""
            fig = ranking_figure(rows, f"{path.stem}: Taylor ranking{what}{events}", top)
        written += save_figure(fig, stem, formats)
    for path in sorted((outdir / "ranking").glob("*_taylor_map.npz")):
        written += _taylor_map(path, formats)
    return written


def _rocs(outdir: Path, hists: dict[str, Any], formats: list[str]) -> list[Path]:
    from hepnn.nets.report import plot_rocs

    metrics_path = outdir / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    written: list[Path] = []
    roc = hists.get("roc_networks")
    if roc is not None:
        centres = roc.axes["eff_s"].centers
        for dataset in roc.axes["dataset"]:
            per, aucs = {}, {}
            for name in roc.axes["classifier"]:
                eff_b = roc[{"classifier": name, "dataset": dataset}].values()
                if not np.any(eff_b):
                    continue
                per[name] = (centres, eff_b)
                block = {**metrics.get("networks", {}), **metrics.get("baselines", {})}.get(
                    name, {}
                )
                aucs[name] = block.get("datasets", {}).get(dataset, {}).get("auc", float("nan"))
            if per:
                stem = outdir / "plots" / f"roc_{dataset}"
                written += plot_rocs(per, aucs, stem, formats, f"{dataset}: held-out rows")
    scores = outdir / "cross_validation" / "scores.parquet"
    if scores.is_file():
        written += _cv_roc(scores, metrics.get("cross_validation", {}), outdir, formats)
    return written


def _cv_roc(scores: Path, block: dict[str, Any], outdir: Path, formats: list[str]) -> list[Path]:
    import pyarrow.parquet as pq

    from hepnn.metrics import auc
    from hepnn.nets.report import plot_rocs, roc_points

    table = pq.read_table(scores).to_pydict()
    cols = {k: np.asarray(v) for k, v in table.items()}
    names = [k.removeprefix("score_") for k in cols if k.startswith("score_")]
    keep = np.logical_and.reduce([np.isfinite(cols[f"score_{n}"]) for n in names])
    y = cols["label"][keep]
    if len(np.unique(y)) != 2:
        return []
    curves = {n: roc_points(cols[f"score_{n}"][keep], y) for n in names}
    aucs = {n: auc(cols[f"score_{n}"][keep], y) for n in names}
    title = f"{block.get('folds', '?')}-fold cross-validation: {int(keep.sum())} out-of-fold rows"
    return plot_rocs(curves, aucs, outdir / "plots" / "roc_cross_validation", formats, title)


def _training(outdir: Path, formats: list[str]) -> list[Path]:
    from hepnn.nets.lifecycle import plot_history

    written: list[Path] = []
    for path in sorted((outdir / "models").glob("*/history.csv")):
        name = path.parent.name
        if re.search(r"_member\d+$", name):  # ensemble members: the nominal only, as in a run
            continue
        rows = [{k: float(v) for k, v in r.items() if v not in ("", None)} for r in _read_csv(path)]
        written += plot_history(rows, outdir / "plots" / f"training_{name}", tuple(formats))
    return written


def redraw(outdir: Path, formats: Sequence[str] = ("png", "pdf")) -> list[Path]:
    """Redraw every plot of the run in ``outdir`` (see the module docstring); files written.

    Raises
    ------
    InputError
        ``outdir`` has no ``hists.pkl``.
    """
    from hepnn.bands import band_outputs
    from hepnn.outputs import load_hists
    from hepnn.plotting import PlotSettings, plot_hists

    outdir = Path(outdir)
    path = outdir / "hists.pkl"
    if not path.is_file():
        msg = f"{path}: not found (is {outdir} the output folder of a hepnn run?)"
        raise InputError(msg)
    fmts = list(formats)
    resolved_path = outdir / "config.resolved.yaml"
    resolved = yaml.safe_load(resolved_path.read_text()) if resolved_path.is_file() else {}
    norm_path = outdir / "normalisation.json"
    normalisation = json.loads(norm_path.read_text()) if norm_path.is_file() else None
    normalised = load_hists(outdir / "hists_normalised.pkl") if normalisation else {}
    settings = PlotSettings.from_resolved(resolved or {}, normalisation)
    hists = load_hists(path)
    top = int(((resolved or {}).get("taylor") or {}).get("plot_top", 20))
    with plot_style(settings.experiment):
        written = plot_hists(
            hists, outdir / "plots", fmts, settings=settings, normalised=normalised
        )
        # bands are drawn from the replica histograms (summaries recomputed, not saved here)
        written += band_outputs(hists, outdir / "plots", plots=True, formats=fmts)[1]
        written += _rocs(outdir, hists, fmts)
        written += _training(outdir, fmts)
        written += _rankings(outdir, fmts, top)
    return written
