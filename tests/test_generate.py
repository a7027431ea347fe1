"""``hepnn generate``: Pythia 8 + FastJet top / QCD jets (optional extra ``hepnn[generate]``).

The generator tests skip where ``pythia8mc`` / ``fastjet`` are not installed (CI
installs ``.[test]`` only); argument checks and the missing-extra message run everywhere.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import awkward as ak
import numpy as np
import pytest
import uproot
from click.testing import CliRunner

from hepnn.cli import main
from hepnn.errors import InputError
from hepnn.generate import (
    GeneratedJets,
    generate,
    generate_jets,
    pythia_settings,
    write_jets,
)

PT_MIN, PT_MAX, ETA_MAX = 550.0, 650.0, 2.0
ARRAYS = [f.name for f in dataclasses.fields(GeneratedJets) if f.type == "np.ndarray"]


@pytest.fixture(scope="module")
def extra() -> None:
    pytest.importorskip("pythia8mc")
    pytest.importorskip("fastjet")


@pytest.fixture(scope="module")
def top(extra: None) -> GeneratedJets:
    return generate_jets("top", 5, seed=7)


@pytest.fixture(scope="module")
def qcd(extra: None) -> GeneratedJets:
    return generate_jets("qcd", 5, seed=7)


def _assert_same(a: GeneratedJets, b: GeneratedJets) -> None:
    for name in ARRAYS:
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype, name
        assert x.tobytes() == y.tobytes(), name  # bitwise
    assert a.n_events == b.n_events


def test_reproducible_with_same_seed(top: GeneratedJets) -> None:
    _assert_same(top, generate_jets("top", 5, seed=7))


def test_other_seed_gives_other_jets(top: GeneratedJets) -> None:
    other = generate_jets("top", 5, seed=8)
    assert not np.array_equal(top.jet_pt, other.jet_pt)


@pytest.mark.parametrize("name", ["top", "qcd"])
def test_jets_in_window_and_consistent(name: str, request: pytest.FixtureRequest) -> None:
    jets: GeneratedJets = request.getfixturevalue(name)
    assert jets.n_jets == 5
    assert jets.label == (1 if name == "top" else 0)
    assert np.all((jets.jet_pt >= PT_MIN) & (jets.jet_pt < PT_MAX))
    assert np.all(np.abs(jets.jet_eta) < ETA_MAX)
    assert 5 <= jets.n_events <= 1000 + 200 * 5
    assert 0 < jets.efficiency <= 1
    assert np.all(jets.counts > 0)
    n = int(jets.counts.sum())
    for field in ("pt", "eta", "phi", "mass", "energy", "charge", "pdg_id"):
        assert len(getattr(jets, field)) == n, field
    # no neutrinos, integer charges, pT-sorted constituents
    assert not np.isin(np.abs(jets.pdg_id), [12, 14, 16]).any()
    assert set(np.unique(jets.charge)) <= {-1, 0, 1}
    jet_of = np.repeat(np.arange(jets.n_jets), jets.counts)
    # anti-kT R=0.8 works in rapidity: every constituent within ΔR(y, φ) < 0.8 of the axis
    pz = jets.pt * np.sinh(jets.eta)
    y = 0.5 * np.log((jets.energy + pz) / (jets.energy - pz))
    e_jet, pz_jet = np.bincount(jet_of, jets.energy), np.bincount(jet_of, pz)
    y_jet = 0.5 * np.log((e_jet + pz_jet) / (e_jet - pz_jet))
    dphi = (jets.phi - jets.jet_phi[jet_of] + np.pi) % (2 * np.pi) - np.pi
    assert np.all(np.hypot(y - y_jet[jet_of], dphi) < 0.8 + 1e-6)
    for pts in np.split(jets.pt, np.cumsum(jets.counts)[:-1]):
        assert np.all(np.diff(pts) <= 0)
    # the jet 4-vector is the sum of its constituents (E-scheme)
    px = np.bincount(jet_of, jets.pt * np.cos(jets.phi))
    py = np.bincount(jet_of, jets.pt * np.sin(jets.phi))
    np.testing.assert_allclose(np.hypot(px, py), jets.jet_pt, rtol=1e-9)


def test_top_jet_mass_is_top_like(extra: None) -> None:
    jets = generate_jets("top", 20, seed=3)
    assert np.median(jets.jet_mass) > 100.0
    assert np.median(jets.counts) > 20


def test_qcd_differs_from_top(top: GeneratedJets, qcd: GeneratedJets) -> None:
    assert not np.array_equal(top.jet_pt, qcd.jet_pt)
    assert qcd.settings[0] == "HardQCD:all = on"


def test_file_readable_by_fatjet_batch(top: GeneratedJets, tmp_path: Path) -> None:
    from hepnn.jets.batch import fatjet_batch

    path = write_jets(top, tmp_path / "top.root")
    assert [p.name for p in tmp_path.iterdir()] == ["top.root"]  # no temporary left
    with uproot.open(path) as f:
        tree = f["Events"]
        assert tree.num_entries == 5
        arrays = tree.arrays()
    for name in ("run", "luminosityBlock", "event", "label", "nFatJet", "nPFCand",
                 "PFCand_charge", "PFCand_pdgId", "FatJetPFCand_pfCandIdx"):  # fmt: skip
        assert name in arrays.fields, name
    assert arrays.label.tolist() == [1] * 5
    assert ak.flatten(arrays.FatJet_label).tolist() == [1] * 5
    np.testing.assert_array_equal(ak.to_numpy(arrays.nPFCand), top.counts)
    np.testing.assert_array_equal(ak.to_numpy(arrays.event), np.arange(5))
    batch = fatjet_batch(arrays)
    assert batch is not None
    assert len(batch) == 5
    np.testing.assert_allclose(batch.pt, top.jet_pt, rtol=1e-6)
    np.testing.assert_allclose(batch.mass, top.jet_mass, rtol=1e-5)
    np.testing.assert_array_equal(batch.n_constituents, top.counts)
    np.testing.assert_allclose(
        ak.to_numpy(ak.flatten(batch.constituents.pt)), top.pt.astype(np.float32)
    )


def test_file_readable_with_nanoevents(qcd: GeneratedJets, tmp_path: Path) -> None:
    from coffea.nanoevents import NanoEventsFactory

    from hepnn.schemas import NanoSchema

    path = write_jets(qcd, tmp_path / "qcd.root")
    events = NanoEventsFactory.from_root(
        {str(path): "Events"}, schemaclass=NanoSchema, mode="eager"
    ).events()
    assert len(events) == 5
    np.testing.assert_allclose(
        ak.to_numpy(ak.flatten(events.FatJet.pt)), qcd.jet_pt.astype(np.float32)
    )
    assert ak.flatten(events.FatJet.label).tolist() == [0] * 5


def test_cli_generate(extra: None, tmp_path: Path) -> None:
    out = tmp_path / "gen_qcd.root"
    res = CliRunner().invoke(
        main, ["generate", "qcd", "-n", "3", "-o", str(out), "--seed", "5", "--quiet"]
    )
    assert res.exit_code == 0, res.output
    assert "wrote 3 qcd jets" in res.output
    with uproot.open(out) as f:
        assert f["Events"].num_entries == 3
    again = generate("qcd", 3, tmp_path / "again.root", seed=5)
    with uproot.open(out) as a, uproot.open(again.path) as b:
        for name in ("FatJet_pt", "PFCand_pt", "PFCand_pdgId"):
            assert ak.to_list(a["Events"][name].array()) == ak.to_list(b["Events"][name].array())


def test_event_cap_is_an_input_error(extra: None, tmp_path: Path) -> None:
    out = tmp_path / "never.root"
    with pytest.raises(InputError, match=r"only 0 of 2 jets .* after 3 events"):
        generate("top", 2, out, seed=1, pt_min=2000, pt_max=2001, max_events=3)
    assert not out.exists()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"process": "ww"}, "process must be one of"),
        ({"n_jets": 0}, "number of jets"),
        ({"seed": 0}, "seed must be in"),
        ({"seed": 900_000_001}, "seed must be in"),
        ({"pt_min": 700.0}, "pt_min < pt_max"),
        ({"eta_max": 0.0}, "eta_max"),
        ({"max_events": 0}, "max_events"),
    ],
)
def test_bad_arguments(kwargs: dict, match: str) -> None:
    args = {"process": "top", "n_jets": 1, **kwargs}
    with pytest.raises(InputError, match=match):
        generate_jets(args.pop("process"), args.pop("n_jets"), **args)


def test_missing_extra_names_the_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pythia8mc", None)
    with pytest.raises(InputError, match=r"pip install 'hepnn\[generate\]'"):
        generate_jets("qcd", 1)


def test_settings() -> None:
    top = pythia_settings("top", 42, 550.0)
    assert {"Top:gg2ttbar = on", "24:onIfAny = 1 2 3 4 5", "Random:seed = 42"} <= set(top)
    assert "PhaseSpace:pTHatMin = 450" in top
    assert "Beams:eCM = 14000" in top
    assert "PhaseSpace:pTHatMin = 0" in pythia_settings("qcd", 1, 50.0)
