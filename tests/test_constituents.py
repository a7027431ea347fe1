"""Constituent sequences, the sequence scaler, and FatJet constituents from real NanoAOD."""

from __future__ import annotations

import json
from pathlib import Path

import awkward as ak
import numpy as np
import pytest
import uproot

from hepnn.errors import InputError
from hepnn.jets.constituents import (
    ALL_FEATURES,
    KINEMATIC_FEATURES,
    SequenceScaler,
    constituent_sequences,
    wrap_phi,
)
from hepnn.jets.nanoaod import charge_from_pdgid, fatjet_constituents, read_fatjet_constituents

REPO = Path(__file__).resolve().parents[1]


def _first_existing(*paths: Path) -> Path:
    for p in paths:
        if p.exists():
            return p
    pytest.fail(f"real data not found (looked at {[str(p) for p in paths]})")


@pytest.fixture(scope="module")
def toptag() -> dict[str, np.ndarray]:
    """Real top-tagging jets as absolute constituent kinematics plus the jet axis."""
    d = _first_existing(REPO / "samples" / "toptag")
    v = np.load(d / "tl_pf_vectors.npy").astype(np.float64)
    m = np.load(d / "tl_pf_mask.npy")
    real = m[:, 0] != 0
    pt = np.hypot(v[:, 0], v[:, 1])
    jet = np.where(real[:, None], v, 0.0).sum(axis=2)
    jpt = np.hypot(jet[:, 0], jet[:, 1])
    return {
        "pt": pt,
        "eta": np.arcsinh(v[:, 2] / np.where(real, pt, 1.0)),
        "phi": np.arctan2(v[:, 1], v[:, 0]),
        "energy": v[:, 3],
        "mask": m,
        "points": np.load(d / "tl_pf_points.npy"),
        "jet_pt": jpt,
        "jet_eta": np.arcsinh(jet[:, 2] / jpt),
        "jet_phi": np.arctan2(jet[:, 1], jet[:, 0]),
        "jet_energy": jet[:, 3],
    }


@pytest.fixture(scope="module")
def v15() -> Path:
    return _first_existing(REPO / "samples" / "nanoaod" / "nano_tt_v15.root")


@pytest.fixture(scope="module")
def pfnano() -> Path:
    return _first_existing(REPO / "samples" / "nanoaod" / "pfnano.root")


def _seq(t: dict[str, np.ndarray], sl: slice = slice(None), **kw):
    cons = {k: t[k][sl] for k in ("pt", "eta", "phi", "energy")}
    jet = {k: t[k][sl] for k in ("jet_pt", "jet_eta", "jet_phi", "jet_energy")}
    return constituent_sequences(**cons, mask=t["mask"][sl], **jet, **kw)


# --- constituent_sequences ---------------------------------------------------------


def test_features_match_the_part_points(toptag: dict[str, np.ndarray]) -> None:
    X, mask = _seq(toptag, signed_deta=True)
    assert X.shape == (1600, len(KINEMATIC_FEATURES), 128)
    assert X.dtype == np.float32
    assert mask.dtype == bool
    np.testing.assert_array_equal(mask, toptag["mask"] != 0)  # input is pT-ordered already
    real = mask[:, 0]
    f = {name: X[:, i] for i, name in enumerate(KINEMATIC_FEATURES)}
    np.testing.assert_allclose(f["deta"][real], toptag["points"][:, 0][real], atol=2e-6)
    np.testing.assert_allclose(f["dphi"][real], toptag["points"][:, 1][real], atol=2e-6)
    np.testing.assert_allclose(f["delta_r"], np.hypot(f["deta"], f["dphi"]), atol=1e-6)
    pt = toptag["pt"][real]
    np.testing.assert_allclose(f["log_pt"][real], np.log(pt), rtol=1e-6)
    rel = np.log(pt / np.broadcast_to(toptag["jet_pt"][:, None], real.shape)[real])
    np.testing.assert_allclose(f["log_pt_rel"][real], rel, atol=1e-5)
    assert (X[~np.broadcast_to(mask, X.shape)] == 0).all()  # padding exactly 0
    unsigned, _ = _seq(toptag, features=("deta",))
    sign = np.sign(toptag["jet_eta"])[:, None]
    np.testing.assert_allclose(unsigned[:, 0][real], (f["deta"] * sign)[real], atol=1e-6)


