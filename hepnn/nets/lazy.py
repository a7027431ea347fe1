"""Network scores of lazy (dask-awkward) events, with the same bits as eager evaluation.

>>> events = NanoEventsFactory.from_root({path: "Events"}, schemaclass=BaseSchema, mode="dask").events()
>>> score = network_score("models/dnn", events)          # a dask-awkward array, one float32 per event
>>> score.compute()                                       # == network_score on the eager events, bitwise

:func:`hepnn.nets.apply.network_score` and :func:`hepnn.nets.apply.jet_scores` come here
when given a dask-awkward array. The conventions are those of
``coffea.ml_tools.torch_wrapper``:

* **one task per partition** (:func:`dask_awkward.map_partitions`): each partition is
  scored eagerly by the same code as eager events (:func:`~hepnn.nets.apply.apply_network`:
  fixed-size padded micro-batches, one pinned thread), so a row's bits do not depend on
  the partitioning — the lazy result equals the eager one bit for bit;
* **a typetracer pass** that touches exactly the columns the network reads (its
  features, the k-fold id column; for a jet network the jet, link and candidate
  collections) and returns a correctly typed placeholder of unknown length
  (``float32`` per event; ``var * float32`` per event for jets), so dask-awkward's
  column optimisation reads only those branches;
* **the model loaded once per worker process**: the task carries only the model path; the
  network comes from the per-process cache of :func:`~hepnn.nets.apply.get_network`.

The model is also loaded once in the calling process to check, before any task runs,
that it is of the right kind and that the events have its columns.
"""

from __future__ import annotations

import os
from typing import Any

import awkward as ak
import numpy as np

from hepnn.errors import ModelError


def is_dask_awkward(obj: Any) -> bool:
    """Whether ``obj`` is a dask-awkward collection (without importing dask-awkward)."""
    return type(obj).__module__.startswith("dask_awkward")


def _dak() -> Any:
    try:
        import dask_awkward
    except ImportError:  # pragma: no cover - a dask-awkward array implies the package
        msg = "lazy evaluation needs dask-awkward: pip install 'hepnn[dask]'"
        raise ModelError(msg) from None
    return dask_awkward


def _placeholder(jagged: bool) -> ak.Array:
    """A typetracer array of unknown length: ``float32`` or ``var * float32`` per row."""
    if jagged:
        empty = ak.Array(ak.contents.ListOffsetArray(
            ak.index.Index64(np.zeros(1, np.int64)), ak.contents.NumpyArray(np.zeros(0, np.float32))
        ))  # fmt: skip
    else:
        empty = ak.Array(np.zeros(0, dtype=np.float32))
    return ak.Array(empty.layout.to_typetracer(forget_length=True))


class FlatPartitionScore:
    """Score one partition of events with a flat network (the callable of ``map_partitions``)."""

    def __init__(self, model_path: str, columns: list[str], kwargs: dict[str, Any]) -> None:
        self.model_path = model_path
        self.columns = columns
        self.kwargs = kwargs

    def __call__(self, part: ak.Array) -> ak.Array:
        if ak.backend(part) == "typetracer":
            for name in self.columns:
                ak.typetracer.touch_data(part[name])
            return _placeholder(jagged=False)
        from hepnn.nets.apply import network_score

        return ak.Array(network_score(self.model_path, part, **self.kwargs))


