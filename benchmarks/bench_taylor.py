"""Benchmark: Taylor coefficients, hepnn (closed form / autograd) vs tayloranalysis.

Model: MLP 30 -> 3x128 tanh -> logit, score = sigmoid(logit); standard-normal
inputs. All timings in the same process, same model, events, threads:

* ``tayloranalysis`` 0.2.14 on the full batch, as its README shows
  (``extend_model`` + ``get_tc`` with every index tuple once), reduced to
  ``mean |t|``;
* ``hepnn.taylor.mean_abs_taylor(method="mlp")`` (closed form) and
  ``method="autograd"`` (generic), chunked;
* the "floor": a deterministic forward pass (``hepnn.models.forward.padded_apply``)
  scaled by the FLOP ratio closed-form / forward (multiply-adds of the GEMMs,
  counted below; elementwise work ignored, so the floor is optimistic); and
  the generic path's own floor, the same for its FLOPs (1.6x the closed
  form's for this MLP: every Hessian-vector product runs the hidden layers
  down and up again), which bounds what any autograd implementation reaches;
* third order (4,960 terms) on fewer events;
* peak resident memory of the hepnn call above the resident set before it,
  at two sample sizes (Linux ``VmHWM`` after resetting it via
  ``/proc/self/clear_refs``).

Run: ``python benchmarks/bench_taylor.py --events 100000 --events3 10000``
(``--threads 1`` on a shared machine: two OpenMP threads on two busy cores
make every timing, the forward pass included, erratic by 10x).
tayloranalysis is GPL and used here only as a baseline; hepnn never imports it.
"""

from __future__ import annotations

import argparse
import itertools
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hepnn.models import MLP
from hepnn.models.forward import padded_apply
from hepnn.taylor import mean_abs_taylor, taylor_terms

N_INPUTS = 30
HIDDEN = (128, 128, 128)


class Score(nn.Module):
    """sigmoid(logit): the output tayloranalysis differentiates."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(x))


def _status(field: str) -> int:
    """A ``kB`` field of /proc/self/status in bytes (0 if unavailable)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def timed(fn: Callable[[], Any], repeat: int = 1) -> tuple[float, Any]:
    """Best wall time of ``repeat`` calls and the last result."""
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def probe_memory(method: str, n: int, args: argparse.Namespace) -> str:
    """Peak RSS increase of one ranking call, measured in a fresh interpreter.

    The child builds the model and the events, resets ``VmHWM`` to the current
    RSS through ``/proc/self/clear_refs``, runs the call and reports
    ``VmHWM - RSS_before``. A fresh process is needed: allocators keep freed
    memory, so a second measurement in the same process reads ~0.
    """
    cmd = [sys.executable, __file__, "--probe", method, "--events", str(n)]
    cmd += ["--chunk-size", str(args.chunk_size), "--seed", str(args.seed)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("PEAK")]
    return lines[-1].split(maxsplit=1)[1] if lines else "n/a"


def _run_probe(method: str, model: nn.Module, x: torch.Tensor, args: argparse.Namespace) -> None:
    terms12 = taylor_terms(N_INPUTS, (1, 2))
    clear = Path("/proc/self/clear_refs")
    try:
        clear.write_text("5")
    except OSError:
        print("PEAK n/a")
        return
    before = _status("VmRSS")
    if method == "tayloranalysis":
        run_tayloranalysis(model, x, terms12)
    else:
        mean_abs_taylor(model, x, orders=(1, 2), method=method, chunk_size=args.chunk_size)
    print(f"PEAK {(_status('VmHWM') - before) / 2**20:.0f} MB")


def flops_per_event(widths: list[int], n: int, what: str) -> int:
    """Multiply-add count x 2 of the GEMMs per event.

    forward: sum of fan_in * fan_out. Closed form (orders 1+2): the forward pass,
    the backward vectors (sum over layers of fan_in * fan_out again), the
    Jacobians of hidden layers 2.. (n * w_{l-1} * w_l each) and one Hessian
    term per hidden layer (n^2 * w_l). Generic (orders 1+2, any model by
    autograd): forward and backward, then per feature one Hessian-vector
    product, which runs every layer but the output layer twice -- down (the
    forward Jacobian column) and up (the second-order adjoint); the up pass is
    what the closed form replaces by its small Hessian terms.
    """
    layers = list(itertools.pairwise(widths))
    fwd = sum(a * b for a, b in layers)
    if what == "forward":
        return 2 * fwd
    if what == "generic":
        return 2 * (2 * fwd + n * 2 * sum(a * b for a, b in layers[:-1]))
    hidden = widths[1:-1]
    jac = sum(n * a * b for a, b in layers[1:-1])
    hess = sum(n * n * w for w in hidden)
    return 2 * (2 * fwd + jac + hess)


def run_tayloranalysis(
    model: nn.Module, x: torch.Tensor, terms: list[tuple[int, ...]]
) -> np.ndarray:
    import tayloranalysis as ta

    wrapped = ta.extend_model(Score(model))
    tcs = wrapped.get_tc(
        "x",
        {"x": x.clone()},
        tc_idx_list=terms,
        reduce_func=lambda t: t.detach().abs().double().mean(),
    )
    return np.array([float(tcs[t]) for t in terms])


