"""Explaining a trained network: its Taylor ranking, written for a review.

:func:`rank_network` ranks the terms <|t_α|> of a saved network on events it
did not train on (a k-fold model: every event, by the fold model that did not
see it, folds combined weighted by their event counts; a parity split: the odd
event ids), in the standardised inputs the network sees.
:func:`epoch_monitor` adapts :class:`hepnn.ranking.TaylorMonitor` to the
training loop's ``epoch_callback``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from hepnn.config import TaylorConfig
from hepnn.modelio import load_model
from hepnn.taylor import TaylorResult, TaylorWarning, mean_abs_taylor


@contextlib.contextmanager
def _prepared_inputs() -> Iterator[None]:
    """Silence the 'unstandardised inputs' heuristic for FeaturePrep outputs.

    They are standardised on the training events by construction; heavy-tailed
    features (e.g. DER_pt_tot) still have a large std on a subsample, which the
    heuristic (meant to catch raw physics values) would flag.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="inputs look unstandardised", category=TaylorWarning
        )
        yield


def _holdout(ids: np.ndarray, method: str, folds: int) -> np.ndarray:
    if method == "parity":
        return ids % 2 == 1
    return np.ones(ids.shape[0], dtype=bool)


def rank_network(
    model_path: str | Path,
    columns: Mapping[str, np.ndarray],
    settings: TaylorConfig,
    *,
    seed: int,
    weights: np.ndarray | None = None,
    progress: bool = False,
) -> TaylorResult:
    """The Taylor ranking of a saved network on (a seeded subsample of) ``columns``."""
    loaded = load_model(model_path)
    n = len(next(iter(columns.values())))
    ids = np.asarray(columns[loaded.id_column]) if loaded.id_column in columns else np.arange(n)
    candidates = np.flatnonzero(_holdout(ids, loaded.method, loaded.folds))
    if candidates.size > settings.events:
        rng = np.random.default_rng(seed)
        candidates = np.sort(rng.choice(candidates, size=settings.events, replace=False))
    results: list[TaylorResult] = []
    for i, (model, prep) in enumerate(zip(loaded.models, loaded.preps, strict=True)):
        rows = candidates[ids[candidates] % loaded.folds == i] if loaded.kfold else candidates
        if rows.size == 0:
            continue
        x = prep.transform({f: np.asarray(columns[f])[rows] for f in prep.features})
        w = None if weights is None or not settings.use_weights else weights[rows]
        with _prepared_inputs():
            result = mean_abs_taylor(
                model,
                x,
                weights=w,
                orders=tuple(settings.orders),
                output=settings.output,
                input_names=prep.input_names,
                progress=progress,
            )
        results.append(result)
    return combine(results)


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


def epoch_monitor(
    outdir: Path,
    name: str,
    settings: TaylorConfig,
    columns: Mapping[str, np.ndarray],
    id_column: str,
    folds: int,
    *,
    seed: int,
) -> tuple[Callable[[int, Any, Any], None], Any]:
    """A training ``epoch_callback`` recording the ranking on validation events.

    Records the first model trained (fold 0 of a k-fold training, whose validation
    events are fold 1; for a parity split the odd ids), every
    ``settings.monitor_every`` epochs, on ``settings.monitor_events`` of them.
    Returns the callback and the monitor (``monitor.history``).
    """
    from hepnn.ranking import TaylorMonitor

    ids = np.asarray(columns[id_column])
    val = np.flatnonzero(ids % folds == 1)
    rng = np.random.default_rng(seed)
    if val.size > settings.monitor_events:
        val = np.sort(rng.choice(val, size=settings.monitor_events, replace=False))
    monitor = TaylorMonitor(
        None,
        name,
        every=settings.monitor_every,
        n_events=settings.monitor_events,
        seed=seed,
        orders=tuple(o for o in settings.orders if o <= 2),
        output=settings.output,
        formats=(),
    )
    state = {"last": 0, "done": False}

    def callback(epoch: int, model: Any, prep: Any) -> None:
        if state["done"] or epoch <= state["last"]:
            state["done"] = True  # the next fold started: keep the first fold's history
            return
        state["last"] = epoch
        if monitor.history and epoch % monitor.every != 0:
            return  # not due: skip preparing the inputs
        if monitor.input_names is None:
            monitor.input_names = list(prep.input_names)
        x = prep.transform({f: np.asarray(columns[f])[val] for f in prep.features})
        with _prepared_inputs():
            monitor(epoch, model, x)

    return callback, monitor


def write_outputs(
    outdir: Path, name: str, result: TaylorResult, settings: TaylorConfig, formats: tuple[str, ...]
) -> list[Path]:
    """Write the ranking tables and plot for one network into ``outdir/ranking``."""
    from hepnn.ranking import write_ranking

    paths = write_ranking(
        result, outdir, name, settings.top, plot_top=settings.plot_top, formats=formats
    )
    return list(paths.values())
