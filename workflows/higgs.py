"""ATLAS Higgs-ML-challenge (H→ττ) analysis on the challenge CSV.

Events come from the CSV through hepnn's cached ROOT conversion (flat branches,
``BaseSchema``). ``-999.0`` ("undefined", e.g. the di-jet variables of events
with fewer than two jets) is turned into missing values before anything is
filled: a histogram never sees -999 as a physics value.

Histograms (all weighted with the event ``Weight`` when the sample has one):
kinematics of the main DER_/PRI_ variables split by dataset, process
(signal/background from ``Label``) and jet-multiplicity category (0, 1, ≥2 jets),
a yield table per category and a 2D visible vs MMC mass.

With networks (``context.flat_networks``), each network's score is a deterministic
column of the events (:func:`hepnn.nets.apply.network_score`): histogrammed per
process (``score_<net>``, and finely binned for ROC/AMS curves), used to bin key
variables (``<var>_by_score_<net>``) and as a selection (``<var>_cut_<net>``:
score > ``options.score_cut``), and returned per event for
``columns/<dataset>.parquet``.

With input variations (``context.systematics``, :mod:`hepnn.systematics`), the
kinematic histograms, ``score_<net>`` and ``<var>_cut_<net>`` gain a ``syst`` axis
(``nominal``, ``<name>Up``, ``<name>Down``; ``score_fine_syst_<net>`` is the fine-binned
score with it). Each variation's columns are varied (tau / jet energy scales with the
MET correction, every dependent ``DER_`` recomputed; ``DER_mass_MMC`` cannot be and
stays nominal), the network is re-evaluated on them (``score_<net>_<name>Up/Down``
columns), and ``score_linear_<net>`` / ``syst_shift_<net>`` hold the first-order
Taylor prediction of the shift for the variations table. Data datasets are never
varied. Without variations every output is as before (no ``syst`` axis).
"""

from __future__ import annotations

from typing import Any

import awkward as ak
import hist
import numpy as np

from hepnn.columns import Columns
from hepnn.fill import CategoryGroups
from hepnn.io.higgs_layout import FEATURES, MISSING_VALUE
from hepnn.io.missing import present_values, with_missing
from hepnn.schemas import BaseSchema
from hepnn.systematics import (
    NOMINAL,
    shift_hists,
    syst_labels,
    variations_from_mapping,
    varied_labels,
    vary_higgs_columns,
)
from hepnn.workflow import Workflow

