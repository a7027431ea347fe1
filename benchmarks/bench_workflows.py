"""Workflow throughput: hepnn against plain coffea and a plain uproot read.

**Higgs** (networks off): a ROOT file of at least ``--higgs-events`` events is made by
replicating the shipped Higgs-challenge events (``samples/higgs_challenge_18k.csv``,
converted by hepnn) with unique EventIds (copy ``k`` adds ``k * (max id + 1)``), then,
each in a fresh subprocess (so that its peak RSS is its own), on 1 process with
``--chunksize``-event chunks:

* ``hepnn``: ``hepnn.pipeline.run_config`` of ``workflows/higgs.py`` on the iterative
  executor (no networks, no plots; events/s from the manifest's processing time);
* ``coffea``: a plain ``coffea.processor.ProcessorABC`` filling the same histograms,
  run by coffea's own ``processor.Runner`` (``IterativeExecutor``, ``BaseSchema``;
  events/s over the whole ``Runner`` call, its preprocessing included);
* ``uproot``: ``uproot.iterate`` of the branches the workflow reads (coffea's access
  log on one block), the I/O limit.

It prints events/s, peak RSS and the ratios hepnn/coffea and hepnn/uproot, and checks
that hepnn's and coffea's histograms agree (to float rounding: the fill order differs).

**fatjets** (``--nano-copies`` copies of ``samples/nanoaod/nano_tt_v15.root``, in this
process): :func:`hepnn.execution.run_workflow`, the same run with a workflow that only
reads the branches, and ``uproot`` arrays of those branches (best of ``--repeat``).

    python benchmarks/bench_workflows.py                       # 1,008,000 Higgs events
    python benchmarks/bench_workflows.py --higgs-events 200000 --nano-copies 0 --rss-events ''

**Peak RSS vs events** (``--rss-events``): hepnn and plain coffea on Higgs files of each
size, each in its own process; prints the growth in MB per million events between the
two largest (flat memory: about 0).
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import uproot

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(REPO))  # this checkout's hepnn, not whichever one is installed


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


# ---------------------------------------------------------------------------------------------
# Higgs: hepnn vs plain coffea vs uproot, each in its own process


def make_higgs_root(out: Path, min_events: int, cache: Path) -> tuple[Path, int]:
    """A ROOT file of the shipped Higgs events replicated to >= ``min_events`` (unique ids)."""

    from hepnn.io.higgs_csv import convert_csv

    conv = convert_csv(REPO / "samples" / "higgs_challenge_18k.csv", cache)
    with uproot.open(conv.root_path) as f:
        tree = f[conv.treename]
        arrays = tree.arrays(library="np")
        types = {k: v.interpretation.numpy_dtype.newbyteorder("=") for k, v in tree.items()}
    n = len(arrays["EventId"])
    copies = -(-min_events // n)
    span = int(arrays["EventId"].max()) + 1
    with uproot.recreate(out, compression=uproot.LZ4(1)) as fout:
        t = fout.mktree("Events", types)
        for k in range(copies):
            batch = dict(arrays)
            batch["EventId"] = arrays["EventId"] + k * span
            t.extend(batch)
    return out, n * copies


def higgs_branches(path: Path) -> list[str]:
    """Branches the hepnn Higgs workflow reads (coffea's access log on one block)."""
    from hepnn.workflow import WorkflowContext, find_workflow

    found = find_workflow(str(REPO / "workflows" / "higgs.py"))
    workflow = found.cls(WorkflowContext(datasets={"higgs": {"format": "root"}}))
    return branches_read(workflow, found.cls.schema, path, "higgs")


def peak_rss_mb() -> float:
    """Peak resident memory of this process, in MB.

    ``VmHWM`` of ``/proc/self/status`` (Linux): it starts afresh at ``exec``, whereas
    ``ru_maxrss`` keeps the high-water mark of the forking parent.
    """
    with Path("/proc/self/status").open(encoding="ascii") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_config(work: Path, workflow: str, name: str, dataset: dict, chunksize: int) -> Path:
    """A samples YAML with one ``dataset`` and a config running ``workflows/<workflow>.py``
    on it (iterative, ``chunksize``, no plots, no ROOT file); the config's path."""
    import yaml

    samples = work / f"samples_{workflow}.yaml"
    samples.write_text(yaml.safe_dump({"datasets": {name: dataset}}))
    config = work / f"bench_{workflow}.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "name": f"bench_{workflow}",
                "workflow": str(REPO / "workflows" / f"{workflow}.py"),
                "samples": str(samples),
                "executor": {"name": "iterative", "chunksize": chunksize},
                "outputs": {"plots": False, "hists_root": False},
            }
        )
    )
    return config


