"""CMS NanoAOD large-radius jets: FatJet and Jet kinematics, constituent multiplicities.

Works on standard NanoAOD (FatJet, Jet), on NanoAOD v15 with the ``PFCand`` +
``FatJetPFCand`` index table, and on PFNano (``PFCands`` + ``FatJetPFCands``).
The number of PF candidates linked to each FatJet is counted from the index
table (``FatJetPFCand.jetIdx`` / ``FatJetPFCands.jetIdx``) and compared to
``FatJet_nConstituents`` where the file has it. MC events are weighted by the
sign of ``genWeight``; data events by 1.
"""

from __future__ import annotations

from typing import Any

import awkward as ak
import hist
import numpy as np

from hepnn.errors import InputError
from hepnn.schemas import NanoSchema
from hepnn.workflow import Workflow


def fatjet_constituent_counts(events: Any) -> ak.Array | None:
    """PF candidates linked to each FatJet (jagged like ``events.FatJet``), or None.

    Counts entries of the index table per ``jetIdx``; an index outside the
    event's FatJet collection is an error naming the branch.
    """
    table = next((t for t in ("FatJetPFCand", "FatJetPFCands") if t in events.fields), None)
    if table is None:
        return None
    jet_idx = events[table].jetIdx
    n_fat = ak.to_numpy(ak.num(events.FatJet))
    local = ak.to_numpy(ak.flatten(jet_idx)).astype(np.int64)
    owner = np.repeat(np.arange(len(n_fat)), ak.to_numpy(ak.num(jet_idx)))
    bad = (local < 0) | (local >= n_fat[owner])
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        msg = (
            f"{events.metadata['filename']}: branch {table}_jetIdx: index {local[first]} "
            f"outside the {n_fat[owner[first]]} FatJets of entry "
            f"{events.metadata['entrystart'] + owner[first]}"
        )
        raise InputError(msg)
    offsets = np.concatenate([[0], np.cumsum(n_fat)])
    counts = np.bincount(offsets[owner] + local, minlength=int(offsets[-1]))
    return ak.unflatten(counts, n_fat)


class FatJets(Workflow):
    """FatJet/Jet kinematics and constituent multiplicities per dataset.

    Options
    -------
    fatjet_pt_min : float
        Minimum FatJet pT in GeV (default 170, the NanoAOD AK8 threshold).
    """

    name = "fatjets"
    schema = NanoSchema

    def _dataset_axis(self) -> hist.axis.StrCategory:
        return hist.axis.StrCategory(list(self.context.datasets), name="dataset", label="dataset")

    def _h(self, *axes: hist.axis.AxesMixin, label: str) -> hist.Hist:
        return hist.Hist(self._dataset_axis(), *axes, storage=hist.storage.Weight(), label=label)

    def process(self, events: Any) -> dict[str, hist.Hist]:
        dataset = events.metadata["dataset"]
        n = len(events)
        weight = (
            np.sign(ak.to_numpy(events.genWeight)) if "genWeight" in events.fields else np.ones(n)
        )
        ptmin = float(self.options.get("fatjet_pt_min", 170.0))

        fat = events.FatJet
        sel = fat.pt >= ptmin
        fat = fat[sel]
        w_fat = ak.flatten(ak.broadcast_arrays(weight, fat.pt)[0])
        jets = events.Jet
        w_jet = ak.flatten(ak.broadcast_arrays(weight, jets.pt)[0])

        out: dict[str, hist.Hist] = {}
        out["nfatjet"] = self._h(
            hist.axis.Integer(0, 6, name="n", label="FatJets per event"),
            label="FatJet multiplicity",
        )
        out["nfatjet"].fill(dataset=dataset, n=ak.to_numpy(ak.num(fat)), weight=weight)
        specs = {
            "fatjet_pt": (
                "pt",
                hist.axis.Regular(40, 150, 1150, name="x", label=r"FatJet $p_{T}$ [GeV]"),
            ),
            "fatjet_eta": ("eta", hist.axis.Regular(30, -3, 3, name="x", label=r"FatJet $\eta$")),
            "fatjet_mass": (
                "mass",
                hist.axis.Regular(40, 0, 400, name="x", label="FatJet mass [GeV]"),
            ),
            "fatjet_msoftdrop": (
                "msoftdrop",
                hist.axis.Regular(40, 0, 400, name="x", label="FatJet soft-drop mass [GeV]"),
            ),
        }
        for name, (field, axis) in specs.items():
            out[name] = self._h(axis, label=name)
            out[name].fill(dataset=dataset, x=ak.to_numpy(ak.flatten(fat[field])), weight=w_fat)

        out["njet"] = self._h(
            hist.axis.Integer(0, 15, name="n", label="AK4 jets per event"), label="Jet multiplicity"
        )
        out["njet"].fill(dataset=dataset, n=ak.to_numpy(ak.num(jets)), weight=weight)
        out["jet_pt"] = self._h(
            hist.axis.Regular(40, 0, 400, name="x", label=r"Jet $p_{T}$ [GeV]"), label="jet_pt"
        )
        out["jet_pt"].fill(dataset=dataset, x=ak.to_numpy(ak.flatten(jets.pt)), weight=w_jet)
        out["jet_eta"] = self._h(
            hist.axis.Regular(30, -5, 5, name="x", label=r"Jet $\eta$"), label="jet_eta"
        )
        out["jet_eta"].fill(dataset=dataset, x=ak.to_numpy(ak.flatten(jets.eta)), weight=w_jet)

        ncon_axis = hist.axis.Regular(30, 0, 150, name="n", label="PF candidates per FatJet")
        out["fatjet_npfcand"] = self._h(ncon_axis, label="FatJet constituents (PF index table)")
        counts = fatjet_constituent_counts(events)
        if counts is not None:
            counts = counts[sel]
            out["fatjet_npfcand"].fill(
                dataset=dataset, n=ak.to_numpy(ak.flatten(counts)), weight=w_fat
            )
            out["fatjet_npfcand_vs_pt"] = self._h(
                hist.axis.Regular(20, 150, 1150, name="pt", label=r"FatJet $p_{T}$ [GeV]"),
                hist.axis.Regular(30, 0, 150, name="n", label="PF candidates per FatJet"),
                label="constituents vs pT",
            )
            out["fatjet_npfcand_vs_pt"].fill(
                dataset=dataset,
                pt=ak.to_numpy(ak.flatten(fat.pt)),
                n=ak.to_numpy(ak.flatten(counts)),
                weight=w_fat,
            )
        else:
            out["fatjet_npfcand_vs_pt"] = self._h(
                hist.axis.Regular(20, 150, 1150, name="pt", label=r"FatJet $p_{T}$ [GeV]"),
                hist.axis.Regular(30, 0, 150, name="n", label="PF candidates per FatJet"),
                label="constituents vs pT",
            )
        out["fatjet_nconstituents"] = self._h(
            hist.axis.Regular(30, 0, 150, name="n", label="FatJet nConstituents"),
            label="FatJet nConstituents",
        )
        if "nConstituents" in fat.fields:
            out["fatjet_nconstituents"].fill(
                dataset=dataset, n=ak.to_numpy(ak.flatten(fat.nConstituents)), weight=w_fat
            )
        return out
