"""CMS NanoAOD large-radius jets: kinematics, constituents and jet-tagger scores.

Works on standard NanoAOD (FatJet, Jet), on NanoAOD v15 with the ``PFCand`` +
``FatJetPFCand`` index table, and on PFNano (``PFCands`` + ``FatJetPFCands``).
Constituents are linked by :func:`hepnn.jets.nanoaod.fatjet_constituents` (both
indices validated: one out of range is an error naming the branch and entry);
their number per FatJet is compared to ``FatJet_nConstituents`` where the file
has it. MC events are weighted by ``genWeight`` (so that xsec × lumi / Σ genWeight,
:mod:`hepnn.normalisation`, normalises them); events without it (data) by 1.

With taggers (``hepnn run configs/fatjets.yaml --models OUT/models``, e.g. the
``models`` folder of a ``configs/toptag.yaml`` run), every FatJet above
``fatjet_pt_min`` that has linked PF candidates gets each tagger's score
(:func:`hepnn.nets.apply.jet_scores`: images / sequences built from the real
PF candidates, deterministic for any chunking). FatJets without a score are
counted in ``fatjet_constituent_status``:

* ``no constituents linked`` -- the file has the link table but no candidate for
  this jet (2 of 64 FatJets of ``nano_tt_v15.root``); score NaN;
* ``no PF candidate table`` -- the file has no constituents at all (plain
  NanoAOD such as ``nano_dy.root``, ``nano_dimuon.root``); score NaN.

Outputs per tagger: ``fatjet_score_<tagger>`` and its 2D maps versus FatJet pT
and soft-drop mass; ``columns/<dataset>.parquet`` has one row per FatJet above
the threshold (event ids, kinematics, constituent count and status, scores).

The taggers of ``configs/toptag.yaml`` learnt Delphes-simulated jets of
550-650 GeV; on CMS FatJets (other detector, pile-up mitigation, pT from 170 GeV)
their scores show the plumbing, not a calibrated top tagger.

Jet-energy scale (``context.systematics`` with ``feature: FatJet_pt``, ``kind: scale``,
:mod:`hepnn.systematics`): each FatJet four-vector and its constituents are scaled
*before* the selection and the taggers (pT, mass, soft-drop mass; a jet crossing
``fatjet_pt_min`` enters or leaves the selection), the taggers are re-evaluated,
and ``fatjet_pt``, ``fatjet_eta``, ``fatjet_mass``, ``fatjet_msoftdrop`` and
``fatjet_score_<tagger>`` gain a ``syst`` axis (``nominal``, ``<name>Up``,
``<name>Down``). Never applied to data datasets. Without variations every output
is as before.
"""

from __future__ import annotations

from typing import Any

import awkward as ak
import hist
import numpy as np

from hepnn.columns import Columns
from hepnn.errors import InputError
from hepnn.jets.batch import constituent_layout, fatjet_batch
from hepnn.jets.nanoaod import fatjet_constituents
from hepnn.schemas import NanoSchema
from hepnn.systematics import (
    NOMINAL,
    Variation,
    scale_jet_batch,
    syst_labels,
    variations_from_mapping,
    varied_labels,
)
from hepnn.workflow import Workflow

#: Histograms that gain a ``syst`` axis with a jet-energy-scale variation.
VARIED_HISTS = ("fatjet_pt", "fatjet_eta", "fatjet_mass", "fatjet_msoftdrop")
#: The feature a jet-energy scale names.
JES_FEATURE = "FatJet_pt"

#: Per-FatJet constituent status (``fatjet_constituent_status``, column ``status``).
STATUS = ["with constituents", "no constituents linked", "no PF candidate table"]


def fatjet_constituent_counts(events: Any) -> ak.Array | None:
    """PF candidates linked to each FatJet (jagged like ``events.FatJet``), or None.

    None when the events have no link table; an index outside its collection
    raises :class:`~hepnn.errors.InputError` naming the branch and entry.
    """
    if constituent_layout(events) is None:
        return None
    cons = fatjet_constituents(events, entry_start=int(events.metadata.get("entrystart", 0)))
    return ak.num(cons, axis=2)


