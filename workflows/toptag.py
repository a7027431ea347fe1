"""Top tagging: apply the config's jet taggers to labelled jets, one row per jet.

Reads NanoAOD-like jets with PF-candidate constituents (the ParT npy folder
converted by :mod:`hepnn.io.part_npy`, or any file with ``FatJetPFCand`` /
``FatJetPFCands`` links), scores every jet with every tagger of
``context.jet_networks`` (:func:`hepnn.nets.apply.score_jets`: deterministic,
chunk-independent) and returns

* ``columns/<dataset>.parquet``: ``event``, ``jet_index``, ``label`` (-1 when the
  sample has none), ``jet_pt``, ``jet_eta``, ``jet_mass``, ``n_constituents``,
  ``jet_ptd``, ``empty`` and ``score_<tagger>`` (NaN for empty jets);
* hists: ``score_<tagger>`` per process (score distributions per label),
  ``jet_mass``, ``jet_pt``, ``jet_nconst``, ``jet_status`` (tagged / empty jets),
  ``jet_image_sum`` (pixel intensities of the first image tagger's input, before
  its pixel normalisation; the run turns it into ``jet_image_mean_<process>``).

Metrics (AUC, rejection at ε_S = 0.3, mass and GBT baselines) and the ROC plot
are made after the run from the columns (:mod:`hepnn.nets.report`).

Options
-------
label : str
    0/1 label branch, per event (``label``) or per jet (``FatJet_label``); default ``label``.
jets : str
    Jet collection (default ``FatJet``).
jet_pt_min : float
    Minimum jet pT in GeV (default 0: every jet).
"""

from __future__ import annotations

from typing import Any

import awkward as ak
import hist
import numpy as np

from hepnn.bands import replica_hists
from hepnn.columns import Columns
from hepnn.errors import InputError
from hepnn.jets.batch import fatjet_batch, jet_labels
from hepnn.nets.apply import band_replicas, jet_event_ids, score_jets
from hepnn.nets.data import baseline_columns
from hepnn.schemas import NanoSchema
from hepnn.workflow import Workflow

PROCESSES = ["signal", "background", "unlabelled"]
STATUS = ["tagged", "empty"]


