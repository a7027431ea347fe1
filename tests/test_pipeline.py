"""End-to-end runs of the shipped configs on the shipped samples."""

from __future__ import annotations

import csv
import functools
import json
import math
import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import uproot

from hepnn.config import load_config
from hepnn.pipeline import run_config

REPO = Path(__file__).resolve().parents[1]
HIGGS_CSV = REPO / "samples" / "higgs_challenge_18k.csv"
#: The kinematics part of the higgs config only: no training (tested in test_networks_run.py).
KINEMATICS = ["networks={}", "uncertainty={}", "taylor=null"]
FAST = [*KINEMATICS, "outputs.plots=false"]


def _hists(output: dict) -> dict:
    """The histograms of a run's merged output (without the per-event columns)."""
    return {k: v for k, v in output.items() if k != "columns"}


@pytest.fixture(scope="module")
def csv_truth() -> dict[str, float]:
    """Counts and weight sums read straight from the CSV with the csv module."""
    n = {"s": 0, "b": 0}
    w: dict[str, list[float]] = {"s": [], "b": []}
    with HIGGS_CSV.open(newline="") as fh:
        for row in csv.DictReader(fh):
            n[row["Label"]] += 1
            w[row["Label"]].append(float(row["Weight"]))
    return {"n_s": n["s"], "n_b": n["b"], "w_s": math.fsum(w["s"]), "w_b": math.fsum(w["b"])}


@pytest.fixture(scope="module")
def higgs_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("higgs")
    cfg = load_config(REPO / "configs" / "higgs.yaml", [*KINEMATICS, "outputs.plot_formats=[png]"])
    run_config(cfg, out, progress=False)
    return out


def test_higgs_processes_every_event(higgs_run: Path, csv_truth: dict[str, float]) -> None:
    manifest = json.loads((higgs_run / "manifest.json").read_text())
    acc = manifest["datasets"]["higgs_challenge"]
    assert acc["entries_expected"] == 18000
    assert acc["entries_processed"] == 18000
    assert acc["chunks_skipped"] == []
    hists = pickle.loads((higgs_run / "hists.pkl").read_bytes())
    yields = hists["yields"][{"dataset": "higgs_challenge", "njet": sum}]
    sig, bkg = yields["signal"], yields["background"]
    # unweighted counts via the variance of an unweighted fill are not available;
    # the weighted sums must match the CSV to float precision
    assert sig.value == pytest.approx(csv_truth["w_s"], rel=1e-12)
    assert bkg.value == pytest.approx(csv_truth["w_b"], rel=1e-12)
    assert yields["unlabelled"].value == 0.0


def test_higgs_missing_values_never_filled(higgs_run: Path) -> None:
    hists = pickle.loads((higgs_run / "hists.pkl").read_bytes())
    mjj = hists["DER_mass_jet_jet"]
    # events with fewer than two jets have DER_mass_jet_jet = -999: they must be absent,
    # not in the underflow
    for low in ("0 jets", "1 jet"):
        assert mjj[{"dataset": sum, "process": sum, "njet": low}].values(flow=True).sum() == 0.0
    assert mjj[{"dataset": sum, "process": sum, "njet": "2+ jets"}].values(flow=True).sum() > 0
    assert mjj.view(flow=True)["value"][..., 0].sum() == 0.0  # nothing in the underflow


def test_higgs_outputs_written(higgs_run: Path) -> None:
    manifest = json.loads((higgs_run / "manifest.json").read_text())
    for rel, digest in manifest["outputs"].items():
        assert (higgs_run / rel).is_file(), rel
        assert len(digest) == 64
    assert (higgs_run / "plots" / "DER_mass_MMC.png").stat().st_size > 10_000
    with uproot.open(higgs_run / "hists.root") as f:
        # the config's input variations: fit templates, one region per dataset and jet bin
        h = f["DER_mass_MMC_higgs_challenge_0_jets/signal/nominal"]
        assert h.values().shape == (50,)
        assert f["DER_mass_MMC/signal/tesUp"].values().shape == (50,)
    assert len(manifest["config_hash"]) == 64
    assert len(manifest["workflow"]["source_sha256"]) == 64
    assert manifest["packages"]["coffea"]