def test_order_padding_and_truncation(toptag: dict[str, np.ndarray]) -> None:
    sl = slice(0, 300)
    ref, ref_mask = _seq(toptag, sl, max_constituents=128)
    # Shuffle the constituents inside each jet (awkward input): same sequences.
    rng = np.random.default_rng(7)
    real = toptag["mask"][sl, 0] != 0
    counts = real.sum(axis=1)
    order = np.concatenate(
        [rng.permutation(c) + s for c, s in zip(counts, np.cumsum(counts) - counts, strict=True)]
    )
    jag = {
        k: ak.unflatten(toptag[k][sl][real][order], counts) for k in ("pt", "eta", "phi", "energy")
    }
    jet = {k: toptag[k][sl] for k in ("jet_pt", "jet_eta", "jet_phi", "jet_energy")}
    X, mask = constituent_sequences(**jag, **jet, max_constituents=128)
    np.testing.assert_array_equal(mask, ref_mask)
    np.testing.assert_allclose(X, ref, rtol=1e-6, atol=1e-6)
    log_pt = X[:, 0]
    assert (np.diff(log_pt, axis=1)[mask[:, 0, 1:]] <= 0).all()  # decreasing pT
    # Truncation keeps the leading P constituents.
    X16, m16 = constituent_sequences(**jag, **jet, max_constituents=16)
    assert X16.shape == (300, 7, 16)
    np.testing.assert_array_equal(
        m16[:, 0], np.arange(16)[None, :] < np.minimum(counts, 16)[:, None]
    )
    np.testing.assert_allclose(X16, ref[:, :, :16], rtol=1e-6, atol=1e-6)
    # Padding beyond the count: zeros and mask False.
    X200, m200 = constituent_sequences(**jag, **jet, max_constituents=200)
    assert not X200[:, :, 128:].any()
    assert not m200[:, :, 128:].any()


def test_charge_and_pid_features_from_pfnano(pfnano: Path) -> None:
    cons = ak.flatten(read_fatjet_constituents(pfnano), axis=1)
    n = len(cons)
    jpt = ak.to_numpy(ak.sum(cons.pt, axis=1))
    feats = (
        "log_pt",
        "charge",
        "is_electron",
        "is_muon",
        "is_photon",
        "is_charged_hadron",
        "is_neutral_hadron",
    )
    X, mask = constituent_sequences(
        cons.pt, cons.eta, cons.phi, cons.energy, jet_pt=jpt, jet_eta=0.0, jet_phi=0.0,
        jet_energy=ak.to_numpy(ak.sum(cons.energy, axis=1)), charge=cons.charge, pid=cons.pdgId,
        features=feats, max_constituents=256,
    )  # fmt: skip
    real = mask[:, 0]
    assert X.shape == (n, len(feats), 256)
    assert real.sum() == ak.sum(ak.num(cons))
    flags = X[:, 2:].transpose(0, 2, 1)[real]  # (n_real, 5)
    assert (flags.sum(axis=1) == 1).all()  # every PFNano pdgId falls in exactly one class
    charge = X[:, 1][real]
    np.testing.assert_array_equal(charge != 0, (flags[:, 0] + flags[:, 1] + flags[:, 3]) == 1)


def test_sequence_errors(toptag: dict[str, np.ndarray]) -> None:
    with pytest.raises(ValueError, match="charge"):
        _seq(toptag, slice(0, 5), features=("log_pt", "charge"))
    with pytest.raises(ValueError, match="pid"):
        _seq(toptag, slice(0, 5), features=("is_photon",))
    with pytest.raises(ValueError, match="features"):
        _seq(toptag, slice(0, 5), features=("log_pt", "mass"))
    with pytest.raises(ValueError, match="max_constituents"):
        _seq(toptag, slice(0, 5), max_constituents=0)
    bad = {k: toptag[k][:10].copy() for k in ("pt", "eta", "phi", "energy")}
    bad["energy"][4, 0] = np.nan
    jet = {k: toptag[k][:10] for k in ("jet_pt", "jet_eta", "jet_phi", "jet_energy")}
    with pytest.raises(InputError, match=r"energy of jet 4\b"):
        constituent_sequences(**bad, mask=toptag["mask"][:10], **jet)
    jet["jet_pt"] = np.full(9, 500.0)
    with pytest.raises(ValueError, match="jet_pt"):
        constituent_sequences(
            **{k: toptag[k][:10] for k in ("pt", "eta", "phi", "energy")},
            mask=toptag["mask"][:10],
            **jet,
        )
    assert set(KINEMATIC_FEATURES) < set(ALL_FEATURES)


