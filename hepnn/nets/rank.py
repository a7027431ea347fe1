"""The Taylor ranking of a trained network's inputs, for every kind of network.

:func:`rank_network` ranks on held-out training rows (:func:`hepnn.nets.split.held_out`:
every event of a k-fold network, each by the model that did not see it, folds
combined by their summed weights; the odd ids of a parity split; the test rows of
a random split), in the standardised inputs the network sees (arXiv:1803.08782)
or, with ``taylor.inputs: unscaled``, in the features' original units:

* flat inputs: ⟨|t_α|⟩ of all configured orders, ranked together
  (:func:`hepnn.taylor.mean_abs_taylor`), physics features only (helper inputs,
  i.e. missing flags, are reported apart by :func:`rank_helpers`), each term
  averaged over the events where all its features are defined, with an event
  bootstrap and the spread over retrained models (ensemble members or k-fold
  models) as uncertainties;
* jet inputs: first order, ⟨|∂y/∂x|⟩ per image pixel (one value per channel) or per
  constituent feature and slot, aggregated over the real constituents into one
  value per feature (:func:`hepnn.taylor.mean_abs_gradient`), drawn as a map.

:func:`epoch_monitor` is the training hook that records the ranking on validation
rows after every epoch (flat inputs).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hepnn.models.forward import INFERENCE_THREADS, torch_threads
from hepnn.nets.split import VAL, held_out, route, split_codes
from hepnn.plotting import save_figure
from hepnn.taylor import (
    GradientSums,
    TaylorMonitor,
    TaylorResult,
    aggregate_constituents,
    bootstrap_counts,
    first_order_result,
    gradient_sums,
    image_map_figure,
    mean_abs_taylor,
    prepared_inputs,
    sequence_map_figure,
    write_helpers,
    write_ranking,
)

if TYPE_CHECKING:
    from hepnn.config import TaylorConfig
    from hepnn.nets.data import TrainingData
    from hepnn.nets.flat import FlatBuilder
    from hepnn.nets.inputs import InputBuilder
    from hepnn.nets.spec import SplitSpec
    from hepnn.nets.store import LoadedNetwork
    from hepnn.nets.train import EpochHook

#: Jets at most in a first-order map.
MAX_MAP_ROWS = 2000


def combine(results: list[TaylorResult]) -> TaylorResult:
    """Combine rankings of disjoint event sets (k folds) by their summed weights.

    With ``defined`` masks each term is combined by its own summed defined
    weights; bootstrap sums (replicas drawn over all the events) add up.
    """
    if len(results) == 1:
        return results[0]
    total = sum(r.sum_weights for r in results)
    defined = None
    if all(r.defined_weights is None for r in results):
        values = sum(r.values * r.sum_weights for r in results) / total
    else:
        dws = [
            np.full(len(r.values), r.sum_weights)
            if r.defined_weights is None
            else r.defined_weights
            for r in results
        ]
        defined = sum(dws)
        num = sum(np.where(d > 0, r.values, 0.0) * d for r, d in zip(results, dws, strict=True))
        values = np.where(defined > 0, num / np.where(defined > 0, defined, 1.0), np.nan)
    boot_sums = boot_weights = None
    if all(r.boot_sums is not None for r in results):
        boot_sums = sum(r.boot_sums for r in results)
        boot_weights = sum(r.boot_weights for r in results)
    return dataclasses.replace(
        results[0],
        values=np.asarray(values, dtype=np.float64),
        n_events=sum(r.n_events for r in results),
        sum_weights=total,
        defined_weights=defined,
        boot_sums=boot_sums,
        boot_weights=boot_weights,
    )


def _rows(loaded: LoadedNetwork, data: TrainingData, n: int, seed: int) -> np.ndarray:
    """Held-out, usable rows; a seeded subsample of ``n`` when there are more."""
    rows = np.flatnonzero(held_out(data.ids, loaded.split) & data.usable)
    if rows.size > n:
        rng = np.random.default_rng(seed)
        rows = np.sort(rng.choice(rows, size=n, replace=False))
    return rows


def physics_inputs(builder: InputBuilder) -> list[int]:
    """Indices of the inputs that are physics features (not helper inputs such as flags)."""
    helpers = set(builder.helper_inputs())
    return [i for i, name in enumerate(builder.input_names) if name not in helpers]


def input_scale(builder: FlatBuilder) -> np.ndarray:
    """Per-input sigma of the standardisation: the features' training std, 1 for helpers."""
    std = np.asarray(builder.std, dtype=np.float64)[builder.kept]
    n_in = len(builder.input_names)
    return np.concatenate([std, np.ones(n_in - std.size)])


