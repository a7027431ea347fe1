"""A trained network as a deterministic high-level variable, for every kind of network.

>>> from hepnn.nets.apply import network_score, jet_scores
>>> events["dnn"] = network_score("models/dnn", events)          # flat inputs, per event
>>> scores = jet_scores("models/cnn2d", fatjet_batch(events))    # jet inputs, per jet

Determinism: a row's score is bitwise the same whatever the chunking of the input,
the caller's intra-op thread count, or the process, because

* the inputs are prepared elementwise (:mod:`hepnn.nets.inputs`);
* the network sees fixed-size, zero-padded micro-batches of the builder's
  ``micro_batch`` rows (:func:`hepnn.models.forward.padded_apply`); the sigmoid is
  applied inside each micro-batch (applied to a whole chunk, its vectorised body
  and scalar tail disagree in the last bit);
* torch is pinned to one intra-op thread while scoring
  (:data:`hepnn.models.forward.INFERENCE_THREADS`).

Bits are not promised across CPU instruction sets or torch versions. A k-fold
network routes each event to the model of its fold (:func:`hepnn.nets.split.route`),
so every event is scored by a model that never saw it.

Models are loaded once per process and cached (LRU, :data:`CACHE_SIZE` entries) under
``(resolved model.json path, its sha256, its mtime)``; a hit also checks that the
weight files' mtimes and sizes are unchanged, otherwise the model is reloaded (and
its sha256 re-verified). Each call costs a ``stat`` and a hash of the small
``model.json``, not a reload.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from hepnn.bands import MCDropout
from hepnn.errors import ConfigError, InputError, ModelError
from hepnn.files import sha256_bytes
from hepnn.jets.batch import JetBatch
from hepnn.models.forward import INFERENCE_THREADS, inference_lock, padded_apply, torch_threads
from hepnn.nets.inputs import ImageBuilder, make_builder
from hepnn.nets.lazy import is_dask_awkward, lazy_jet_scores, lazy_network_score
from hepnn.nets.spec import ImageInputs
from hepnn.nets.split import route
from hepnn.nets.store import LoadedNetwork, load_from_json, model_json_path, parse_model_json

Output = Literal["sigmoid", "logit"]

#: Number of models kept in the per-process cache.
CACHE_SIZE = 8

_cache: OrderedDict[tuple[str, str, int], tuple[tuple[tuple[int, int], ...], LoadedNetwork]] = OrderedDict()
_cache_lock = threading.Lock()
_stats = {"hits": 0, "loads": 0}


# -------------------------------------------------------------------- cache
def _weight_stats(json_path: Path, meta: dict[str, Any]) -> tuple[tuple[int, int], ...]:
    """(mtime, size) of each weight file named in ``meta``."""
    out = []
    for entry in meta["models"]:
        try:
            st = (json_path.parent / entry["file"]).stat()
        except OSError:
            return ()  # missing now: never matches, forces a reload (and its error)
        out.append((st.st_mtime_ns, st.st_size))
    return tuple(out)


def get_network(model_path: str | os.PathLike[str]) -> LoadedNetwork:
    """Load a model folder once per process (cached; see the module docstring).

    Parameters
    ----------
    model_path
        Model folder, its ``model.json`` or one of its ``.pt`` files.

    Returns
    -------
    LoadedNetwork
        Shared between callers: do not modify it.
    """
    json_path = model_json_path(model_path)
    try:
        mtime = json_path.stat().st_mtime_ns
        raw = json_path.read_bytes()
    except OSError as exc:
        msg = f"cannot read {json_path}: {exc.strerror}"
        raise ModelError(msg) from None
    key = (str(json_path), sha256_bytes(raw), mtime)
    with _cache_lock:
        hit = _cache.get(key)
        if hit is not None and hit[0] == _weight_stats(json_path, hit[1].meta):
            _cache.move_to_end(key)
            _stats["hits"] += 1
            return hit[1]
        # Stat the weight files *before* reading them: a file replaced during
        # the load then shows a changed stat at the next call and is re-verified.
        stats = _weight_stats(json_path, parse_model_json(json_path, raw))
        loaded = load_from_json(json_path, raw)
        _stats["loads"] += 1
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
    become masked entries, which the flat inputs treat as missing.
    """

    def __init__(self, source: Any) -> None:
        import awkward as ak

        self._source = source
        self._converted: dict[str, Any] = {}
        self._is_ak = isinstance(source, ak.Array)
        if self._is_ak:
            self._names: list[str] | None = list(source.fields)
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
        if self._is_ak or type(value).__module__.startswith("awkward"):
            import awkward as ak

            if value.ndim != 1:
                msg = f"column {name!r} is not flat (ndim {value.ndim}); select one value per event first"
                raise InputError(msg)
            value = ak.to_numpy(value, allow_missing=True)  # None -> masked = missing
        elif not isinstance(value, np.ma.MaskedArray):
            value = np.asarray(value)  # e.g. a pandas Series: positional from here on
        self._converted[name] = value
        return value

    def __iter__(self) -> Iterator[str]:
        return iter(self._names if self._names is not None else list(self._source))

    def __len__(self) -> int:
        return len(self._names) if self._names is not None else len(self._source)