def test_wrap_phi() -> None:
    x = np.array([-np.pi, np.pi, 3 * np.pi, -3 * np.pi + 1e-9, 0.0, 7.0])
    w = wrap_phi(x)
    assert ((w > -np.pi) & (w <= np.pi)).all()
    np.testing.assert_allclose(np.cos(w), np.cos(x), atol=1e-12)
    assert w[0] == np.pi


# --- SequenceScaler ----------------------------------------------------------------


def test_scaler_standardises_real_and_keeps_padding_zero(toptag: dict[str, np.ndarray]) -> None:
    X, mask = _seq(toptag, max_constituents=64)
    scaler = SequenceScaler.fit(X[:1000], mask[:1000], KINEMATIC_FEATURES)
    Xs = scaler.transform(X, mask)
    assert Xs.dtype == np.float32
    real = np.broadcast_to(mask, X.shape)
    assert (Xs[~real] == 0).all()
    vals = Xs[:1000].transpose(0, 2, 1)[mask[:1000, 0]]
    np.testing.assert_allclose(vals.mean(axis=0), 0.0, atol=1e-4)
    np.testing.assert_allclose(vals.std(axis=0), 1.0, atol=1e-4)
    back = SequenceScaler.from_dict(json.loads(json.dumps(scaler.to_dict())))
    assert back == scaler
    np.testing.assert_array_equal(back.transform(X, mask), Xs)
    with pytest.raises(ValueError, match="format"):
        SequenceScaler.from_dict({**scaler.to_dict(), "format": 99})
    with pytest.raises(ValueError, match="std"):
        SequenceScaler.from_dict({**scaler.to_dict(), "std": [0.0] * 7})
    with pytest.raises(ValueError, match="real constituent"):
        SequenceScaler.fit(X[:2], np.zeros_like(mask[:2]))


# --- FatJet constituents from NanoAOD -------------------------------------------------


def test_v15_every_fatjet_gets_its_constituents(v15: Path) -> None:
    cons = read_fatjet_constituents(v15)
    arr = uproot.open(v15)["Events"].arrays(
        [
            "FatJet_pt",
            "FatJet_nConstituents",
            "nPFCand",
            "FatJetPFCand_jetIdx",
            "FatJetPFCand_pfCandIdx",
        ]
        + [f"PFCand_{f}" for f in ("pt", "eta", "phi", "mass", "pdgId")]
    )
    assert ak.all(ak.num(cons, axis=1) == ak.num(arr.FatJet_nConstituents))
    got = ak.to_numpy(ak.flatten(ak.num(cons, axis=2)))
    expected = ak.to_numpy(ak.flatten(arr.FatJet_nConstituents)).astype(np.int64)
    has_cands = (
        ak.to_numpy(ak.flatten(ak.broadcast_arrays(arr.nPFCand, arr.FatJet_nConstituents)[0])) > 0
    )
    assert len(got) == 64
    np.testing.assert_array_equal(got[has_cands], expected[has_cands])
    # The file stores no PFCand at all for 2 events with FatJets (entries 11 and 180).
    assert (~has_cands).sum() == 2
    assert (got[~has_cands] == 0).all()
    # Values: the linked candidates, in link order.
    e = 10
    for j in range(2):
        idx = ak.to_numpy(arr.FatJetPFCand_pfCandIdx[e][arr.FatJetPFCand_jetIdx[e] == j])
        np.testing.assert_array_equal(
            ak.to_numpy(cons.pt[e, j]), ak.to_numpy(arr.PFCand_pt[e])[idx]
        )
    assert set(cons.fields) == {"pt", "eta", "phi", "mass", "energy", "charge", "pdgId"}
    np.testing.assert_array_equal(
        ak.to_numpy(ak.flatten(cons.charge, axis=None)),
        charge_from_pdgid(ak.to_numpy(ak.flatten(cons.pdgId, axis=None))),
    )
    assert ak.to_list(fatjet_constituents(arr)) == ak.to_list(cons)  # flat branch names work too
    with pytest.raises(InputError, match=r"FatJet_nConstituents: jet 0 of entry 11 has 6"):
        fatjet_constituents(arr, strict_counts=True)


