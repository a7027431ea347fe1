"""End to end: train the jet networks of configs/toptag.yaml, rank them, band them, reuse them.

One quick toptag run (two epochs per network, 3-fold cross-validation) is shared by the
tests of this module: its outputs, ``hepnn rank --models``, MC-dropout bands when the
config asks, and application to other samples (CMS FatJets, damaged jets).
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import awkward as ak
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import uproot
import yaml
from click.testing import CliRunner

from hepnn.cli import main
from hepnn.config import load_config
from hepnn.errors import ChunkError, InputError
from hepnn.pipeline import run_config

REPO = Path(__file__).resolve().parents[1]
TOPTAG = REPO / "configs" / "toptag.yaml"
FATJETS = REPO / "configs" / "fatjets.yaml"
QUICK = ["networks.cnn2d.training.epochs=2", "networks.cnn1d.training.epochs=2"]
#: Bands are tested on their own (test_mc_dropout_*): the shared run has none.
NO_BANDS = ["uncertainty.mc_dropout=null"]
NO_PLOTS = ["outputs.plots=false", "outputs.hists_root=false", *NO_BANDS]
COLUMNS = {
    "event", "jet_index", "label", "jet_pt", "jet_eta", "jet_mass", "n_constituents",
    "jet_ptd", "empty", "score_cnn2d", "score_cnn1d",
}  # fmt: skip
TAGGERS = ("cnn2d", "cnn1d")


def _columns(out: Path, dataset: str) -> dict[str, np.ndarray]:
    table = pq.read_table(out / "columns" / f"{dataset}.parquet")
    return {name: table[name].to_numpy() for name in table.column_names}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A toptag run training both networks for two epochs (block 400, one chunk), 3-fold CV."""
    out = tmp_path_factory.mktemp("toptag")
    cv = ["cross_validation.folds=3", "cross_validation.bootstrap=100"]
    cfg = load_config(TOPTAG, [*QUICK, *cv, *NO_BANDS, "outputs.plot_formats=[png]"])
    run_config(cfg, out, progress=False)
    return out


def test_run_writes_documented_outputs(trained: Path) -> None:
    cols = _columns(trained, "toptag")
    assert set(cols) == COLUMNS
    assert len(cols["event"]) == 1600
    assert not cols["empty"].any()
    assert np.isfinite(cols["score_cnn2d"]).all()
    metrics = json.loads((trained / "metrics.json").read_text())
    assert set(metrics) == {"networks", "baselines", "cross_validation"}
    for name, kind in (("cnn2d", "image"), ("cnn1d", "sequence")):
        net = metrics["networks"][name]
        assert (net["kind"], net["architecture"], net["split"]["method"]) == (kind, name, "random")
        m = net["datasets"]["toptag"]
        assert m["evaluated_on"].startswith("held-out rows")
        assert 250 < m["rows"] < 400  # ~20% of 1,600 by the seeded hash split
        assert m["unscored"] == 0
        assert 0.8 < m["auc"] <= 1.0
        assert m["eff_s"] == 0.3
        assert m["rejection"] is not None or m["rejection_lower_bound"] is not None
        # metrics after the run agree with the held-out AUC measured at training
        held = net["training"]["held_out"]
        assert held["rows"] == held["test_rows"] == m["rows"]
        assert m["auc"] == pytest.approx(held["auc"])
        assert net["training"]["models"][0]["epochs_run"] == 2
    for base in ("mass", "gbt_mass_nconst_ptd"):
        entry = metrics["baselines"][base]["datasets"]["toptag"]
        assert entry["auc"] > 0.8
        assert entry["rows"] == metrics["networks"]["cnn2d"]["datasets"]["toptag"]["rows"]
    for plot in ("roc_toptag", "jet_image_mean_signal", "jet_image_mean_background",
                 "score_cnn2d", "score_cnn1d", "training_cnn2d", "training_cnn1d"):  # fmt: skip
        assert (trained / "plots" / f"{plot}.png").stat().st_size > 5_000, plot
    hists = pickle.loads((trained / "hists.pkl").read_bytes())
    assert hists["jet_status"][{"dataset": sum, "process": sum, "status": "tagged"}] == 1600
    mean = hists["jet_image_mean_signal"]
    assert mean.values().sum() == pytest.approx(1.0, rel=1e-3)  # images normalised to unit pT sum
    assert list(hists["roc_networks"].axes["classifier"])[:2] == ["cnn2d", "cnn1d"]
    assert not any(k.endswith(("_mcdropout", "_ensemble")) for k in hists)  # no bands asked
    for name, kind in (("cnn2d", "image"), ("cnn1d", "sequence")):
        model = json.loads((trained / "models" / name / "model.json").read_text())
        assert (model["format_version"], model["kind"], model["inputs"]["kind"]) == (2, kind, kind)
        assert model["training_data"][0]["dataset"] == "toptag"
        assert model["training_data"][0]["rows"] == 1600
    manifest = json.loads((trained / "manifest.json").read_text())
    assert manifest["networks"] == {
        "cnn2d": {"path": str(trained / "models" / "cnn2d"), "kind": "image", "trained": True},
        "cnn1d": {"path": str(trained / "models" / "cnn1d"), "kind": "sequence", "trained": True},
    }