def _rank_rows(
    loaded: LoadedNetwork,
    data: TrainingData,
    rows: np.ndarray,
    settings: TaylorConfig,
    *,
    counts: np.ndarray | None = None,
    helpers: bool = False,
    progress: bool = False,
) -> tuple[TaylorResult, list[tuple[int, TaylorResult]]]:
    """Rank ``rows``, each by the model that scores it: the combined result and per model.

    ``helpers``: first order in the helper inputs only; otherwise the physics
    terms of ``settings.orders``, masked to defined values, with bootstrap
    ``counts`` ``(B, rows.size)`` if given.
    """
    which = route(data.ids[rows], loaded.split)
    results = []
    for m, (model, builder) in enumerate(zip(loaded.models, loaded.builders, strict=True)):
        pick = np.flatnonzero(which == m)
        if pick.size == 0:
            continue
        sub = rows[pick]
        raw = data.raw[sub]
        x = builder.transform(raw)
        w = data.weights[sub] if settings.use_weights and data.weights is not None else None
        if helpers:
            feats, orders = [builder.input_names.index(h) for h in builder.helper_inputs()], (1,)
        else:
            feats, orders = physics_inputs(builder), tuple(settings.orders)
        with prepared_inputs():
            result = mean_abs_taylor(
                model, x, weights=w, orders=orders, output=settings.output,
                input_names=builder.input_names, progress=progress, features=feats,
                defined=None if helpers else builder.defined(raw),
                scale=input_scale(builder) if settings.inputs == "unscaled" else None,  # type: ignore[arg-type]
                bootstrap=None if counts is None else counts[:, pick],
            )  # fmt: skip
        results.append((m, result))
    if not results:
        msg = f"{loaded.path}: no held-out rows to rank"
        raise ValueError(msg)
    return combine([r for _, r in results]), results


def rank_network(
    loaded: LoadedNetwork,
    data: TrainingData,
    settings: TaylorConfig,
    *,
    seed: int,
    members: Sequence[LoadedNetwork] = (),
    progress: bool = False,
) -> TaylorResult:
    """The Taylor ranking of a flat network on (a seeded subsample of) its held-out rows.

    Only terms made of physics features are ranked (helper inputs such as missing
    flags are excluded, the derivatives are still those of the full network);
    each term is averaged over the events where all its features are defined.
    Uncertainties (:mod:`hepnn.taylor.uncertainty`):

    * ``err_stat``: ``settings.bootstrap`` event-bootstrap replicas of the ranked
      rows, counts drawn from ``(seed, 1)``;
    * ``err_train``: with ensemble ``members`` (the other members' loaded
      networks), the spread of the members' rankings, each computed like this one
      on the same rows (every row by the member's model that did not train on it);
      without members, for a k-fold network, the spread of the fold models, each on
      its own held-out rows (so it also holds their statistical noise); else none.
    """
    rows = _rows(loaded, data, settings.events, seed)
    counts = (
        bootstrap_counts(rows.size, settings.bootstrap, (seed, 1)) if settings.bootstrap else None
    )
    result, per_model = _rank_rows(loaded, data, rows, settings, counts=counts, progress=progress)
    if members:
        values = [result.values]
        for member in members:
            mrows = rows[held_out(data.ids[rows], member.split)]
            values.append(_rank_rows(member, data, mrows, settings, progress=progress)[0].values)
        labels = [f"member{i}" for i in range(len(values))]
        basis = (
            "ensemble members, each ranked like the nominal network on the same events "
            "(every event by the member's model that did not train on it)"
        )
    elif len(per_model) > 1:
        values = [r.values for _, r in per_model]
        labels = [f"fold{m}" for m, _ in per_model]
        basis = (
            "k-fold models, each on its own held-out events (a fraction of the ranked "
            "events, so the spread also holds their statistical noise)"
        )
    else:
        return result
    return dataclasses.replace(
        result, train_values=np.stack(values), train_labels=labels, train_basis=basis
    )


