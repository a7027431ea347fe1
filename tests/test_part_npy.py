"""ParT npy folders: validation errors name the file, conversion round trip, cache, coffea."""

from __future__ import annotations

import warnings
from pathlib import Path

import awkward as ak
import numpy as np
import pytest
import uproot

from hepnn.errors import InputError
from hepnn.io.part_npy import convert_part_npy, read_part_npy
from hepnn.jets.nanoaod import read_fatjet_constituents

REPO = Path(__file__).resolve().parents[1]
_TOPTAG = (REPO / "samples" / "toptag",)
ROLES = ("pf_vectors", "pf_points", "pf_mask", "labels")


@pytest.fixture(scope="module")
def folder() -> Path:
    for p in _TOPTAG:
        if p.is_dir():
            return p
    pytest.fail(f"real top-tagging jets not found (looked at {[str(p) for p in _TOPTAG]})")


@pytest.fixture(scope="module")
def arrays(folder: Path) -> dict[str, np.ndarray]:
    return {r: np.load(folder / f"tl_{r}.npy") for r in ROLES}


@pytest.fixture(scope="module")
def converted(folder: Path, tmp_path_factory: pytest.TempPathFactory):
    return convert_part_npy(folder, tmp_path_factory.mktemp("part_cache"))


def _write(
    tmp: Path, arrays: dict[str, np.ndarray], n: int = 40, prefix: str = "tl", **replace: np.ndarray
) -> Path:
    """A small copy (first ``n`` jets) of the real folder with some arrays replaced."""
    tmp.mkdir(parents=True, exist_ok=True)
    for role in ROLES:
        np.save(tmp / f"{prefix}_{role}.npy", replace.get(role, arrays[role][:n]))
    return tmp


def test_read_real_folder(folder: Path) -> None:
    jets = read_part_npy(folder)
    labels = np.load(folder / "tl_labels.npy")  # the counts straight from the files
    vectors = np.load(folder / "tl_pf_vectors.npy")
    assert jets.n_jets == len(labels) == len(vectors)
    assert jets.n_slots == vectors.shape[-1]
    assert jets.prefix == "tl"
    assert jets.vectors.shape == vectors.shape
    np.testing.assert_array_equal(jets.vectors, vectors)
    assert np.bincount(jets.labels).tolist() == np.bincount(labels.astype(int)).tolist()
    assert read_part_npy(folder / "tl_labels.npy").n_jets == len(labels)  # a file names its folder


def test_shape_errors_name_the_file(tmp_path: Path, arrays: dict[str, np.ndarray]) -> None:
    d = _write(tmp_path / "a", arrays, pf_points=arrays["pf_points"][:39])
    with pytest.raises(
        InputError, match=r"tl_pf_points\.npy: shape \(39, 2, 128\), expected \(40, 2, 128\)"
    ):
        read_part_npy(d)
    d = _write(tmp_path / "b", arrays, pf_mask=arrays["pf_mask"][:40, :, :64])
    with pytest.raises(InputError, match=r"tl_pf_mask\.npy: shape"):
        read_part_npy(d)
    d = _write(tmp_path / "c", arrays, pf_vectors=arrays["pf_vectors"][:40, :3])
    with pytest.raises(InputError, match=r"tl_pf_vectors\.npy: shape \(40, 3, 128\)"):
        read_part_npy(d)
    d = _write(tmp_path / "d", arrays, labels=arrays["labels"][:40, None].repeat(2, axis=1))
    with pytest.raises(InputError, match=r"tl_labels\.npy: shape"):
        read_part_npy(d)


def test_value_errors_name_file_and_jet(tmp_path: Path, arrays: dict[str, np.ndarray]) -> None:
    mask = arrays["pf_mask"][:40].copy()
    mask[5, 0, 3] = 2.0
    with pytest.raises(
        InputError, match=r"tl_pf_mask\.npy: jet 5 has mask values other than 0 and 1"
    ):
        read_part_npy(_write(tmp_path / "m", arrays, pf_mask=mask))
    vec = arrays["pf_vectors"][:40].copy()
    vec[9, 2, 0] = np.nan
    with pytest.raises(InputError, match=r"tl_pf_vectors\.npy: jet 9 has NaN or infinite"):
        read_part_npy(_write(tmp_path / "v", arrays, pf_vectors=vec))
    pts = arrays["pf_points"][:40].copy()
    pts[33, 1, 100] = np.inf  # even in a padded slot: the file is corrupt
    with pytest.raises(InputError, match=r"tl_pf_points\.npy: jet 33 has NaN or infinite"):
        read_part_npy(_write(tmp_path / "p", arrays, pf_points=pts))
    vec = arrays["pf_vectors"][:40].copy()
    vec[12, :2, 0] = 0.0
    with pytest.raises(
        InputError, match=r"tl_pf_vectors\.npy: jet 12 has a real constituent .* pT = 0"
    ):
        read_part_npy(_write(tmp_path / "z", arrays, pf_vectors=vec))
    lab = arrays["labels"][:40].astype(np.float64)
    lab[3] = 0.5
    with pytest.raises(InputError, match=r"tl_labels\.npy: label of jet 3"):
        read_part_npy(_write(tmp_path / "l", arrays, labels=lab))