def mode_hepnn(path: Path, chunksize: int, work: Path) -> dict[str, Any]:
    """``run_config`` of the Higgs workflow (networks off, no plots) on ``path``."""
    import pickle

    from hepnn.config import load_config
    from hepnn.pipeline import run_config

    config = write_config(
        work, "higgs", "higgs", {"format": "root", "files": [str(path)]}, chunksize
    )
    # Time the workflow's own process() per block: the rest of the processing time is the
    # per-block overhead of the fixed-block design (events built per chunk, block slices,
    # tree merge, checkpoint writes, gc).
    from hepnn.execution import merge

    inner_time = {"seconds": 0.0, "blocks": 0}
    original = merge.ChunkKeyed.process  # the class travels by reference: patched in-process

    class Timed:
        def __init__(self, inner: Any) -> None:
            self.inner = inner

        def process(self, events: Any) -> Any:
            t = time.perf_counter()
            try:
                return self.inner.process(events)
            finally:
                inner_time["seconds"] += time.perf_counter() - t
                inner_time["blocks"] += 1

    def timed_process(self: Any, events: Any) -> Any:
        real = self.inner
        self.inner = Timed(real)
        try:
            return original(self, events)
        finally:
            self.inner = real

    merge.ChunkKeyed.process = timed_process  # type: ignore[method-assign]
    t0 = time.perf_counter()
    run = run_config(load_config(config), work / "out_hepnn", progress=False)
    wall = time.perf_counter() - t0
    m = run.manifest
    n = sum(d["entries_processed"] for d in m["datasets"].values())
    hists = {k: v for k, v in run.hists.items() if k != "columns"}
    with (work / "hists_hepnn.pkl").open("wb") as f:
        pickle.dump(hists, f)
    return {
        "events": n,
        "seconds": m["processing_time_s"],
        "wall_s": wall,
        "stage_seconds": m["stage_seconds"],
        "workflow_seconds": inner_time["seconds"],
        "blocks": inner_time["blocks"],
    }


class PlainHiggs:
    """The Higgs workflow's histograms (networks off) as a plain coffea processor.

    Same selections and fill arithmetic as ``workflows/higgs.py``; the ``-999.0``
    values are masked with ``ak.mask`` on the fields used, as a coffea user would.
    """

    def __init__(self, datasets: list[str]) -> None:
        self.datasets = datasets

    def process(self, events: Any) -> dict[str, Any]:
        """Fill the yields, the 14 variables and the 2D mass histogram for one chunk."""
        import awkward as ak
        import hist
        import numpy as np
        from higgs import JET_BINS, PROCESSES, VARIABLES

        def axes() -> list[Any]:
            return [
                hist.axis.StrCategory(self.datasets, name="dataset"),
                hist.axis.StrCategory(PROCESSES, name="process"),
                hist.axis.StrCategory(JET_BINS, name="njet"),
            ]

        def masked(name: str) -> ak.Array:
            arr = events[name]
            return ak.mask(arr, arr != -999.0)

        dataset = events.metadata["dataset"]
        label = ak.to_numpy(events.Label)
        process = np.where(label == 1, "signal", "background")
        weight = ak.to_numpy(events.Weight).astype(np.float64)
        njet = ak.to_numpy(events.PRI_jet_num)
        jet_bin = np.array(JET_BINS, dtype=object)[np.clip(njet, 0, 2)].astype(str)
        out: dict[str, Any] = {}
        yields = hist.Hist(*axes(), storage=hist.storage.Weight())
        yields.fill(dataset=dataset, process=process, njet=jet_bin, weight=weight)
        out["yields"] = yields
        for var, (bins, lo, hi, _) in VARIABLES.items():
            h = hist.Hist(*axes(), hist.axis.Regular(bins, lo, hi, name="x"),
                          storage=hist.storage.Weight())  # fmt: skip
            values = masked(var)
            present = ~ak.to_numpy(ak.is_none(values))
            h.fill(dataset=dataset, process=process[present], njet=jet_bin[present],
                   x=ak.to_numpy(values[present]).astype(np.float64),
                   weight=weight[present])  # fmt: skip
            out[var] = h
        mmc, mvis = masked("DER_mass_MMC"), masked("DER_mass_vis")
        both = ~ak.to_numpy(ak.is_none(mmc) | ak.is_none(mvis))
        h2 = hist.Hist(
            hist.axis.StrCategory(self.datasets, name="dataset"),
            hist.axis.StrCategory(PROCESSES, name="process"),
            hist.axis.Regular(40, 0.0, 300.0, name="mvis"),
            hist.axis.Regular(40, 0.0, 400.0, name="mmc"),
            storage=hist.storage.Weight(),
        )
        h2.fill(dataset=dataset, process=process[both],
                mvis=ak.to_numpy(mvis[both]).astype(np.float64),
                mmc=ak.to_numpy(mmc[both]).astype(np.float64), weight=weight[both])  # fmt: skip
        out["mvis_vs_mmc"] = h2
        return out

    def postprocess(self, accumulator: Any) -> Any:
        """Nothing to do."""
        return accumulator