def test_cross_validation_block(trained: Path) -> None:
    """Out-of-fold metrics of every jet beside the single split; CV models are not deployed."""
    cv = json.loads((trained / "metrics.json").read_text())["cross_validation"]
    assert cv["folds"] == 3
    assert cv["rows"] == sum(cv["fold_rows"]) == 1600
    assert list(cv["classifiers"]) == ["cnn2d", "cnn1d", "mass", "gbt_mass_nconst_ptd"]
    assert cv["baseline"] == "gbt_mass_nconst_ptd"
    for entry in cv["classifiers"].values():
        assert entry["rows"] == 1600
        assert 0.75 < entry["auc"] <= 1.0
        assert len(entry["fold_auc"]) == 3
    for name in TAGGERS:
        d = cv["auc_difference_to_gbt"][name]
        gbt = cv["classifiers"]["gbt_mass_nconst_ptd"]["auc"]
        assert d["difference"] == pytest.approx(cv["classifiers"][name]["auc"] - gbt)
        assert 0 < d["standard_error"] < 0.05
        assert d["resamples"] == 100
    table = pq.read_table(trained / "cross_validation" / "scores.parquet")
    assert table.num_rows == 1600
    assert sorted(set(table["fold"].to_pylist())) == [0, 1, 2]
    for name in TAGGERS:
        assert np.isfinite(table[f"score_{name}"].to_numpy()).all()  # every jet out of fold
    assert (trained / "plots" / "roc_cross_validation.png").stat().st_size > 5_000
    assert sorted(p.name for p in (trained / "models").iterdir()) == ["cnn1d", "cnn2d"]


def _ranking_rows(path: Path) -> list[list[str]]:
    rows = path.read_text().splitlines()
    assert rows[0].startswith("rank,term,order,value,")  # then the error columns
    return [r.split(",") for r in rows[1:]]


def test_taylor_maps_of_both_taggers(trained: Path) -> None:
    """First-order Taylor maps: a per-pixel image for cnn2d, per-feature ranking for cnn1d."""
    for name in TAGGERS:
        assert (trained / "ranking" / f"{name}_taylor_map.png").stat().st_size > 5000
    assert [r[1] for r in _ranking_rows(trained / "ranking" / "cnn2d.csv")] == ["image_pt"]
    rows = _ranking_rows(trained / "ranking" / "cnn1d.csv")
    terms = {r[1] for r in rows}
    assert terms == {"log_pt", "log_e", "log_pt_rel", "log_e_rel", "deta", "dphi", "delta_r"}
    values = [float(r[3]) for r in rows]
    assert all(v > 0 for v in values)
    assert values == sorted(values, reverse=True)


