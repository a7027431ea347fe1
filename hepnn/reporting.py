"""What a run derives from its merged histograms and columns, after processing.

* :func:`network_metrics` — ROC and AMS curves (as hists) and, per network and
  dataset, AUC and best AMS on the events the network did not train on.

Band summaries and plots are :func:`hepnn.bands.band_outputs`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hist
import numpy as np

from hepnn.columns import Columns
from hepnn.metrics import auc, best_ams, curve_hists


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
