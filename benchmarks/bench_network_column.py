"""Throughput of the higgs workflow with the DNN applied as a column vs without it.

Target (networks issue): with the network ≥ 0.5× the events/s without it. Both
are timed in the same process, on the same events (the shipped CSV, tiled
``--repeat`` times into one ROOT file), best of ``--trials``.

    python benchmarks/bench_network_column.py [--repeat 10] [--trials 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import uproot

from hepnn.config import load_config
from hepnn.execution import run_workflow
from hepnn.nets.data import DataReader
from hepnn.nets.store import save_network
from hepnn.nets.train import train_network
from hepnn.pipeline import prepare
from hepnn.samples import Dataset, FileEntry
from hepnn.workflow import WorkflowContext

REPO = Path(__file__).resolve().parents[1]


def tiled_dataset(src: Dataset, repeat: int, tmp: Path) -> Dataset:
    """The dataset's events repeated ``repeat`` times (new EventIds) in one ROOT file.

    Written one copy per ``extend`` (one basket of 18k events per branch, as in a real
    file): a single basket of every event would be decompressed whole by every chunk.
    """
    f = src.files[0]
    with uproot.open(f.root_path) as fh:
        arrays = fh[f.treename].arrays(library="np")
    n = len(arrays["EventId"])
    path = tmp / "tiled.root"
    with uproot.recreate(path) as out:
        out.mktree("Events", {k: v.dtype for k, v in arrays.items()})
        for k in range(repeat):
            copy = {**arrays, "EventId": np.arange(k * n, (k + 1) * n, dtype=np.int64) + 100000}
            out["Events"].extend(copy)
    return Dataset(
        src.name, src.format, [FileEntry(path, path, "Events", n * repeat)], src.metadata
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=10, help="tile the 18k events this often")
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument(
        "--epochs", type=int, default=5, help="training epochs of the benchmark DNN"
    )
    args = parser.parse_args()

    cfg = load_config(
        REPO / "configs" / "higgs.yaml", ["executor.chunksize=100000", "executor.block_size=20000"]
    )
    datasets, found = prepare(cfg, progress=False)
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        spec = cfg.networks["dnn"]
        spec = spec.model_copy(
            update={"training": spec.training.model_copy(update={"epochs": args.epochs})}
        )
        data = DataReader(datasets).training_data("dnn", spec)
        result = train_network("dnn", spec, data, progress=False)
        model = save_network(tmp / "models" / "dnn", "dnn", result, data)
        ds = {name: tiled_dataset(d, args.repeat, tmp) for name, d in datasets.items()}
        n = sum(d.entries for d in ds.values())
        rows = {}
        for label, models in (("without network", {}), ("with network", {"dnn": str(model)})):
            ctx = WorkflowContext(
                datasets={k: {} for k in ds}, models=models, kinds=dict.fromkeys(models, "flat")
            )
            best = float("inf")
            for _ in range(args.trials):
                t0 = time.perf_counter()
                run_workflow(found.cls(ctx), found.cls.schema, ds, cfg.executor, status=False)
                best = min(best, time.perf_counter() - t0)
            rows[label] = n / best
    base = rows["without network"]
    print(f"{'workflow':<18} {'events/s':>12} {'ratio':>7}")
    for label, rate in rows.items():
        print(f"{label:<18} {rate:12.0f} {rate / base:7.2f}")
    print(
        f"target: with network >= 0.5 x without -> {'met' if rows['with network'] >= 0.5 * base else 'NOT met'}"
    )


if __name__ == "__main__":
    main()
