"""The Higgs challenge's ``-999.0`` ("undefined") values as missing values of awkward arrays.

The converted ROOT file mirrors the CSV value for value (``-999.0`` stays ``-999.0``);
:func:`with_missing` / :func:`mask_missing` turn ``-999.0`` into ``None`` when the events
are read.

Example
-------
>>> ev = with_missing(events)  # in a processor  # doctest: +SKIP
>>> ak.is_none(ev.DER_mass_MMC)  # True where the CSV said -999.0  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import awkward as ak
import numpy as np

from hepnn.errors import InputError
from hepnn.io.higgs_layout import FEATURES, MISSING_VALUE

__all__ = ["mask_missing", "with_missing"]


def mask_missing(array: Any) -> ak.Array:
    """Return ``array`` as an option-type awkward array with ``None`` where it is ``-999.0``.

    Parameters
    ----------
    array
        A numpy array, an awkward array (flat or jagged) or a coffea events field.

    Returns
    -------
    ak.Array
        Same length and values, option type; ``None`` where the input equals
        :data:`~hepnn.io.higgs_layout.MISSING_VALUE`.
    """
    arr = array if isinstance(array, ak.Array) else ak.Array(np.asarray(array))
    return ak.mask(arr, arr != MISSING_VALUE)


def with_missing(
    events: Mapping[str, Any] | ak.Array, fields: Sequence[str] | None = None
) -> ak.Array:
    """Return the events as a record array whose features have ``None`` where they are ``-999.0``.

    Parameters
    ----------
    events
        A coffea events record (``BaseSchema``: one flat field per branch), any awkward record
        array, or a mapping of column name to array (e.g. ``uproot``'s ``arrays(library="np")``).
    fields
        Fields to mask; default: every one of :data:`~hepnn.io.higgs_layout.FEATURES` present. Other fields are
        passed through unchanged and, with coffea's lazy reading, are not read unless used;
        a masked field is read (to find its ``-999.0``), so name the ones you need.

    Returns
    -------
    ak.Array
        Record array with the same fields, in the same order.

    Raises
    ------
    InputError
        A field in ``fields`` is not in ``events``.
    """
    if isinstance(events, Mapping):
        names = list(events)
    else:
        names = list(ak.fields(events))
        if not names:
            msg = "with_missing expects a record array (events) or a mapping of columns"
            raise TypeError(msg)
    if fields is None:
        targets = {f for f in FEATURES if f in names}
    else:
        absent = [f for f in fields if f not in names]
        if absent:
            raise InputError(f"events have no field(s) {absent}; available: {names}")
        targets = set(fields)
    columns = {n: mask_missing(events[n]) if n in targets else events[n] for n in names}
    return ak.zip(columns, depth_limit=1)