def _event_ids(columns: Mapping[str, Any] | None, event_ids: Any, id_column: str) -> np.ndarray:
    if event_ids is None:
        if columns is None or id_column not in columns:
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
def _check_output(output: str) -> None:
    if output not in ("sigmoid", "logit"):
        msg = f"output must be 'sigmoid' or 'logit', got {output!r}"
        raise ConfigError(msg)


def forward(model: nn.Module, x: np.ndarray, batch_size: int, output: Output = "sigmoid") -> np.ndarray:
    """Scores of prepared inputs ``x`` in fixed-size padded micro-batches (see the module docstring)."""
    _check_output(output)

    def fn(t: torch.Tensor) -> torch.Tensor:
        return model(t) if output == "logit" else torch.sigmoid(model(t))

    with inference_lock, torch_threads(INFERENCE_THREADS):
        return padded_apply(fn, torch.from_numpy(np.ascontiguousarray(x)), batch_size).numpy()


def apply_network(
    loaded: LoadedNetwork,
    source: Any,
    *,
    event_ids: Any = None,
    replicas: tuple[int, int] | None = None,
    batch_size: int | None = None,
    output: Output = "sigmoid",
    raw: np.ndarray | None = None,
) -> np.ndarray:
    """Score every row of ``source`` with a loaded network (the engine of the functions below).

    Parameters
    ----------
    loaded
        :func:`get_network` output.
    source
        What the network's input builder reads: a mapping of event columns
        (:class:`EventColumns`) for flat inputs, a :class:`~hepnn.jets.batch.JetBatch`
        for jet inputs.
    event_ids
        Integer event id of every row, for a k-fold network (default: the split's
        id column of ``source``, for flat inputs).
    replicas
        ``(samples, seed)``: MC-dropout replicas instead of the nominal score
        (:class:`hepnn.bands.MCDropout`; replica ``t`` is one thinned network for
        every row).
    batch_size
        Micro-batch rows (default: the builder's).
    output
        ``sigmoid`` or ``logit``.
    raw
        The builder's :meth:`~hepnn.nets.inputs.InputBuilder.raw` of ``source``, when
        the caller has built it already (it is not built again).

    Returns
    -------
    numpy.ndarray
        float32, ``(N,)``, or ``(samples, N)`` with ``replicas``; NaN for rows the
        network cannot score (jets without constituents).
    """
    _check_output(output)
    builder = loaded.builder
    mb = batch_size or builder.micro_batch
    raw = builder.raw(source) if raw is None else raw
    n = raw.shape[0]

    def score(m: int, rows_raw: np.ndarray) -> np.ndarray:
        x = loaded.builders[m].transform(rows_raw)
        if replicas is None:
            return forward(loaded.models[m], x, mb, output)[None]
        samples, seed = replicas
        return MCDropout(loaded.models[m], samples=samples, seed=seed).scores(x, output, mb)

    n_rows = 1 if replicas is None else replicas[0]
    with inference_lock, torch_threads(INFERENCE_THREADS):
        if len(loaded.models) == 1:
            out = score(0, raw)
        else:
            columns = source if isinstance(source, Mapping) else None
            ids = _event_ids(columns, event_ids, loaded.split.id_column)
            which = route(ids, loaded.split)
            out = np.empty((n_rows, n), dtype=np.float32)
            for m in range(len(loaded.models)):
                rows = np.flatnonzero(which == m)
                if rows.size:
                    out[:, rows] = score(m, raw[rows])
    bad = builder.unusable(source)
    if bad is not None and bad.any():
        out[:, bad] = np.nan
    return out[0] if replicas is None else out


