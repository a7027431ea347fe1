"""The Taylor ranking of a trained network's inputs, for every kind of network.

:func:`rank_network` ranks on held-out training rows (:func:`hepnn.nets.split.held_out`:
every event of a k-fold network, each by the model that did not see it, folds
combined by their summed weights; the odd ids of a parity split; the test rows of
a random split), in the standardised inputs the network sees (arXiv:1803.08782):

* flat inputs: ⟨|t_α|⟩ of all configured orders, ranked together
  (:func:`hepnn.taylor.mean_abs_taylor`);
* jet inputs: first order, ⟨|∂y/∂x|⟩ per image pixel (one value per channel) or per
  constituent feature and slot, aggregated over the real constituents into one
  value per feature (:func:`hepnn.taylor.mean_abs_gradient`), drawn as a map.

:func:`epoch_monitor` is the training hook that records the ranking on validation
rows after every epoch (flat inputs).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hepnn.models.forward import INFERENCE_THREADS, torch_threads
from hepnn.nets.split import VAL, held_out, route, split_codes
from hepnn.plotting import save_figure
from hepnn.taylor import (
    TaylorMonitor,
    TaylorResult,
    aggregate_constituents,
    first_order_result,
    image_map_figure,
    mean_abs_gradient,
    mean_abs_taylor,
    prepared_inputs,
    sequence_map_figure,
    write_ranking,
)

if TYPE_CHECKING:
    from hepnn.config import TaylorConfig
    from hepnn.nets.data import TrainingData
    from hepnn.nets.spec import SplitSpec
    from hepnn.nets.store import LoadedNetwork
    from hepnn.nets.train import EpochHook

#: Jets at most in a first-order map.
MAX_MAP_ROWS = 2000


def combine(results: list[TaylorResult]) -> TaylorResult:
    """Combine rankings of disjoint event sets (k folds) by their summed weights."""
    if len(results) == 1:
        return results[0]
    total = sum(r.sum_weights for r in results)
    values = sum(r.values * r.sum_weights for r in results) / total
    return dataclasses.replace(
        results[0],
        values=np.asarray(values, dtype=np.float64),
        n_events=sum(r.n_events for r in results),
        sum_weights=total,
    )


def _rows(loaded: LoadedNetwork, data: TrainingData, n: int, seed: int) -> np.ndarray:
    """Held-out, usable rows; a seeded subsample of ``n`` when there are more."""
    rows = np.flatnonzero(held_out(data.ids, loaded.split) & data.usable)
    if rows.size > n:
        rng = np.random.default_rng(seed)
        rows = np.sort(rng.choice(rows, size=n, replace=False))
    return rows


def rank_network(
    loaded: LoadedNetwork,
    data: TrainingData,
    settings: TaylorConfig,
    *,
    seed: int,
    progress: bool = False,
) -> TaylorResult:
    """The Taylor ranking of a flat network on (a seeded subsample of) its held-out rows."""
    rows = _rows(loaded, data, settings.events, seed)
    which = route(data.ids[rows], loaded.split)
    results = []
    for m, (model, builder) in enumerate(zip(loaded.models, loaded.builders, strict=True)):
        sub = rows[which == m]
        if sub.size == 0:
            continue
        x = builder.transform(data.raw[sub])
        w = data.weights[sub] if settings.use_weights and data.weights is not None else None
        with prepared_inputs():
            results.append(
                mean_abs_taylor(
                    model, x, weights=w, orders=tuple(settings.orders), output=settings.output,
                    input_names=builder.input_names, progress=progress,
                )
            )  # fmt: skip
    if not results:
        msg = f"{loaded.path}: no held-out rows to rank"
        raise ValueError(msg)
    return combine(results)


def jet_map(
    name: str, loaded: LoadedNetwork, data: TrainingData, stem: Path, formats: tuple[str, ...]
) -> tuple[TaylorResult, list[Path]]:
    """First-order map of a jet network on its held-out jets, drawn to ``stem``; its ranking.

    Each jet is differentiated through the model that scores it (k-fold routing);
    the maps of the models are combined by their per-element event counts.
    """
    rows = np.flatnonzero(held_out(data.ids, loaded.split) & data.usable)[:MAX_MAP_ROWS]
    which = route(data.ids[rows], loaded.split)
    builder = loaded.builder
    maps = []
    for m, (model, fitted) in enumerate(zip(loaded.models, loaded.builders, strict=True)):
        sub = rows[which == m]
        if sub.size == 0:
            continue
        x = fitted.transform(data.raw[sub])
        # sequences: only real constituents count (the last input channel is the mask)
        mask = None if loaded.kind == "image" else np.repeat((x[:, -1:] != 0), x.shape[1], axis=1)
        with prepared_inputs():
            maps.append(mean_abs_gradient(model, x, mask=mask, check_inputs=False, return_norm=True))
    if not maps:
        msg = f"{loaded.path}: no held-out jets to map"
        raise ValueError(msg)
    gmap, den = maps[0]
    if len(maps) > 1:  # k folds: weight each model's map by its per-element counts
        den = sum(norm for _, norm in maps)
        num = sum(np.where(norm > 0, g, 0.0) * norm for g, norm in maps)
        gmap = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)
    if loaded.kind == "image":
        fig = image_map_figure(gmap, list(builder.settings.channels), name)
        values = gmap.sum(axis=(1, 2))  # one summed sensitivity per channel
    else:
        fmap = gmap[:-1]  # the mask channel is not a physics input
        values = aggregate_constituents(fmap, den[:-1])
        fig = sequence_map_figure(fmap, builder.input_names, name)
    files = save_figure(fig, stem, formats) if formats else []
    return first_order_result(builder.input_names, values, int(rows.size)), files


def write_network_ranking(
    name: str,
    loaded: LoadedNetwork,
    data: TrainingData,
    settings: TaylorConfig,
    outdir: Path,
    *,
    seed: int,
    formats: tuple[str, ...] = ("png", "pdf"),
    progress: bool = False,
) -> list[Path]:
    """Rank network ``name`` and write ``outdir/ranking/<name>.{csv,json,md,<formats>}``.

    Jet networks also get ``ranking/<name>_taylor_map.<formats>``. The derivatives
    are taken on one pinned intra-op thread: float32 reductions depend on the thread
    count, and ``hepnn rank`` must reproduce a run's table bit for bit on any machine.
    """
    files: list[Path] = []
    with torch_threads(INFERENCE_THREADS):
        if loaded.kind == "flat":
            result = rank_network(loaded, data, settings, seed=seed, progress=progress)
            top = settings.top
        else:
            stem = outdir / "ranking" / f"{name}_taylor_map"
            result, files = jet_map(name, loaded, data, stem, formats)
            top = None
    paths = write_ranking(result, outdir, name, top, plot_top=settings.plot_top, formats=formats)
    return files + list(paths.values())


def epoch_monitor(
    name: str,
    split: SplitSpec,
    data: TrainingData,
    settings: TaylorConfig,
    *,
    seed: int,
) -> tuple[EpochHook, TaylorMonitor]:
    """A training hook recording the ranking of the first model on its validation rows.

    Every ``settings.monitor_every`` epochs, on ``settings.monitor_events`` seeded
    validation rows, orders up to 2. Returns the hook and the monitor
    (``monitor.history``).
    """
    val = np.flatnonzero((split_codes(data.ids, split, 0) == VAL) & data.usable)
    if val.size > settings.monitor_events:
        rng = np.random.default_rng(seed)
        val = np.sort(rng.choice(val, size=settings.monitor_events, replace=False))
    monitor = TaylorMonitor(
        None, name, every=settings.monitor_every, n_events=settings.monitor_events, seed=seed,
        orders=tuple(o for o in settings.orders if o <= 2), output=settings.output, formats=(),
    )  # fmt: skip

    def hook(epoch: int, model: Any, builder: Any) -> None:
        if monitor.history and epoch % monitor.every != 0:
            return  # not due: skip preparing the inputs
        if monitor.input_names is None:
            monitor.input_names = list(builder.input_names)
        with prepared_inputs():
            monitor(epoch, model, builder.transform(data.raw[val]))

    return hook, monitor