def rel_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-300)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=100_000, help="events for orders 1+2")
    parser.add_argument(
        "--events3", type=int, default=10_000, help="events for third order (0: skip)"
    )
    parser.add_argument("--chunk-size", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=1, help="best of N for the hepnn timings")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    parser.add_argument("--no-oracle", action="store_true", help="skip tayloranalysis")
    parser.add_argument(
        "--third-generic", action="store_true", help="also time autograd third order"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--probe", choices=["mlp", "autograd", "tayloranalysis"], help=argparse.SUPPRESS
    )
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model = MLP(N_INPUTS, HIDDEN, activation="tanh").eval()
    widths = [N_INPUTS, *HIDDEN, 1]
    x = torch.randn(args.events, N_INPUTS, generator=torch.Generator().manual_seed(args.seed))
    if args.probe:
        _run_probe(args.probe, model, x, args)
        return
    terms12 = taylor_terms(N_INPUTS, (1, 2))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"MLP {N_INPUTS}-{'x'.join(map(str, HIDDEN))} tanh + sigmoid, {args.events} events, "
        f"{len(terms12)} terms (orders 1+2), torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, load average {load:.1f} on {os.cpu_count()} cores"
    )

    # forward pass and the floor
    t_fwd, _ = timed(lambda: padded_apply(model, x), repeat=3)
    f_fwd = flops_per_event(widths, N_INPUTS, "forward")
    f_fast = flops_per_event(widths, N_INPUTS, "closed")
    floor = t_fwd * f_fast / f_fwd
    print(
        f"  forward pass (padded, deterministic)  {t_fwd:8.3f} s  "
        f"({f_fwd * args.events / t_fwd / 1e9:.0f} GFLOP/s)"
    )
    print(
        f"  floor = forward x FLOP ratio {f_fast / f_fwd:.1f} "
        f"({f_fast / 1e6:.2f} vs {f_fwd / 1e6:.3f} MFLOP/event)  {floor:8.3f} s"
    )

    def rank(method: str, n: int, orders: tuple[int, ...] = (1, 2)) -> Any:
        return mean_abs_taylor(
            model, x[:n], orders=orders, method=method, chunk_size=args.chunk_size
        )

    n = args.events
    t_fast, r_fast = timed(lambda: rank("mlp", n), args.repeat)
    t_gen, r_gen = timed(lambda: rank("autograd", n), args.repeat)
    print(
        f"  hepnn closed form (method='mlp')       {t_fast:8.3f} s  ({t_fast / floor:.2f}x floor)"
    )
    floor_gen = t_fwd * flops_per_event(widths, N_INPUTS, "generic") / f_fwd
    print(
        f"  hepnn generic autograd                 {t_gen:8.3f} s  ({t_gen / floor_gen:.2f}x its "
        f"floor {floor_gen:.3f} s: {flops_per_event(widths, N_INPUTS, 'generic') / f_fast:.2f}x "
        "the closed form's FLOPs)"
    )
    print(f"  max rel. diff closed form vs autograd  {rel_diff(r_fast.values, r_gen.values):.1e}")
    if not args.no_oracle:
        t_ta, v_ta = timed(lambda: run_tayloranalysis(model, x, terms12))
        print(f"  tayloranalysis, full batch             {t_ta:8.3f} s")
        print(f"  max rel. diff vs tayloranalysis        {rel_diff(r_fast.values, v_ta):.1e}")
        print(
            f"  speed-up vs tayloranalysis: closed form {t_ta / t_fast:.1f}x (target >= 6), "
            f"generic {t_ta / t_gen:.1f}x (target >= 4; {t_ta / floor_gen:.1f}x at its floor)"
        )
    # peak memory at two sizes (fresh processes): flat in N for hepnn (streaming)
    sizes = (max(n // 4, 1), n)
    methods = ["mlp", "autograd"] + ([] if args.no_oracle else ["tayloranalysis"])
    for method in methods:
        peaks = " / ".join(probe_memory(method, k, args) for k in sizes)
        print(f"  peak RSS increase {method:15s} at {sizes[0]} / {sizes[1]} events: {peaks}")

    if args.events3 <= 0:
        return
    n3 = min(args.events3, n)
    terms3 = taylor_terms(N_INPUTS, (3,))
    print(f"third order: {len(terms3)} terms, {n3} events")
    t3_fast, r3_fast = timed(lambda: rank("mlp", n3, (3,)), args.repeat)
    print(f"  hepnn closed form                      {t3_fast:8.3f} s")
    if args.third_generic:
        t3_gen, r3_gen = timed(lambda: rank("autograd", n3, (3,)))
        print(f"  hepnn generic autograd                 {t3_gen:8.3f} s")
        print(
            f"  max rel. diff closed form vs autograd  {rel_diff(r3_fast.values, r3_gen.values):.1e}"
        )
    if not args.no_oracle:
        t3_ta, v3_ta = timed(lambda: run_tayloranalysis(model, x[:n3], terms3))
        print(f"  tayloranalysis, full batch             {t3_ta:8.3f} s")
        print(f"  max rel. diff vs tayloranalysis        {rel_diff(r3_fast.values, v3_ta):.1e}")
        print(f"  speed-up closed form vs tayloranalysis {t3_ta / t3_fast:.1f}x (target >= 4)")


if __name__ == "__main__":
    main()
