"""Jet-image throughput: vectorised recipe vs a per-jet ``np.histogram2d`` loop.

Run on demand (not part of the tests)::

    python benchmarks/bench_images.py                    # ~100k jets, ~20 s
    python benchmarks/bench_images.py --jets 200000 --chunk 20000

Both run the full recipe (Δφ wrap, pT centroid, principal-axis rotation, flips by
half-plane pT sums, 33 x 33 pixels, sum normalisation) on the 1,600 real top /
QCD jets tiled to ``--jets``. The vectorised :func:`hepnn.jets.images.jet_images`
is fed ``--chunk`` jets per call (as a coffea chunk would); the baseline
:func:`hepnn.jets.images.jet_images_reference` loops over jets in Python (one
``np.linalg.eigh`` and one ``np.histogram2d`` per jet) and is timed on
``--baseline-jets`` jets only. Single thread; CPU time of this process is
reported beside wall time because the machine may be shared. The outputs are
checked to agree on the baseline jets.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from hepnn.jets.images import jet_images, jet_images_reference  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DIR = REPO / "samples" / "toptag"


def best_of(fn: Callable[[], object], repeat: int) -> tuple[float, float]:
    """Best (wall, cpu) seconds of ``repeat`` calls."""
    wall, cpu = np.inf, np.inf
    for _ in range(repeat):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall = min(wall, time.perf_counter() - w0)
        cpu = min(cpu, time.process_time() - c0)
    return wall, cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DIR, help="ParT folder with tl_*.npy")
    ap.add_argument("--jets", type=int, default=102_400, help="jets for the vectorised builder")
    ap.add_argument("--chunk", type=int, default=10_000, help="jets per jet_images call")
    ap.add_argument("--baseline-jets", type=int, default=4_000, help="jets for the per-jet loop")
    ap.add_argument("--pixels", type=int, default=33)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    v = np.load(args.data / "tl_pf_vectors.npy")
    p = np.load(args.data / "tl_pf_points.npy")
    m = np.load(args.data / "tl_pf_mask.npy")
    pt = np.hypot(v[:, 0], v[:, 1])
    reps = -(-args.jets // len(pt))
    tiled = [np.tile(a, (reps, 1))[: args.jets] for a in (pt, p[:, 0], p[:, 1])]
    mask = np.tile(m, (reps, 1, 1))[: args.jets]
    n_const = float((mask != 0).sum() / args.jets)
    kw = {"n_eta": args.pixels, "n_phi": args.pixels}

    def vectorised() -> None:
        for s in range(0, args.jets, args.chunk):
            sl = slice(s, s + args.chunk)
            jet_images(tiled[0][sl], tiled[1][sl], tiled[2][sl], mask=mask[sl], **kw)

    nb = min(args.baseline_jets, args.jets)
    base = [a[:nb] for a in tiled]

    def baseline() -> None:
        jet_images_reference(*base, mask[:nb], **kw)

    fast = jet_images(*base, mask=mask[:nb], **kw)
    ref = jet_images_reference(*base, mask[:nb], **kw)
    max_diff = float(np.abs(fast - ref).max())

    vw, vc = best_of(vectorised, args.repeat)
    bw, bc = best_of(baseline, max(1, args.repeat - 1))
    rate_v = (args.jets / vw, args.jets / vc)
    rate_b = (nb / bw, nb / bc)
    print(
        f"jets: {args.jets} ({n_const:.1f} constituents/jet), chunk {args.chunk}, {args.pixels}x{args.pixels} pixels"
    )
    print(f"{'':<28}{'jets/s (wall)':>15}{'jets/s (cpu)':>15}")
    print(f"{'vectorised jet_images':<28}{rate_v[0]:>15,.0f}{rate_v[1]:>15,.0f}")
    print(f"{'per-jet histogram2d loop':<28}{rate_b[0]:>15,.0f}{rate_b[1]:>15,.0f}")
    print(
        f"ratio (vectorised / loop): wall {rate_v[0] / rate_b[0]:.1f}x, cpu {rate_v[1] / rate_b[1]:.1f}x"
    )
    print(f"max |difference| on the {nb} baseline jets: {max_diff:.2e}")


if __name__ == "__main__":
    main()