PROCESSES = ["signal", "background", "unlabelled"]
SCORE_BINS = ["0.00-0.25", "0.25-0.50", "0.50-0.75", "0.75-1.00"]
#: Variables shown in bins of a network score and after the score cut.
KEY_VARIABLES = ("DER_mass_MMC", "DER_mass_vis", "DER_pt_h", "DER_mass_transverse_met_lep")
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
    score_cut : float
        Selection on each network score for the ``*_cut_<net>`` histograms (default 0.5).
    """

    name = "higgs"
    schema = BaseSchema

    def _axes(self) -> list[hist.axis.AxesMixin]:
        return [
            hist.axis.StrCategory(list(self.context.datasets), name="dataset", label="dataset"),
            hist.axis.StrCategory(PROCESSES, name="process", label="process"),
            hist.axis.StrCategory(JET_BINS, name="njet", label="jet multiplicity"),
        ]

    def _syst_axes(self) -> list[hist.axis.AxesMixin]:
        """``[syst]`` with input variations, else nothing (outputs as without the feature)."""
        variations = variations_from_mapping(self.context.systematics)
        if not variations:
            return []
        return [hist.axis.StrCategory(syst_labels(variations), name="syst", label="variation")]

    def _varied_columns(
        self, events: Any, dataset: str, process: np.ndarray
    ) -> tuple[dict[str, np.ndarray], dict[str, dict[str, np.ndarray]]]:
        """The raw feature columns and, per variation label, the columns it changes ({} if none)."""
        variations = variations_from_mapping(self.context.systematics)
        if not variations:
            return {}, {}
        names = [f for f in events.fields if f in FEATURES or f == "EventId"]
        raw = {f: ak.to_numpy(events[f]) for f in names}
        meta = self.context.datasets.get(dataset, {})
        varied: dict[str, dict[str, np.ndarray]] = {}
        for v, direction, label in varied_labels(variations):
            if not v.applies_to(dataset, meta):
                varied[label] = {}
                continue
            mask = v.event_mask(process, len(process))
            varied[label] = vary_higgs_columns(raw, v, direction, mask) if mask.any() else {}
        return raw, varied

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

        # every histogram is filled per (process, jet bin) with scalar categories: same bits
        # as one fill with the string arrays, ~5x faster (hepnn.fill)
        groups = CategoryGroups(process=process, njet=jet_bin)
        out: dict[str, hist.Hist] = {}
        yields = hist.Hist(*self._axes(), storage=hist.storage.Weight(), label="event yields")
        groups.fill(yields, dataset=dataset, weight=weight)
        out["yields"] = yields

        syst_axes = self._syst_axes()
        raw, varied = self._varied_columns(events, dataset, process)
        for var, (bins, lo, hi, label) in VARIABLES.items():
            h = hist.Hist(
                *self._axes(),
                *syst_axes,
                hist.axis.Regular(bins, lo, hi, name="x", label=label),
                storage=hist.storage.Weight(),
                label=var,
            )
            present, x = present_values(ev[var])
            groups.fill(h, where=present, dataset=dataset, x=x, weight=weight,
                        **({"syst": NOMINAL} if syst_axes else {}))  # fmt: skip
            for syst, changed in varied.items():
                pres, xv = _varied_values(changed, var, present, x)
                groups.fill(h, where=pres, dataset=dataset, x=xv, weight=weight, syst=syst)
            out[var] = h

        has_mmc, mmc = present_values(ev.DER_mass_MMC)
        has_mvis, mvis = present_values(ev.DER_mass_vis)
        h2 = hist.Hist(
            hist.axis.StrCategory(list(self.context.datasets), name="dataset"),
            hist.axis.StrCategory(PROCESSES, name="process"),
            hist.axis.Regular(40, 0.0, 300.0, name="mvis", label=r"$m_{vis}$ [GeV]"),
            hist.axis.Regular(40, 0.0, 400.0, name="mmc", label=r"$m_{H}^{\mathrm{MMC}}$ [GeV]"),
            storage=hist.storage.Weight(),
            label="visible vs MMC mass",
        )
        by_process = CategoryGroups(process=process)
        by_process.fill(
            h2, where=has_mmc & has_mvis, dataset=dataset, mvis=mvis, mmc=mmc, weight=weight
        )
        out["mvis_vs_mmc"] = h2

        columns: dict[str, np.ndarray] = {"EventId": ak.to_numpy(events.EventId)}
        if "Label" in fields:
            columns["Label"] = ak.to_numpy(events.Label).astype(np.int8)
        if "Weight" in fields:
            columns["Weight"] = ak.to_numpy(events.Weight)
        if self.context.flat_networks:  # torch is imported only by a run with networks
            from hepnn.bands import replica_hists
            from hepnn.nets.apply import band_replicas, network_score
        for net, path in self.context.flat_networks.items():
            score = network_score(path, events)
            columns[f"score_{net}"] = score
            systs = self._varied_scores(net, path, score, raw, varied, process, weight, out)
            for syst, (s_var, _) in systs.items():
                columns[f"score_{net}_{syst}"] = s_var
            out.update(
                self._network_hists(
                    net, score, ev, dataset, process, groups, by_process, weight, systs
                )
            )
            replicas = band_replicas(
                path, events, score, mc_dropout=self.context.mc_dropout,
                members=self.context.ensembles.get(net),
            )  # fmt: skip
            if "mc" in replicas:
                columns[f"score_{net}_mcd_mean"] = replicas["mc"].mean(axis=0, dtype=np.float64)
                columns[f"score_{net}_mcd_std"] = replicas["mc"].std(
                    axis=0, ddof=1, dtype=np.float64
                )
            out.update(replica_hists(net, score, replicas, process, weight, PROCESSES))
        out["columns"] = {dataset: Columns(columns)}
        return out

    def _varied_scores(
        self,
        net: str,
        path: str,
        score: np.ndarray,
        raw: dict[str, np.ndarray],
        varied: dict[str, dict[str, np.ndarray]],
        process: np.ndarray,
        weight: np.ndarray,
        out: dict[str, Any],
    ) -> dict[str, tuple[np.ndarray, dict[str, np.ndarray]]]:
        """The network re-evaluated per variation; fills ``score_linear_<net>`` / ``syst_shift_<net>``."""
        if not varied:
            return {}
        from hepnn.nets.apply import network_score
        from hepnn.nets.linear import input_gradients, linear_shift

        shifts = shift_hists(net, PROCESSES, list(varied))
        s0 = score.astype(np.float64)
        grads = input_gradients(path, raw) if any(varied.values()) else None
        systs = {}
        for syst, changed in varied.items():
            if changed:
                cols = {**raw, **changed}
                s_var = network_score(path, cols)
                lin = linear_shift(path, raw, cols, gradients=grads)
            else:
                s_var, lin = score, np.zeros(len(score))
            systs[syst] = (s_var, changed)
            delta = s_var.astype(np.float64) - s0
            shifts[f"score_linear_{net}"].fill(
                process=process, syst=syst, score=s0 + lin, weight=weight
            )
            sums = shifts[f"syst_shift_{net}"]
            for quantity, values in (
                ("actual", delta),
                ("linear", lin),
                ("residual_sq", (delta - lin) ** 2),
            ):
                sums.fill(process=process, syst=syst, quantity=quantity, weight=weight * values)
        out.update(shifts)
        return systs

    def _network_hists(
        self,
        net: str,
        score: np.ndarray,
        ev: Any,
        dataset: str,
        process: np.ndarray,
        groups: CategoryGroups,
        by_process: CategoryGroups,
        weight: np.ndarray,
        systs: dict[str, tuple[np.ndarray, dict[str, np.ndarray]]] | None = None,
    ) -> dict[str, hist.Hist]:
        out: dict[str, hist.Hist] = {}
        s = score.astype(np.float64)
        syst_axes = self._syst_axes() if systs else []
        nominal = {"syst": NOMINAL} if syst_axes else {}
        varied_s = {k: v.astype(np.float64) for k, (v, _) in (systs or {}).items()}
        h = hist.Hist(
            *self._axes(),
            *syst_axes,
            hist.axis.Regular(50, 0.0, 1.0, name="score", label=f"{net} score"),
            storage=hist.storage.Weight(),
            label=f"{net} score",
        )
        groups.fill(h, dataset=dataset, score=s, weight=weight, **nominal)
        for syst, sv in varied_s.items():
            groups.fill(h, dataset=dataset, score=sv, weight=weight, syst=syst)
        out[f"score_{net}"] = h
        fine = hist.Hist(
            hist.axis.StrCategory(PROCESSES, name="process"),
            hist.axis.Regular(1000, 0.0, 1.0, name="score", label=f"{net} score"),
            storage=hist.storage.Weight(),
            label=f"{net} score (fine binning for ROC/AMS)",
            metadata={"plot": False},
        )
        by_process.fill(fine, score=s, weight=weight)
        out[f"score_fine_{net}"] = fine
        if syst_axes:
            fine_syst = hist.Hist(
                hist.axis.StrCategory(PROCESSES, name="process"),
                *syst_axes,
                hist.axis.Regular(1000, 0.0, 1.0, name="score", label=f"{net} score"),
                storage=hist.storage.Weight(),
                label=f"{net} score per input variation (fine binning)",
                metadata={"plot": False},
            )
            by_process.fill(fine_syst, score=s, weight=weight, syst=NOMINAL)
            for syst, sv in varied_s.items():
                by_process.fill(fine_syst, score=sv, weight=weight, syst=syst)
            out[f"score_fine_syst_{net}"] = fine_syst

        score_bin = np.array(SCORE_BINS)[np.clip((s * 4).astype(int), 0, 3)]
        cut = float(self.options.get("score_cut", 0.5))
        passed = s > cut
        by_score = CategoryGroups(process=process, score_bin=score_bin)
        for var in KEY_VARIABLES:
            bins, lo, hi, label = VARIABLES[var]
            present, x = present_values(ev[var])
            by = hist.Hist(
                hist.axis.StrCategory(PROCESSES, name="process"),
                hist.axis.StrCategory(SCORE_BINS, name="score_bin", label=f"{net} score"),
                hist.axis.Regular(bins, lo, hi, name="x", label=label),
                storage=hist.storage.Weight(),
                label=f"{var} in bins of the {net} score",
                metadata={"overlay": "score_bin"},
            )
            by_score.fill(by, where=present, x=x, weight=weight)
            out[f"{var}_by_score_{net}"] = by
            after = hist.Hist(
                *self._axes(),
                *syst_axes,
                hist.axis.Regular(bins, lo, hi, name="x", label=label),
                storage=hist.storage.Weight(),
                label=f"{var}, {net} score > {cut:g}",
            )
            groups.fill(after, where=present & passed, dataset=dataset, x=x, weight=weight,
                        **nominal)  # fmt: skip
            for syst, (_, changed) in (systs or {}).items():
                pres, xv = _varied_values(changed, var, present, x)
                groups.fill(after, where=pres & (varied_s[syst] > cut), dataset=dataset, x=xv,
                            weight=weight, syst=syst)  # fmt: skip
            out[f"{var}_cut_{net}"] = after
        return out


def _varied_values(
    changed: dict[str, np.ndarray], var: str, present: np.ndarray, x: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Where ``var`` is defined and its values (every event), after a variation.

    Nominal (``present``, ``x``) if the variation does not change ``var``.
    """
    if var not in changed:
        return present, x
    values = changed[var]
    return values != MISSING_VALUE, values