def _flat(model_path: str | os.PathLike[str], columns_or_events: Any) -> tuple[LoadedNetwork, EventColumns]:
    loaded = get_network(model_path)
    if loaded.kind != "flat":
        msg = f"{loaded.path}: a {loaded.kind} network scores jets; use hepnn.nets.apply.jet_scores"
        raise ModelError(msg)
    source = columns_or_events if isinstance(columns_or_events, EventColumns) else EventColumns(columns_or_events)
    return loaded, source


def network_score(
    model_path: str | os.PathLike[str],
    columns_or_events: Any,
    *,
    batch_size: int | None = None,
    output: Output = "sigmoid",
    event_ids: Any = None,
) -> np.ndarray:
    """A flat network's score of every event, as a deterministic column.

    Parameters
    ----------
    model_path
        Model folder (or its ``model.json`` / ``.pt``).
    columns_or_events
        A mapping of feature name to 1D array, or an awkward record array with
        flat fields (coffea ``BaseSchema`` events). ``-999.0``, NaN, masked values
        and awkward ``None`` are missing values.
    batch_size
        Micro-batch size (default 1,024). Scores are bitwise independent of the
        chunking for a fixed value, not across values.
    output
        ``"sigmoid"`` (probability-like score in [0, 1]) or ``"logit"``.
    event_ids
        Integer event ids for a k-fold model; default: its id column from the events.

    Returns
    -------
    numpy.ndarray
        float32, one score per event; a lazy dask-awkward array of the same bits when
        ``columns_or_events`` is dask-awkward (:mod:`hepnn.nets.lazy`).
    """
    if is_dask_awkward(columns_or_events):
        if event_ids is not None:
            msg = "lazy events: event_ids= is not supported; add the ids to the events as a field"
            raise ModelError(msg)
        return lazy_network_score(model_path, columns_or_events, batch_size=batch_size, output=output)
    loaded, source = _flat(model_path, columns_or_events)
    return apply_network(loaded, source, event_ids=event_ids, batch_size=batch_size, output=output)


def _jet_network(model_path: str | os.PathLike[str]) -> LoadedNetwork:
    loaded = get_network(model_path)
    if loaded.kind == "flat":
        msg = f"{loaded.path}: a flat network scores events; use hepnn.nets.apply.network_score"
        raise ModelError(msg)
    return loaded


def jet_scores(
    model_path: str | os.PathLike[str],
    batch: JetBatch,
    *,
    event_ids: Any = None,
    batch_size: int | None = None,
    output: Output = "sigmoid",
) -> np.ndarray:
    """A jet network's score of every jet of ``batch`` (NaN for jets without constituents).

    ``batch`` comes from :func:`hepnn.jets.batch.fatjet_batch` (NanoEvents) or
    :meth:`hepnn.jets.batch.JetBatch.from_arrays` (any awkward constituents). Given
    dask-awkward *events* instead, the result is lazy: one list of FatJet scores per
    event (:func:`hepnn.nets.lazy.lazy_jet_scores`), the same bits.
    """
    if is_dask_awkward(batch):
        if event_ids is not None:
            msg = "lazy events: event_ids= is not supported; the k-fold id column is read from the events"
            raise ModelError(msg)
        return lazy_jet_scores(model_path, batch, batch_size=batch_size, output=output)
    loaded = _jet_network(model_path)
    return apply_network(loaded, batch, event_ids=event_ids, batch_size=batch_size, output=output)