class FatJets(Workflow):
    """FatJet/Jet kinematics, constituent multiplicities and tagger scores per dataset.

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

    def _variations(self) -> list[Variation]:
        variations = variations_from_mapping(self.context.systematics)
        for v in variations:
            if v.feature != JES_FEATURE or v.kind != "scale":
                msg = (
                    f"systematics.{v.name}: the fatjets workflow varies {JES_FEATURE} with "
                    f"kind: scale (a jet-energy scale) only, got {v.feature} ({v.kind})"
                )
                raise InputError(msg)
        return variations

    def _jes(
        self, events: Any, ptmin: float, weight: np.ndarray
    ) -> dict[str, tuple[float, Any, np.ndarray]]:
        """Per variation label: (factor, selection, selected scaled FatJets, their weights).

        The factor is 1 where the variation does not apply (data, other datasets).
        """
        dataset = events.metadata["dataset"]
        meta = self.context.datasets.get(dataset, {})
        out = {}
        for v, direction, label in varied_labels(self._variations()):
            applies = v.applies_to(dataset, meta) and v.event_mask(meta.get("process"), 1).all()
            f = v.size(direction) if applies else 1.0
            fat = events.FatJet
            scaled = ak.zip(
                {k: fat[k] * f if k in ("pt", "mass", "msoftdrop") else fat[k]
                 for k in ("pt", "eta", "mass", "msoftdrop") if k in fat.fields}
            )  # fmt: skip
            sel = scaled.pt >= ptmin
            w = ak.to_numpy(ak.flatten(ak.broadcast_arrays(weight, scaled.pt[sel])[0]))
            out[label] = (f, sel, scaled[sel], w)
        return out

    def process(self, events: Any) -> dict[str, Any]:
        dataset = events.metadata["dataset"]
        n = len(events)
        # genWeight itself (not its sign): normalised by xsec x lumi / sum(genWeight) (hepnn.normalisation)
        weight = (
            ak.to_numpy(events.genWeight).astype(np.float64)
            if "genWeight" in events.fields
            else np.ones(n)
        )
        ptmin = float(self.options.get("fatjet_pt_min", 170.0))

        fat = events.FatJet
        sel = fat.pt >= ptmin
        fat = fat[sel]
        w_fat = ak.to_numpy(ak.flatten(ak.broadcast_arrays(weight, fat.pt)[0]))
        jets = events.Jet
        w_jet = ak.flatten(ak.broadcast_arrays(weight, jets.pt)[0])

        out: dict[str, Any] = {}
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
        variations = self._variations()
        syst_axes = (
            [hist.axis.StrCategory(syst_labels(variations), name="syst", label="variation")]
            if variations
            else []
        )
        jes = self._jes(events, ptmin, weight) if variations else {}
        for name, (field, axis) in specs.items():
            out[name] = self._h(*syst_axes, axis, label=name)
            out[name].fill(
                dataset=dataset,
                x=ak.to_numpy(ak.flatten(fat[field])),
                weight=w_fat,
                **({"syst": NOMINAL} if syst_axes else {}),
            )
            for label, (_, _, fat_v, w_v) in jes.items():
                if field in fat_v.fields:
                    x_v = ak.to_numpy(ak.flatten(fat_v[field]))
                    out[name].fill(dataset=dataset, x=x_v, weight=w_v, syst=label)

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

        # Constituents of the selected FatJets (None: the file has no link table).
        batch = fatjet_batch(events, pt_min=ptmin, entry_start=int(events.metadata["entrystart"]))
        pt_flat = ak.to_numpy(ak.flatten(fat.pt))
        out["fatjet_npfcand"] = self._h(
            hist.axis.Regular(30, 0, 150, name="n", label="PF candidates per FatJet"),
            label="FatJet constituents (PF index table)",
        )
        out["fatjet_npfcand_vs_pt"] = self._h(
            hist.axis.Regular(20, 150, 1150, name="pt", label=r"FatJet $p_{T}$ [GeV]"),
            hist.axis.Regular(30, 0, 150, name="n", label="PF candidates per FatJet"),
            label="constituents vs pT",
        )
        if batch is not None:
            n_const = batch.n_constituents
            status = np.where(n_const > 0, STATUS[0], STATUS[1])
            out["fatjet_npfcand"].fill(dataset=dataset, n=n_const, weight=w_fat)
            out["fatjet_npfcand_vs_pt"].fill(dataset=dataset, pt=pt_flat, n=n_const, weight=w_fat)
        else:
            n_const = np.zeros(len(pt_flat), dtype=np.int64)
            status = np.full(len(pt_flat), STATUS[2])
        out["fatjet_nconstituents"] = self._h(
            hist.axis.Regular(30, 0, 150, name="n", label="FatJet nConstituents"),
            label="FatJet nConstituents",
        )
        if "nConstituents" in fat.fields:
            out["fatjet_nconstituents"].fill(
                dataset=dataset, n=ak.to_numpy(ak.flatten(fat.nConstituents)), weight=w_fat
            )
        out["fatjet_constituent_status"] = hist.Hist(
            self._dataset_axis(),
            hist.axis.StrCategory(STATUS, name="status", label="FatJet constituents"),
            label="FatJets by constituent status (those without get no tagger score)",
        )
        out["fatjet_constituent_status"].fill(dataset=dataset, status=status)

        scores = {}
        if self.context.jet_networks:  # torch is imported only by a run with networks
            from hepnn.nets.apply import jet_event_ids, jet_scores
        all_jets = (
            fatjet_batch(events, pt_min=None, entry_start=int(events.metadata["entrystart"]))
            if jes and batch is not None and self.context.jet_networks
            else None
        )
        for tagger, path in self.context.jet_networks.items():
            # NaN where there is nothing to score: an empty jet or no link table.
            scores[tagger] = (
                jet_scores(path, batch, event_ids=jet_event_ids(path, events, batch))
                if batch is not None
                else np.full(len(pt_flat), np.nan, dtype=np.float32)
            )
            out.update(self._score_hists(tagger, scores[tagger], fat, dataset, w_fat, syst_axes))
            for label, (f, sel_v, _, w_v) in jes.items():
                if all_jets is None:
                    s_v = np.full(len(w_v), np.nan, dtype=np.float32)
                else:  # the scaled jets that pass the selection, tagged again
                    b_v = scale_jet_batch(all_jets.take(ak.to_numpy(ak.flatten(sel_v))), f)
                    s_v = jet_scores(path, b_v, event_ids=jet_event_ids(path, events, b_v))
                ok = np.isfinite(s_v)
                out[f"fatjet_score_{tagger}"].fill(
                    dataset=dataset, score=s_v[ok].astype(np.float64), weight=w_v[ok], syst=label
                )
        out["columns"] = {
            dataset: Columns(self._columns(events, sel, fat, n_const, status, scores))
        }
        return out

    def _score_hists(
        self,
        tagger: str,
        score: np.ndarray,
        fat: Any,
        dataset: str,
        w_fat: np.ndarray,
        syst_axes: list[hist.axis.AxesMixin] | None = None,
    ) -> dict[str, hist.Hist]:
        ok = np.isfinite(score)
        s = score[ok].astype(np.float64)
        w = w_fat[ok]
        score_axis = hist.axis.Regular(20, 0.0, 1.0, name="score", label=f"{tagger} score")
        h1 = self._h(
            *(syst_axes or []),
            hist.axis.Regular(50, 0.0, 1.0, name="score", label=f"{tagger} score"),
            label=f"FatJet {tagger} score",
        )
        h1.fill(dataset=dataset, score=s, weight=w, **({"syst": NOMINAL} if syst_axes else {}))
        vs_pt = self._h(
            hist.axis.Regular(20, 150, 1150, name="pt", label=r"FatJet $p_{T}$ [GeV]"),
            score_axis,
            label=f"{tagger} score vs FatJet pT",
        )
        vs_pt.fill(dataset=dataset, pt=ak.to_numpy(ak.flatten(fat.pt))[ok], score=s, weight=w)
        out = {f"fatjet_score_{tagger}": h1, f"fatjet_score_{tagger}_vs_pt": vs_pt}
        if "msoftdrop" in fat.fields:
            vs_msd = self._h(
                hist.axis.Regular(
                    20, 0, 400, name="msoftdrop", label="FatJet soft-drop mass [GeV]"
                ),
                score_axis,
                label=f"{tagger} score vs FatJet soft-drop mass",
            )
            msd = ak.to_numpy(ak.flatten(fat.msoftdrop))[ok]
            vs_msd.fill(dataset=dataset, msoftdrop=msd, score=s, weight=w)
            out[f"fatjet_score_{tagger}_vs_msoftdrop"] = vs_msd
        return out

    @staticmethod
    def _columns(
        events: Any,
        sel: Any,
        fat: Any,
        n_const: np.ndarray,
        status: np.ndarray,
        scores: dict[str, np.ndarray],
    ) -> dict[str, np.ndarray]:
        """One row per selected FatJet: event ids, kinematics, constituents, scores."""
        n_per_event = ak.to_numpy(ak.num(fat))
        rows = np.repeat(np.arange(len(n_per_event)), n_per_event)
        cols: dict[str, np.ndarray] = {
            name: ak.to_numpy(events[name])[rows].astype(np.int64)
            for name in ("run", "luminosityBlock", "event")
        }
        cols["fatjet_index"] = ak.to_numpy(ak.flatten(ak.local_index(events.FatJet.pt)[sel]))
        for field in ("pt", "eta", "phi", "mass", "msoftdrop"):
            cols[field] = (
                ak.to_numpy(ak.flatten(fat[field])).astype(np.float32)
                if field in fat.fields
                else np.full(len(rows), np.nan, dtype=np.float32)
            )
        cols["n_constituents"] = n_const.astype(np.int32)
        cols["status"] = np.asarray(status, dtype=str)
        cols.update({f"score_{t}": s.astype(np.float32) for t, s in scores.items()})
        return cols