def test_rank_cli_ranks_both_taggers(trained: Path, tmp_path: Path) -> None:
    """``hepnn rank configs/toptag.yaml --models DIR``: a ranking and a map for every jet network."""
    out = tmp_path / "rank"
    argv = ["rank", str(TOPTAG), "--models", str(trained / "models"), "-o", str(out),
            "--set", "outputs.plot_formats=[png]"]  # fmt: skip
    res = CliRunner().invoke(main, argv)
    assert res.exit_code == 0, res.output
    for name in TAGGERS:
        for suffix in (".csv", ".md", "_taylor_map.png"):
            f = out / "ranking" / f"{name}{suffix}"
            assert f.is_file(), f
            assert f.stat().st_size > (5000 if suffix.endswith("png") else 20), f
        # the same models on the same held-out jets: the run's ranking, bit for bit
        assert (out / "ranking" / f"{name}.csv").read_bytes() == (
            trained / "ranking" / f"{name}.csv"
        ).read_bytes()
        assert (out / "ranking" / f"{name}.md").read_text() in res.output  # tables printed
    assert "delta_r" in (out / "ranking" / "cnn1d.md").read_text()
    assert not (out / "models").exists()  # nothing trained
    # a models folder without the networks: one line naming the missing model.json
    res = CliRunner().invoke(main, ["rank", str(TOPTAG), "--models", str(tmp_path), "-o", str(out)])
    assert res.exit_code != 0
    assert "no model.json for network 'cnn2d'" in res.output


def _band_run(trained: Path, out: Path, *extra: str) -> tuple[dict, dict[str, np.ndarray]]:
    """Apply the trained networks with MC-dropout bands of 5 replicas; hists and columns."""
    sets = ["uncertainty.mc_dropout.samples=5", "outputs.hists_root=false", *extra]
    cfg = load_config(TOPTAG, sets)
    assert cfg.uncertainty.mc_dropout is not None
    run_config(cfg, out, progress=False, models_dir=trained / "models")
    return pickle.loads((out / "hists.pkl").read_bytes()), _columns(out, "toptag")


def test_mc_dropout_bands_of_both_taggers(trained: Path, tmp_path: Path) -> None:
    """``uncertainty: {mc_dropout: {samples: 5}}``: replica histograms and band summaries per tagger."""
    hists, cols = _band_run(trained, tmp_path / "a", "outputs.plots=false")
    ref = _columns(trained, "toptag")
    for name in TAGGERS:
        h = hists[f"score_{name}_mcdropout"]
        assert [ax.name for ax in h.axes] == ["process", "mc", "score"]
        assert list(h.axes["mc"]) == [0, 1, 2, 3, 4]
        # every replica is filled once per jet, per process
        for t in range(5):
            assert (
                h[{"mc": t, "process": "signal"}].sum(flow=True).value == (ref["label"] == 1).sum()
            )
            assert (
                h[{"mc": t, "process": "background"}].sum(flow=True).value
                == (ref["label"] == 0).sum()
            )
        assert not np.array_equal(h[{"mc": 0}].values(), h[{"mc": 1}].values())
        summary = hists[f"score_{name}_mcdropout_summary"]
        assert list(summary.axes["process"]) == ["signal", "background"]
        assert list(summary.axes["stat"]) == ["nominal", "mean", "std", "q16", "q84", "up", "down"]
        nominal = summary[{"process": "signal", "stat": "nominal"}].values()
        assert np.array_equal(
            nominal, hists[f"score_{name}"][{"dataset": sum, "process": "signal"}].values()
        )
        assert f"score_std_{name}" in hists
        # per-jet replica mean and std in the columns; the nominal scores are unchanged
        assert np.array_equal(cols[f"score_{name}"], ref[f"score_{name}"])
        std = cols[f"score_{name}_mcd_std"]
        assert np.isfinite(std).all()
        assert (std > 0).mean() > 0.9  # dropout moves (almost) every jet
        assert np.isfinite(cols[f"score_{name}_mcd_mean"]).all()
    # replicas are bitwise independent of the chunking
    _, small = _band_run(trained, tmp_path / "b", "outputs.plots=false",
                         "executor.chunksize=600", "executor.block_size=200")  # fmt: skip
    for name in TAGGERS:
        for col in (f"score_{name}_mcd_mean", f"score_{name}_mcd_std"):
            assert np.array_equal(small[col], cols[col]), col


