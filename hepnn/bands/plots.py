"""Plots of MC-dropout / ensemble bands (mplhep style, no pyplot state).

Every band figure says what its band is: the spread over equally trainable networks,
a measure of training reproducibility (epistemic) — not a measurement uncertainty of
the deterministic nominal network (:data:`BAND_NOTE`).

>>> plot_band(h_nom, {"MC dropout": summary_mc, "Ensemble": summary_ens}, "plots/score_band")
>>> plot_std_vs_score(h2d, "plots/std_vs_score")

Each writes ``<path>.<fmt>`` for every format (default ``png`` and ``pdf``),
atomically through :func:`hepnn.files.atomic_path`. Figures are built on
``matplotlib.figure.Figure`` directly (Agg canvas), so nothing touches the global
pyplot state and a worker never needs a display. Kept apart from
:mod:`hepnn.bands.hists` (and not imported by :mod:`hepnn.bands`) so that filling
histograms does not import matplotlib.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import hist
import matplotlib as mpl
import mplhep
import numpy as np
from matplotlib.figure import Figure

from hepnn.files import atomic_path
from hepnn.plotstyle import plot_style

__all__ = [
    "BAND_NOTE",
    "FORMATS",
    "band_figure",
    "plot_band",
    "plot_std_vs_score",
    "save",
    "std_vs_score_figure",
]

#: Formats written when the caller names none.
FORMATS: tuple[str, ...] = ("png", "pdf")
#: The caption of every band figure.
BAND_NOTE = (
    "Band: spread over retrained / thinned networks = training reproducibility (epistemic),\n"
    "not a measurement uncertainty of the deterministic nominal network"
)
#: Fill colours of the bands, in the order of the ``summaries`` mapping.
_COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:red")


def _row(summary: hist.Hist, stat: str) -> np.ndarray:
    """Bin contents (no flow) of one ``stat`` row of a 1D summary."""
    return np.asarray(summary[stat, :].values())


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``num / den`` with NaN (a gap in the drawing) where ``den == 0``."""
    out = np.full(num.shape, np.nan)
    np.divide(num, den, out=out, where=den != 0)
    return out


def band_figure(
    nominal: hist.Hist,
    summaries: Mapping[str, hist.Hist],
    *,
    ylabel: str = "Events",
    ratio_ylim: tuple[float, float] = (0.0, 2.0),
) -> Figure:
    """Distribution with q16–q84 band envelopes and a band/nominal ratio panel.

    Parameters
    ----------
    nominal
        1D histogram of the nominal network (its variances give the stat. error).
    summaries
        Label -> 1D summary from :func:`hepnn.bands.hists.summarise`, same binning.
    ylabel
        Label of the upper y axis.
    ratio_ylim
        y range of the ratio panel (bins with few nominal events give wild ratios).

    Notes
    -----
    The shaded envelope is the per-bin replica spread, drawn directly between the
    ``q16`` and ``q84`` rows (descriptive: the replica mean can sit away from the
    dropout-off nominal, so ``q16`` may lie above it); the replica mean is dashed.
    The fit templates (``up`` / ``down`` rows, when present: nominal ± the leading
    eigen-variation, same total as the nominal) are dotted lines. The figure is
    captioned with :data:`BAND_NOTE`.
    """
    edges = nominal.axes[0].edges
    nom = np.asarray(nominal.values())
    for label, s in summaries.items():
        if not np.array_equal(s.axes[1].edges, edges):
            msg = f"summary {label!r} has a different binning from the nominal histogram"
            raise ValueError(msg)

    fig = Figure(figsize=(7, 7), layout="constrained")
    ax, rax = fig.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    for i, (label, s) in enumerate(summaries.items()):
        colour = _COLOURS[i % len(_COLOURS)]
        q16, q84, mean = _row(s, "q16"), _row(s, "q84"), _row(s, "mean")
        ax.stairs(
            q84, edges, baseline=q16, fill=True, alpha=0.35, color=colour,
            label=f"{label}: replica spread q16–q84",
        )  # fmt: skip
        ax.stairs(mean, edges, color=colour, linestyle="--", label=f"{label}: replica mean")
        rax.stairs(
            _ratio(q84, nom), edges, baseline=_ratio(q16, nom), fill=True, alpha=0.35, color=colour
        )
        rax.stairs(_ratio(mean, nom), edges, color=colour, linestyle="--")
        if "up" in list(s.axes[0]):
            up, down = _row(s, "up"), _row(s, "down")
            ax.stairs(up, edges, color=colour, linestyle=":", lw=1.5,
                      label=f"{label}: shape template Up/Down")  # fmt: skip
            ax.stairs(down, edges, color=colour, linestyle=":", lw=1.5)
            rax.stairs(_ratio(up, nom), edges, color=colour, linestyle=":", lw=1.5)
            rax.stairs(_ratio(down, nom), edges, color=colour, linestyle=":", lw=1.5)

    mplhep.histplot(nominal, ax=ax, color="black", yerr=True, histtype="step", label="Nominal")
    # Nominal statistical uncertainty in the ratio panel, hatched around 1.
    # Unweighted (Double-storage) histograms carry no variances: Poisson, var = count.
    var = nominal.variances()
    rel = _ratio(np.sqrt(np.asarray(nom if var is None else var)), nom)
    rax.stairs(
        1 + rel,
        edges,
        baseline=1 - rel,
        fill=True,
        facecolor="none",
        edgecolor="grey",
        hatch="///",
        lw=0,
        label="Nominal stat.",
    )
    rax.axhline(1.0, color="black", lw=1)

    ax.set_ylabel(ylabel)
    ax.set_ylim(bottom=0)
    ax.legend(fontsize="small")
    ax.set_title(BAND_NOTE, fontsize="x-small", loc="left")
    ax.set_xlabel("")
    rax.set_ylim(*ratio_ylim)
    rax.legend(loc="upper right", fontsize="small")
    rax.set_ylabel("Band / nominal")
    rax.set_xlabel(nominal.axes[0].label or nominal.axes[0].name)
    rax.set_xlim(edges[0], edges[-1])
    return fig


