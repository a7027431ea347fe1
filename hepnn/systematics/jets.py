"""Jet-energy-scale variations of NanoAOD jets and their constituents, as pure arrays."""

from __future__ import annotations

import awkward as ak

from hepnn.jets.batch import JetBatch

__all__ = ["JET_SCALED_FIELDS", "scale_jet_batch"]

#: FatJet fields a jet-energy scale multiplies (the four-vector scales: pT, masses).
JET_SCALED_FIELDS: tuple[str, ...] = ("pt", "mass", "msoftdrop")


def scale_jet_batch(batch: JetBatch, factor: float) -> JetBatch:
    """``batch`` with every jet four-vector, and every constituent's, multiplied by ``factor``.

    A jet-energy scale moves the whole jet coherently: its pT, mass and energy, and
    the pT, mass and energy of its constituents (η, φ unchanged). A tagger reading
    only relative constituent quantities (pT fractions, normalised images) is
    invariant under it; one reading absolute ones (log pT, log E) is not.
    """
    cons = batch.constituents
    for field in ("pt", "mass", "energy"):
        if field in cons.fields:
            cons = ak.with_field(cons, cons[field] * factor, field)
    return JetBatch(
        cons,
        batch.pt * factor,
        batch.eta,
        batch.phi,
        batch.mass * factor,
        batch.energy * factor,
        batch.event_index,
        batch.jet_index,
    )