def mode_coffea(path: Path, chunksize: int, work: Path) -> dict[str, Any]:
    """:class:`PlainHiggs` through coffea's ``processor.Runner`` (iterative, ``BaseSchema``)."""
    import pickle

    import awkward  # noqa: F401  (imported before the clock starts, as hepnn's are)
    import hist  # noqa: F401
    from coffea import processor
    from coffea.nanoevents import BaseSchema

    sys.path.insert(0, str(REPO / "workflows"))
    import higgs  # noqa: F401

    base = type("PlainHiggsProcessor", (PlainHiggs, processor.ProcessorABC), {})
    runner = processor.Runner(
        executor=processor.IterativeExecutor(), schema=BaseSchema, chunksize=chunksize
    )
    fileset = {"higgs": {"files": {str(path): "Events"}}}
    t0 = time.perf_counter()
    out = runner(fileset, base(["higgs"]))
    seconds = time.perf_counter() - t0
    with (work / "hists_coffea.pkl").open("wb") as f:
        pickle.dump(out, f)
    with uproot.open(path) as f:
        n = f["Events"].num_entries
    return {"events": n, "seconds": seconds}


def _nano_files(work: Path) -> list[Path]:
    return sorted(work.glob("nano_*.root"))


def mode_nano_hepnn(work: Path, chunksize: int) -> dict[str, Any]:
    """The whole ``run_config`` of the fatjets workflow over the NanoAOD copies in ``work``."""

    from hepnn.config import load_config
    from hepnn.pipeline import run_config

    dataset = {"format": "root", "treename": "Events", "files": [str(f) for f in _nano_files(work)]}
    config = write_config(work, "fatjets", "ttbar", dataset, chunksize)
    t0 = time.perf_counter()
    run = run_config(load_config(config), work / "out_nano_hepnn", progress=False)
    seconds = time.perf_counter() - t0
    n = sum(d["entries_processed"] for d in run.manifest["datasets"].values())
    return {"events": n, "seconds": seconds}


def mode_nano_coffea(work: Path, chunksize: int) -> dict[str, Any]:
    """coffea's ``Runner`` (preprocess + process, iterative) with the same fatjets workflow."""
    import awkward  # noqa: F401  (imported before the clock starts, as hepnn's are)
    import hist  # noqa: F401
    from coffea import processor

    from hepnn.workflow import WorkflowContext, find_workflow

    found = find_workflow(str(REPO / "workflows" / "fatjets.py"))
    files = _nano_files(work)
    workflow = found.cls(WorkflowContext(datasets={"ttbar": {"format": "root"}}))
    runner = processor.Runner(
        executor=processor.IterativeExecutor(), schema=found.cls.schema, chunksize=chunksize
    )
    t0 = time.perf_counter()
    out = runner({"ttbar": {"files": {str(f): "Events" for f in files}}}, workflow)
    seconds = time.perf_counter() - t0
    assert out, "coffea returned nothing"
    n = 0
    for f in files:
        with uproot.open(f) as fh:
            n += fh["Events"].num_entries
    return {"events": n, "seconds": seconds}


