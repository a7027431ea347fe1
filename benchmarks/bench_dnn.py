"""DNN quality and inference overhead on the real Higgs-challenge sample.

Run on demand (not part of the tests)::

    python benchmarks/bench_dnn.py                 # 1 seed, 1 thread, ~30 s
    python benchmarks/bench_dnn.py --seeds 1234 1 2 3
    python benchmarks/bench_dnn.py --heldout       # the config's DNN vs boosted trees, k-fold

(a) Validation AUC of the higgs config's DNN (3x128 tanh, default
    :class:`hepnn.nets.spec.TrainingSpec`) against sklearn's ``HistGradientBoostingClassifier`` (default settings) on the
    same 30 features and the same parity split (train on even ``EventId``,
    evaluate on odd). The GBT is run twice: on the raw features with missing
    values as NaN (its native missing-value handling) and on exactly the DNN's
    prepared inputs. Note the DNN also early-stops on the odd events.
(b) ``network_score`` (feature preparation + cache lookup + pinned threads +
    padded micro-batches) against a bare ``model(x)`` forward on the already
    prepared tensor, best of ``--repeat``; the ratio is the overhead (target <= 1.2).
(c) Whether the intra-op thread count changes the bits of an *unpinned* padded
    forward pass (the reason ``network_score`` pins one thread).

``--heldout`` instead trains ``networks.dnn`` of ``--config`` (default
``configs/higgs.yaml``: its inputs, transforms, training and k-fold split) on the CSV
and prints :func:`hepnn.nets.report.heldout_comparison`: the DNN and a
``HistGradientBoostingClassifier`` trained per fold on the rows that fold's model
may use, both scored on the rows no model of theirs trained on, AUC, weighted AUC,
best AMS at the challenge totals, and the AUC difference with a paired bootstrap —
the ``vs_boosted_trees`` block ``hepnn run`` writes to ``metrics.json``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import roc_auc_score

from hepnn.models.forward import MICRO_BATCH, padded_apply, torch_threads
from hepnn.nets.apply import network_score
from hepnn.nets.data import TrainingData
from hepnn.nets.flat import MISSING_VALUE, FlatBuilder
from hepnn.nets.spec import FlatInputs, NetworkSpec
from hepnn.nets.store import save_network
from hepnn.nets.train import train_network

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CSV = REPO / "samples" / "higgs_challenge_18k.csv"


def read_csv(path: Path) -> dict[str, np.ndarray]:
    """The Higgs-challenge CSV as numpy columns."""
    data = np.genfromtxt(path, delimiter=",", names=True, dtype=None, encoding="utf-8")
    return {name: data[name] for name in data.dtype.names}


def best_of(fn: Callable[[], object], repeat: int) -> float:
    """Minimum wall time of ``repeat`` calls (robust against a shared machine)."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def dnn_spec(features: list[str], seed: int, threads: int, epochs: int | None) -> NetworkSpec:
    """The higgs config's network on ``features``, parity split (train even, validate odd)."""
    training = {"seed": seed, "threads": threads} | ({} if epochs is None else {"epochs": epochs})
    return NetworkSpec.model_validate(
        {
            "inputs": {"kind": "flat", "features": features, "missing_flags": "auto"},
            "params": {"hidden": [128, 128, 128], "activation": "tanh", "dropout": 0.1},
            "training": training,
            "split": {"method": "parity", "id_column": "EventId"},
        }
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--csv", type=Path, default=DEFAULT_CSV, help="Higgs-challenge CSV")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1234], help="DNN seeds")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--epochs", type=int, default=None, help="override the default epochs")
    parser.add_argument(
        "--tile", type=int, default=6, help="events for timing = 18k x TILE (default 6)"
    )
    parser.add_argument("--repeat", type=int, default=7, help="timing repetitions (best of)")
    parser.add_argument(
        "--heldout", action="store_true", help="only: the config's DNN vs boosted trees, k-fold"
    )
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "higgs.yaml")
    parser.add_argument("--json", type=Path, default=None, help="--heldout: also write the result")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    console = Console(width=110)
    if args.heldout:
        heldout(args, console)
        return

    cols = read_csv(args.csv)
    features = [n for n in cols if n.startswith(("DER_", "PRI_"))]
    labels = (cols["Label"] == "s").astype(np.int64)
    ids, weights = cols["EventId"], cols["Weight"]
    even = ids % 2 == 0
    odd = ~even

    # ---------------------------------------------------------------- (a) AUC
    quality = Table(title=f"(a) validation AUC, parity split ({int(odd.sum())} odd events)")
    for col in ("model", "AUC", "AUC weighted", "fit time [s]", "epochs (best)"):
        quality.add_column(col, justify="right" if col != "model" else "left")
    workdir = Path(tempfile.mkdtemp(prefix="bench_dnn_"))
    model_dir = workdir / "model"
    dnn_aucs = []
    first = None
    builder = FlatBuilder(FlatInputs(features=features))
    data = TrainingData(
        builder.raw(cols), labels, ids.astype(np.int64), weights.astype(np.float64),
        np.ones(len(labels), dtype=bool), [],
    )  # fmt: skip
    for i, seed in enumerate(args.seeds):
        spec = dnn_spec(features, seed, args.threads, args.epochs)
        t0 = time.perf_counter()
        result = train_network("dnn", spec, data, progress=False)
        elapsed = time.perf_counter() - t0
        if i == 0:
            save_network(model_dir, "dnn", result, data)
        first = first or result
        m = result.models[0].metrics
        dnn_aucs.append(m["val_auc"])
        quality.add_row(
            f"DNN 3x128 tanh, seed {seed}",
            f"{m['val_auc']:.4f}",
            f"{m['val_auc_weighted']:.4f}",
            f"{elapsed:.1f}",
            f"{m['epochs_run']} ({m['best_epoch']})",
        )
    assert first is not None
    prep = first.models[0].builder

    raw = np.stack([cols[f].astype(np.float64) for f in features], axis=1)
    raw[raw == MISSING_VALUE] = np.nan
    prepared = prep.transform(prep.raw(cols))
    gbt_aucs = {}
    for name, x in (("raw, NaN missing", raw), ("DNN inputs", prepared)):
        t0 = time.perf_counter()
        gbt = HistGradientBoostingClassifier(random_state=0).fit(x[even], labels[even])
        elapsed = time.perf_counter() - t0
        p = gbt.predict_proba(x[odd])[:, 1]
        gbt_aucs[name] = roc_auc_score(labels[odd], p)
        quality.add_row(
            f"HistGradientBoosting ({name})",
            f"{gbt_aucs[name]:.4f}",
            f"{roc_auc_score(labels[odd], p, sample_weight=weights[odd]):.4f}",
            f"{elapsed:.1f}",
            "",
        )
    console.print(quality)
    best_gbt = max(gbt_aucs.values())
    verdict = "DNN >= GBT" if min(dnn_aucs) >= best_gbt else "DNN < GBT"
    console.print(
        f"DNN AUC min/mean over seeds {min(dnn_aucs):.4f}/{np.mean(dnn_aucs):.4f}"
        f" vs best GBT {best_gbt:.4f}: {verdict}\n"
    )

    # ------------------------------------------------------------ (b) overhead
    tiled = {k: np.tile(v, args.tile) for k, v in cols.items() if k != "Label"}
    model = first.models[0].model
    x = torch.from_numpy(prep.transform(prep.raw(tiled)))
    n = x.shape[0]

    def bare() -> None:
        with torch.inference_mode():
            model(x)

    network_score(model_dir, tiled)  # warm the cache: one load per process
    t_bare = best_of(bare, args.repeat)
    t_score = best_of(lambda: network_score(model_dir, tiled), args.repeat)
    t_prep = best_of(lambda: prep.transform(prep.raw(tiled)), args.repeat)
    t_padded = best_of(lambda: padded_apply(model, x, MICRO_BATCH), args.repeat)
    speed = Table(
        title=f"(b) inference on {n:,} events, {args.threads} thread(s), best of {args.repeat}"
    )
    for col in ("step", "time [ms]", "events/s", "ratio to bare"):
        speed.add_column(col, justify="right" if col != "step" else "left")
    for label, t in (
        ("bare model(x), one call", t_bare),
        ("network_score (all included)", t_score),
        ("  of which: feature preparation", t_prep),
        (f"  of which: padded_apply, {MICRO_BATCH}-row micro-batches", t_padded),
    ):
        speed.add_row(label, f"{t * 1e3:.1f}", f"{n / t:,.0f}", f"{t / t_bare:.2f}")
    console.print(speed)
    console.print(
        f"network_score / bare forward = {t_score / t_bare:.2f} (target <= 1.2); "
        f"network_score / padded_apply alone = {t_score / t_padded:.2f}\n"
    )

    # ------------------------------------------------------- (c) thread counts
    ref = None
    threads = Table(title="(c) unpinned padded forward: events whose bits differ from 1 thread")
    threads.add_column("threads", justify="right")
    threads.add_column("differing events", justify="right")
    for t in (1, 2, 3, 4):
        with torch_threads(t):
            out = padded_apply(model, x[:18000], MICRO_BATCH).numpy()
        ref = out if ref is None else ref
        threads.add_row(
            str(t), f"{int((out.view(np.uint32) != ref.view(np.uint32)).sum())} / {out.size}"
        )
    console.print(threads)
    console.print("network_score pins 1 thread, so its bits do not depend on the caller's count.")


