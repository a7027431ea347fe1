"""Jets with their constituents, flat over events: what every jet input is built from.

>>> batch = fatjet_batch(events, pt_min=170)      # NanoEvents or flat uproot arrays
>>> labels = jet_labels(events, "label", batch)   # per-event or per-jet 0/1 branch

:class:`JetBatch` holds the constituents (awkward, jets x constituents) and the
jet kinematics (numpy) of every selected jet, with the event row and position of
each jet, so that per-jet results can be mapped back to their events.
:func:`fatjet_batch` reads them from NanoAOD (``FatJetPFCand`` of v15, PFNano
``FatJetPFCands``) with one-line errors naming the branch and entry of a bad value.
Pure array code: nothing here knows torch or training.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import awkward as ak
import numpy as np

from hepnn.errors import InputError
from hepnn.jets.nanoaod import LAYOUTS, fatjet_constituents, get_field, has_field


@dataclass(frozen=True)
class JetBatch:
    """Jets with their constituents, flat over events.

    Attributes
    ----------
    constituents
        awkward ``jets x constituents`` records (``pt, eta, phi, mass, energy``
        and, when the file has them, ``charge``, ``pdgId``).
    pt, eta, phi, mass, energy
        ``(N,)`` float64 jet kinematics.
    event_index
        ``(N,)`` row of each jet's event in the chunk (or file).
    jet_index
        ``(N,)`` position of each jet in its event's collection.
    """

    constituents: ak.Array
    pt: np.ndarray
    eta: np.ndarray
    phi: np.ndarray
    mass: np.ndarray
    energy: np.ndarray
    event_index: np.ndarray
    jet_index: np.ndarray

    def __len__(self) -> int:
        return len(self.pt)

    @property
    def n_constituents(self) -> np.ndarray:
        return ak.to_numpy(ak.num(self.constituents, axis=1)).astype(np.int64)

    @property
    def empty(self) -> np.ndarray:
        """Jets without constituents (or zero constituent pT): no meaningful input."""
        return (self.n_constituents == 0) | ~(ak.to_numpy(ak.sum(self.constituents.pt, axis=1)) > 0)

    @property
    def ptd(self) -> np.ndarray:
        """p_T^D = sqrt(sum pT^2) / sum pT of the constituents (0 for empty jets)."""
        pt = self.constituents.pt
        s1 = ak.to_numpy(ak.sum(pt, axis=1)).astype(np.float64)
        s2 = ak.to_numpy(ak.sum(pt * pt, axis=1)).astype(np.float64)
        return np.where(s1 > 0, np.sqrt(s2) / np.where(s1 > 0, s1, 1.0), 0.0)

    def take(self, rows: np.ndarray) -> JetBatch:
        """The jets at ``rows`` (indices or boolean mask)."""
        return JetBatch(
            self.constituents[rows],
            *(getattr(self, f)[rows] for f in ("pt", "eta", "phi", "mass", "energy")),
            self.event_index[rows],
            self.jet_index[rows],
        )

    @classmethod
    def from_arrays(cls, constituents: Any, jets: Any) -> JetBatch:
        """A batch from awkward constituents (jets x constituents) and per-jet kinematics.

        ``jets`` is a record array or mapping with ``pt``, ``eta``, ``phi`` and
        ``mass`` (or ``energy``), one value per jet.
        """
        cons = constituents if isinstance(constituents, ak.Array) else ak.Array(constituents)
        if "energy" not in cons.fields:
            p = cons.pt * np.cosh(cons.eta)
            cons = ak.with_field(cons, np.sqrt(p * p + cons.mass * cons.mass), "energy")

        def get(name: str) -> np.ndarray | None:
            fields = jets.fields if isinstance(jets, ak.Array) else list(jets)
            if name not in fields:
                return None
            v = jets[name]
            return np.asarray(ak.to_numpy(v) if isinstance(v, ak.Array) else v, dtype=np.float64)

        pt, eta, phi, mass, energy = (get(n) for n in ("pt", "eta", "phi", "mass", "energy"))
        if pt is None or eta is None or phi is None or (mass is None and energy is None):
            msg = "jets need pt, eta, phi and mass (or energy)"
            raise InputError(msg)
        if energy is None:
            assert mass is not None
            energy = np.sqrt((pt * np.cosh(eta)) ** 2 + mass**2)
        if mass is None:
            mass = np.sqrt(np.maximum(energy**2 - (pt * np.cosh(eta)) ** 2, 0.0))
        n = len(pt)
        if len(cons) != n:
            msg = f"{len(cons)} constituent lists for {n} jets"
            raise InputError(msg)
        idx = np.arange(n, dtype=np.int64)
        return cls(cons, pt, eta, phi, mass, energy, idx, np.zeros(n, dtype=np.int64))


def constituent_layout(events: Any) -> str | None:
    """The constituent layout of ``events`` (:data:`hepnn.jets.nanoaod.LAYOUTS`), or None."""
    for name, lay in LAYOUTS.items():
        if has_field(events, lay.links, lay.cand_idx) and has_field(events, lay.candidates, "pt"):
            return name
    return None


def _first_bad(values: np.ndarray) -> tuple[int, str] | None:
    bad = ~np.isfinite(values)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        return i, "NaN" if np.isnan(values[i]) else "infinite"
    return None


def fatjet_batch(
    events: Any,
    *,
    jets: str = "FatJet",
    pt_min: float | None = None,
    entry_start: int = 0,
) -> JetBatch | None:
    """The jets of ``events`` (NanoEvents or flat uproot arrays) with their PF constituents.

    Parameters
    ----------
    events
        A chunk's NanoEvents, or ``tree.arrays()`` with NanoAOD branch names.
    jets
        The jet collection (``FatJet``).
    pt_min
        Keep jets with ``pt >= pt_min`` (all when None).
    entry_start
        Entry number of ``events[0]`` in its file, for error messages.

    Returns
    -------
    JetBatch or None
        None when the events have no constituent link table (e.g. plain NanoAOD
        before v15): such jets cannot be tagged.

    Raises
    ------
    InputError
        A link index outside its collection (names the branch and entry), or a
        NaN / infinite / negative-pT constituent or jet (names branch and entry).
    """
    layout = constituent_layout(events)
    if layout is None:
        return None
    lay = LAYOUTS[layout]
    jet_pt = get_field(events, jets, "pt")
    cons = fatjet_constituents(events, layout=layout, jets=jets, entry_start=entry_start)
    local = ak.local_index(jet_pt, axis=1)
    if pt_min is not None:
        sel = jet_pt >= pt_min
        cons, local = cons[sel], local[sel]
    else:
        sel = None
    n_per_event = ak.to_numpy(ak.num(local, axis=1)).astype(np.int64)
    event_index = np.repeat(np.arange(len(n_per_event), dtype=np.int64), n_per_event)
    kin = {}
    for field in ("pt", "eta", "phi", "mass"):
        v = get_field(events, jets, field)
        kin[field] = ak.to_numpy(ak.flatten(v if sel is None else v[sel])).astype(np.float64)
        bad = _first_bad(kin[field])
        if bad is not None:
            i, what = bad
            msg = (
                f"branch {jets}_{field}: {what} value for {jets} {int(ak.flatten(local)[i])} "
                f"in entry {entry_start + int(event_index[i])}"
            )
            raise InputError(msg)
    flat = ak.flatten(cons, axis=1)
    counts = ak.to_numpy(ak.num(flat, axis=1)).astype(np.int64)
    jet_of = np.repeat(np.arange(len(counts)), counts)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    jet_index = ak.to_numpy(ak.flatten(local)).astype(np.int64)
    for field in ("pt", "eta", "phi", "mass"):
        values = ak.to_numpy(ak.flatten(flat[field])).astype(np.float64)
        bad = _first_bad(values)
        if bad is None and field == "pt" and (values < 0).any():
            bad = (int(np.flatnonzero(values < 0)[0]), "negative")
        if bad is not None:
            i, what = bad
            j = int(jet_of[i])
            msg = (
                f"branch {lay.candidates}_{field}: {what} value for constituent {i - int(starts[j])} "
                f"of {jets} {int(jet_index[j])} in entry {entry_start + int(event_index[j])}"
            )
            raise InputError(msg)
    energy = np.sqrt((kin["pt"] * np.cosh(kin["eta"])) ** 2 + kin["mass"] ** 2)
    return JetBatch(
        flat, kin["pt"], kin["eta"], kin["phi"], kin["mass"], energy, event_index, jet_index
    )


def jet_labels(
    events: Any, name: str, batch: JetBatch, *, jets: str = "FatJet"
) -> np.ndarray | None:
    """0/1 label of every jet of ``batch``: a per-jet ``<jets>_<field>`` or a per-event branch.

    Returns None when ``events`` has no such branch.
    """
    prefix = f"{jets}_"
    if name.startswith(prefix) and has_field(events, jets, name[len(prefix) :]):
        per_jet = get_field(events, jets, name[len(prefix) :])
        flat_index = np.concatenate([[0], np.cumsum(ak.to_numpy(ak.num(per_jet, axis=1)))])
        values = ak.to_numpy(ak.flatten(per_jet))[flat_index[batch.event_index] + batch.jet_index]
    elif name in events.fields:
        values = ak.to_numpy(events[name])[batch.event_index]
    else:
        return None
    return np.asarray(values).astype(np.int64)


def concat_batches(batches: list[JetBatch]) -> JetBatch:
    """One batch of the jets of ``batches``, in order."""
    if len(batches) == 1:
        return batches[0]
    cat = np.concatenate
    return JetBatch(
        ak.concatenate([b.constituents for b in batches]),
        *(cat([getattr(b, f) for b in batches]) for f in ("pt", "eta", "phi", "mass", "energy")),
        cat([b.event_index for b in batches]),
        cat([b.jet_index for b in batches]),
    )