def rank_helpers(
    loaded: LoadedNetwork, data: TrainingData, settings: TaylorConfig, *, seed: int
) -> TaylorResult | None:
    """First-order ⟨|∂y/∂h|⟩ of the helper inputs on the ranked rows; None without helpers."""
    if not loaded.builder.helper_inputs():
        return None
    rows = _rows(loaded, data, settings.events, seed)
    return _rank_rows(loaded, data, rows, settings, helpers=True)[0]


def _jet_maps(
    loaded: LoadedNetwork, data: TrainingData, rows: np.ndarray, counts: np.ndarray | None
) -> list[tuple[int, GradientSums]]:
    """Gradient sums of each model of ``loaded`` on the held-out ``rows`` it scores."""
    which = route(data.ids[rows], loaded.split)
    out = []
    for m, (model, fitted) in enumerate(zip(loaded.models, loaded.builders, strict=True)):
        pick = np.flatnonzero(which == m)
        if pick.size == 0:
            continue
        x = fitted.transform(data.raw[rows[pick]])
        # sequences: only real constituents count (the last input channel is the mask)
        mask = None if loaded.kind == "image" else np.repeat((x[:, -1:] != 0), x.shape[1], axis=1)
        with prepared_inputs():
            sums = gradient_sums(
                model, x, mask=mask, check_inputs=False,
                bootstrap=None if counts is None else counts[:, pick],
            )  # fmt: skip
        out.append((m, sums))
    if not out:
        msg = f"{loaded.path}: no held-out jets to map"
        raise ValueError(msg)
    return out


def _combined_map(maps: list[tuple[int, GradientSums]]) -> tuple[np.ndarray, np.ndarray]:
    """The map of several models, weighted by their per-element counts, and its counts."""
    gmap, den = maps[0][1].mean(), maps[0][1].den
    if len(maps) > 1:  # k folds: weight each model's map by its per-element counts
        pairs = [(s.mean(), s.den) for _, s in maps]
        den = sum(norm for _, norm in pairs)
        num = sum(np.where(norm > 0, g, 0.0) * norm for g, norm in pairs)
        gmap = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)
    return gmap, den


def _jet_values(kind: str, gmap: np.ndarray, den: np.ndarray) -> np.ndarray:
    """One value per input: summed image sensitivity per channel, or per constituent feature."""
    if kind == "image":
        return gmap.sum(axis=(1, 2))
    return aggregate_constituents(gmap[:-1], den[:-1])  # the mask channel is no physics input


def write_map(path: Path, gmap: np.ndarray, kind: str, labels: list[str], title: str) -> Path:
    """The drawn map as ``.npz`` (``map``, ``kind``, ``labels``, ``title``): ``hepnn plot`` redraws it."""
    import io

    from hepnn.files import atomic_bytes

    buf = io.BytesIO()
    np.savez(buf, map=gmap, kind=np.str_(kind), labels=np.array(labels, dtype=np.str_),
             title=np.str_(title))  # fmt: skip
    atomic_bytes(path, buf.getvalue())
    return path