def test_executors_and_chunk_sizes_bitwise_equal(higgs_run: Path) -> None:
    ref = pickle.loads((higgs_run / "hists.pkl").read_bytes())
    cfg = load_config(
        REPO / "configs" / "higgs.yaml",
        [*FAST, "executor.name=futures", "executor.workers=2", "executor.chunksize=20000"],
    )
    other = _hists(run_config(cfg, higgs_run.parent / "futures", progress=False).result.output)
    assert ref.keys() == other.keys()
    for name in ref:
        assert np.array_equal(ref[name].view(flow=True), other[name].view(flow=True)), name


@pytest.mark.dask
def test_dask_executor_bitwise_equal(higgs_run: Path) -> None:
    ref = pickle.loads((higgs_run / "hists.pkl").read_bytes())
    cfg = load_config(
        REPO / "configs" / "higgs.yaml",
        [*FAST, "executor.name=dask", "executor.workers=2", "executor.chunksize=10000"],
    )
    run = run_config(cfg, higgs_run.parent / "dask", progress=False)
    assert run.manifest["datasets"]["higgs_challenge"]["entries_processed"] == 18000
    for name in ref:
        assert np.array_equal(ref[name].view(flow=True), run.hists[name].view(flow=True)), name


def test_block_merge_is_chunking_independent(tmp_path: Path) -> None:
    """Small blocks and three chunkings (1, 3 and 9 chunks) give the same bits."""
    outs = []
    for chunksize in (2000, 6000, 18000):
        cfg = load_config(
            REPO / "configs" / "higgs.yaml",
            [*FAST, "executor.block_size=2000", f"executor.chunksize={chunksize}"],
        )
        outs.append(run_config(cfg, tmp_path / str(chunksize), progress=False).result)
    assert [r.n_chunks for r in outs] == [9, 3, 1]
    for r in outs[1:]:
        for name, h in _hists(outs[0].output).items():
            assert np.array_equal(h.view(flow=True), r.output[name].view(flow=True)), name
        cols = outs[0].output["columns"]["higgs_challenge"].read().data
        for key, values in r.output["columns"]["higgs_challenge"].read().data.items():
            assert np.array_equal(cols[key], values), key


def test_fatjets_processes_every_file(tmp_path: Path) -> None:
    cfg = load_config(REPO / "configs" / "fatjets.yaml", [*FAST, "options.fatjet_pt_min=0"])
    run = run_config(cfg, tmp_path, progress=False)
    expected = {"ttbar_v15": 200, "qcd_pfnano": 10, "dy": 40, "dimuon_2018": 40}
    for name, n in expected.items():
        acc = run.manifest["datasets"][name]
        assert acc["entries_expected"] == n
        assert acc["entries_processed"] == n
    hists = run.hists
    # independent Σ genWeight over FatJets with uproot (simulation is weighted by genWeight)
    for name, fname in (("ttbar_v15", "nano_tt_v15.root"), ("qcd_pfnano", "pfnano.root")):
        with uproot.open(REPO / "samples" / "nanoaod" / fname) as f:
            ev = f["Events"].arrays(["nFatJet", "genWeight"], library="np")
        sumw_fat = float((ev["nFatJet"] * ev["genWeight"].astype(np.float64)).sum())
        for hname in ("fatjet_npfcand", "fatjet_pt"):
            got = hists[hname][{"dataset": name}].sum(flow=True)
            assert got.value == pytest.approx(sumw_fat, rel=1e-12)
            assert got.variance == pytest.approx(
                float((ev["nFatJet"] * ev["genWeight"].astype(np.float64) ** 2).sum()), rel=1e-12
            )
    # data: weight 1 per event
    assert hists["njet"][{"dataset": "dimuon_2018"}].sum(flow=True).value == 40
    # without --models: kinematics only, FatJets counted by constituent status
    assert not any(name.startswith("fatjet_score") for name in hists)
    assert run.manifest["networks"] == {}
    assert "taggers" not in run.manifest
    status = hists["fatjet_constituent_status"]
    assert status[{"dataset": "ttbar_v15", "status": "no constituents linked"}] == 2
    with uproot.open(REPO / "samples" / "nanoaod" / "nano_dy.root") as f:
        n_dy = int(f["Events"]["nFatJet"].array(library="np").sum())
    assert status[{"dataset": "dy", "status": "no PF candidate table"}] == n_dy


