"""Band summaries, ROOT shape templates and band plots of a run's merged histograms.

>>> root, files = band_outputs(hists, outdir / "plots", plots=True, formats=["png", "pdf"])

Band statistics are computed here, once, after accumulation: quantiles do not add.
Replica histograms are recognised by name (:data:`BAND_KINDS`); each is summarised
per process against its nominal histogram (the same name without the suffix).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import hist

from hepnn.bands.hists import summarise, to_root_variations

__all__ = ["BAND_KINDS", "band_outputs"]

#: Suffixes of replica histograms and the name of their replica axis.
BAND_KINDS = {"_mcdropout": "mc", "_ensemble": "member"}


def _nominal_for(hists: dict[str, Any], base: str, process: str) -> hist.Hist | None:
    """``hists[base]`` of one process, summed over its other string categories."""
    nominal = hists.get(base)
    if nominal is None:
        return None
    for ax in list(nominal.axes):
        if isinstance(ax, hist.axis.StrCategory) and ax.name != "process":
            nominal = nominal[{ax.name: sum}]
    return nominal[{"process": process}]


def band_outputs(
    hists: dict[str, Any], plot_dir: Path, *, plots: bool, formats: Iterable[str]
) -> tuple[dict[str, hist.Hist], list[Path]]:
    """Summaries of every replica histogram, ROOT templates and band plots.

    Parameters
    ----------
    hists
        Merged histograms of a run; summaries are added to it in place.
    plot_dir
        Folder of the band plots.
    plots
        Draw the band plots (``<base>_bands_<process>.<fmt>``).
    formats
        Plot formats, e.g. ``["png", "pdf"]``.

    Returns
    -------
    root, files
        ROOT histograms keyed by their full path (see Notes) and the plot files written.

    Notes
    -----
    A replica histogram ``<base>_mcdropout`` (axes ``process``, ``mc``, variable)
    gets ``<base>_mcdropout_summary`` (axes ``process``, ``stat``, variable) in
    ``hists``; the nominal is ``<base>`` summed over its other categories.
    ROOT (combine / cabinetry layout, :func:`hepnn.bands.hists.to_root_variations`):
    ``<base>/<process>/nominal``, ``<base>/<process>/mcdropoutUp`` / ``Down`` (the
    nominal ± the leading eigen-variation of the replica shapes: same total as the
    nominal, non-negative), ``<base>/<process>/mcdropout_replica<k>`` (every
    replica), likewise ``ensemble``. No per-bin quantile is ever a template.
    """
    root: dict[str, hist.Hist] = {}
    files: list[Path] = []
    summaries: dict[tuple[str, str], dict[str, hist.Hist]] = {}
    for name in [n for n in hists if n.endswith(tuple(BAND_KINDS))]:
        suffix = next(s for s in BAND_KINDS if name.endswith(s))
        base = name[: -len(suffix)]
        reps = hists[name]
        processes = [p for p in reps.axes["process"] if reps[{"process": p}].values().sum() != 0]
        per_process = {}
        for process in processes:
            nominal = _nominal_for(hists, base, process)
            if nominal is None:
                continue
            summary = summarise(reps[{"process": process}], nominal)
            per_process[process] = summary
            root.update(to_root_variations(reps[{"process": process}], nominal, base, process))
            summaries.setdefault((base, process), {})[
                "MC dropout" if suffix == "_mcdropout" else "deep ensemble"
            ] = summary
        if per_process:
            hists[f"{name}_summary"] = _stack(per_process)
    if plots:
        # Imported here: summarising must not import matplotlib.
        from hepnn.bands.plots import plot_band

        formats = list(formats)
        for (base, process), bands in sorted(summaries.items()):
            nominal = _nominal_for(hists, base, process)
            files += plot_band(
                nominal, bands, plot_dir / f"{base}_bands_{process}", formats=formats
            )
    return root, files


def _stack(per_process: dict[str, hist.Hist]) -> hist.Hist:
    """Stack per-process summaries into one histogram with a leading ``process`` axis."""
    first = next(iter(per_process.values()))
    out = hist.Hist(
        hist.axis.StrCategory(list(per_process), name="process"),
        *first.axes,
        storage=hist.storage.Weight(),
        metadata=vars(first).get("metadata"),
    )
    view = out.view(flow=True)
    for i, summary in enumerate(per_process.values()):
        view[i] = summary.view(flow=True)
    return out