def jet_map(
    name: str,
    loaded: LoadedNetwork,
    data: TrainingData,
    stem: Path,
    formats: tuple[str, ...],
    *,
    members: Sequence[LoadedNetwork] = (),
    bootstrap: int = 0,
    seed: int = 0,
) -> tuple[TaylorResult, list[Path]]:
    """First-order map of a jet network on its held-out jets, drawn to ``stem``; its ranking.

    Each jet is differentiated through the model that scores it (k-fold routing);
    the maps of the models are combined by their per-element event counts. The
    per-input values get the same uncertainties as a flat ranking: ``bootstrap``
    replicas of the jets (counts from ``(seed, 1)``; the per-jet gradients are
    resampled, not recomputed), and the spread over the ensemble ``members`` on
    the same jets or, without members, over the k-fold models on their own jets.
    """
    rows = np.flatnonzero(held_out(data.ids, loaded.split) & data.usable)[:MAX_MAP_ROWS]
    counts = bootstrap_counts(rows.size, bootstrap, (seed, 1)) if bootstrap and rows.size else None
    builder = loaded.builder
    maps = _jet_maps(loaded, data, rows, counts)
    gmap, den = _combined_map(maps)
    values = _jet_values(loaded.kind, gmap, den)
    if loaded.kind == "image":
        drawn, labels = gmap, list(builder.settings.channels)
        fig = image_map_figure(drawn, labels, name)
    else:
        drawn, labels = gmap[:-1], list(builder.input_names)  # the mask channel is not drawn
        fig = sequence_map_figure(drawn, labels, name)
    files = save_figure(fig, stem, formats) if formats else []
    files.append(write_map(stem.with_suffix(".npz"), drawn, loaded.kind, labels, name))
    result = first_order_result(builder.input_names, values, int(rows.size))
    boot = None
    if counts is not None:
        b_num = sum(s.boot_num for _, s in maps)
        b_den = sum(s.boot_den for _, s in maps)
        reps = GradientSums(gmap, den, b_num, b_den).replica_means()
        assert reps is not None
        assert b_den is not None
        boot = np.stack([_jet_values(loaded.kind, r, d) for r, d in zip(reps, b_den, strict=True)])
    train, labels, basis = None, [], ""
    if members:
        train = [values]
        for member in members:
            mrows = rows[held_out(data.ids[rows], member.split)]
            train.append(
                _jet_values(member.kind, *_combined_map(_jet_maps(member, data, mrows, None)))
            )
        labels = [f"member{i}" for i in range(len(train))]
        basis = "ensemble members on the same jets (each jet by the model that did not train on it)"
    elif len(maps) > 1:
        train = [_jet_values(loaded.kind, s.mean(), s.den) for _, s in maps]
        labels = [f"fold{m}" for m, _ in maps]
        basis = "k-fold models, each on its own held-out jets (includes their statistical noise)"
    result = dataclasses.replace(
        result,
        boot_sums=boot,
        boot_weights=None if boot is None else np.ones_like(boot),
        train_values=None if train is None else np.stack(train),
        train_labels=labels,
        train_basis=basis,
    )
    return result, files


def write_network_ranking(
    name: str,
    loaded: LoadedNetwork,
    data: TrainingData,
    settings: TaylorConfig,
    outdir: Path,
    *,
    seed: int,
    members: Sequence[LoadedNetwork] = (),
    formats: tuple[str, ...] = ("png", "pdf"),
    progress: bool = False,
) -> list[Path]:
    """Rank network ``name`` and write ``outdir/ranking/<name>.{csv,json,md,<formats>}``.

    ``members``: the other ensemble members' loaded networks (training variation,
    see :func:`rank_network`). Flat networks with helper inputs (missing flags)
    also get ``ranking/<name>_helpers.{csv,md}`` (not ranked, for information).
    Jet networks also get ``ranking/<name>_taylor_map.<formats>``. The derivatives
    are taken on one pinned intra-op thread: float32 reductions depend on the thread
    count, and ``hepnn rank`` must reproduce a run's table bit for bit on any machine.
    """
    files: list[Path] = []
    with torch_threads(INFERENCE_THREADS):
        if loaded.kind == "flat":
            result = rank_network(
                loaded, data, settings, seed=seed, members=members, progress=progress
            )
            top = settings.top
            helpers = rank_helpers(loaded, data, settings, seed=seed)
            if helpers is not None:
                files += list(write_helpers(helpers, outdir, name).values())
        else:
            stem = outdir / "ranking" / f"{name}_taylor_map"
            result, files = jet_map(
                name, loaded, data, stem, formats,
                members=members, bootstrap=settings.bootstrap, seed=seed,
            )  # fmt: skip
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
    validation rows, orders up to 2, physics inputs only. Returns the hook and the monitor
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
            monitor.features = physics_inputs(builder)  # helper inputs are never ranked
        with prepared_inputs():
            monitor(epoch, model, builder.transform(data.raw[val]))

    return hook, monitor
