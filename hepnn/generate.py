"""Generate top and QCD jet samples with Pythia 8 and FastJet (``pip install hepnn[generate]``).

>>> summary = generate("top", 300, "gen_top.root", seed=21)     # ~10-15 s
>>> summary.n_jets, summary.n_events, summary.efficiency
(300, 1000, 0.3)

The file is then a ``format: root`` sample for the ``toptag`` workflow
(``samples: {datasets: {top: {format: root, files: [gen_top.root]}}}``).
On the command line: ``hepnn generate top -n 1000 -o gen_top.root --seed 1``.

Physics
-------
- pp at √s = 14 TeV, Pythia 8 defaults otherwise (Monash tune, ISR/FSR, MPI and
  hadronisation on; no pile-up, no detector simulation).
- ``top``: ``Top:gg2ttbar`` and ``Top:qqbar2ttbar``, W → hadrons only
  (``24:onMode = off``, ``24:onIfAny = 1 2 3 4 5``), so both tops decay
  hadronically. ``qcd``: ``HardQCD:all``.
- ``PhaseSpace:pTHatMin = max(pt_min - 100, 0)`` GeV: a jet of pT ``pt_min``
  needs a hard process of roughly that pT; 100 GeV below keeps the jet pT
  spectrum in the window unbiased by the generator cut to a good approximation
  (check ``FatJet_pt`` near ``pt_min`` if you move the window far).
- Particles clustered: every final-state particle except neutrinos
  (``isFinal() and isVisible()``) with ``|η| < particle_eta_max`` (5 by default,
  the calorimeter-ish acceptance; 2.5 mimics a tracker-only PF view).
- Jets: anti-kT, R = 0.8, E-scheme (FastJet). Per event the **leading**
  qualifying jet is kept: ``pt_min <= pT < pt_max`` and ``|η| < eta_max`` and, for
  ``top``, ``ΔR(jet, t) < 0.8`` to a hadronically decaying top quark (the last
  copy of ``|id| = 6`` in the event record whose W decays to quarks). Events
  without such a jet are skipped; generation stops after ``n_jets`` jets or
  ``max_events`` events (:class:`~hepnn.errors.InputError` when the cap is hit,
  with the efficiency so far).
- Labels: 1 top, 0 QCD (``label`` and ``FatJet_label``).

Random numbers: ``Random:setSeed = on``, ``Random:seed = seed`` with ``seed`` in
``1..900000000`` (Pythia treats 0 as "seed from the clock", which would not be
reproducible). The same seed and settings give bitwise-identical arrays.

File layout (tree ``Events``, one jet per event, as :mod:`hepnn.io.part_npy`
writes, so :func:`hepnn.jets.batch.fatjet_batch` and ``NanoAODSchema`` read it):

- ``run`` = ``luminosityBlock`` = 1 (uint32), ``event`` (uint64, the jet's row),
  ``label`` (int32), ``genEventIndex`` (uint64, the Pythia event the jet came from);
- ``nFatJet`` = 1, ``FatJet_pt/eta/phi/mass`` (the FastJet jet),
  ``FatJet_nConstituents`` (int32), ``FatJet_label`` (int32);
- ``nPFCand``, ``PFCand_pt/eta/phi/mass/energy`` (float32), ``PFCand_charge`` and
  ``PFCand_pdgId`` (int32, from Pythia); constituents sorted by decreasing pT;
- ``nFatJetPFCand``, ``FatJetPFCand_jetIdx`` (0) / ``FatJetPFCand_pfCandIdx``:
  the NanoAOD v15 link table.

The file is written to a temporary name and renamed into place
(:func:`hepnn.outputs.atomic_path`).

Speed (one core): about 10 s per 1,000 Pythia events on an idle core, up to
~16 s on a busy one -- roughly 60% Pythia, 30% the Python loop over the event
record, 10% clustering. With the default 550-650 GeV window about 30% of the
events give a jet (top and QCD alike), so ~35-50 s per 1,000 jets. One process,
one seed per call: run several seeds in parallel for big samples (the ``event``
branch restarts at 0 in every file). FastJet prints its banner to stdout once
per process.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import awkward as ak
import numpy as np
import uproot

from hepnn.errors import InputError
from hepnn.files import atomic_path
from hepnn.io.nano import nano_tree
from hepnn.progress import step_progress

PROCESSES = ("top", "qcd")
LABELS = {"top": 1, "qcd": 0}
JET_R = 0.8
ECM = 14000.0
SEED_MAX = 900_000_000
#: GeV below ``pt_min`` for ``PhaseSpace:pTHatMin``.
PTHAT_MARGIN = 100.0
_NEUTRINOS = (12, 14, 16)


@dataclass
class GeneratedJets:
    """Jets of one generation (constituent arrays flattened over jets, ``counts`` per jet)."""

    process: str
    jet_pt: np.ndarray
    jet_eta: np.ndarray
    jet_phi: np.ndarray
    jet_mass: np.ndarray
    counts: np.ndarray
    pt: np.ndarray
    eta: np.ndarray
    phi: np.ndarray
    mass: np.ndarray
    energy: np.ndarray
    charge: np.ndarray
    pdg_id: np.ndarray
    gen_event: np.ndarray
    n_events: int
    seconds: float
    settings: list[str] = field(default_factory=list)

    @property
    def n_jets(self) -> int:
        return len(self.jet_pt)

    @property
    def efficiency(self) -> float:
        """Kept jets per generated event."""
        return self.n_jets / self.n_events if self.n_events else 0.0

    @property
    def label(self) -> int:
        return LABELS[self.process]


@dataclass(frozen=True)
class GenerateSummary:
    path: Path
    process: str
    n_jets: int
    n_events: int
    seconds: float

    @property
    def efficiency(self) -> float:
        return self.n_jets / self.n_events if self.n_events else 0.0

    @property
    def seconds_per_1000_events(self) -> float:
        return 1000.0 * self.seconds / self.n_events if self.n_events else 0.0


def _check(
    process: str, n_jets: int, seed: int, pt_min: float, pt_max: float, eta_max: float
) -> None:
    if process not in PROCESSES:
        msg = f"process must be one of {', '.join(PROCESSES)}, got {process!r}"
        raise InputError(msg)
    if n_jets < 1:
        msg = f"number of jets must be >= 1, got {n_jets}"
        raise InputError(msg)
    if not 1 <= seed <= SEED_MAX:
        msg = (
            f"seed must be in 1..{SEED_MAX} (Pythia's range; 0 would mean a clock seed), got {seed}"
        )
        raise InputError(msg)
    if not (0 <= pt_min < pt_max):
        msg = f"need 0 <= pt_min < pt_max, got pt_min={pt_min}, pt_max={pt_max}"
        raise InputError(msg)
    if not eta_max > 0:
        msg = f"eta_max must be > 0, got {eta_max}"
        raise InputError(msg)


def pythia_settings(process: str, seed: int, pt_min: float, ecm: float = ECM) -> list[str]:
    """The ``readString`` lines for ``process`` (see the module docstring)."""
    common = [
        "Beams:idA = 2212",
        "Beams:idB = 2212",
        f"Beams:eCM = {ecm:g}",
        f"PhaseSpace:pTHatMin = {max(pt_min - PTHAT_MARGIN, 0.0):g}",
        "Random:setSeed = on",
        f"Random:seed = {int(seed)}",
        "Print:quiet = on",
        "Next:numberCount = 0",
    ]
    if process == "top":
        return [
            "Top:gg2ttbar = on",
            "Top:qqbar2ttbar = on",
            "24:onMode = off",
            "24:onIfAny = 1 2 3 4 5",
            *common,
        ]
    return ["HardQCD:all = on", *common]


def _import_generators() -> tuple[Any, Any]:
    try:
        import fastjet
        import pythia8mc
    except ImportError as err:
        msg = (
            f"hepnn generate needs Pythia 8 and FastJet ({err}); "
            "install them with: pip install 'hepnn[generate]'"
        )
        raise InputError(msg) from None
    return pythia8mc, fastjet


def _hadronic_tops(event: Any, candidates: list[int]) -> list[tuple[float, float]]:
    """``(eta, phi)`` of the last copies of top quarks (among ``candidates``) whose W decays to quarks."""
    tops = []
    for i in candidates:
        p = event[i]
        if p.iBotCopyId() != i:
            continue
        hadronic = False
        for d in p.daughterList():
            w = event[d]
            if w.idAbs() != 24:
                continue
            w_last = event[w.iBotCopyId()]
            daughters = [event[k].idAbs() for k in w_last.daughterList()]
            hadronic = bool(daughters) and all(1 <= a <= 5 for a in daughters)
        if hadronic:
            tops.append((p.eta(), p.phi()))
    return tops


def _delta_r(eta1: float, phi1: float, eta2: float, phi2: float) -> float:
    dphi = (phi1 - phi2 + math.pi) % (2 * math.pi) - math.pi
    return math.hypot(eta1 - eta2, dphi)


def generate_jets(
    process: str,
    n_jets: int,
    *,
    seed: int = 1,
    pt_min: float = 550.0,
    pt_max: float = 650.0,
    eta_max: float = 2.0,
    particle_eta_max: float = 5.0,
    max_events: int | None = None,
    progress: bool = False,
) -> GeneratedJets:
    """Generate ``n_jets`` jets of ``process`` (``top`` or ``qcd``), see the module docstring.

    Parameters
    ----------
    max_events
        Cap on Pythia events (default ``1000 + 200 * n_jets``).
    progress
        Show a rich progress bar over jets.

    Raises
    ------
    InputError
        Bad arguments, Pythia / FastJet missing, Pythia's init failing, or the
        event cap reached before ``n_jets`` jets.
    """
    _check(process, n_jets, seed, pt_min, pt_max, eta_max)
    cap = max_events if max_events is not None else 1000 + 200 * n_jets
    if cap < 1:
        msg = f"max_events must be >= 1, got {cap}"
        raise InputError(msg)
    pythia8mc, fastjet = _import_generators()
    settings = pythia_settings(process, seed, pt_min)
    pythia = pythia8mc.Pythia("", False)  # no banner
    for line in settings:
        if not pythia.readString(line):  # pragma: no cover - fixed settings
            msg = f"Pythia rejected the setting {line!r}"
            raise InputError(msg)
    if not pythia.init():  # pragma: no cover - fixed settings
        msg = "Pythia initialisation failed"
        raise InputError(msg)
    jet_def = fastjet.JetDefinition(fastjet.antikt_algorithm, JET_R)
    event = pythia.event
    jets: dict[str, list[float]] = {k: [] for k in ("pt", "eta", "phi", "mass")}
    cands: dict[str, list[Any]] = {
        k: [] for k in ("pt", "eta", "phi", "mass", "energy", "charge", "pdg_id")
    }
    counts: list[int] = []
    gen_event: list[int] = []
    n_events = 0
    start = time.perf_counter()
    with step_progress(f"generating {process} jets", n_jets, enabled=progress) as advance:
        while len(counts) < n_jets:
            if n_events >= cap:
                msg = (
                    f"{process}: only {len(counts)} of {n_jets} jets in the "
                    f"[{pt_min:g}, {pt_max:g}) GeV window after {n_events} events "
                    f"(efficiency {len(counts) / n_events:.3g}); raise max_events or widen the window"
                )
                raise InputError(msg)
            n_events += 1
            if not pythia.next():  # pragma: no cover - rare Pythia failure
                continue
            # A copy of the record: iterating it is faster than indexing ``event``.
            record = event.particles()
            particles = []
            top_candidates = []
            for i, p in enumerate(record):
                if p.idAbs() == 6:
                    top_candidates.append(i)
                if not p.isFinal() or p.idAbs() in _NEUTRINOS or not p.isVisible():
                    continue
                if abs(p.eta()) >= particle_eta_max:
                    continue
                pj = fastjet.PseudoJet(p.px(), p.py(), p.pz(), p.e())
                pj.set_user_index(i)
                particles.append(pj)
            cs = fastjet.ClusterSequence(particles, jet_def)
            tops = _hadronic_tops(event, top_candidates) if process == "top" else None
            chosen = None
            for jet in fastjet.sorted_by_pt(cs.inclusive_jets(pt_min)):
                if not (pt_min <= jet.pt() < pt_max and abs(jet.eta()) < eta_max):
                    continue
                if tops is not None and not any(
                    _delta_r(jet.eta(), jet.phi_std(), te, tp) < JET_R for te, tp in tops
                ):
                    continue
                chosen = jet
                break
            if chosen is None:
                continue
            jets["pt"].append(chosen.pt())
            jets["eta"].append(chosen.eta())
            jets["phi"].append(chosen.phi_std())
            jets["mass"].append(chosen.m())
            constituents = fastjet.sorted_by_pt(chosen.constituents())
            counts.append(len(constituents))
            gen_event.append(n_events - 1)
            for c in constituents:
                p = record[c.user_index()]
                cands["pt"].append(p.pT())
                cands["eta"].append(p.eta())
                cands["phi"].append(p.phi())
                cands["mass"].append(p.m())
                cands["energy"].append(p.e())
                cands["charge"].append(round(p.charge()))
                cands["pdg_id"].append(p.id())
            advance(info=f"{n_events} events, efficiency {len(counts) / n_events:.2f}")
    seconds = time.perf_counter() - start
    f64 = {k: np.asarray(v, dtype=np.float64) for k, v in jets.items()}
    return GeneratedJets(
        process=process,
        jet_pt=f64["pt"],
        jet_eta=f64["eta"],
        jet_phi=f64["phi"],
        jet_mass=f64["mass"],
        counts=np.asarray(counts, dtype=np.int64),
        pt=np.asarray(cands["pt"], dtype=np.float64),
        eta=np.asarray(cands["eta"], dtype=np.float64),
        phi=np.asarray(cands["phi"], dtype=np.float64),
        mass=np.asarray(cands["mass"], dtype=np.float64),
        energy=np.asarray(cands["energy"], dtype=np.float64),
        charge=np.asarray(cands["charge"], dtype=np.int32),
        pdg_id=np.asarray(cands["pdg_id"], dtype=np.int32),
        gen_event=np.asarray(gen_event, dtype=np.uint64),
        n_events=n_events,
        seconds=seconds,
        settings=settings,
    )


def jet_columns(jets: GeneratedJets) -> dict[str, Any]:
    """Branch contents (awkward / numpy) of ``jets``, NanoAOD names (see the module docstring)."""
    n = jets.n_jets
    counts = jets.counts
    one = np.ones(n, dtype=np.int64)
    starts = np.cumsum(counts) - counts
    local_index = np.arange(int(counts.sum())) - np.repeat(starts, counts)
    lab = np.full(n, jets.label, dtype=np.int32)

    def jag(x: np.ndarray, c: np.ndarray, dtype: Any) -> ak.Array:
        return ak.unflatten(np.asarray(x).astype(dtype), c)

    return {
        "run": np.ones(n, dtype=np.uint32),
        "luminosityBlock": np.ones(n, dtype=np.uint32),
        "event": np.arange(n, dtype=np.uint64),
        "genEventIndex": jets.gen_event.astype(np.uint64),
        "label": lab,
        "FatJet": ak.zip(
            {
                "pt": jag(jets.jet_pt, one, np.float32),
                "eta": jag(jets.jet_eta, one, np.float32),
                "phi": jag(jets.jet_phi, one, np.float32),
                "mass": jag(jets.jet_mass, one, np.float32),
                "nConstituents": jag(counts, one, np.int32),
                "label": jag(lab, one, np.int32),
            }
        ),
        "PFCand": ak.zip(
            {
                "pt": jag(jets.pt, counts, np.float32),
                "eta": jag(jets.eta, counts, np.float32),
                "phi": jag(jets.phi, counts, np.float32),
                "mass": jag(jets.mass, counts, np.float32),
                "energy": jag(jets.energy, counts, np.float32),
                "charge": jag(jets.charge, counts, np.int32),
                "pdgId": jag(jets.pdg_id, counts, np.int32),
            }
        ),
        "FatJetPFCand": ak.zip(
            {
                "jetIdx": jag(np.zeros(int(counts.sum())), counts, np.int32),
                "pfCandIdx": jag(local_index, counts, np.int32),
            }
        ),
    }


def write_jets(jets: GeneratedJets, path: str | os.PathLike[str]) -> Path:
    """Write ``jets`` as a NanoAOD-like ``Events`` tree to ``path``, atomically."""
    if jets.n_jets == 0:
        msg = f"{path}: no jets to write"
        raise InputError(msg)
    out = Path(path)
    cols = jet_columns(jets)
    with atomic_path(out) as tmp, uproot.recreate(tmp) as f:
        tree = nano_tree(f, cols)
        tree.extend(cols)
    return out


def generate(
    process: str,
    n_jets: int,
    path: str | os.PathLike[str],
    *,
    seed: int = 1,
    pt_min: float = 550.0,
    pt_max: float = 650.0,
    eta_max: float = 2.0,
    particle_eta_max: float = 5.0,
    max_events: int | None = None,
    progress: bool = False,
) -> GenerateSummary:
    """Generate ``n_jets`` jets (:func:`generate_jets`) and write them to ``path`` (:func:`write_jets`)."""
    jets = generate_jets(
        process,
        n_jets,
        seed=seed,
        pt_min=pt_min,
        pt_max=pt_max,
        eta_max=eta_max,
        particle_eta_max=particle_eta_max,
        max_events=max_events,
        progress=progress,
    )
    out = write_jets(jets, path)
    return GenerateSummary(out, process, jets.n_jets, jets.n_events, jets.seconds)