def test_mc_dropout_band_plots_of_both_taggers(trained: Path, tmp_path: Path) -> None:
    """With plots on, the bands of both taggers are drawn (the shipped config asks for them)."""
    _band_run(trained, tmp_path, "outputs.plot_formats=[png]")
    for name in TAGGERS:
        plots = list((tmp_path / "plots").glob(f"score_{name}_bands_*.png"))
        assert {p.stem.rsplit("_", 1)[1] for p in plots} == {"signal", "background"}, plots


def test_ensemble_trains_members_and_fills_member_bands(tmp_path: Path) -> None:
    """``uncertainty.ensemble`` for a jet network: members with their own seeds, a member band."""
    sets = ["networks.cnn1d.training.epochs=1", "networks.cnn2d.train=false",
            "networks.cnn1d.max_events=400", "uncertainty.ensemble.members=2",
            "cross_validation=null", "taylor=null", *NO_PLOTS]  # fmt: skip
    cfg = load_config(TOPTAG, sets)
    run = run_config(cfg, tmp_path, progress=False)
    assert list(run.networks) == ["cnn1d"]  # train: false and no --models: left out
    assert run.networks["cnn1d"].members == [
        tmp_path / "models" / n for n in ("cnn1d", "cnn1d_member1")
    ]
    member = json.loads((tmp_path / "models" / "cnn1d_member1" / "model.json").read_text())
    nominal = json.loads((tmp_path / "models" / "cnn1d" / "model.json").read_text())
    assert (nominal["seed"], member["seed"]) == (1234, 1235)
    # another seed, and the training split varies too: the same split with a salt
    assert member["split"] == {**nominal["split"], "salt": 1235}
    a = torch.load(tmp_path / "models" / "cnn1d" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "models" / "cnn1d_member1" / "model.pt", weights_only=True)
    assert any(not torch.equal(a[k], b[k]) for k in a)
    hists = pickle.loads((tmp_path / "hists.pkl").read_bytes())
    h = hists["score_cnn1d_ensemble"]
    assert list(h.axes["member"]) == [0, 1]
    n_signal = (_columns(tmp_path, "toptag")["label"] == 1).sum()
    assert h[{"member": 1, "process": "signal"}].sum(flow=True).value == n_signal
    # member 0 is the nominal network
    assert np.array_equal(
        h[{"member": 0, "process": "signal"}].values(),
        hists["score_cnn1d"][{"dataset": sum, "process": "signal"}].values(),
    )
    assert "score_cnn1d_ensemble_summary" in hists
    assert "score_cnn2d" not in hists
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert list(manifest["networks"]) == ["cnn1d"]


def test_models_reuse_is_bitwise_identical_for_any_chunking(trained: Path, tmp_path: Path) -> None:
    """--models: same scores, bit for bit, with other chunk/block sizes and executors."""
    ref = _columns(trained, "toptag")
    for name, sets in (
        ("small_blocks", ["executor.chunksize=600", "executor.block_size=200"]),
        ("futures", ["executor.name=futures", "executor.workers=2",
                     "executor.chunksize=200", "executor.block_size=100"]),
    ):  # fmt: skip
        cfg = load_config(TOPTAG, [*NO_PLOTS, *sets])
        summary = run_config(cfg, tmp_path / name, progress=False, models_dir=trained / "models")
        assert summary.result.n_chunks > 1
        assert not (tmp_path / name / "models").exists()  # nothing trained
        metrics = json.loads((tmp_path / name / "metrics.json").read_text())
        assert "cross_validation" not in metrics  # --models applies only, no CV retraining
        cols = _columns(tmp_path / name, "toptag")
        for key in ("event", "score_cnn2d", "score_cnn1d"):
            assert np.array_equal(cols[key], ref[key]), (name, key)