def mode_uproot(path: Path, chunksize: int, branches: list[str]) -> dict[str, Any]:
    """``uproot.iterate`` of ``branches`` in ``chunksize``-event steps (awkward arrays)."""
    t0 = time.perf_counter()
    n = 0
    for arrays in uproot.iterate(f"{path}:Events", branches, step_size=chunksize):
        n += len(arrays)
    return {"events": n, "seconds": time.perf_counter() - t0}


def run_mode(mode: str, path: Path, chunksize: int, work: Path, branches: list[str]) -> dict:
    """Run one mode in a fresh Python process; its result with its own peak RSS."""
    cmd = [sys.executable, __file__, "--mode", mode, "--file", str(path),
           "--chunksize", str(chunksize), "--work", str(work), "--branches", ",".join(branches)]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{mode} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def compare_hists(work: Path) -> tuple[int, float]:
    """Number of histograms compared and the largest relative difference hepnn vs coffea."""
    import pickle

    import numpy as np

    with (work / "hists_hepnn.pkl").open("rb") as f:
        a = pickle.load(f)
    with (work / "hists_coffea.pkl").open("rb") as f:
        b = pickle.load(f)
    assert set(a) == set(b), set(a) ^ set(b)
    worst = 0.0
    for k in a:
        for what in ("values", "variances"):
            x = np.asarray(getattr(a[k], what)(flow=True))
            y = np.asarray(getattr(b[k], what)(flow=True))
            diff = np.abs(x - y) / np.maximum(np.abs(y), 1e-300)
            worst = max(worst, float(np.max(diff, initial=0.0)))
    return len(a), worst


def bench_higgs(min_events: int, chunksize: int, work: Path) -> None:
    """Make the file, run the three modes, print the table."""
    path, n = make_higgs_root(work / "higgs_big.root", min_events, work / "cache")
    branches = higgs_branches(path)
    print(f"higgs: {n:,} events ({path.stat().st_size / 1e6:.0f} MB, LZ4), {len(branches)} "
          f"branches read, iterative, chunks of {chunksize:,}", flush=True)  # fmt: skip
    res = {m: run_mode(m, path, chunksize, work, branches) for m in ("hepnn", "coffea", "uproot")}
    for m, r in res.items():
        assert r["events"] == n, (m, r["events"], n)
        r["rate"] = n / r["seconds"]
    print(f"{'':>8} {'events/s':>10} {'seconds':>8} {'peak RSS':>9}")
    for m, r in res.items():
        print(f"{m:>8} {r['rate']:>10,.0f} {r['seconds']:>8.2f} {r['rss_mb']:>6.0f} MB")
    h, c, u = res["hepnn"], res["coffea"], res["uproot"]
    print(f"hepnn / coffea: {h['rate'] / c['rate']:.2f}x events/s, "
          f"{h['rss_mb'] / c['rss_mb']:.2f}x peak RSS; hepnn / uproot: "
          f"{h['rate'] / u['rate']:.2f}x events/s")  # fmt: skip
    overhead = h["seconds"] - h["workflow_seconds"]
    print(f"hepnn per-block overhead (events built, block slices, tree merge, checkpoints, gc "
          f"around {h['blocks']} workflow calls): {overhead:.2f} s = "
          f"{overhead / h['seconds']:.0%} of the processing time")  # fmt: skip
    stages = ", ".join(f"{k} {v:.1f} s" for k, v in h["stage_seconds"].items() if v >= 0.05)
    print(f"hepnn whole run_config {h['wall_s']:.1f} s ({stages})")
    nh, worst = compare_hists(work)
    print(f"histograms hepnn vs coffea: {nh} compared, max relative difference {worst:.1e}")