class TopTag(Workflow):
    """Tagger scores, jet kinematics and average images of labelled jets."""

    name = "toptag"
    schema = NanoSchema

    def _axes(self) -> list[hist.axis.AxesMixin]:
        return [
            hist.axis.StrCategory(list(self.context.datasets), name="dataset", label="dataset"),
            hist.axis.StrCategory(PROCESSES, name="process", label="process"),
        ]

    def process(self, events: Any) -> dict[str, Any]:
        md = events.metadata
        dataset = md["dataset"]
        jets_name = str(self.options.get("jets", "FatJet"))
        pt_min = self.options.get("jet_pt_min")
        batch = fatjet_batch(
            events,
            jets=jets_name,
            pt_min=None if pt_min is None else float(pt_min),
            entry_start=int(md.get("entrystart", 0)),
        )
        if batch is None:
            msg = f"no {jets_name} constituent link table (FatJetPFCand / FatJetPFCands) in the events"
            raise InputError(msg)
        labels = jet_labels(events, str(self.options.get("label", "label")), batch, jets=jets_name)
        if labels is None:
            labels = np.full(len(batch), -1, dtype=np.int64)
        process = np.array(PROCESSES)[np.where(labels == 1, 0, np.where(labels == 0, 1, 2))]
        scores, images, extent = score_jets(self.context.jet_networks, batch, events)
        empty = batch.empty
        n_const = batch.n_constituents

        out: dict[str, Any] = {}
        status = hist.Hist(
            *self._axes(),
            hist.axis.StrCategory(STATUS, name="status", label="jet"),
            label="jets: tagged / without constituents (score NaN)",
        )
        status.fill(dataset=dataset, process=process, status=np.where(empty, "empty", "tagged"))
        out["jet_status"] = status
        for key, values, axis in (
            (
                "jet_mass",
                batch.mass,
                hist.axis.Regular(40, 0, 400, name="x", label="jet mass [GeV]"),
            ),
            (
                "jet_pt",
                batch.pt,
                hist.axis.Regular(40, 0, 1200, name="x", label=r"jet $p_{T}$ [GeV]"),
            ),
            (
                "jet_nconst",
                n_const,
                hist.axis.Regular(40, 0, 160, name="x", label="constituents per jet"),
            ),
        ):
            h = hist.Hist(*self._axes(), axis, label=key)
            h.fill(dataset=dataset, process=process, x=np.asarray(values, dtype=np.float64))
            out[key] = h
        for name, score in scores.items():
            ok = ~empty
            h = hist.Hist(
                *self._axes(),
                hist.axis.Regular(50, 0.0, 1.0, name="score", label=f"{name} score"),
                label=f"{name} score",
            )
            h.fill(dataset=dataset, process=process[ok], score=score[ok].astype(np.float64))
            out[f"score_{name}"] = h
        out["jet_image_sum"] = self._image_sum(images, extent, process, empty)
        mcd_columns = self._bands(events, batch, scores, process, empty, out)

        columns = {
            "event": ak.to_numpy(events.event)[batch.event_index].astype(np.int64),
            "jet_index": batch.jet_index,
            "label": labels.astype(np.int8),
            "jet_pt": batch.pt.astype(np.float32),
            "jet_eta": batch.eta.astype(np.float32),
            **baseline_columns(batch),
            "empty": empty,
            **{f"score_{name}": score for name, score in scores.items()},
            **mcd_columns,
        }
        out["columns"] = {dataset: Columns(columns)}
        return out

    def _bands(
        self, events: Any, batch: Any, scores: dict[str, np.ndarray], process: np.ndarray, empty: np.ndarray,
        out: dict[str, Any],
    ) -> dict[str, np.ndarray]:  # fmt: skip
        """MC-dropout / ensemble replica histograms of every tagger score (``uncertainty``)."""
        columns: dict[str, np.ndarray] = {}
        ok = ~empty
        for name, path in self.context.jet_networks.items():
            replicas = band_replicas(
                path, batch, scores[name], mc_dropout=self.context.mc_dropout,
                members=self.context.ensembles.get(name), event_ids=jet_event_ids(path, events, batch),
            )  # fmt: skip
            if "mc" in replicas:
                columns[f"score_{name}_mcd_mean"] = replicas["mc"].mean(axis=0, dtype=np.float64)
                columns[f"score_{name}_mcd_std"] = replicas["mc"].std(
                    axis=0, ddof=1, dtype=np.float64
                )
            if replicas:
                replicas = {k: v[:, ok] for k, v in replicas.items()}
                weight = np.ones(int(ok.sum()))
                out.update(
                    replica_hists(name, scores[name][ok], replicas, process[ok], weight, PROCESSES)
                )
        return columns

    @staticmethod
    def _image_sum(
        images: np.ndarray, extent: tuple[float, float], process: np.ndarray, empty: np.ndarray
    ) -> hist.Hist:
        """Summed first-channel images per process: one fill of n_eta x n_phi weights each."""
        n_eta, n_phi = images.shape[2], images.shape[3]
        eta = hist.axis.Regular(
            n_eta, -extent[0] / 2, extent[0] / 2, name="eta",
            label=r"$\Delta\eta'$ (centred, principal axis along $\eta'$)",
        )  # fmt: skip
        phi = hist.axis.Regular(
            n_phi, -extent[1] / 2, extent[1] / 2, name="phi", label=r"$\Delta\phi'$"
        )
        h = hist.Hist(
            hist.axis.StrCategory(PROCESSES, name="process"),
            eta,
            phi,
            label="summed jet images (input of the first image tagger)",
            metadata={"plot": False},
        )
        rows, cols = np.meshgrid(eta.centers, phi.centers, indexing="ij")
        for p in PROCESSES:
            sel = (process == p) & ~empty
            if sel.any():
                total = images[sel, 0].sum(axis=0, dtype=np.float64)
                h.fill(process=p, eta=rows.ravel(), phi=cols.ravel(), weight=total.ravel())
        return h