def test_fatjets_scores_every_fatjet_with_constituents(trained: Path, tmp_path: Path) -> None:
    cfg = load_config(FATJETS, NO_PLOTS)
    summary = run_config(cfg, tmp_path, progress=False, models_dir=trained / "models")
    hists = summary.result.output
    status = hists["fatjet_constituent_status"]
    for dataset, fname in (("ttbar_v15", "nano_tt_v15.root"), ("qcd_pfnano", "pfnano.root")):
        cols = _columns(tmp_path, dataset)
        has = cols["n_constituents"] > 0
        for tagger in ("cnn2d", "cnn1d"):
            assert np.isfinite(cols[f"score_{tagger}"][has]).all()
            assert np.isnan(cols[f"score_{tagger}"][~has]).all()
            scored = hists[f"fatjet_score_{tagger}"][{"dataset": dataset}].sum(flow=True).value
            # simulation is weighted by genWeight: the scored jets' event weights, from uproot
            with uproot.open(REPO / "samples" / "nanoaod" / fname) as f:
                ev = f["Events"].arrays(["event", "genWeight"], library="np")
            weight_of = dict(zip(ev["event"].tolist(), ev["genWeight"].tolist(), strict=True))
            expected = sum(weight_of[e] for e in cols["event"][has].tolist())
            assert scored == pytest.approx(expected, rel=1e-6)
        # independent count with uproot: FatJets >= 170 GeV with at least one link
        with uproot.open(REPO / "samples" / "nanoaod" / fname) as f:
            t = f["Events"]
            table = "FatJetPFCand" if "FatJetPFCand_jetIdx" in t else "FatJetPFCands"
            pt = t["FatJet_pt"].array()
            linked = t[f"{table}_jetIdx"].array()
        n_linked = sum(
            int(
                (
                    (np.bincount(ak.to_numpy(j), minlength=len(p)) > 0) & (ak.to_numpy(p) >= 170)
                ).sum()
            )
            for p, j in zip(pt, linked, strict=True)
        )
        assert has.sum() == n_linked
        assert status[{"dataset": dataset, "status": "with constituents"}] == n_linked
    assert status[{"dataset": "ttbar_v15", "status": "no constituents linked"}] == 2
    dimuon = _columns(tmp_path, "dimuon_2018")
    assert (dimuon["status"] == "no PF candidate table").all()
    assert np.isnan(dimuon["score_cnn2d"]).all()
    assert status[{"dataset": "dimuon_2018", "status": "no PF candidate table"}] == len(
        dimuon["pt"]
    )
    for h in ("fatjet_score_cnn2d_vs_pt", "fatjet_score_cnn1d_vs_msoftdrop"):
        assert h in hists


# ---------------------------------------------------------------- bad inputs
def _write_jets(path: Path, *, empty: int | None = None, nan: int | None = None,
                bad_index: int | None = None, n: int = 40) -> Path:  # fmt: skip
    """40 real top/QCD jets as a NanoAOD-like file, optionally damaged at one entry."""
    from hepnn.pipeline import cache_dir
    from hepnn.samples import load_samples, resolve_samples

    ds = resolve_samples(load_samples(REPO / "samples" / "toptag.yaml"), cache_dir())
    with uproot.open(ds["toptag"].files[0].root_path) as f:
        a = f["Events"].arrays(entry_stop=n, library="ak")
    pf = {k: ak.to_list(a[f"PFCand_{k}"]) for k in ("pt", "eta", "phi", "mass")}
    links = ak.to_list(a["FatJetPFCand_pfCandIdx"])
    if empty is not None:
        links[empty] = []
    if nan is not None:
        pf["pt"][nan][3] = float("nan")
    if bad_index is not None:
        links[bad_index][0] = 999
    fat = {k: a[f"FatJet_{k}"] for k in ("pt", "eta", "phi", "mass", "label")}
    cols = {
        "run": ak.to_numpy(a["run"]),
        "luminosityBlock": ak.to_numpy(a["luminosityBlock"]),
        "event": ak.to_numpy(a["event"]),
        "label": ak.to_numpy(a["label"]),
        "FatJet": ak.zip(fat),
        "PFCand": ak.zip({k: ak.values_astype(ak.Array(v), np.float32) for k, v in pf.items()}),
        "FatJetPFCand": ak.zip(
            {
                "jetIdx": ak.values_astype(ak.zeros_like(ak.Array(links)), np.int32),
                "pfCandIdx": ak.values_astype(ak.Array(links), np.int32),
            }
        ),
    }
    with uproot.recreate(path) as f:
        f.mktree(
            "Events",
            {k: v.type if isinstance(v, ak.Array) else v.dtype for k, v in cols.items()},
            counter_name=lambda c: "n" + c,
            field_name=lambda outer, inner: outer + "_" + inner,
        )
        f["Events"].extend(cols)
    samples = path.with_suffix(".yaml")
    samples.write_text(
        yaml.safe_dump({"datasets": {"other": {"format": "root", "files": [str(path)]}}})
    )
    return samples