def test_pfnano_uproot_and_coffea_agree(pfnano: Path) -> None:
    import warnings

    from coffea.nanoevents import NanoEventsFactory, PFNanoAODSchema

    cons = read_fatjet_constituents(pfnano, extra_fields=("d0",))
    arr = uproot.open(pfnano)["Events"].arrays(
        ["nFatJet", "FatJetPFCands_jetIdx", "PFCands_charge", "PFCands_pdgId"]
    )
    assert ak.sum(ak.num(cons, axis=1)) == ak.sum(arr.nFatJet) == 24
    for e in range(len(arr)):
        counts = np.bincount(
            ak.to_numpy(arr.FatJetPFCands_jetIdx[e]), minlength=int(arr.nFatJet[e])
        )
        np.testing.assert_array_equal(ak.to_numpy(ak.num(cons[e], axis=1)), counts)
    assert ak.all(ak.num(ak.flatten(cons, axis=1)) > 0)
    # charge_from_pdgid reproduces PFNano's stored charge on every candidate
    np.testing.assert_array_equal(
        charge_from_pdgid(ak.to_numpy(ak.flatten(arr.PFCands_pdgId))),
        ak.to_numpy(ak.flatten(arr.PFCands_charge)),
    )
    with warnings.catch_warnings():
        warnings.simplefilter(
            "ignore", RuntimeWarning
        )  # missing cross-references in a slimmed file
        events = NanoEventsFactory.from_root(
            {str(pfnano): "Events"}, schemaclass=PFNanoAODSchema, mode="virtual"
        ).events()
        via_coffea = fatjet_constituents(events, extra_fields=("d0",))
    assert ak.to_list(via_coffea) == ak.to_list(cons)


def _rewrite(src: Path, dst: Path, branch: str, entry: int, value: int) -> None:
    """Copy the link table + candidates + FatJet pt of ``src`` with one index changed."""
    names = [
        "nFatJet", "FatJet_pt", "nPFCands", "PFCands_pt", "PFCands_eta", "PFCands_phi", "PFCands_mass",
        "PFCands_charge", "PFCands_pdgId", "FatJetPFCands_jetIdx", "FatJetPFCands_pFCandsIdx",
    ]  # fmt: skip
    arr = uproot.open(src)["Events"].arrays(names)
    col = arr[branch]
    flat = ak.to_numpy(ak.flatten(col)).copy()
    start = int(ak.sum(ak.num(col)[:entry]))
    flat[start + 3] = value
    arr[branch] = ak.unflatten(flat, ak.num(col))
    out = {
        "FatJet": ak.zip({"pt": arr.FatJet_pt}),
        "PFCands": ak.zip({k.split("_", 1)[1]: arr[k] for k in names if k.startswith("PFCands_")}),
        "FatJetPFCands": ak.zip(
            {"jetIdx": arr.FatJetPFCands_jetIdx, "pFCandsIdx": arr.FatJetPFCands_pFCandsIdx}
        ),
    }
    with uproot.recreate(dst) as f:
        f.mktree("Events", {k: v.type for k, v in out.items()}, counter_name=lambda c: "n" + c,
                 field_name=lambda o, i: o + "_" + i)  # fmt: skip
        f["Events"].extend(out)


@pytest.mark.parametrize(
    ("branch", "value", "match"),
    [
        (
            "FatJetPFCands_pFCandsIdx",
            5000,
            r"FatJetPFCands_pFCandsIdx: index 5000 outside PFCands \(1626 entries\) in entry 2",
        ),
        ("FatJetPFCands_pFCandsIdx", -1, r"FatJetPFCands_pFCandsIdx: index -1 outside PFCands"),
        (
            "FatJetPFCands_jetIdx",
            2,
            r"FatJetPFCands_jetIdx: index 2 outside FatJet \(2 entries\) in entry 2",
        ),
    ],
)
def test_bad_link_index_names_the_branch(
    pfnano: Path, tmp_path: Path, branch: str, value: int, match: str
) -> None:
    bad = tmp_path / "bad.root"
    _rewrite(pfnano, bad, branch, 2, value)
    with pytest.raises(InputError, match=match) as err:
        read_fatjet_constituents(bad)
    assert str(bad) in str(err.value)


def test_missing_link_table_is_an_input_error(tmp_path: Path) -> None:
    path = tmp_path / "nolinks.root"
    with uproot.recreate(path) as f:
        f.mktree("Events", {"FatJet": ak.zip({"pt": ak.Array([[300.0]])}).type}, counter_name=lambda c: "n" + c,
                 field_name=lambda o, i: o + "_" + i)  # fmt: skip
        f["Events"].extend({"FatJet": ak.zip({"pt": ak.Array([[300.0]])})})
    with pytest.raises(InputError, match="link table"):
        read_fatjet_constituents(path)
    with pytest.raises(InputError, match="not found"):
        read_fatjet_constituents(tmp_path / "absent.root")
    garbage = tmp_path / "garbage.root"
    garbage.write_text("not a ROOT file\n")
    with pytest.raises(InputError, match=r"garbage\.root: cannot read tree 'Events'"):
        read_fatjet_constituents(garbage)