def bench_rss(sizes: list[int], chunksize: int, work: Path) -> None:
    """Peak RSS of hepnn and plain coffea on files of each size: flat, or growing per event?"""
    print(f"{'events':>10} {'hepnn peak RSS':>15} {'coffea peak RSS':>16}", flush=True)
    peaks: dict[str, list[float]] = {"hepnn": [], "coffea": []}
    for size in sizes:
        path, n = make_higgs_root(work / f"higgs_rss_{size}.root", size, work / "cache")
        row = {m: run_mode(m, path, chunksize, work, []) for m in ("hepnn", "coffea")}
        for m, r in row.items():
            assert r["events"] == n, (m, r["events"], n)
            peaks[m].append(r["rss_mb"])
        print(f"{n:>10,} {row['hepnn']['rss_mb']:>12.0f} MB {row['coffea']['rss_mb']:>13.0f} MB")
        path.unlink()
    for m, p in peaks.items():
        growth = (p[-1] - p[-2]) / (sizes[-1] - sizes[-2]) * 1e6
        print(f"{m}: {growth:+.1f} MB per million events between the two largest files")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--higgs-events", type=int, default=1_000_000, help="at least this many")
    parser.add_argument("--chunksize", type=int, default=100_000)
    parser.add_argument("--nano-copies", type=int, default=50, help="copies of the 200-event file")
    parser.add_argument("--repeat", type=int, default=2, help="best of N (fatjets)")
    parser.add_argument(
        "--rss-events",
        default="1000000,2000000,4000000",
        help="Higgs file sizes for the peak-RSS-vs-events comparison ('' to skip)",
    )
    parser.add_argument(
        "--mode",
        choices=["hepnn", "coffea", "uproot", "nano_hepnn", "nano_coffea"],
        help=argparse.SUPPRESS,
    )
    parser.add_argument("--file", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--branches", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.mode:
        path, work = Path(args.file), Path(args.work)
        if args.mode == "nano_hepnn":
            out = mode_nano_hepnn(work, args.chunksize)
        elif args.mode == "nano_coffea":
            out = mode_nano_coffea(work, args.chunksize)
        elif args.mode == "hepnn":
            out = mode_hepnn(path, args.chunksize, work)
        elif args.mode == "coffea":
            out = mode_coffea(path, args.chunksize, work)
        else:
            out = mode_uproot(path, args.chunksize, args.branches.split(","))
        print(json.dumps({**out, "rss_mb": peak_rss_mb()}))
        return

    with tempfile.TemporaryDirectory(prefix="hepnn_bench_") as tmp:
        work = Path(tmp)
        if args.higgs_events > 0:
            bench_higgs(args.higgs_events, args.chunksize, work)
        sizes = [int(x) for x in args.rss_events.split(",") if x]
        if len(sizes) >= 2:
            bench_rss(sizes, args.chunksize, work)
        if args.nano_copies <= 0:
            return
        src = REPO / "samples" / "nanoaod" / "nano_tt_v15.root"
        nano = [
            Path(shutil.copy(src, work / f"nano_{i:03d}.root")) for i in range(args.nano_copies)
        ]
        print(
            f"{'workflow':>9} {'events':>8} {'branches':>8} {'workflow/s':>11} "
            f"{'read/s':>10} {'uproot/s':>10} {'workflow':>9} {'read':>6}"
        )
        n, t_h, t_r, t_u, nb = bench("fatjets", nano, args.repeat)
        print(
            f"{'fatjets':>9} {n:>8} {nb:>8} {n / t_h:>11,.0f} {n / t_r:>10,.0f} "
            f"{n / t_u:>10,.0f} {t_h / t_u:>8.1f}x {t_r / t_u:>5.1f}x",
            flush=True,
        )
        # The whole command on the NanoAOD files, each in its own process: hepnn's run_config
        # (sample resolution and counting included) vs coffea's Runner (preprocess + process)
        # running the same workflow class.
        whole = {m: run_mode(m, nano[0], 100_000, work, []) for m in ("nano_hepnn", "nano_coffea")}
        h, c = whole["nano_hepnn"], whole["nano_coffea"]
        assert h["events"] == c["events"] == n, (h["events"], c["events"], n)
        print(
            f"fatjets whole command, {len(nano)} files, {n:,} events: hepnn {h['seconds']:.1f} s "
            f"({h['rss_mb']:.0f} MB), coffea Runner {c['seconds']:.1f} s ({c['rss_mb']:.0f} MB): "
            f"hepnn / coffea {h['seconds'] / c['seconds']:.2f}x time (target <= 1.1x)"
        )


if __name__ == "__main__":
    main()