def std_vs_score_figure(h2d: hist.Hist) -> Figure:
    """2D nominal score vs per-event std, with the mean std per score bin overlaid."""
    fig = Figure(figsize=(7, 6), layout="constrained")
    ax = fig.subplots()
    w = np.asarray(h2d.values())
    # Drawn by hand: mplhep.hist2dplot cannot combine a LogNorm with masking empty bins.
    mesh = ax.pcolormesh(
        h2d.axes[0].edges,
        h2d.axes[1].edges,
        np.ma.masked_less_equal(w, 0).T,
        norm=mpl.colors.LogNorm(),
        cmap="viridis",
    )
    fig.colorbar(mesh, ax=ax, label="Events")
    # Profile: weighted mean of the std-axis bin centres in every score bin.
    centres = h2d.axes[1].centers
    total = w.sum(axis=1)
    profile = _ratio(w @ centres, total)
    ax.plot(h2d.axes[0].centers, profile, "o-", color="white", mec="black", label="Mean std")
    ax.set_xlabel(h2d.axes[0].label or h2d.axes[0].name)
    ax.set_ylabel(h2d.axes[1].label or h2d.axes[1].name)
    ax.legend()
    return fig


def save(fig: Figure, path: str | Path, formats: Iterable[str] = FORMATS) -> list[Path]:
    """Write ``fig`` as ``<path>.<fmt>`` per format, atomically (an existing suffix is replaced)."""
    path = Path(path)
    out = []
    for fmt in formats:
        target = path.with_suffix(f".{fmt}")
        with atomic_path(target) as tmp:
            fig.savefig(tmp, format=fmt, dpi=150)
        out.append(target)
    return out


def plot_band(
    nominal: hist.Hist,
    summaries: Mapping[str, hist.Hist],
    path: str | Path,
    *,
    ylabel: str = "Events",
    ratio_ylim: tuple[float, float] = (0.0, 2.0),
    formats: Iterable[str] = FORMATS,
) -> list[Path]:
    """Draw :func:`band_figure` and write it in ``formats``; returns the written paths."""
    with plot_style():
        fig = band_figure(nominal, summaries, ylabel=ylabel, ratio_ylim=ratio_ylim)
        return save(fig, path, formats)


def plot_std_vs_score(
    h2d: hist.Hist, path: str | Path, *, formats: Iterable[str] = FORMATS
) -> list[Path]:
    """Draw :func:`std_vs_score_figure` and write it in ``formats``; returns the written paths."""
    with plot_style():
        return save(std_vs_score_figure(h2d), path, formats)
