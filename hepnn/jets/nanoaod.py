"""FatJet constituents from NanoAOD, linked by index by hand, for both layouts.

>>> cons = read_fatjet_constituents("nano_tt_v15.root")   # events x FatJets x constituents
>>> cons.fields
['pt', 'eta', 'phi', 'mass', 'energy', 'charge', 'pdgId']
>>> jets = ak.flatten(cons, axis=1)                      # jets x constituents

Inside a coffea processor, the same from the ``events`` of a chunk::

    cons = fatjet_constituents(events)    # aligned with events.FatJet

Two layouts are known (:data:`LAYOUTS`):

``"nanoaod"``
    CMS NanoAOD v15+: ``PFCand`` (pt, eta, phi, mass, pdgId) and the link table
    ``FatJetPFCand`` (``jetIdx``, ``pfCandIdx``); also what
    :func:`hepnn.io.part_npy.convert_part_npy` writes.
``"pfnano"``
    PFNano: ``PFCands`` (also ``charge``, ``d0``, ``dz``...) and ``FatJetPFCands``
    (``jetIdx``, ``pFCandsIdx``). coffea 2026.9's ``FatJet.constituents.pf`` raises
    for it, hence the hand-made link.

Each link row says "candidate ``candIdx`` belongs to jet ``jetIdx``" (indices
local to the event). Both indices are validated: one outside its collection
raises :class:`~hepnn.errors.InputError` naming the branch and the entry.
Constituents keep the order of the link table; ``charge`` is read when the
layout has it, otherwise derived from ``pdgId`` (:func:`charge_from_pdgid`);
``energy = sqrt((pt cosh eta)^2 + mass^2)``.

Counts: ``FatJet_nConstituents`` (where present, uint8 in NanoAOD, so it
saturates at 255) can exceed the linked constituents when the candidates
were not stored for an event; in ``nano_tt_v15.root`` 2 of 64 FatJets
(entries 11 and 180) have ``nConstituents`` 6 and 5 but no ``PFCand`` at all.
``strict_counts=True`` turns any mismatch into an :class:`InputError`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import awkward as ak
import numpy as np
import uproot

from hepnn.errors import InputError


@dataclass(frozen=True)
class Layout:
    """Names of the candidate collection and the jet-candidate link table."""

    candidates: str
    links: str
    cand_idx: str
    jet_idx: str = "jetIdx"


#: Known layouts, tried in this order by ``layout="auto"``.
LAYOUTS: dict[str, Layout] = {
    "nanoaod": Layout("PFCand", "FatJetPFCand", "pfCandIdx"),
    "pfnano": Layout("PFCands", "FatJetPFCands", "pFCandsIdx"),
}

#: Candidate fields always returned.
BASE_FIELDS = ("pt", "eta", "phi", "mass")

_NEGATIVE_LEPTONS = (11, 13, 15)  # e-, mu-, tau- have positive pdgId and charge -1
_POSITIVE_HADRONS = (211, 321, 2212)  # pi+, K+, p have positive pdgId and charge +1


def charge_from_pdgid(pdg_id: np.ndarray) -> np.ndarray:
    """Electric charge (int32) of PF candidates from their PDG id; 0 for neutrals and unknowns."""
    pdg = np.asarray(pdg_id).astype(np.int64)
    a = np.abs(pdg)
    sign = np.sign(pdg).astype(np.int32)
    return np.select(
        [np.isin(a, _NEGATIVE_LEPTONS), np.isin(a, _POSITIVE_HADRONS)], [-sign, sign], 0
    ).astype(np.int32)


def has_field(events: Any, collection: str, field: str) -> bool:
    fields = events.fields
    if collection in fields:
        return field in events[collection].fields
    return f"{collection}_{field}" in fields


def get_field(events: Any, collection: str, field: str) -> ak.Array:
    """``events[collection][field]`` (NanoEvents) or ``events[collection_field]`` (uproot arrays)."""
    if collection in events.fields:
        return events[collection][field]
    return events[f"{collection}_{field}"]


def detect_layout(events: Any) -> str:
    """Name of the first layout in :data:`LAYOUTS` whose link table ``events`` has."""
    for name, lay in LAYOUTS.items():
        if has_field(events, lay.links, lay.cand_idx) and has_field(events, lay.candidates, "pt"):
            return name
    known = ", ".join(
        f"{lay.links}_{lay.cand_idx} + {lay.candidates}_pt" for lay in LAYOUTS.values()
    )
    msg = f"no FatJet-constituent link table found (looked for {known})"
    raise InputError(msg)


def _flat_numpy(arr: ak.Array, branch: str) -> tuple[np.ndarray, np.ndarray]:
    """(flat values, per-entry counts) of a jagged branch."""
    try:
        counts = ak.to_numpy(ak.num(arr, axis=1)).astype(np.int64)
        flat = ak.to_numpy(ak.flatten(arr, axis=1), allow_missing=False)
    except (ValueError, TypeError) as err:
        msg = f"branch {branch} is not a jagged array of numbers: {err}"
        raise InputError(msg) from None
    return flat, counts


def _check_index(
    idx: np.ndarray, entry: np.ndarray, size: np.ndarray, branch: str, target: str, entry_start: int
) -> None:
    bad = (idx < 0) | (idx >= size[entry])
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        e = int(entry[i])
        n_bad = int(bad.sum())
        msg = (
            f"branch {branch}: index {int(idx[i])} outside {target} ({int(size[e])} entries) "
            f"in entry {entry_start + e}" + (f" ({n_bad} bad links in total)" if n_bad > 1 else "")
        )
        raise InputError(msg)


def fatjet_constituents(
    events: Any,
    *,
    layout: str = "auto",
    jets: str = "FatJet",
    extra_fields: Sequence[str] = (),
    strict_counts: bool = False,
    entry_start: int = 0,
) -> ak.Array:
    """Constituents of every jet of ``jets``: an awkward array events x jets x constituents.

    Parameters
    ----------
    events
        coffea NanoEvents (eager or virtual) or any awkward record array with
        either collections as fields (``events.PFCand.pt``) or flat NanoAOD
        branch names (``events["PFCand_pt"]``, as from ``tree.arrays()``).
    layout
        ``"auto"``, ``"nanoaod"`` or ``"pfnano"`` (see :data:`LAYOUTS`).
    jets
        Jet collection the link table refers to.
    extra_fields
        Further candidate fields to copy (e.g. ``("d0", "dz", "puppiWeight")``).
    strict_counts
        Raise if a jet's linked constituents differ from ``{jets}_nConstituents``.
    entry_start
        Entry number of ``events[0]`` in its file, used in error messages only.

    Returns
    -------
    awkward.Array
        ``events x jets x constituents`` records with fields ``pt, eta, phi,
        mass, energy, charge, pdgId`` (+ ``extra_fields``). Jets without links
        get no constituents; ``ak.flatten(result, axis=1)`` is jets x constituents.
    """
    name = detect_layout(events) if layout == "auto" else layout
    if name not in LAYOUTS:
        msg = f"unknown layout {layout!r}; known: auto, {', '.join(LAYOUTS)}"
        raise ValueError(msg)
    lay = LAYOUTS[name]
    n_jets = ak.to_numpy(ak.num(get_field(events, jets, "pt"), axis=1)).astype(np.int64)
    cand_pt, n_cands = _flat_numpy(get_field(events, lay.candidates, "pt"), f"{lay.candidates}_pt")
    cand_branch = f"{lay.links}_{lay.cand_idx}"
    jet_branch = f"{lay.links}_{lay.jet_idx}"
    cidx, n_links = _flat_numpy(get_field(events, lay.links, lay.cand_idx), cand_branch)
    jidx, n_links_j = _flat_numpy(get_field(events, lay.links, lay.jet_idx), jet_branch)
    if not np.array_equal(n_links, n_links_j):
        e = int(np.flatnonzero(n_links != n_links_j)[0])
        msg = f"branches {cand_branch} and {jet_branch} differ in length in entry {entry_start + e}"
        raise InputError(msg)
    entry = np.repeat(np.arange(len(n_links), dtype=np.int64), n_links)
    _check_index(cidx.astype(np.int64), entry, n_cands, cand_branch, lay.candidates, entry_start)
    _check_index(jidx.astype(np.int64), entry, n_jets, jet_branch, jets, entry_start)

    cand_start = np.concatenate([[0], np.cumsum(n_cands)[:-1]]).astype(np.int64)
    jet_start = np.concatenate([[0], np.cumsum(n_jets)[:-1]]).astype(np.int64)
    cand_global = cand_start[entry] + cidx
    jet_global = jet_start[entry] + jidx
    # Group links by jet; a stable sort keeps the link order within a jet.
    order = np.argsort(jet_global, kind="stable")
    take = cand_global[order]
    per_jet = np.bincount(jet_global, minlength=int(n_jets.sum()))

    def column(field: str) -> np.ndarray:
        flat, _ = _flat_numpy(get_field(events, lay.candidates, field), f"{lay.candidates}_{field}")
        return flat[take]

    cols: dict[str, np.ndarray] = {"pt": cand_pt[take]}
    for field in BASE_FIELDS[1:]:
        cols[field] = column(field)
    p = cols["pt"].astype(np.float64) * np.cosh(cols["eta"].astype(np.float64))
    cols["energy"] = np.sqrt(p * p + cols["mass"].astype(np.float64) ** 2).astype(cols["pt"].dtype)
    has_pdg = has_field(events, lay.candidates, "pdgId")
    pdg = column("pdgId") if has_pdg else None
    if has_field(events, lay.candidates, "charge"):
        cols["charge"] = column("charge")
    elif pdg is not None:
        cols["charge"] = charge_from_pdgid(pdg)
    if pdg is not None:
        cols["pdgId"] = pdg
    for field in extra_fields:
        if not has_field(events, lay.candidates, field):
            msg = f"branch {lay.candidates}_{field} not found"
            raise InputError(msg)
        cols[field] = column(field)

    if strict_counts and has_field(events, jets, "nConstituents"):
        expected, _ = _flat_numpy(get_field(events, jets, "nConstituents"), f"{jets}_nConstituents")
        bad = np.flatnonzero(expected.astype(np.int64) != per_jet)
        if len(bad):
            j = int(bad[0])
            e = int(np.searchsorted(jet_start, j, side="right") - 1)
            msg = (
                f"branch {jets}_nConstituents: jet {j - int(jet_start[e])} of entry {entry_start + e} "
                f"has {int(expected[j])} constituents but {int(per_jet[j])} links in {lay.links}"
            )
            raise InputError(msg)

    records = ak.zip(cols, depth_limit=1)
    return ak.unflatten(ak.unflatten(records, per_jet), n_jets)


def read_fatjet_constituents(
    path: str | Path,
    *,
    tree: str = "Events",
    layout: str = "auto",
    jets: str = "FatJet",
    extra_fields: Sequence[str] = (),
    strict_counts: bool = False,
    entry_start: int | None = None,
    entry_stop: int | None = None,
) -> ak.Array:
    """:func:`fatjet_constituents` straight from a file with uproot (reads only the needed branches)."""
    path = Path(path)
    try:
        ttree = uproot.open(path)[tree]
    except FileNotFoundError:
        msg = f"{path}: file not found"
        raise InputError(msg) from None
    except Exception as err:  # uproot raises many types for a damaged file
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        msg = f"{path}: cannot read tree {tree!r}: {reason[:200]}"
        raise InputError(msg) from None
    # Read only the branches we may use: jet pt/nConstituents, candidate and link fields.
    cand_fields = (*BASE_FIELDS, "charge", "pdgId", *extra_fields)
    candidates = {f"{jets}_pt", f"{jets}_nConstituents"}
    for lay in LAYOUTS.values():
        candidates |= {f"{lay.candidates}_{f}" for f in cand_fields}
        candidates |= {f"{lay.links}_{lay.cand_idx}", f"{lay.links}_{lay.jet_idx}"}
    needed = sorted(candidates & set(ttree.keys()))
    arrays = ttree.arrays(needed, entry_start=entry_start, entry_stop=entry_stop, library="ak")
    try:
        return fatjet_constituents(
            arrays,
            layout=layout,
            jets=jets,
            extra_fields=extra_fields,
            strict_counts=strict_counts,
            entry_start=entry_start or 0,
        )
    except InputError as err:
        raise InputError(f"{path}: {err}") from None
