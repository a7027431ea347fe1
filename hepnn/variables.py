"""A trained network as a deterministic event column.

>>> from hepnn.variables import network_score
>>> events["dnn"] = network_score("models/higgs", events)   # in a coffea processor

Determinism: an event's score is bitwise the same whatever the chunking of the
input, the intra-op thread count of the caller, or the process, because

* the features are prepared elementwise (:class:`hepnn.features.FeaturePrep`);
* the network sees fixed-size, zero-padded micro-batches
  (:func:`hepnn.inference.padded_apply`);
* torch is pinned to **one** intra-op thread while scoring. Measured with torch
  2.13 (MKL/oneDNN, AVX-512): for micro-batches of 1,024 rows, 1, 2 and 4
  threads give the same bits but 3 threads differ in ~10 of 5,000 events
  (the row partition then does not fall on kernel block boundaries), so the
  thread count *can* change bits and is pinned. The caller's thread count is
  restored afterwards; a lock serialises scoring between Python threads of one
  process so that they do not undo each other's pinning.

Bits are not promised across CPU instruction sets or torch versions.

Models are loaded once per process and cached (LRU, :data:`CACHE_SIZE` entries)
under ``(resolved model.json path, its sha256, its mtime, loader)``; a hit also checks
that the ``.pt`` files' mtimes and sizes are unchanged, otherwise the model is
reloaded (and its sha256 re-verified). Each call costs a ``stat`` and a hash of
the small ``model.json``, not a reload.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, overload

import numpy as np
import torch
from torch import nn

from hepnn.errors import ConfigError, InputError, ModelError
from hepnn.features import FeaturePrep
from hepnn.modelio import LoadedModel, load_from_json, model_json_path, parse_model_json
from hepnn.models.forward import (
    INFERENCE_THREADS,
    MICRO_BATCH,
    inference_lock,
    padded_apply,
    torch_threads,
)

_T = TypeVar("_T")

#: Number of models kept in the per-process cache.
CACHE_SIZE = 8

_cache: OrderedDict[tuple[str, str, int, str], tuple[tuple[tuple[int, int], ...], Any]] = (
    OrderedDict()
)
_cache_lock = threading.Lock()
_stats = {"hits": 0, "loads": 0}


# -------------------------------------------------------------------- cache
def _pt_stats(json_path: Path, meta: dict[str, Any]) -> tuple[tuple[int, int], ...]:
    """(mtime, size) of each weight file named in ``meta``."""
    out = []
    for entry in meta["models"]:
        try:
            st = (json_path.parent / entry["file"]).stat()
        except OSError:
            return ()  # missing now: never matches, forces a reload (and its error)
        out.append((st.st_mtime_ns, st.st_size))
    return tuple(out)


@overload
def get_model(model_path: str | os.PathLike[str], *, loader: None = None) -> LoadedModel: ...


@overload
def get_model(model_path: str | os.PathLike[str], *, loader: Callable[[Path, bytes], _T]) -> _T: ...


def get_model(
    model_path: str | os.PathLike[str],
    *,
    loader: Callable[[Path, bytes], Any] | None = None,
) -> Any:
    """Load a model directory once per process (cached; see the module docstring).

    Parameters
    ----------
    model_path
        Model directory, its ``model.json`` or one of its ``.pt`` files.
    loader
        ``loader(json_path, raw_json_bytes)`` building the loaded object; default
        :func:`hepnn.modelio.load_from_json` (a :class:`LoadedModel`). Jet taggers
        pass :func:`hepnn.jets.taggers.load_tagger` and share this cache; the
        result must have a ``meta`` attribute (the parsed ``model.json``).

    Returns
    -------
    LoadedModel
        (or what ``loader`` returns) Shared between callers: do not modify it.
    """
    json_path = model_json_path(model_path)
    try:
        mtime = json_path.stat().st_mtime_ns
        raw = json_path.read_bytes()
    except OSError as exc:
        msg = f"cannot read {json_path}: {exc.strerror}"
        raise ModelError(msg) from None
    load = loader or load_from_json
    key = (str(json_path), hashlib.sha256(raw).hexdigest(), mtime, load.__qualname__)
    with _cache_lock:
        hit = _cache.get(key)
        if hit is not None and hit[0] == _pt_stats(json_path, hit[1].meta):
            _cache.move_to_end(key)
            _stats["hits"] += 1
            return hit[1]
        # Stat the weight files *before* reading them: a file replaced during
        # the load then shows a changed stat at the next call and is re-verified.
        stats = _pt_stats(json_path, parse_model_json(json_path, raw))
        loaded = load(json_path, raw)
        _stats["loads"] += 1
        # Drop stale versions of the same file, then bound the cache size.
        for old in [k for k in _cache if k[0] == key[0]]:
            del _cache[old]
        _cache[key] = (stats, loaded)
        while len(_cache) > CACHE_SIZE:
            _cache.popitem(last=False)
        return loaded


def cache_info() -> dict[str, int]:
    """``{"hits", "loads", "size"}`` of the model cache of this process."""
    with _cache_lock:
        return {**_stats, "size": len(_cache)}


def clear_cache() -> None:
    """Empty the model cache and reset its counters."""
    with _cache_lock:
        _cache.clear()
        _stats.update(hits=0, loads=0)


# ------------------------------------------------------------------ columns
class EventColumns(Mapping[str, Any]):
    """Read-only, converting view of event columns.

    Wraps a mapping of arrays (dict of numpy arrays, pandas DataFrame) or an
    awkward record array (coffea events with flat fields, e.g. ``BaseSchema``).
    Each column is converted once to numpy; awkward option values (``None``)
    become masked entries, which :class:`~hepnn.features.FeaturePrep` treats as
    missing.
    """

    def __init__(self, source: Any) -> None:
        self._source = source
        self._converted: dict[str, Any] = {}
        try:
            import awkward as ak

            self._is_ak = isinstance(source, ak.Array)
        except ImportError:  # pragma: no cover - awkward is a dependency
            self._is_ak = False
        if self._is_ak:
            self._names = list(source.fields)
        elif isinstance(source, Mapping) or hasattr(source, "__getitem__"):
            self._names = None
        else:
            msg = f"cannot read event columns from a {type(source).__name__}"
            raise InputError(msg)

    def __contains__(self, name: object) -> bool:
        if self._names is not None:
            return name in self._names
        try:
            return name in self._source
        except TypeError:
            return False

    def __getitem__(self, name: str) -> Any:
        if name in self._converted:
            return self._converted[name]
        if name not in self:
            raise KeyError(name)
        value = self._source[name]
        if self._is_ak or _is_awkward(value):
            value = _awkward_to_numpy(value, name)
        elif not isinstance(value, np.ma.MaskedArray):
            value = np.asarray(value)  # e.g. a pandas Series: positional from here on
        self._converted[name] = value
        return value

    def __iter__(self) -> Iterator[str]:
        return iter(self._names if self._names is not None else list(self._source))

    def __len__(self) -> int:
        return len(self._names) if self._names is not None else len(self._source)


def _is_awkward(value: Any) -> bool:
    return type(value).__module__.startswith("awkward")


def _awkward_to_numpy(value: Any, name: str) -> np.ndarray:
    import awkward as ak

    if value.ndim != 1:
        msg = f"column {name!r} is not flat (ndim {value.ndim}); select one value per event first"
        raise InputError(msg)
    # allow_missing: option-type (None) entries come back masked = missing.
    return ak.to_numpy(value, allow_missing=True)


def _event_ids(columns: EventColumns, event_ids: Any, id_column: str) -> np.ndarray:
    if event_ids is None:
        if id_column not in columns:
            msg = f"k-fold model needs event ids: pass event_ids or provide column {id_column!r}"
            raise ModelError(msg)
        event_ids = columns[id_column]
    if isinstance(event_ids, np.ma.MaskedArray):
        if np.ma.getmaskarray(event_ids).any():
            msg = "event ids contain missing values"
            raise InputError(msg)
        event_ids = event_ids.data
    ids = np.asarray(event_ids)
    if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
        msg = f"event ids must be a flat integer array, got {ids.dtype} with shape {ids.shape}"
        raise InputError(msg)
    return ids.astype(np.int64, copy=False)


# ------------------------------------------------------------------ scoring
def score_models(
    models: Sequence[nn.Module],
    preps: Sequence[FeaturePrep],
    columns_or_events: Any,
    event_ids: Any = None,
    *,
    batch_size: int = MICRO_BATCH,
    output: Literal["sigmoid", "logit"] = "sigmoid",
) -> np.ndarray:
    """Score events with in-memory models (the engine of :func:`network_score`).

    With one model every event gets its score; with ``k`` models event ``e``
    gets the score of model ``event_ids[e] % k``. Models must be in eval mode.
    """
    if output not in ("sigmoid", "logit"):
        msg = f"output must be 'sigmoid' or 'logit', got {output!r}"
        raise ConfigError(msg)
    columns = (
        columns_or_events
        if isinstance(columns_or_events, EventColumns)
        else EventColumns(columns_or_events)
    )

    def apply(model: nn.Module, x: np.ndarray) -> np.ndarray:
        return _apply(model, x, batch_size, output)[None]

    return _routed(models, preps, columns, event_ids, "EventId", apply, 1)[0]


def _apply(model: nn.Module, x: np.ndarray, batch_size: int, output: str) -> np.ndarray:
    """Scores of prepared inputs ``x`` in fixed-size micro-batches."""
    fn: Callable[[torch.Tensor], torch.Tensor] = (
        model if output == "logit" else (lambda t: torch.sigmoid(model(t)))
    )
    return padded_apply(fn, torch.from_numpy(x), batch_size).numpy()


def network_score(
    model_path: str | os.PathLike[str],
    columns_or_events: Any,
    *,
    batch_size: int = MICRO_BATCH,
    output: Literal["sigmoid", "logit"] = "sigmoid",
    event_ids: Any = None,
) -> np.ndarray:
    """The network's score of every event, as a deterministic column.

    Parameters
    ----------
    model_path
        Model directory (or its ``model.json`` / ``.pt``), written by
        :func:`hepnn.modelio.save_model` or :func:`hepnn.train.train`.
    columns_or_events
        A mapping of feature name to 1D array, or an awkward record array with
        flat fields (coffea ``BaseSchema`` events). ``-999.0``, NaN, masked
        values and awkward ``None`` are missing values.
    batch_size
        Micro-batch size. Scores are bitwise independent of the chunking for a
        fixed ``batch_size``, not across different ``batch_size`` values.
    output
        ``"sigmoid"`` (probability-like score in [0, 1]) or ``"logit"``.
    event_ids
        Integer event ids, needed by a k-fold model to route each event to the
        model that did not train on it; default: the model's id column
        (``EventId``) from the events.

    Returns
    -------
    numpy.ndarray
        float32, one score per event.

    Raises
    ------
    ModelError
        Model missing or tampered with, or a feature it needs absent from the data.
    InputError
        A feature value that cannot be prepared (e.g. ``inf``), or a non-flat column.
    """
    loaded = get_model(model_path)
    columns = EventColumns(columns_or_events)
    if loaded.kfold:
        event_ids = _event_ids(columns, event_ids, loaded.id_column)
    return score_models(
        loaded.models,
        loaded.preps,
        columns,
        event_ids,
        batch_size=batch_size,
        output=output,
    )


def _routed(
    models: Sequence[nn.Module],
    preps: Sequence[FeaturePrep],
    columns: EventColumns,
    event_ids: Any,
    id_column: str,
    apply: Callable[[nn.Module, np.ndarray], np.ndarray],
    n_rows: int,
) -> np.ndarray:
    """Apply ``apply(model, prepared_inputs) -> (n_rows, n)`` with events routed to models.

    One model: every event. ``k`` models: event ``e`` goes to model
    ``event_ids[e] % k`` (the fold that did not train on it). Runs on the pinned
    inference thread count.
    """
    with inference_lock, torch_threads(INFERENCE_THREADS):
        if len(models) == 1:
            return apply(models[0], preps[0].transform(columns))
        ids = _event_ids(columns, event_ids, id_column)
        fold = ids % len(models)
        out = np.empty((n_rows, ids.shape[0]), dtype=np.float32)
        for i, (model, prep) in enumerate(zip(models, preps, strict=True)):
            rows = np.flatnonzero(fold == i)
            if rows.size:
                # Select the rows first so each fold's prep only prepares its events.
                sub = {name: columns[name][rows] for name in prep.features}
                out[:, rows] = apply(model, prep.transform(sub))
        return out


def replica_scores(
    model_path: str | os.PathLike[str],
    columns_or_events: Any,
    *,
    samples: int,
    seed: int,
    batch_size: int = MICRO_BATCH,
    event_ids: Any = None,
) -> np.ndarray:
    """MC-dropout scores ``(samples, N)`` of every event (:class:`hepnn.uncertainty.MCDropout`).

    Replica ``t`` is one thinned network, its masks drawn from ``(seed, t, layer)``,
    applied to every event: the result is bitwise independent of chunking and
    executor, like :func:`network_score`. A k-fold model routes each event to its
    fold's network (same masks for every fold).
    """
    from hepnn.uncertainty import MCDropout

    loaded = get_model(model_path)
    columns = EventColumns(columns_or_events)

    def apply(model: nn.Module, x: np.ndarray) -> np.ndarray:
        return MCDropout(model, samples=samples, seed=seed).scores(x, "sigmoid", batch_size)

    return _routed(
        loaded.models, loaded.preps, columns, event_ids, loaded.id_column, apply, samples
    )
