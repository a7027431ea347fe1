"""ATLAS Higgs-ML-challenge (H→ττ) analysis on the challenge CSV.

Events come from the CSV through hepnn's cached ROOT conversion (flat branches,
``BaseSchema``). ``-999.0`` ("undefined", e.g. the di-jet variables of events
with fewer than two jets) is turned into missing values before anything is
filled: a histogram never sees -999 as a physics value.

Histograms (all weighted with the event ``Weight`` when the sample has one):
kinematics of the main DER_/PRI_ variables split by dataset, process
(signal/background from ``Label``) and jet-multiplicity category (0, 1, ≥2 jets),
a yield table per category and a 2D visible vs MMC mass.
"""

from __future__ import annotations

from typing import Any

import awkward as ak
import hist
import numpy as np

from hepnn.io.higgs_csv import with_missing
from hepnn.schemas import BaseSchema
from hepnn.workflow import Workflow

PROCESSES = ["signal", "background", "unlabelled"]
JET_BINS = ["0 jets", "1 jet", "2+ jets"]

#: name → (bins, low, high, axis label with unit)
VARIABLES: dict[str, tuple[int, float, float, str]] = {
    "DER_mass_MMC": (50, 0.0, 400.0, r"$m_{H}^{\mathrm{MMC}}$ [GeV]"),
    "DER_mass_transverse_met_lep": (40, 0.0, 200.0, r"$m_{T}(\ell, E_{T}^{miss})$ [GeV]"),
    "DER_mass_vis": (50, 0.0, 300.0, r"$m_{vis}(\tau, \ell)$ [GeV]"),
    "DER_pt_h": (40, 0.0, 400.0, r"$p_{T}^{H}$ [GeV]"),
    "DER_deltar_tau_lep": (40, 0.0, 5.0, r"$\Delta R(\tau, \ell)$"),
    "DER_pt_ratio_lep_tau": (40, 0.0, 5.0, r"$p_{T}^{\ell} / p_{T}^{\tau}$"),
    "DER_met_phi_centrality": (30, -1.5, 1.5, r"$E_{T}^{miss}$ $\phi$ centrality"),
    "DER_sum_pt": (40, 0.0, 800.0, r"$\sum p_{T}$ [GeV]"),
    "DER_mass_jet_jet": (40, 0.0, 1500.0, r"$m_{jj}$ [GeV]"),
    "DER_deltaeta_jet_jet": (36, 0.0, 9.0, r"$|\Delta\eta_{jj}|$"),
    "PRI_tau_pt": (40, 0.0, 200.0, r"$p_{T}^{\tau}$ [GeV]"),
    "PRI_lep_pt": (40, 0.0, 200.0, r"$p_{T}^{\ell}$ [GeV]"),
    "PRI_met": (40, 0.0, 300.0, r"$E_{T}^{miss}$ [GeV]"),
    "PRI_jet_leading_pt": (40, 0.0, 400.0, r"leading jet $p_{T}$ [GeV]"),
}


class Higgs(Workflow):
    """Kinematic histograms of the Higgs-challenge events by process and jet bin.

    Options
    -------
    use_weights : bool
        Fill with the ``Weight`` column (default true).
    """

    name = "higgs"
    schema = BaseSchema

    def _axes(self) -> list[hist.axis.AxesMixin]:
        return [
            hist.axis.StrCategory(list(self.context.datasets), name="dataset", label="dataset"),
            hist.axis.StrCategory(PROCESSES, name="process", label="process"),
            hist.axis.StrCategory(JET_BINS, name="njet", label="jet multiplicity"),
        ]

    def process(self, events: Any) -> dict[str, hist.Hist]:
        dataset = events.metadata["dataset"]
        n = len(events)
        fields = set(events.fields)
        ev = with_missing(events)

        if "Label" in fields:
            label = ak.to_numpy(events.Label)
            process = np.where(label == 1, "signal", "background")
        else:
            process = np.full(n, "unlabelled")
        use_weights = self.options.get("use_weights", True)
        if use_weights and "Weight" in fields:
            weight = ak.to_numpy(events.Weight).astype(np.float64)
        else:
            weight = np.ones(n)
        njet = ak.to_numpy(events.PRI_jet_num)
        jet_bin = np.array(JET_BINS, dtype=object)[np.clip(njet, 0, 2)].astype(str)

        out: dict[str, hist.Hist] = {}
        yields = hist.Hist(*self._axes(), storage=hist.storage.Weight(), label="event yields")
        yields.fill(dataset=dataset, process=process, njet=jet_bin, weight=weight)
        out["yields"] = yields

        for var, (bins, lo, hi, label) in VARIABLES.items():
            h = hist.Hist(
                *self._axes(),
                hist.axis.Regular(bins, lo, hi, name="x", label=label),
                storage=hist.storage.Weight(),
                label=var,
            )
            values = ev[var]
            present = ~ak.to_numpy(ak.is_none(values))
            h.fill(
                dataset=dataset,
                process=process[present],
                njet=jet_bin[present],
                x=ak.to_numpy(values[present]).astype(np.float64),
                weight=weight[present],
            )
            out[var] = h

        mmc, mvis = ev.DER_mass_MMC, ev.DER_mass_vis
        both = ~ak.to_numpy(ak.is_none(mmc) | ak.is_none(mvis))
        h2 = hist.Hist(
            hist.axis.StrCategory(list(self.context.datasets), name="dataset"),
            hist.axis.StrCategory(PROCESSES, name="process"),
            hist.axis.Regular(40, 0.0, 300.0, name="mvis", label=r"$m_{vis}$ [GeV]"),
            hist.axis.Regular(40, 0.0, 400.0, name="mmc", label=r"$m_{H}^{\mathrm{MMC}}$ [GeV]"),
            storage=hist.storage.Weight(),
            label="visible vs MMC mass",
        )
        h2.fill(
            dataset=dataset,
            process=process[both],
            mvis=ak.to_numpy(mvis[both]).astype(np.float64),
            mmc=ak.to_numpy(mmc[both]).astype(np.float64),
            weight=weight[both],
        )
        out["mvis_vs_mmc"] = h2
        return out
