"""Plots of the input-space comparison: data over simulation with a ratio panel.

A single feature is drawn on its own axis (events per unit, the outer bins cut at
the simulation's 0.5 % and 99.5 % quantiles for display); a pair is drawn unrolled:
one bin per 2D cell, slices of the first feature separated by dashed lines.
The grey band is the simulation's statistical uncertainty (sqrt Σw²).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hepnn.plotting import save_figure
from hepnn.review.gof import GofResult, Sample, weighted_quantiles


def file_stem(net: str, term: str) -> str:
    """File-name-safe stem of a term's plot: ``gof_<net>_<a>_x_<b>``."""
    return f"gof_{net}_" + term.replace("*", "_x_")


def _edges(result: GofResult, sim: Sample) -> tuple[np.ndarray, tuple[float, float]]:
    feat = result.term.features[0]
    x = sim.column(feat)
    ok = np.isfinite(x)
    lo, hi = weighted_quantiles(x[ok], sim.weights[ok], np.array([0.005, 0.995]))
    inner = result.binning.x_inner
    lo = min(lo, inner[0]) if len(inner) else lo
    hi = max(hi, inner[-1]) if len(inner) else hi
    if hi <= lo:
        hi = lo + 1.0
    pad = 0.02 * (hi - lo)
    return np.concatenate([[lo - pad], inner, [hi + pad]]), (lo - pad, hi + pad)


def plot_term(
    net: str, result: GofResult, sim: Sample, outdir: Path, formats: tuple[str, ...] | list[str],
    *, data_label: str = "data",
) -> list[Path]:  # fmt: skip
    """Draw one term's comparison to ``outdir/gof_<net>_<term>.<fmt>``."""
    import matplotlib.pyplot as plt

    if not formats:
        return []
    n, mu, var = result.data, result.expected, result.variance
    fig, (ax, rax) = plt.subplots(
        2, 1, figsize=(7, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1], "hspace": 0.05}
    )
    pair = len(result.term.features) > 1
    if pair:
        edges = np.arange(len(n) + 1, dtype=np.float64)
        width = np.ones(len(n))
        xlabel = f"unrolled bin: {result.term.features[0]} slices × {result.term.features[1]}"
        ylabel = "events per bin"
    else:
        edges, _ = _edges(result, sim)
        width = np.diff(edges)
        xlabel = result.term.features[0]
        ylabel = "events / unit"
    centres = 0.5 * (edges[1:] + edges[:-1])
    sd = np.sqrt(var)
    ax.stairs(mu / width, edges, color="C0", label="simulation (normalised to data)")
    ax.stairs((mu + sd) / width, edges, baseline=(mu - sd) / width, fill=True, color="grey",
              alpha=0.35, label="simulation stat. unc.")  # fmt: skip
    ax.errorbar(
        centres, n / width, yerr=np.sqrt(n) / width, fmt="o", ms=3, color="k", label=data_label
    )
    ax.set_ylabel(ylabel)
    ax.set_title(
        f"{net}: {result.term.name} (rank {result.term.rank})   "
        f"χ²/ndf = {result.chi2:.1f}/{result.ndf}, p = {result.p_value:.3g}",
        loc="left", fontsize=10,
    )  # fmt: skip
    ax.legend(fontsize=8)
    rax.stairs(1 + sd / mu, edges, baseline=1 - sd / mu, fill=True, color="grey", alpha=0.35)
    rax.errorbar(centres, n / mu, yerr=np.sqrt(n) / mu, fmt="o", ms=3, color="k")
    rax.axhline(1.0, color="C0", lw=1)
    rax.set_ylabel(f"{data_label} / sim.")
    rax.set_xlabel(xlabel)
    rax.set_ylim(0.5, 1.5)
    if pair:
        bounds = np.cumsum([len(e) + 1 for e in result.binning.y_inner or []])[:-1]
        for b in bounds:
            ax.axvline(b, color="grey", ls="--", lw=0.8)
            rax.axvline(b, color="grey", ls="--", lw=0.8)
    else:
        ax.set_xlim(edges[0], edges[-1])
    return save_figure(fig, outdir / file_stem(net, result.term.name), list(formats))