class JetPartitionScore:
    """Score the jets of one partition of events with a jet network, as a list per event."""

    def __init__(
        self, model_path: str, jets: str, pt_min: float | None, kwargs: dict[str, Any]
    ) -> None:
        self.model_path = model_path
        self.jets = jets
        self.pt_min = pt_min
        self.kwargs = kwargs

    def collections(self, part: ak.Array) -> list[str]:
        """The collections (or id column) a partition's scores need."""
        from hepnn.jets.batch import constituent_layout
        from hepnn.jets.nanoaod import LAYOUTS
        from hepnn.nets.apply import get_network

        names = [self.jets]
        layout = constituent_layout(part)
        if layout is not None:
            names += [LAYOUTS[layout].links, LAYOUTS[layout].candidates]
        split = get_network(self.model_path).split
        if split.method == "kfold":
            names.append(split.id_column)
        return names

    def __call__(self, part: ak.Array) -> ak.Array:
        if ak.backend(part) == "typetracer":
            names = self.collections(part)
            for field in part.fields:  # NanoEvents collections, or flat NanoAOD branch names
                if field in names or any(
                    field.startswith(f"{n}_") or field == f"n{n}" for n in names
                ):
                    ak.typetracer.touch_data(part[field])
            return _placeholder(jagged=True)
        from hepnn.jets.batch import fatjet_batch
        from hepnn.jets.nanoaod import get_field
        from hepnn.nets.apply import jet_event_ids, jet_scores

        batch = fatjet_batch(part, jets=self.jets, pt_min=self.pt_min)
        if batch is None:  # no constituent link table: the jets cannot be tagged
            pt = get_field(part, self.jets, "pt")
            n = ak.to_numpy(ak.num(pt if self.pt_min is None else pt[pt >= self.pt_min], axis=1))
            return ak.unflatten(np.full(int(n.sum()), np.nan, dtype=np.float32), n)
        ids = jet_event_ids(self.model_path, part, batch)
        scores = jet_scores(self.model_path, batch, event_ids=ids, **self.kwargs)
        counts = np.bincount(batch.event_index, minlength=len(part))
        return ak.unflatten(scores, counts)


def lazy_network_score(
    model_path: str | os.PathLike[str],
    events: Any,
    *,
    batch_size: int | None = None,
    output: str = "sigmoid",
) -> Any:
    """:func:`hepnn.nets.apply.network_score` of dask-awkward events: a lazy float32 column.

    The k-fold id column is read from the events (``event_ids=`` is not supported
    lazily: add the ids to the events as a field).
    """
    from hepnn.nets.apply import get_network

    loaded = get_network(model_path)
    if loaded.kind != "flat":
        msg = f"{loaded.path}: a {loaded.kind} network scores jets; use hepnn.nets.apply.jet_scores"
        raise ModelError(msg)
    columns = list(loaded.features)
    if len(loaded.models) > 1:
        columns.append(loaded.split.id_column)
    fields = set(getattr(events, "fields", []))
    missing = [c for c in columns if c not in fields]
    if missing:
        msg = f"{loaded.path}: column(s) {', '.join(map(repr, missing))} required by the model are not in the events"
        raise ModelError(msg)
    fn = FlatPartitionScore(str(loaded.path), columns, {"batch_size": batch_size, "output": output})
    return _dak().map_partitions(
        fn, events, label=f"hepnn-score-{loaded.name}", meta=_placeholder(jagged=False)
    )


def lazy_jet_scores(
    model_path: str | os.PathLike[str],
    events: Any,
    *,
    jets: str = "FatJet",
    pt_min: float | None = None,
    batch_size: int | None = None,
    output: str = "sigmoid",
) -> Any:
    """:func:`hepnn.nets.apply.jet_scores` of dask-awkward events: a lazy ``var * float32`` per event.

    Each partition's jets (with ``pt >= pt_min``) are batched with
    :func:`hepnn.jets.batch.fatjet_batch` and scored; the scores come back as one list
    per event, in the order of the jets (NaN for a jet without constituents, and for
    every jet of a file without a constituent link table).
    """
    from hepnn.nets.apply import get_network

    loaded = get_network(model_path)
    if loaded.kind == "flat":
        msg = f"{loaded.path}: a flat network scores events; use hepnn.nets.apply.network_score"
        raise ModelError(msg)
    fn = JetPartitionScore(
        str(loaded.path), jets, pt_min, {"batch_size": batch_size, "output": output}
    )
    return _dak().map_partitions(
        fn, events, label=f"hepnn-jet-score-{loaded.name}", meta=_placeholder(jagged=True)
    )
