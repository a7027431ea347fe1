"""Workflow throughput against a plain uproot read of the same branches.

For the ``higgs`` workflow (a resampled Higgs-challenge CSV, converted once) and
the ``fatjets`` workflow (copies of ``samples/nanoaod/nano_tt_v15.root``), finds
the branches the workflow reads (coffea's access log on one block), then times

* hepnn: :func:`hepnn.execution.run_workflow` on the iterative executor, in this
  process (file opening, NanoEvents, the workflow per block, the ordered merge);
* hepnn read-only: the same run with a workflow that only reads those branches
  (``BaseSchema``, ``ak.materialize``) and fills nothing: hepnn's own cost;
* uproot: ``uproot.open(file)["Events"].arrays(branches)`` for every file,

and prints events/s and the ratios to uproot (time / uproot time): ``read`` is
the framework's overhead over reading, ``workflow`` adds building the event
objects and filling the histograms.

    python benchmarks/bench_workflows.py
    python benchmarks/bench_workflows.py --higgs-events 500000 --nano-copies 100
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import uproot

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_soak import make_csv  # noqa: E402


def branches_read(workflow: Any, schema: type, path: Path, dataset: str) -> list[str]:
    """Branches the workflow touches on the first block of ``path`` (coffea access log)."""
    from coffea.nanoevents import NanoEventsFactory

    log: list[Any] = []
    with uproot.open(path) as f:
        n = min(f["Events"].num_entries, 10_000)
        events = NanoEventsFactory.from_root(
            file=f,
            treepath="Events",
            schemaclass=schema,
            metadata={"dataset": dataset, "filename": str(path), "entrystart": 0, "entrystop": n},
            access_log=log,
            mode="virtual",
            entry_stop=n,
        ).events()
        workflow.process(events)
    return sorted({a.branch for a in log})


class ReadOnly:
    """A workflow that reads ``branches`` and fills nothing."""

    def __init__(self, branches: list[str]) -> None:
        self.branches = branches

    def process(self, events: Any) -> dict[str, Any]:
        import awkward as ak

        for b in self.branches:
            ak.materialize(events[b])
        return {}

    def postprocess(self, accumulator: Any) -> Any:
        return accumulator


def bench(name: str, files: list[Path], repeat: int) -> tuple[int, float, float, float, int]:
    from coffea.nanoevents import BaseSchema

    from hepnn.config import ExecutorConfig
    from hepnn.execution import run_workflow
    from hepnn.samples import DatasetSpec, resolve_dataset
    from hepnn.workflow import WorkflowContext, find_workflow

    found = find_workflow(str(REPO / "workflows" / f"{name}.py"))
    ds = resolve_dataset(
        name, DatasetSpec(files=[str(f) for f in files]), Path(tempfile.gettempdir())
    )
    workflow = found.cls(WorkflowContext(datasets={name: {"format": "root"}}))
    schema = found.cls.schema
    branches = branches_read(workflow, schema, files[0], name)
    ex = ExecutorConfig(name="iterative", chunksize=100_000)

    t_hepnn = t_read = t_uproot = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = run_workflow(workflow, schema, {name: ds}, ex, status=False)
        t_hepnn = min(t_hepnn, time.perf_counter() - t0)
        assert result.entries_processed[name] == ds.entries
        t0 = time.perf_counter()
        run_workflow(ReadOnly(branches), BaseSchema, {name: ds}, ex, status=False)  # type: ignore[arg-type]
        t_read = min(t_read, time.perf_counter() - t0)
        t0 = time.perf_counter()
        n = 0
        for f in files:
            with uproot.open(f) as fh:
                n += len(fh["Events"].arrays(branches))
        t_uproot = min(t_uproot, time.perf_counter() - t0)
        assert n == ds.entries
    return ds.entries, t_hepnn, t_read, t_uproot, len(branches)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--higgs-events", type=int, default=200_000)
    parser.add_argument("--nano-copies", type=int, default=50, help="copies of the 200-event file")
    parser.add_argument("--repeat", type=int, default=2, help="best of N")
    args = parser.parse_args()

    from hepnn.io.higgs_csv import convert_csv

    with tempfile.TemporaryDirectory(prefix="hepnn_bench_") as tmp:
        work = Path(tmp)
        csv = make_csv(work / "higgs.csv", args.higgs_events)
        higgs_root = convert_csv(csv, work / "cache").root_path
        src = REPO / "samples" / "nanoaod" / "nano_tt_v15.root"
        nano = [
            Path(shutil.copy(src, work / f"nano_{i:03d}.root")) for i in range(args.nano_copies)
        ]
        print(
            f"{'workflow':>9} {'events':>8} {'branches':>8} {'workflow/s':>11} "
            f"{'read/s':>10} {'uproot/s':>10} {'workflow':>9} {'read':>6}"
        )
        for name, files in (("higgs", [Path(higgs_root)]), ("fatjets", nano)):
            n, t_h, t_r, t_u, nb = bench(name, files, args.repeat)
            print(
                f"{name:>9} {n:>8} {nb:>8} {n / t_h:>11,.0f} {n / t_r:>10,.0f} "
                f"{n / t_u:>10,.0f} {t_h / t_u:>8.1f}x {t_r / t_u:>5.1f}x",
                flush=True,
            )


if __name__ == "__main__":
    main()
