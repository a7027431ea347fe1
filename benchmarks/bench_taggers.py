"""Tagger scoring speed on the shipped top-tagging jets: inputs, forward passes, the padding cost.

    python benchmarks/bench_taggers.py [--models OUT/models] [--repeat 3]

Times, per tagger and best of ``--repeat``, on one intra-op thread:

* building the inputs (``TaggerPrep.raw`` + ``transform``) for all 1,600 jets;
* the forward pass as :func:`hepnn.jets.taggers.score_batch` does it (fixed
  micro-batches of ``TAGGER_MICRO_BATCH`` rows, the last one zero-padded);
* the baseline timed in the same run: one unpadded forward pass over all jets
  (what ``coffea.ml_tools`` does; not chunk-independent).

Without ``--models`` two untrained taggers of the shipped architectures are
built (timing does not depend on the weights).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import uproot

from hepnn.jets.taggers import (
    TAGGER_MICRO_BATCH,
    LoadedTagger,
    TaggerPrep,
    TaggerSpec,
    _forward,
    fatjet_batch,
    get_tagger,
    save_tagger,
)
from hepnn.models import build
from hepnn.samples import load_samples, resolve_samples

REPO = Path(__file__).resolve().parents[1]


def _best(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=Path, help="a models folder of a toptag run")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        ds = resolve_samples(load_samples(REPO / "samples" / "toptag.yaml"), Path(tmp))
        with uproot.open(ds["toptag"].files[0].root_path) as f:
            batch = fatjet_batch(f["Events"].arrays(library="ak"))
        assert batch is not None
        print(f"{len(batch)} jets, micro-batch {TAGGER_MICRO_BATCH}, 1 thread")
        for kind, name in (("image", "cnn2d"), ("sequence", "cnn1d")):
            if args.models is not None:
                path = args.models / name
            else:
                spec = TaggerSpec(kind=kind)
                settings = spec.input_settings()
                prep = TaggerPrep.fit(kind, settings, TaggerPrep(kind, settings).raw(batch))
                model = build(spec.arch, **prep.arch_inputs()).eval()
                path = save_tagger(Path(tmp) / name, model, prep, spec, {}, "", [])
            tagger = get_tagger(path)
            x = tagger.prep.transform(tagger.prep.raw(batch))
            t_in = _best(lambda t=tagger: t.prep.transform(t.prep.raw(batch)), args.repeat)
            t_pad = _best(
                lambda t=tagger, x=x: _forward(t.model, x, TAGGER_MICRO_BATCH, sigmoid=True),
                args.repeat,
            )

            def one_pass(t: LoadedTagger = tagger, x: np.ndarray = x) -> np.ndarray:
                with torch.inference_mode():
                    return torch.sigmoid(t.model(torch.from_numpy(x))).numpy()

            t_one = _best(one_pass, args.repeat)
            n = len(batch)
            print(
                f"{name}: inputs {n / t_in:,.0f} jets/s, padded forward {n / t_pad:,.0f} jets/s, "
                f"one unpadded pass {n / t_one:,.0f} jets/s (padded / unpadded time {t_pad / t_one:.2f})"
            )


if __name__ == "__main__":
    main()