def test_file_errors(tmp_path: Path, arrays: dict[str, np.ndarray]) -> None:
    d = _write(tmp_path / "missing", arrays)
    (d / "tl_labels.npy").unlink()
    with pytest.raises(InputError, match=r"missing ParT file\(s\): .*tl_labels\.npy"):
        read_part_npy(d)
    d = _write(tmp_path / "pickle", arrays, labels=np.array([{"a": 1}] * 40, dtype=object))
    with pytest.raises(InputError, match=r"tl_labels\.npy: not a readable \.npy"):
        read_part_npy(d)
    d = _write(tmp_path / "two", arrays)
    _write(d, arrays, prefix="qg")
    with pytest.raises(InputError, match="exactly one"):
        read_part_npy(d)
    with pytest.raises(InputError, match="no such file"):
        read_part_npy(tmp_path / "nowhere")


def test_conversion_round_trip(converted, arrays: dict[str, np.ndarray]) -> None:
    assert converted.n_events == 1600
    assert converted.treename == "Events"
    t = uproot.open(converted.root_path)["Events"].arrays()
    mask = arrays["pf_mask"][:, 0] != 0
    vec, pts = arrays["pf_vectors"], arrays["pf_points"]
    np.testing.assert_array_equal(ak.to_numpy(t.nPFCand), mask.sum(axis=1))
    np.testing.assert_array_equal(ak.to_numpy(t.nFatJet), 1)
    np.testing.assert_array_equal(ak.to_numpy(t.label), arrays["labels"])
    np.testing.assert_array_equal(ak.to_numpy(ak.flatten(t.FatJet_label)), arrays["labels"])
    np.testing.assert_array_equal(ak.to_numpy(t.event), np.arange(1600))
    flat = {
        k: ak.to_numpy(ak.flatten(t[f"PFCand_{k}"]))
        for k in ("pt", "eta", "phi", "mass", "energy", "deta", "dphi")
    }
    # Stored verbatim: E and the ParT points.
    np.testing.assert_array_equal(flat["energy"], vec[:, 3][mask])
    np.testing.assert_array_equal(flat["deta"], pts[:, 0][mask])
    np.testing.assert_array_equal(flat["dphi"], pts[:, 1][mask])
    # (pt, eta, phi) reproduce the 4-vectors to float32 precision.
    pt, eta, phi = (flat[k].astype(np.float64) for k in ("pt", "eta", "phi"))
    scale = np.abs(vec[:, :3]).max()
    np.testing.assert_allclose(pt * np.cos(phi), vec[:, 0][mask], rtol=1e-5, atol=1e-6 * scale)
    np.testing.assert_allclose(pt * np.sin(phi), vec[:, 1][mask], rtol=1e-5, atol=1e-6 * scale)
    np.testing.assert_allclose(pt * np.sinh(eta), vec[:, 2][mask], rtol=1e-5, atol=1e-6 * scale)
    assert (flat["mass"] >= 0).all()
    # The ParT sign convention: deta = (eta - eta_jet) * sign(eta_jet).
    jet_eta = np.repeat(ak.to_numpy(ak.flatten(t.FatJet_eta)), mask.sum(axis=1)).astype(np.float64)
    np.testing.assert_allclose(flat["deta"], (eta - jet_eta) * np.sign(jet_eta), atol=2e-5)
    jet_pt = ak.to_numpy(ak.flatten(t.FatJet_pt))
    summed = np.hypot(*(np.where(mask, vec[:, i], 0).sum(axis=1) for i in (0, 1)))
    np.testing.assert_allclose(jet_pt, summed, rtol=1e-5)
    # The NanoAOD v15 link table: the generic extractor reads the jets back.
    cons = read_fatjet_constituents(converted.root_path, strict_counts=True, extra_fields=("deta",))
    np.testing.assert_array_equal(ak.to_numpy(ak.flatten(cons.deta, axis=None)), flat["deta"])


def test_cache_is_content_addressed_and_atomic(
    folder: Path, converted, tmp_path: Path, arrays: dict[str, np.ndarray]
) -> None:
    cache = converted.root_path.parent
    mtime = converted.root_path.stat().st_mtime_ns
    again = convert_part_npy(folder, cache)
    assert again == converted
    assert converted.root_path.stat().st_mtime_ns == mtime  # not rewritten
    assert not [p for p in cache.iterdir() if p.name.startswith(".")]  # no temporary files left
    small = convert_part_npy(_write(tmp_path / "small", arrays, n=30), cache)
    assert small.root_path != converted.root_path
    assert small.n_events == 30
    # A bad folder leaves nothing behind.
    mask = arrays["pf_mask"][:30].copy()
    mask[0, 0, 0] = 7
    before = set(cache.iterdir())
    with pytest.raises(InputError, match="tl_pf_mask"):
        convert_part_npy(_write(tmp_path / "bad", arrays, n=30, pf_mask=mask), cache)
    assert set(cache.iterdir()) == before


def test_coffea_runner_reads_the_converted_file(converted) -> None:
    from coffea import processor

    from hepnn.jets.nanoaod import fatjet_constituents
    from hepnn.schemas import NanoSchema

    class Count(processor.ProcessorABC):
        def process(self, events):
            cons = ak.flatten(fatjet_constituents(events), axis=1)
            return {
                "events": len(events),
                "constituents": int(ak.sum(ak.num(cons))),
                "top": int(ak.sum(events.FatJet.label)),
            }

        def postprocess(self, accumulator):
            return accumulator

    runner = processor.Runner(
        executor=processor.IterativeExecutor(status=False), schema=NanoSchema, chunksize=700
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        out = runner(
            {"toptag": {"files": {str(converted.root_path): "Events"}}}, Count(), treename="Events"
        )
    assert out == {"events": 1600, "constituents": 78091, "top": 750}