def test_empty_jet_flagged_on_another_sample(trained: Path, tmp_path: Path) -> None:
    """--samples + --models: another jet sample is scored; an empty jet is flagged, not scored."""
    samples = _write_jets(tmp_path / "jets.root", empty=5)
    argv = ["run", str(TOPTAG), "-o", str(tmp_path / "out"), "--quiet", "--samples", str(samples),
            "--models", str(trained / "models"), *(f"--set={s}" for s in NO_PLOTS)]  # fmt: skip
    res = CliRunner().invoke(main, argv)
    assert res.exit_code == 0, res.output
    cols = _columns(tmp_path / "out", "other")
    assert cols["empty"].tolist() == [i == 5 for i in range(40)]
    assert np.isnan(cols["score_cnn2d"][5])
    assert np.isfinite(np.delete(cols["score_cnn2d"], 5)).all()
    # the same jets score the same as in the training run's file
    ref = _columns(trained, "toptag")
    keep = np.arange(40) != 5
    assert np.array_equal(cols["score_cnn1d"][keep], ref["score_cnn1d"][:40][keep])
    m = json.loads((tmp_path / "out" / "metrics.json").read_text())["networks"]["cnn2d"]
    entry = m["datasets"]["other"]
    assert entry["evaluated_on"].startswith("all labelled rows")  # not a training file
    assert entry["rows"] == 39
    assert entry["unscored"] == 1


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ({"nan": 7}, r"entries \[0, 40\): InputError: branch PFCand_pt: NaN value for constituent 3 of FatJet 0 in entry 7"),
        ({"bad_index": 12}, r"InputError: branch FatJetPFCand_pfCandIdx: index 999 outside PFCand .* in entry 12"),
    ],
)  # fmt: skip
def test_bad_constituents_fail_naming_file_entry_branch(
    trained: Path, tmp_path: Path, damage: dict[str, int], message: str
) -> None:
    samples = _write_jets(tmp_path / "bad.root", **damage)
    sets = [*NO_PLOTS, f"samples={samples}", "executor.retries=0"]
    # processing the chunks (no ranking): the chunk error names file, entries, branch
    cfg = load_config(TOPTAG, [*sets, "taylor=null"])
    with pytest.raises(ChunkError, match=message) as info:
        run_config(cfg, tmp_path / "out", progress=False, models_dir=trained / "models")
    assert str(tmp_path / "bad.root") in str(info.value)
    # with taylor the networks are first ranked on the sample's jets: the reader names them too
    cfg = load_config(TOPTAG, sets)
    with pytest.raises(InputError, match=message.split("InputError: ")[1]) as err:
        run_config(cfg, tmp_path / "out2", progress=False, models_dir=trained / "models")
    assert str(err.value).startswith(f"{tmp_path / 'bad.root'}: branch ")


def test_plot_redraws_every_plot_of_a_tagger_run(trained: Path, tmp_path: Path) -> None:
    """``hepnn plot``: the tagger run's plots, the Taylor maps too, drawn again from its files."""
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(trained, out)
    drawn = sorted(p.relative_to(out) for p in out.rglob("*.png"))
    assert any(p.name.endswith("_taylor_map.png") for p in drawn)
    for p in out.rglob("*.png"):
        p.unlink()
    res = CliRunner().invoke(main, ["plot", str(out), "--format", "png"])
    assert res.exit_code == 0, res.output
    again = sorted(p.relative_to(out) for p in out.rglob("*.png"))
    assert set(drawn) <= set(again)
