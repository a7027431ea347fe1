"""A small workflow and helpers shared by the tests of remote inputs and filesets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import awkward as ak
import hist

from hepnn.config import ExecutorConfig
from hepnn.execution import run_workflow
from hepnn.samples import load_samples, resolve_samples
from hepnn.schemas import BaseSchema
from hepnn.workflow import Workflow, WorkflowContext


class CountJets(Workflow):
    """Jets per event and jet pT, per dataset (enough to compare remote and local reads).

    Flat branches (``BaseSchema``): building NanoAOD collections costs seconds per chunk.
    """

    schema = BaseSchema

    def process(self, events: Any) -> dict[str, Any]:
        ds = list(self.context.datasets)
        h = hist.Hist(
            hist.axis.StrCategory(ds, name="dataset"),
            hist.axis.Regular(20, 0, 200, name="pt"),
            storage=hist.storage.Weight(),
        )
        h.fill(dataset=events.metadata["dataset"], pt=ak.flatten(events.Jet_pt))
        n = hist.Hist(hist.axis.StrCategory(ds, name="dataset"), hist.axis.Integer(0, 20, name="n"))
        n.fill(dataset=events.metadata["dataset"], n=events.nJet)
        return {"jet_pt": h, "njet": n}


def assert_same_hists(a: dict[str, Any], b: dict[str, Any]) -> None:
    """Same histogram names, axes and bits (values and variances, flow included)."""
    names = sorted(k for k in a if isinstance(a[k], hist.Hist))
    assert names
    assert names == sorted(k for k in b if isinstance(b[k], hist.Hist))
    for k in names:
        assert a[k].axes == b[k].axes, k
        va, vb = a[k].view(flow=True), b[k].view(flow=True)
        assert va.tobytes() == vb.tobytes(), k


def resolve(samples: Path, cache: Path, **kw: Any) -> dict[str, Any]:
    return resolve_samples(load_samples(samples), cache, **kw)


def run_count(datasets: dict[str, Any], **executor: Any) -> Any:
    wf = CountJets(WorkflowContext(datasets={n: d.metadata for n, d in datasets.items()}))
    executor = {"chunksize": 20, **executor}
    cfg = ExecutorConfig(name="iterative", block_size=10, **executor)
    return run_workflow(wf, BaseSchema, datasets, cfg, status=False)
