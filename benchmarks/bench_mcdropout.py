"""MC-dropout cost against plain forward passes, and streamed peak memory.

Times ``MCDropout(model, T).scores(x)`` against ``T`` deterministic forward passes
of the nominal network (``padded_apply``, same events, same micro-batch size) in
the same run and prints the ratio (target <= 1.3x: a replica should cost one
forward pass). Then measures peak memory of the streamed pipeline (chunks ->
replica scores -> ``replica_hists``) at two event counts, each in a fresh
process, to show that it does not grow with the number of events.

    python benchmarks/bench_mcdropout.py                      # T=100, 100k events
    python benchmarks/bench_mcdropout.py --samples 100 --events 20000 --memory-events 20000 80000
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
import tracemalloc

import hist
import numpy as np
import torch

from hepnn.bands import MCDropout, replica_hists
from hepnn.models import build
from hepnn.models.forward import padded_apply


def _model(dropout: float) -> torch.nn.Module:
    torch.manual_seed(0)
    return build(
        "mlp", n_inputs=30, hidden=[128, 128, 128], activation="tanh", dropout=dropout
    ).eval()


def _events(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 30)).astype(np.float32)


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def time_run(args: argparse.Namespace) -> None:
    model = _model(args.dropout)
    x = _events(args.events, seed=1)
    xt = torch.from_numpy(x)

    def baseline() -> None:
        for _ in range(args.samples):
            padded_apply(lambda b: torch.sigmoid(model(b)), xt, args.batch_size)

    print(
        f"T={args.samples}, N={args.events}, MLP 30-3x128, batch {args.batch_size}, "
        f"threads {torch.get_num_threads()}, best of {args.repeat}"
    )
    samplers = {m: MCDropout(model, samples=args.samples, seed=1, method=m) for m in args.methods}
    # Interleaved repeats, best of each: a load change on the shared machine hits
    # baseline and MC dropout alike.
    best = dict.fromkeys(["baseline", *samplers], float("inf"))
    for _ in range(args.repeat):
        best["baseline"] = min(best["baseline"], _timed(baseline))
        for m, mc in samplers.items():
            t = _timed(lambda mc=mc: mc.scores(x, batch_size=args.batch_size))
            best[m] = min(best[m], t)
    print(f"  {args.samples} deterministic forward passes: {best['baseline']:8.2f} s")
    for m in samplers:
        print(
            f"  MC dropout, method={m:<5}:       {best[m]:8.2f} s   ratio {best[m] / best['baseline']:5.2f}x"
        )


def memory_child(n_events: int, args: argparse.Namespace) -> dict[str, float]:
    """Stream ``n_events`` in chunks through MC dropout into histograms; report peaks."""
    model = _model(args.dropout)
    mc = MCDropout(model, samples=args.samples, seed=1)
    hists: dict[str, hist.Hist] = {}
    h_nom = hist.Hist(hist.axis.Regular(50, 0.0, 1.0, name="score"), storage=hist.storage.Weight())

    def chunk(i: int, n: int) -> None:
        x = _events(n, seed=1000 + i)  # generated per chunk, as a reader would
        nominal = mc.nominal(x, batch_size=args.batch_size)
        replicas = {"mc": mc.scores(x, batch_size=args.batch_size)}
        out = replica_hists("dnn", nominal, replicas, np.full(n, "signal"), np.ones(n), ["signal"])
        for key, h in out.items():  # summed over chunks
            hists[key] = hists[key] + h if key in hists else h
        h_nom.fill(score=nominal)

    chunk(0, min(args.chunk, n_events))  # warm-up: allocator pools, lazy imports
    rss_start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    tracemalloc.start()
    done, i = min(args.chunk, n_events), 1
    while done < n_events:
        n = min(args.chunk, n_events - done)
        chunk(i, n)
        done, i = done + n, i + 1
    _, py_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss_end = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    filled = hists["score_dnn_mcdropout"].sum().value
    if filled != args.samples * n_events:  # every event of every replica filled
        msg = f"filled {filled} entries, expected {args.samples * n_events}"
        raise RuntimeError(msg)
    return {
        "events": n_events,
        "rss_start_mb": rss_start,
        "rss_peak_mb": rss_end,
        "py_peak_mb": py_peak / 2**20,
    }


def memory_run(args: argparse.Namespace) -> None:
    print(
        f"streamed memory: T={args.samples}, chunks of {args.chunk} events, fresh process per count"
    )
    for n in args.memory_events:
        cmd = [sys.executable, __file__, "--memory-child", str(n), *_passthrough(args)]
        res = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
        print(
            f"  N={n:>8}: peak RSS {res['rss_peak_mb']:7.1f} MB (after first chunk {res['rss_start_mb']:7.1f} MB),"
            f" Python/numpy peak {res['py_peak_mb']:6.1f} MB"
        )


def _passthrough(args: argparse.Namespace) -> list[str]:
    return [
        f"--samples={args.samples}",
        f"--batch-size={args.batch_size}",
        f"--threads={args.threads}",
        f"--dropout={args.dropout}",
        f"--chunk={args.chunk}",
    ]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--samples", type=int, default=100, help="MC-dropout replicas T")
    p.add_argument("--events", type=int, default=100_000, help="events for the timing")
    p.add_argument("--batch-size", type=int, default=1024, help="fixed micro-batch size")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--repeat", type=int, default=3, help="best of this many timings")
    p.add_argument("--methods", nargs="+", default=["fold"], choices=["fold", "hooks"])
    p.add_argument(
        "--memory-events",
        type=int,
        nargs="*",
        default=[20_000, 100_000],
        help="event counts for the memory check (none: skip)",
    )
    p.add_argument("--chunk", type=int, default=10_000, help="events per streamed chunk")
    p.add_argument("--memory-child", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.memory_child is not None:
        print(json.dumps(memory_child(args.memory_child, args)))
        return
    time_run(args)
    if args.memory_events:
        memory_run(args)


if __name__ == "__main__":
    main()