def test_run_is_the_list_of_stages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``run_config`` runs :data:`STAGES` in order, each once, and returns the ``Run`` state."""
    from hepnn import pipeline

    names = [stage.__name__ for stage in pipeline.STAGES]
    assert names[0] == "resolve_inputs"
    assert names[-1] == "finish"  # the manifest is written last
    assert len(set(names)) == len(names)
    assert all(stage.__doc__ for stage in pipeline.STAGES)
    seen: list[str] = []

    def recorded(stage: Callable[[pipeline.Run], None]) -> Callable[[pipeline.Run], None]:
        @functools.wraps(stage)
        def wrapper(run: pipeline.Run) -> None:
            assert not (tmp_path / "manifest.json").exists()  # written by the last stage only
            seen.append(stage.__name__)
            stage(run)

        return wrapper

    monkeypatch.setattr(pipeline, "STAGES", tuple(recorded(s) for s in pipeline.STAGES))
    cfg = load_config(REPO / "configs" / "fatjets.yaml", FAST)
    run = run_config(cfg, tmp_path, progress=False)
    assert seen == names
    assert isinstance(run, pipeline.Run)
    assert run.networks == {}
    assert run.reader is None  # no networks: nothing read for training
    assert tmp_path / "manifest.json" in run.files
    assert set(run.manifest["outputs"]) == {
        str(f.relative_to(tmp_path)) for f in run.files if f.name != "manifest.json"
    }
    # the time account: every stage before the manifest, and the processing rate
    stage_seconds = run.manifest["stage_seconds"]
    assert list(stage_seconds) == names[:-1]
    assert all(sec >= 0 for sec in stage_seconds.values())
    assert stage_seconds["process_events"] >= run.manifest["processing_time_s"] * 0.5
    processed = sum(d["entries_processed"] for d in run.manifest["datasets"].values())
    assert run.manifest["events_per_second"] == pytest.approx(
        processed / run.manifest["processing_time_s"], rel=0.01
    )


@pytest.mark.parametrize(
    ("fname", "table"),
    [("nano_tt_v15.root", "FatJetPFCand"), ("pfnano.root", "FatJetPFCands")],
)
def test_fatjet_constituent_counts_match_index_table(fname: str, table: str) -> None:
    from coffea.nanoevents import NanoEventsFactory

    from hepnn.schemas import NanoSchema
    from hepnn.workflow import find_workflow

    counts_fn = __import__(
        find_workflow("fatjets", REPO / "configs").cls.__module__
    ).fatjet_constituent_counts
    path = REPO / "samples" / "nanoaod" / fname
    events = NanoEventsFactory.from_root(
        {str(path): "Events"}, schemaclass=NanoSchema, mode="eager"
    ).events()
    counts = counts_fn(events)
    with uproot.open(path) as f:
        jet_idx = f["Events"][f"{table}_jetIdx"].array(library="ak")
        n_fat = f["Events"]["nFatJet"].array(library="np")
    import awkward as ak

    assert ak.to_list(ak.num(counts)) == n_fat.tolist()
    for i in range(len(n_fat)):
        ref = np.bincount(ak.to_numpy(jet_idx[i]), minlength=n_fat[i]) if n_fat[i] else np.zeros(0)
        assert ak.to_list(counts[i]) == ref.tolist()
