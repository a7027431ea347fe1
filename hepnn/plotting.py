"""Plots of a run's histograms with mplhep: overlays with ratio panels, 2D maps.

Rules, so that every workflow gets sensible plots without plotting code:

* a 1D histogram with a categorical axis named ``process`` or ``dataset`` is drawn
  as overlaid shapes (normalised to unit area, since signal and background
  weights differ by orders of magnitude), with a ratio panel to the first one;
  other categorical axes are summed over;
* a 2D histogram is drawn as a colour map (categorical axes summed);
* histograms with an axis named ``mc``, ``member`` or ``stat`` are uncertainty
  bands and are drawn by :mod:`hepnn.bands`; ``metadata={"plot": False}`` skips one.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import hist
import matplotlib as mpl

mpl.use("Agg")
import matplotlib.pyplot as plt
import mplhep
import numpy as np

from hepnn.files import atomic_path

OVERLAY_AXES = ("process", "dataset")
BAND_AXES = ("mc", "member", "stat")


def _is_cat(ax: hist.axis.AxesMixin) -> bool:
    return isinstance(ax, hist.axis.StrCategory | hist.axis.IntCategory)


def save_figure(fig: plt.Figure, path_stem: Path, formats: Iterable[str]) -> list[Path]:
    """Save ``fig`` as ``path_stem.<fmt>`` for each format, atomically; close it."""
    written = []
    for fmt in formats:
        path = path_stem.with_suffix(f".{fmt}")
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=fmt, bbox_inches="tight")
        written.append(path)
    plt.close(fig)
    return written


def _meta(h: hist.Hist) -> dict:
    meta = vars(h).get("metadata")
    return meta if isinstance(meta, dict) else {}


def _overlay_axis(h: hist.Hist) -> str | None:
    names = {ax.name for ax in h.axes if _is_cat(ax)}
    wanted = _meta(h).get("overlay")
    if wanted in names:
        return wanted
    return next((n for n in OVERLAY_AXES if n in names), None)


def _sum_other_categories(h: hist.Hist, keep: str | None) -> hist.Hist:
    for ax in list(h.axes):
        if _is_cat(ax) and ax.name != keep:
            h = h[{ax.name: sum}]
    return h


def plot_overlay(h: hist.Hist, title: str) -> plt.Figure:
    """Overlay the categories of ``h`` as unit-area shapes with a ratio panel."""
    cat = _overlay_axis(h)
    h = _sum_other_categories(h, cat)
    fig, (ax, rax) = plt.subplots(
        2, 1, figsize=(7, 6.5), gridspec_kw={"height_ratios": (3, 1), "hspace": 0.05}, sharex=True
    )
    num_axis = next(a for a in h.axes if not _is_cat(a))
    if cat:
        # empty categories (e.g. no unlabelled events) are not drawn
        pairs = [(str(v), h[{cat: hist.loc(v)}]) for v in h.axes[cat]]
        pairs = [(lab, c) for lab, c in pairs if c.values().sum() != 0] or pairs[:1]
    else:
        pairs = [(h.name or "events", h)]
    # the reference of the ratio panel: background when there is one, else the first
    pairs.sort(key=lambda p: p[0] != "background")
    labels = [p[0] for p in pairs]
    components = [p[1] for p in pairs]
    shapes = []
    for comp in components:
        vals = comp.values()
        variances = comp.variances() if comp.variances() is not None else vals
        total = vals.sum()
        norm = 1.0 / total if total > 0 else 0.0
        shapes.append((vals * norm, np.sqrt(np.maximum(variances, 0)) * norm))
    edges = num_axis.edges
    colors = [f"C{i}" for i in range(len(shapes))]
    for (vals, errs), lab, col in zip(shapes, labels, colors, strict=True):
        mplhep.histplot(vals, edges, yerr=errs, label=lab, ax=ax, color=col)
    ax.set_ylabel("fraction (unit area)")
    ax.set_title(title, fontsize=14, loc="left")
    ax.legend(fontsize=14)
    ref = shapes[0][0]
    for (vals, errs), col in zip(shapes[1:], colors[1:], strict=True):
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(ref > 0, vals / ref, np.nan)
            rerr = np.where(ref > 0, errs / ref, np.nan)
        mplhep.histplot(ratio, edges, yerr=rerr, ax=rax, color=col)
    rax.axhline(1.0, color="grey", lw=1, ls="--")
    rax.set_ylabel(f"/ {labels[0]}" if len(labels) > 1 else "", fontsize=14)
    rax.set_xlabel(num_axis.label or num_axis.name)
    if len(labels) > 1:
        with np.errstate(divide="ignore", invalid="ignore"):
            ratios = np.concatenate([np.where(ref > 0, s[0] / ref, np.nan) for s in shapes[1:]])
        top = np.nanpercentile(ratios, 90) if np.isfinite(ratios).any() else 2.0
        rax.set_ylim(0, float(np.clip(1.3 * top, 2.0, 10.0)))
    ax.set_ylim(bottom=0)
    ax.margins(y=0.15)
    fig.align_ylabels([ax, rax])
    return fig


def plot_2d(h: hist.Hist, title: str) -> plt.Figure:
    """Colour map of a 2D histogram (categorical axes summed)."""
    h = _sum_other_categories(h, None)
    fig, ax = plt.subplots(figsize=(7, 6))
    mplhep.hist2dplot(h, ax=ax, cbarextend=False)
    ax.set_title(title, fontsize=11, loc="left")
    return fig


def plot_roc(h: hist.Hist, title: str) -> plt.Figure:
    """ROC curve from an efficiency-vs-threshold histogram (``process`` × threshold)."""
    eff_s = h[{"process": "signal"}].values()
    eff_b = h[{"process": "background"}].values()
    fig, ax = plt.subplots(figsize=(7, 6))
    ax.plot(eff_s, eff_b, label=h.axes["threshold"].label.replace(" score threshold", ""))
    ax.plot([0, 1], [0, 1], color="grey", ls="--", lw=1, label="random")
    ax.set_xlabel("signal efficiency")
    ax.set_ylabel("background efficiency")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=14)
    ax.set_title(title, fontsize=14, loc="left")
    return fig


def plot_curve(h: hist.Hist, title: str) -> plt.Figure:
    """A value per bin (e.g. AMS vs threshold) as a line."""
    axis = h.axes[0]
    fig, ax = plt.subplots(figsize=(7, 6))
    ax.plot(axis.edges[:-1], h.values())
    ax.set_xlabel(axis.label or axis.name)
    ax.set_ylabel((h.label or "").split(":")[-1].split(" of ")[0].strip() or "value")
    ax.set_title(title, fontsize=14, loc="left")
    return fig


def plottable(h: hist.Hist) -> bool:
    if _meta(h).get("plot") is False:
        return False
    if any(ax.name in BAND_AXES for ax in h.axes):
        return False
    n_num = sum(not _is_cat(ax) for ax in h.axes)
    return n_num in (1, 2) and h.sum(flow=False) is not None


def plot_hists(
    hists: dict[str, hist.Hist], plot_dir: Path, formats: Iterable[str] = ("png", "pdf")
) -> list[Path]:
    """Draw every plottable histogram into ``plot_dir``; return the files written."""
    plot_dir.mkdir(parents=True, exist_ok=True)
    mplhep.style.use("ROOT")
    written: list[Path] = []
    for name, h in hists.items():
        if not plottable(h):
            continue
        n_num = sum(not _is_cat(ax) for ax in h.axes)
        title = (h.label or name) if isinstance(h.label, str) and h.label else name
        kind = _meta(h).get("plot")
        if kind == "roc":
            fig = plot_roc(h, title)
        elif kind == "curve":
            fig = plot_curve(h, title)
        else:
            fig = plot_overlay(h, title) if n_num == 1 else plot_2d(h, title)
        stem = plot_dir / name.replace("/", "__")
        written += save_figure(fig, stem, formats)
    plt.rcdefaults()
    os.environ.setdefault("MPLBACKEND", "Agg")
    return written
