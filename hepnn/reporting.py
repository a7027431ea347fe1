"""What a run derives from its merged histograms and columns, after processing.

* :func:`network_metrics` — ROC and AMS curves (as hists) and, per network and
  dataset, AUC and best AMS on the events the network did not train on;
* :func:`band_outputs` — MC-dropout / ensemble band summaries (``stat`` axis),
  their up/down templates for ``hists.root`` and the band plots.

Band statistics are computed here, once, after accumulation: quantiles do not add.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hist
import numpy as np

from hepnn.bands import summarise, to_root_variations
from hepnn.columns import Columns
from hepnn.config import OutputConfig
from hepnn.metrics import auc, best_ams, curve_hists

#: Suffixes of replica histograms and the name of their replica axis.
BAND_KINDS = {"_mcdropout": "mc", "_ensemble": "member"}


def network_metrics(
    models: dict[str, Path], hists: dict[str, Any], columns: dict[str, Columns]
) -> dict[str, Any]:
    """Add ROC/AMS curve hists to ``hists``; return AUC/AMS per network and dataset.

    Metrics use only events the network did not train on: for a k-fold model every
    event (each is scored by the fold model that did not see it), for a parity
    split the odd event ids.
    """
    from hepnn.modelio import load_model

    out: dict[str, Any] = {}
    for name, path in models.items():
        fine = hists.get(f"score_fine_{name}")
        if fine is not None:
            hists.update(curve_hists(name, fine))
        loaded = load_model(path)
        per_dataset = {}
        for dataset, cols in columns.items():
            data = cols.data
            key = f"score_{name}"
            if key not in data or "Label" not in data:
                continue
            keep = np.ones(len(cols), dtype=bool)
            if loaded.method == "parity" and loaded.id_column in data:
                keep = data[loaded.id_column] % 2 == 1
            score, label = data[key][keep], data["Label"][keep]
            weight = data["Weight"][keep] if "Weight" in data else None
            entry: dict[str, Any] = {
                "events": int(keep.sum()),
                "auc": auc(score, label),
                "auc_weighted": auc(score, label, weight) if weight is not None else None,
            }
            if weight is not None:
                h = hist.Hist(
                    hist.axis.StrCategory(["signal", "background"], name="process"),
                    hist.axis.Regular(1000, 0.0, 1.0, name="score"),
                    storage=hist.storage.Weight(),
                )
                h.fill(
                    process=np.where(label == 1, "signal", "background"), score=score, weight=weight
                )
                entry["ams_best"], entry["ams_threshold"] = best_ams(h)
            per_dataset[dataset] = entry
        out[name] = {
            "model": str(path),
            "split": loaded.method,
            "evaluated_on": "events the model did not train on",
            "datasets": per_dataset,
        }
    return out


def _nominal_for(hists: dict[str, Any], base: str, process: str) -> hist.Hist | None:
    nominal = hists.get(base)
    if nominal is None:
        return None
    for ax in list(nominal.axes):
        if isinstance(ax, hist.axis.StrCategory) and ax.name != "process":
            nominal = nominal[{ax.name: sum}]
    return nominal[{"process": process}]


def band_outputs(
    hists: dict[str, Any], plot_dir: Path, outputs: OutputConfig
) -> tuple[dict[str, hist.Hist], list[Path]]:
    """Summaries of every replica histogram, ROOT up/down templates and band plots.

    A replica histogram ``<base>_mcdropout`` (axes ``process``, ``mc``, variable)
    gets ``<base>_mcdropout_summary`` (axes ``process``, ``stat``, variable) in
    ``hists``; the nominal is ``<base>`` summed over its other categories.
    ROOT templates: ``bands/<base>/<process>/nominal`` and
    ``.../<base>_mcdropoutUp`` (q84) / ``Down`` (q16), likewise ``_ensemble``.
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
            variations = to_root_variations(summary, base)
            for vname, vh in variations.items():
                tag = "nominal" if vname == base else vname
                root[f"bands/{base}/{process}/{tag}"] = vh
            summaries.setdefault((base, process), {})[
                "MC dropout" if suffix == "_mcdropout" else "deep ensemble"
            ] = summary
        if per_process:
            hists[f"{name}_summary"] = _stack(per_process)
    if outputs.plots:
        from hepnn.band_plots import plot_band

        for (base, process), bands in sorted(summaries.items()):
            nominal = _nominal_for(hists, base, process)
            files += plot_band(nominal, bands, plot_dir / f"{base}_bands_{process}")
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
