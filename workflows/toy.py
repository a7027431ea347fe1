"""The lecture's two-Gaussian toy: inputs, network score and per-event columns.

Reads the generated ``toy-gauss`` samples (``x1``, ``x2``, ``Label``) and, for
every network of the config, its score as a deterministic column. The point of
the toy configs is the Taylor ranking (``outputs/<config>/ranking/``): which of
x1, x2, x1², x2², x1·x2 the network uses, and when it learns them.
"""

from __future__ import annotations

from typing import Any

import awkward as ak
import hist
import numpy as np

from hepnn.bands import replica_hists
from hepnn.columns import Columns
from hepnn.nets.apply import band_replicas, network_score
from hepnn.schemas import BaseSchema
from hepnn.workflow import Workflow

PROCESSES = ["signal", "background"]


class Toy(Workflow):
    """Histograms of x1, x2 (1D and 2D) and network scores (with their bands), by process."""

    name = "toy"
    schema = BaseSchema

    def process(self, events: Any) -> dict[str, Any]:
        dataset = events.metadata["dataset"]
        label = ak.to_numpy(events.Label)
        process = np.where(label == 1, "signal", "background")
        x1 = ak.to_numpy(events.x1)
        x2 = ak.to_numpy(events.x2)
        proc_axis = hist.axis.StrCategory(PROCESSES, name="process")
        out: dict[str, Any] = {}
        for name, x in (("x1", x1), ("x2", x2)):
            h = hist.Hist(proc_axis, hist.axis.Regular(40, -4, 4, name="x", label=name), label=name)
            h.fill(process=process, x=x)
            out[name] = h
        h2 = hist.Hist(
            hist.axis.Regular(40, -4, 4, name="x1", label="x1"),
            hist.axis.Regular(40, -4, 4, name="x2", label="x2"),
            label="x2 vs x1 (signal - background)",
        )
        h2.fill(x1=x1, x2=x2, weight=np.where(label == 1, 1.0, -1.0))
        out["x1_x2"] = h2
        columns: dict[str, np.ndarray] = {"EventId": ak.to_numpy(events.EventId), "Label": label}
        for net, path in self.context.flat_networks.items():
            score = network_score(path, events)
            columns[f"score_{net}"] = score
            h = hist.Hist(
                proc_axis,
                hist.axis.Regular(50, 0, 1, name="score", label=f"{net} score"),
                label=f"{net} score",
            )
            h.fill(process=process, score=score.astype(np.float64))
            out[f"score_{net}"] = h
            replicas = band_replicas(
                path, events, score, mc_dropout=self.context.mc_dropout,
                members=self.context.ensembles.get(net),
            )  # fmt: skip
            if replicas:
                out.update(
                    replica_hists(net, score, replicas, process, np.ones(len(label)), PROCESSES)
                )
        out["columns"] = {dataset: Columns(columns)}
        return out