def replica_scores(
    model_path: str | os.PathLike[str],
    source: Any,
    *,
    samples: int,
    seed: int,
    event_ids: Any = None,
    batch_size: int | None = None,
) -> np.ndarray:
    """MC-dropout scores ``(samples, N)`` of every row, for any kind of network.

    Replica ``t`` is one thinned network, its masks drawn from ``(seed, t, layer)``,
    applied to every row: bitwise independent of chunking and executor, like
    :func:`network_score`. A k-fold model routes each event to its fold's network
    (the same masks for every fold). ``source`` is event columns (flat networks) or
    a :class:`~hepnn.jets.batch.JetBatch` (jet networks).
    """
    loaded = get_network(model_path)
    if loaded.kind == "flat" and not isinstance(source, EventColumns):
        source = EventColumns(source)
    return apply_network(
        loaded, source, event_ids=event_ids, replicas=(samples, seed), batch_size=batch_size
    )


def jet_event_ids(model_path: str | os.PathLike[str], events: Any, batch: JetBatch) -> np.ndarray | None:
    """Event id of every jet of ``batch`` for a k-fold jet network (None for other splits).

    Taken from the split's id column of ``events`` (the events ``batch`` came from).
    """
    split = get_network(model_path).split
    if split.method != "kfold":
        return None
    if events is None or split.id_column not in events.fields:
        msg = f"{model_path}: a k-fold jet network needs the events' {split.id_column!r} column"
        raise ModelError(msg)
    import awkward as ak

    return ak.to_numpy(events[split.id_column])[batch.event_index]


def band_replicas(
    model_path: str | os.PathLike[str],
    source: Any,
    score: np.ndarray,
    *,
    mc_dropout: Mapping[str, int] | None = None,
    members: list[str] | None = None,
    event_ids: Any = None,
) -> dict[str, np.ndarray]:
    """The replicas of a network's bands, for :func:`hepnn.bands.replica_hists`.

    Parameters
    ----------
    model_path, source, event_ids
        As for :func:`apply_network` (event columns or a ``JetBatch``).
    score
        The nominal score of every row (member 0 of an ensemble).
    mc_dropout
        ``{"samples": T, "seed": S}`` (``WorkflowContext.mc_dropout``), or empty / None.
    members
        Model folders of the ensemble members, member 0 first
        (``WorkflowContext.ensembles[name]``), or empty / None.

    Returns
    -------
    dict
        ``"mc"``: MC-dropout scores ``(T, N)``; ``"member"``: member scores ``(M, N)``;
        only the ones asked for.
    """
    loaded = get_network(model_path)
    if loaded.kind == "flat" and not isinstance(source, EventColumns):
        source = EventColumns(source)
    out: dict[str, np.ndarray] = {}
    if mc_dropout:
        replicas = (int(mc_dropout["samples"]), int(mc_dropout["seed"]))
        out["mc"] = apply_network(loaded, source, event_ids=event_ids, replicas=replicas)
    if members:
        rest = [apply_network(get_network(p), source, event_ids=event_ids) for p in members[1:]]
        out["member"] = np.stack([score, *rest])
    return out


def score_jets(
    networks: Mapping[str, str | os.PathLike[str]], batch: JetBatch, events: Any = None
) -> tuple[dict[str, np.ndarray], np.ndarray, tuple[float, float]]:
    """Scores of every jet network, plus the images of the first image network and their extent.

    ``events`` (the events ``batch`` came from) gives k-fold networks their event ids.
    The images are what the image network sees before its pixel normalisation (for
    average-image histograms); with no image network, the default image settings.
    """
    loaded = {name: _jet_network(path) for name, path in networks.items()}
    image_net = next((n for n, net in loaded.items() if isinstance(net.builder, ImageBuilder)), None)
    image = make_builder(ImageInputs()) if image_net is None else loaded[image_net].builder
    assert isinstance(image, ImageBuilder)
    images = image.raw(batch)  # built once: scored by the image network and returned
    scores = {}
    for name, path in networks.items():
        scores[name] = apply_network(
            loaded[name], batch, event_ids=jet_event_ids(path, events, batch),
            raw=images if name == image_net else None,
        )  # fmt: skip
    return scores, images, image.extent
