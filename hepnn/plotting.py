"""Plots of a run's histograms with mplhep: stacks with data, shape overlays, 2D maps.

Rules, so that every workflow gets sensible plots without plotting code:

* with ``lumi`` in the config (:mod:`hepnn.normalisation`), a 1D histogram with a
  ``dataset`` axis is drawn from its normalised copy as *stacked simulation* by
  process (a ``process`` category axis, else the datasets' ``process`` metadata),
  the simulation's statistical uncertainty (√Σw²) hatched, data points with
  Poisson (Garwood) intervals and a data/simulation ratio panel (no ratio
  panel without data);
* otherwise a 1D histogram with a categorical axis named ``process`` or
  ``dataset`` is drawn as overlaid shapes (normalised to unit area, since signal
  and background weights differ by orders of magnitude), with a ratio panel to
  the first one;
* every other categorical axis (e.g. the jet multiplicity ``njet``) gives one
  plot per bin, ``<name>__<axis>_<bin>``, besides the plot of the sum
  (``plots.categories``);
* a 2D histogram is drawn as a colour map (categorical axes summed);
* histograms with an axis named ``mc``, ``member`` or ``stat`` are uncertainty
  bands and are drawn by :mod:`hepnn.bands`; ``metadata={"plot": False}`` skips one.

Every figure carries an experiment label (``plots.experiment``: ``cms`` /
``atlas`` through mplhep, none: ``hepnn``) with ``plots.label``, and on the right
the luminosity in fb⁻¹ and √s when the config gives them (else the title). The
style is applied with :func:`hepnn.plotstyle.plot_style` (no global state).
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hist
import mplhep
import numpy as np
from hist import intervals
from matplotlib.figure import Figure

from hepnn.files import atomic_path
from hepnn.plotstyle import new_figure, plot_style

OVERLAY_AXES = ("process", "dataset")
BAND_AXES = ("mc", "member", "stat")


@dataclass(frozen=True)
class PlotSettings:
    """What the config says about the plots (``plots``, ``lumi``, ``sqrt_s``) and the datasets.

    ``roles`` maps a dataset to ``(is_data, process)``; it is set (from
    ``normalisation.json``) only when the run normalised its simulation, which turns
    on the stacked layout.
    """

    experiment: str | None = None
    label: str = ""
    log: bool = False
    categories: bool = True
    lumi: float | None = None
    sqrt_s: float | None = None
    roles: Mapping[str, tuple[bool, str]] = field(default_factory=dict)

    @classmethod
    def from_resolved(
        cls, resolved: Mapping[str, Any], normalisation: Mapping[str, Any] | None = None
    ) -> PlotSettings:
        """From a resolved config (``config.resolved.yaml``) and ``normalisation.json``."""
        plots = resolved.get("plots") or {}
        roles = {
            n: (bool(d["is_data"]), str(d["process"]))
            for n, d in ((normalisation or {}).get("datasets") or {}).items()
        }
        return cls(
            experiment=plots.get("experiment"), label=plots.get("label", "") or "",
            log=bool(plots.get("log", False)), categories=bool(plots.get("categories", True)),
            lumi=resolved.get("lumi"), sqrt_s=resolved.get("sqrt_s"), roles=roles,
        )  # fmt: skip

    @property
    def rlabel(self) -> str | None:
        """``"<L> fb$^{-1}$ (<√s> TeV)"`` from the config, or None without either."""
        parts = []
        if self.lumi is not None:
            parts.append(f"{self.lumi / 1000:.3g} fb$^{{-1}}$")
        if self.sqrt_s is not None:
            parts.append(f"({self.sqrt_s:g} TeV)")
        return " ".join(parts) or None


def _is_cat(ax: hist.axis.AxesMixin) -> bool:
    return isinstance(ax, hist.axis.StrCategory | hist.axis.IntCategory)


def save_figure(fig: Figure, path_stem: Path, formats: Iterable[str]) -> list[Path]:
    """Save ``fig`` as ``path_stem.<fmt>`` for each format, atomically; close it."""
    written = []
    with plot_style():
        for fmt in formats:
            path = path_stem.with_suffix(f".{fmt}")
            with atomic_path(path) as tmp:
                fig.savefig(tmp, format=fmt, bbox_inches="tight")
            written.append(path)
    if getattr(fig.canvas, "manager", None) is not None:  # made by pyplot: release it
        import matplotlib.pyplot as plt

        plt.close(fig)
    return written


def experiment_label(ax: Any, settings: PlotSettings, *, data: bool, title: str = "") -> None:
    """The experiment label over ``ax``: mplhep's CMS/ATLAS label, or ``hepnn``.

    Right-hand text: luminosity (fb⁻¹) and √s when configured, else ``title``. Without
    ``data`` mplhep puts "Simulation" before ``settings.label`` (unless it says so already).
    """
    rlabel = settings.rlabel or title
    data = data or "simulation" in settings.label.lower()
    offset = ax.yaxis.get_offset_text()  # "1e7": left of the frame, clear of the label
    offset.set_horizontalalignment("right")
    offset.set_x(-0.02)
    # mplhep would shift the label right of the offset text, which it finds by drawing the
    # whole figure once more (~0.1 s per plot: 226 plots redrawn in 120 instead of 138 s,
    # measured here); the offset text is moved out of the way above instead
    kwargs = {"text": settings.label, "data": data, "rlabel": rlabel, "loc": 0, "ax": ax,
              "scilocator_adjust": False}  # fmt: skip
    if settings.experiment == "cms":
        mplhep.cms.label(**kwargs)
    elif settings.experiment == "atlas":
        mplhep.atlas.label(**kwargs)
    else:
        mplhep.label.exp_label(exp="hepnn", **kwargs)


def _meta(h: hist.Hist) -> dict:
    meta = vars(h).get("metadata")
    return meta if isinstance(meta, dict) else {}


def _overlay_axis(h: hist.Hist) -> str | None:
    names = {ax.name for ax in h.axes if _is_cat(ax)}
    wanted = _meta(h).get("overlay")
    if wanted in names:
        return wanted
    return next((n for n in OVERLAY_AXES if n in names), None)


def _sum_other_categories(h: hist.Hist, keep: Iterable[str | None]) -> hist.Hist:
    keep = set(keep) if not isinstance(keep, str | type(None)) else {keep}
    for ax in list(h.axes):
        if _is_cat(ax) and ax.name not in keep:
            h = h[{ax.name: sum}]
    return h


def _ratio_figure(ratio: bool, size: tuple[float, float] = (7, 6.5)) -> tuple[Figure, Any, Any]:
    fig = new_figure(figsize=size)
    if not ratio:
        return fig, fig.subplots(), None
    ax, rax = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": (3, 1), "hspace": 0.05})
    return fig, ax, rax


def _log_y(ax: Any, values: np.ndarray) -> None:
    positive = values[values > 0]
    ax.set_yscale("log")
    if positive.size:
        ax.set_ylim(positive.min() / 2, positive.max() * 100)


def plot_overlay(h: hist.Hist, title: str, settings: PlotSettings | None = None) -> Figure:
    """Overlay the categories of ``h`` as unit-area shapes with a ratio panel."""
    settings = settings or PlotSettings()
    cat = _overlay_axis(h)
    h = _sum_other_categories(h, cat)
    fig, ax, rax = _ratio_figure(True)
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
    shapes = []
    for _, comp in pairs:
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
    ax.legend(title=title if settings.rlabel else None)
    ref = shapes[0][0]
    for (vals, errs), col in zip(shapes[1:], colors[1:], strict=True):
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(ref > 0, vals / ref, np.nan)
            rerr = np.where(ref > 0, errs / ref, np.nan)
        mplhep.histplot(ratio, edges, yerr=rerr, ax=rax, color=col)
    rax.axhline(1.0, color="grey", lw=1, ls="--")
    rax.set_ylabel(f"/ {labels[0]}" if len(labels) > 1 else "")
    rax.set_xlabel(num_axis.label or num_axis.name)
    if len(labels) > 1:
        with np.errstate(divide="ignore", invalid="ignore"):
            ratios = np.concatenate([np.where(ref > 0, s[0] / ref, np.nan) for s in shapes[1:]])
        top = np.nanpercentile(ratios, 90) if np.isfinite(ratios).any() else 2.0
        rax.set_ylim(0, float(np.clip(1.3 * top, 2.0, 10.0)))
    if settings.log:
        _log_y(ax, np.concatenate([s[0] for s in shapes]))
    else:
        ax.set_ylim(bottom=0)
        ax.margins(y=0.15)
    experiment_label(ax, settings, data=False, title=title)
    fig.align_ylabels([ax, rax])
    return fig


def stack_components(
    h: hist.Hist, roles: Mapping[str, tuple[bool, str]]
) -> tuple[dict[str, hist.Hist], hist.Hist | None]:
    """Split a (normalised) 1D histogram into simulation by process and summed data.

    The processes are the bins of a ``process`` axis when ``h`` has one, else the
    ``process`` of each simulated dataset (``roles``); data is the sum of the
    datasets marked ``is_data``. Other categorical axes are summed.
    """
    names = [ax.name for ax in h.axes]
    datasets = list(h.axes["dataset"]) if "dataset" in names else []
    if not datasets:  # one dataset, no axis: it is whatever that dataset is
        only = next(iter(roles.items()))
        h = _sum_other_categories(h, "process")
        if only[1][0]:
            return {}, _sum_other_categories(h, None)
        datasets_h = {only[1][1]: h}
        return _by_process(datasets_h), None
    data = [d for d in datasets if roles.get(d, (False, d))[0]]
    sim = [d for d in datasets if d not in data]
    data_h = None
    if data:
        data_h = _sum_other_categories(_pick(h, data), None)
    if "process" in names:
        if not sim:
            return {}, data_h
        return _by_process({"": _sum_other_categories(_pick(h, sim), "process")}), data_h
    groups: dict[str, list[str]] = {}
    for d in sim:
        groups.setdefault(roles.get(d, (False, d))[1], []).append(d)
    comps = {p: _sum_other_categories(_pick(h, ds), None) for p, ds in groups.items()}
    return comps, data_h


def _pick(h: hist.Hist, datasets: list[str]) -> hist.Hist:
    """The sum of ``h`` over the given bins of its ``dataset`` axis (axis removed)."""
    parts = [h[{"dataset": hist.loc(d)}] for d in datasets]
    return functools.reduce(operator.add, parts[1:], parts[0])


def _by_process(parts: Mapping[str, hist.Hist]) -> dict[str, hist.Hist]:
    """``{process: 1D}`` from histograms that still have a ``process`` axis (or are 1D)."""
    out: dict[str, hist.Hist] = {}
    for name, h in parts.items():
        if "process" not in [ax.name for ax in h.axes]:
            out[name or "simulation"] = _sum_other_categories(h, None)
            continue
        for p in h.axes["process"]:
            out[str(p)] = _sum_other_categories(h[{"process": hist.loc(p)}], None)
    return out


def stack_figure(h: hist.Hist, title: str, settings: PlotSettings) -> Figure:
    """Stacked simulation with its stat. band, data points and a data/simulation ratio."""
    comps, data = stack_components(h, settings.roles)
    # one colour per process in the histogram's own order, the same in every plot
    colours = {p: f"C{i}" for i, p in enumerate(comps)}
    comps = {p: c for p, c in comps.items() if c.values().sum() != 0} or comps
    # smallest contribution at the bottom of the stack, largest on top
    order = sorted(comps, key=lambda p: comps[p].values().sum())
    num_axis = next(a for a in h.axes if not _is_cat(a))
    edges = num_axis.edges
    fig, ax, rax = _ratio_figure(data is not None, (7, 7) if data is not None else (7, 6))
    total = np.zeros(len(edges) - 1)
    total_var = np.zeros(len(edges) - 1)
    for p in order:
        total += comps[p].values()
        var = comps[p].variances()
        total_var += comps[p].values() if var is None else var
    if order:
        mplhep.histplot(
            [comps[p].values() for p in order], edges, stack=True, histtype="fill",
            label=order, color=[colours[p] for p in order], ax=ax,
        )  # fmt: skip
        err = np.sqrt(total_var)
        ax.stairs(
            total + err, edges, baseline=total - err, fill=True, facecolor="none",
            edgecolor="grey", hatch="////", lw=0, label="Stat. unc.",
        )  # fmt: skip
    drawn = [total]
    if data is not None:
        vals = data.values()
        lo, hi = intervals.poisson_interval(vals, data.variances())
        yerr = np.nan_to_num(np.array([vals - lo, hi - vals]))
        mplhep.histplot(
            vals, edges, yerr=yerr, histtype="errorbar", color="black", label="Data", ax=ax
        )
        drawn.append(hi)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(total > 0, vals / total, np.nan)
            rerr = np.where(total > 0, yerr / total, np.nan)
            band = np.where(total > 0, np.sqrt(total_var) / total, np.nan)
        rax.stairs(
            1 + band, edges, baseline=1 - band, fill=True, facecolor="none", edgecolor="grey",
            hatch="////", lw=0,
        )  # fmt: skip
        mplhep.histplot(ratio, edges, yerr=rerr, histtype="errorbar", color="black", ax=rax)
        rax.axhline(1.0, color="grey", lw=1, ls="--")
        rax.set_ylim(0, 2)
        rax.set_ylabel("Data / Sim.")
        rax.set_xlabel(num_axis.label or num_axis.name)
        fig.align_ylabels([ax, rax])
    else:
        ax.set_xlabel(num_axis.label or num_axis.name)
    ax.set_ylabel("Events / bin")
    handles, labels = ax.get_legend_handles_labels()
    ax.legend(handles[::-1], labels[::-1], title=title if settings.rlabel else None, ncol=2)
    if settings.log:
        _log_y(ax, np.concatenate(drawn))
    else:
        ax.set_ylim(bottom=0)
        ax.margins(y=0.3)
    experiment_label(ax, settings, data=data is not None, title=title)
    return fig


def plot_2d(h: hist.Hist, title: str, settings: PlotSettings | None = None) -> Figure:
    """Colour map of a 2D histogram (categorical axes summed)."""
    h = _sum_other_categories(h, None)
    fig = new_figure(figsize=(7, 6))
    ax = fig.subplots()
    art = mplhep.hist2dplot(h, ax=ax, cbar=False)  # mplhep's colour bar goes through pyplot
    fig.colorbar(art.pcolormesh, ax=ax)
    experiment_label(ax, settings or PlotSettings(), data=False, title=title)
    return fig


def plot_roc(h: hist.Hist, title: str) -> Figure:
    """ROC curve from an efficiency-vs-threshold histogram (``process`` × threshold)."""
    eff_s = h[{"process": "signal"}].values()
    eff_b = h[{"process": "background"}].values()
    fig = new_figure(figsize=(7, 6))
    ax = fig.subplots()
    ax.plot(eff_s, eff_b, label=h.axes["threshold"].label.replace(" score threshold", ""))
    ax.plot([0, 1], [0, 1], color="grey", ls="--", lw=1, label="random")
    ax.set_xlabel("signal efficiency")
    ax.set_ylabel("background efficiency")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend()
    ax.set_title(title, loc="left")
    return fig


def plot_curve(h: hist.Hist, title: str) -> Figure:
    """A value per bin (e.g. AMS vs threshold) as a line."""
    axis = h.axes[0]
    fig = new_figure(figsize=(7, 6))
    ax = fig.subplots()
    ax.plot(axis.edges[:-1], h.values())
    ax.set_xlabel(axis.label or axis.name)
    ax.set_ylabel((h.label or "").split(":")[-1].split(" of ")[0].strip() or "value")
    ax.set_title(title, loc="left")
    return fig


def plottable(h: hist.Hist) -> bool:
    if not isinstance(h, hist.Hist) or _meta(h).get("plot") is False:
        return False
    if any(ax.name in BAND_AXES for ax in h.axes):
        return False
    n_num = sum(not _is_cat(ax) for ax in h.axes)
    return n_num in (1, 2) and h.sum(flow=False) is not None


def category_views(h: hist.Hist, keep: Iterable[str]) -> Iterator[tuple[str, str, hist.Hist]]:
    """``(suffix, caption, h at one bin)`` per bin of each categorical axis not in ``keep``.

    Axes with a single bin give nothing (the sum is that bin).
    """
    for ax in h.axes:
        if not _is_cat(ax) or ax.name in keep or len(ax) < 2:
            continue
        for value in ax:
            clean = str(value).replace("/", "_").replace(" ", "_")
            caption = f"{ax.label or ax.name}: {value}"
            yield f"{ax.name}_{clean}", caption, h[{ax.name: hist.loc(value)}]


def _figure(name: str, h: hist.Hist, title: str, settings: PlotSettings, stacked: bool) -> Figure:
    n_num = sum(not _is_cat(ax) for ax in h.axes)
    kind = _meta(h).get("plot")
    if kind == "roc":
        return plot_roc(h, title)
    if kind == "curve":
        return plot_curve(h, title)
    if n_num == 2:
        return plot_2d(h, title, settings)
    return stack_figure(h, title, settings) if stacked else plot_overlay(h, title, settings)


def plot_hists(
    hists: dict[str, hist.Hist],
    plot_dir: Path,
    formats: Iterable[str] = ("png", "pdf"),
    *,
    settings: PlotSettings | None = None,
    normalised: Mapping[str, hist.Hist] | None = None,
) -> list[Path]:
    """Draw every plottable histogram into ``plot_dir``; return the files written.

    Parameters
    ----------
    hists
        The run's histograms (``hists.pkl``).
    plot_dir
        Output folder (created).
    formats
        File formats.
    settings
        Style, label and layout options (:class:`PlotSettings`); default: neutral.
    normalised
        The normalised histograms (``hists_normalised.pkl``): 1D ones found here
        are drawn stacked, with data, when ``settings.roles`` is set.
    """
    settings = settings or PlotSettings()
    normalised = normalised or {}
    formats = list(formats)
    plot_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    with plot_style(settings.experiment):
        for name, raw in hists.items():
            if not plottable(raw):
                continue
            n_num = sum(not _is_cat(ax) for ax in raw.axes)
            # 2D maps stay raw sums: a map of data plus scaled simulation means nothing
            stacked = (
                bool(settings.roles) and name in normalised and n_num == 1
                and _meta(raw).get("plot") is None
            )  # fmt: skip
            h = normalised[name] if stacked else raw
            title = (h.label or name) if isinstance(h.label, str) and h.label else name
            stem = plot_dir / name.replace("/", "__")
            fig = _figure(name, h, title, settings, stacked)
            written += save_figure(fig, stem, formats)
            if not settings.categories or n_num != 1 or _meta(h).get("plot") is not None:
                continue
            keep = {"dataset", "process"} if stacked else {_overlay_axis(h)}
            for suffix, caption, sub in category_views(h, keep):
                if not np.any(sub.values()):  # e.g. m_jj in the 0-jet bin
                    continue
                fig = _figure(name, sub, f"{title} ({caption})", settings, stacked)
                written += save_figure(fig, plot_dir / f"{stem.name}__{suffix}", formats)
    return written
