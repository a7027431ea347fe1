"""Load/soak benchmark: the Higgs workflow on a large CSV, on futures and dask.

Generates a Higgs-challenge CSV of N events by resampling the rows of
``samples/higgs_challenge_18k.csv`` (seeded, new EventIds, written streaming),
converts it once (hepnn's cached CSV → ROOT import, not timed), then runs the
``higgs`` workflow with the Higgs DNN applied (trained once, ``--epochs``) with
:func:`hepnn.pipeline.run_config` on the iterative
executor (baseline), futures and dask with 1 and 2 workers. Prints events/s and
the peak resident memory of the main process and of the main process plus every
child (futures/dask workers, sampled every 50 ms), at two sizes to show that
memory does not grow with the number of events. Each run is a fresh process
(memory freed by the CSV conversion would otherwise stay in the baseline); its
time includes starting the pool or LocalCluster and the workers' imports.

    python benchmarks/bench_soak.py                                # 250k and 1M events
    python benchmarks/bench_soak.py --sizes 100000 --runs dask:2   # one size, one setup
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import numpy as np
import psutil
import yaml

REPO = Path(__file__).resolve().parents[1]
SOURCE = REPO / "samples" / "higgs_challenge_18k.csv"


def make_csv(path: Path, n_events: int, seed: int = 1234, batch: int = 50_000) -> Path:
    """Write ``n_events`` rows resampled from the 18k sample, EventIds 100000, 100001, ..."""
    lines = SOURCE.read_text(encoding="utf-8").splitlines()
    header, rows = lines[0], lines[1:]
    if not header.startswith("EventId,"):
        msg = f"{SOURCE}: expected EventId as the first column"
        raise ValueError(msg)
    tails = [r.split(",", 1)[1] for r in rows]
    rng = np.random.default_rng(seed)
    with path.open("w", encoding="utf-8", newline="\n") as fh:
        fh.write(header + "\n")
        for start in range(0, n_events, batch):
            idx = rng.integers(0, len(tails), min(batch, n_events - start))
            fh.write(
                "".join(f"{100000 + start + i},{tails[j]}\n" for i, j in enumerate(idx.tolist()))
            )
    return path


@contextmanager
def peak_rss(interval: float = 0.05) -> Iterator[dict[str, float]]:
    """Sample RSS of this process and of it plus all its children; yields the peaks (MB)."""
    me = psutil.Process()
    peaks = {"main": 0.0, "total": 0.0}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            try:
                main = me.memory_info().rss
                total = main
                for child in me.children(recursive=True):
                    with suppress(psutil.Error):  # a worker that just exited
                        total += child.memory_info().rss
            except psutil.Error:
                continue
            peaks["main"] = max(peaks["main"], main / 2**20)
            peaks["total"] = max(peaks["total"], total / 2**20)
            stop.wait(interval)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield peaks
    finally:
        stop.set()
        thread.join()


def higgs_network() -> dict:
    """The DNN of configs/higgs.yaml (applied in every soak run via ``models/``)."""
    return yaml.safe_load((REPO / "configs" / "higgs.yaml").read_text())["networks"]


def train_dnn(folder: Path, epochs: int) -> None:
    """Train the higgs DNN once on the shipped 18k events into ``folder/models``."""
    from hepnn.config import load_config
    from hepnn.nets.data import DataReader
    from hepnn.nets.store import save_network
    from hepnn.nets.train import train_network
    from hepnn.pipeline import prepare

    cfg = load_config(REPO / "configs" / "higgs.yaml", [f"networks.dnn.training.epochs={epochs}"])
    datasets, _ = prepare(cfg, progress=False)
    spec = cfg.networks["dnn"]
    data = DataReader(datasets).training_data("dnn", spec)
    result = train_network("dnn", spec, data, progress=False)
    save_network(folder / "models" / "dnn", "dnn", result, data)


def write_config(folder: Path, csv: Path, name: str, workers: int, chunksize: int) -> Path:
    samples = folder / "samples.yaml"
    samples.write_text(
        yaml.safe_dump({"datasets": {"higgs_soak": {"format": "higgs-csv", "files": [str(csv)]}}})
    )
    cfg = folder / f"soak_{name}_{workers}.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "name": "soak",
                "workflow": str(REPO / "workflows" / "higgs.py"),
                "samples": str(samples),
                "executor": {"name": name, "workers": workers, "chunksize": chunksize},
                "outputs": {"plots": False, "hists_root": False},
                "networks": higgs_network(),
            }
        )
    )
    return cfg


def one_run(config: Path, size: int) -> None:
    """Run one config in this (fresh) process; print a JSON line with rate and memory."""
    from hepnn.config import load_config
    from hepnn.pipeline import run_config

    cfg = load_config(config)
    with peak_rss() as peaks:
        run = run_config(
            cfg,
            config.parent / f"out_{config.stem}",
            progress=False,
            models_dir=config.parent / "models",
        )
    acc = next(iter(run.manifest["datasets"].values()))
    assert acc["entries_processed"] == size, acc
    seconds = run.manifest["processing_time_s"]
    print(json.dumps({"rate": size / seconds, "seconds": seconds, **peaks}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[250_000, 1_000_000])
    parser.add_argument(
        "--runs",
        nargs="+",
        default=["iterative:1", "futures:1", "futures:2", "dask:1", "dask:2"],
        help="executor:workers setups",
    )
    parser.add_argument("--chunksize", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--epochs", type=int, default=5, help="training epochs of the applied DNN")
    parser.add_argument("--workdir", type=Path, help="keep files here (default: a temp dir)")
    parser.add_argument("--one", nargs=2, metavar=("CONFIG", "EVENTS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        one_run(Path(args.one[0]), int(args.one[1]))
        return

    with tempfile.TemporaryDirectory(prefix="hepnn_soak_") as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "HEPNN_CACHE_DIR": str(work / "cache")}
        os.environ.update(env)
        from hepnn.config import load_config
        from hepnn.pipeline import prepare

        train_dnn(work, args.epochs)  # every run applies this DNN (4 k-fold models)
        print(
            f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; "
            f"chunksize {args.chunksize}; each run in a fresh process"
        )
        print(
            f"{'events':>9} {'executor':>10} {'workers':>7} {'events/s':>10} "
            f"{'wall s':>7} {'main MB':>8} {'all MB':>8}"
        )
        for size in args.sizes:
            csv = work / f"higgs_{size}.csv"
            t0 = time.perf_counter()
            make_csv(csv, size, args.seed)
            t_gen = time.perf_counter() - t0
            t0 = time.perf_counter()
            first = write_config(work, csv, "iterative", 1, args.chunksize)
            prepare(load_config(first), progress=False)  # CSV -> ROOT once (cached)
            print(
                f"# {size} events: generated in {t_gen:.1f} s "
                f"({csv.stat().st_size / 2**20:.0f} MB), converted in "
                f"{time.perf_counter() - t0:.1f} s"
            )
            for run in args.runs:
                name, workers = run.split(":")
                cfg = write_config(work, csv, name, int(workers), args.chunksize)
                cmd = [sys.executable, __file__, "--one", str(cfg), str(size)]
                proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
                r = json.loads(proc.stdout.strip().splitlines()[-1])
                print(
                    f"{size:>9} {name:>10} {workers:>7} {r['rate']:>10,.0f} "
                    f"{r['seconds']:>7.1f} {r['main']:>8.0f} {r['total']:>8.0f}",
                    flush=True,
                )
            csv.unlink()


if __name__ == "__main__":
    main()