def heldout(args: argparse.Namespace, console: Console) -> None:
    """The config's DNN against boosted trees on held-out events (see the module docstring)."""
    import json

    from hepnn.config import load_config
    from hepnn.nets.report import heldout_comparison

    cfg = load_config(args.config)
    spec = cfg.networks["dnn"]
    cols = read_csv(args.csv)
    raw = FlatBuilder(spec.inputs).raw(cols)
    data = TrainingData(
        raw, (cols["Label"] == "s").astype(np.int64), cols["EventId"].astype(np.int64),
        cols["Weight"].astype(np.float64), np.ones(len(raw), dtype=bool), [],
        {f: raw[:, j] for j, f in enumerate(spec.inputs.features)},
    )  # fmt: skip
    t0 = time.perf_counter()
    result = train_network("dnn", spec, data, progress=False)
    out = heldout_comparison(result, data, seed=cfg.seed, challenge=True)
    out["val_auc"] = [m["val_auc"] for m in result.metrics["models"]]
    out["seconds"] = time.perf_counter() - t0
    table = Table(title=f"held-out events ({out['rows']}), {spec.split.method} split")
    for col in ("classifier", "AUC", "AUC weighted", "best AMS (challenge totals)"):
        table.add_column(col, justify="right" if col != "classifier" else "left")
    for name in ("network", "boosted_trees", "boosted_trees_same_inputs"):
        if name not in out:
            continue
        e = out[name]
        table.add_row(name, f"{e['auc']:.4f}", f"{e['auc_weighted']:.4f}", f"{e['ams_best']:.3f}")
    console.print(table)
    d = out["auc_difference"]
    console.print(
        f"AUC(DNN) - AUC(GBT) = {d['difference']:+.4f} +- {d['standard_error']:.4f} "
        f"(paired bootstrap, {d['resamples']} resamples); mean validation AUC "
        f"{np.mean(out['val_auc']):.4f}; {out['seconds']:.0f} s"
    )
    if "auc_difference_same_inputs" in out:
        d = out["auc_difference_same_inputs"]
        console.print(
            f"AUC(DNN) - AUC(GBT on the DNN's own inputs) = {d['difference']:+.4f} "
            f"+- {d['standard_error']:.4f}"
        )
    if args.json is not None:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
