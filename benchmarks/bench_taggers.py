"""Jet-network scoring speed on the shipped top-tagging jets: inputs, forward passes, the padding cost.

    python benchmarks/bench_taggers.py [--models OUT/models] [--repeat 3]

Times, per jet network and best of ``--repeat``, on one intra-op thread:

* building the inputs (``InputBuilder.raw`` + ``transform``) for all 1,600 jets;
* the forward pass as :func:`hepnn.nets.apply.jet_scores` does it (fixed
  micro-batches of the builder's ``micro_batch`` rows, the last one zero-padded);
* the baseline timed in the same run: one unpadded forward pass over all jets
  (what ``coffea.ml_tools`` does; not chunk-independent).

Without ``--models`` two untrained networks of the shipped architectures
(``configs/toptag.yaml``) are built (timing does not depend on the weights).
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

from hepnn.config import load_config
from hepnn.jets.batch import JetBatch, fatjet_batch
from hepnn.models import build
from hepnn.nets.apply import forward, get_network
from hepnn.nets.data import TrainingData
from hepnn.nets.inputs import make_builder
from hepnn.nets.spec import NetworkSpec
from hepnn.nets.store import LoadedNetwork, save_network
from hepnn.nets.train import FittedModel, TrainResult
from hepnn.samples import load_samples, resolve_samples

REPO = Path(__file__).resolve().parents[1]


def _best(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def _untrained(path: Path, name: str, spec: NetworkSpec, batch: JetBatch) -> Path:
    """An untrained network of ``spec`` saved to ``path`` (inputs fitted on ``batch``)."""
    builder = make_builder(spec.inputs)
    raw = builder.raw(batch)
    fitted = builder.fit(raw)
    torch.manual_seed(spec.training.seed)
    model = build(spec.arch, **spec.params, **fitted.arch_inputs()).eval()
    n = len(batch)
    data = TrainingData(raw, np.zeros(n, np.int64), np.arange(n), None, np.ones(n, bool), [])
    result = TrainResult(spec, [FittedModel(model, fitted, [], 1, {})], {})
    return save_network(path, name, result, data)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=Path, help="a models folder of a toptag run")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = load_config(REPO / "configs" / "toptag.yaml")
    with tempfile.TemporaryDirectory() as tmp:
        ds = resolve_samples(load_samples(cfg.samples), Path(tmp))
        with uproot.open(ds["toptag"].files[0].root_path) as f:
            batch = fatjet_batch(f["Events"].arrays(library="ak"))
        assert batch is not None
        print(f"{len(batch)} jets, 1 thread")
        for name, spec in cfg.networks.items():
            if args.models is not None:
                path = args.models / name
            else:
                path = _untrained(Path(tmp) / name, name, spec, batch)
            net = get_network(path)
            builder = net.builder
            x = builder.transform(builder.raw(batch))
            t_in = _best(lambda b=builder: b.transform(b.raw(batch)), args.repeat)
            t_pad = _best(
                lambda n=net, x=x: forward(n.models[0], x, n.builder.micro_batch), args.repeat
            )

            def one_pass(n: LoadedNetwork = net, x: np.ndarray = x) -> np.ndarray:
                with torch.inference_mode():
                    return torch.sigmoid(n.models[0](torch.from_numpy(x))).numpy()

            t_one = _best(one_pass, args.repeat)
            n = len(batch)
            print(
                f"{name} ({net.kind}, micro-batch {builder.micro_batch}): inputs {n / t_in:,.0f} jets/s, "
                f"padded forward {n / t_pad:,.0f} jets/s, one unpadded pass {n / t_one:,.0f} jets/s "
                f"(padded / unpadded time {t_pad / t_one:.2f})"
            )


if __name__ == "__main__":
    main()
