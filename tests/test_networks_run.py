"""`hepnn run` with networks: training, score columns, metrics, bands, ranking, --models reuse."""

from __future__ import annotations

import json
import math
import pickle
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import uproot
from click.testing import CliRunner

from hepnn.cli import main
from hepnn.config import load_config
from hepnn.metrics import ams
from hepnn.pipeline import run_config

REPO = Path(__file__).resolve().parents[1]
QUICK = [
    "networks.dnn.training.epochs=3",
    "uncertainty.mc_dropout.samples=6",
    "uncertainty.ensemble.members=2",
    "taylor.events=2000",
    "taylor.monitor_events=500",
    "outputs.plots=false",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("higgs_nn")
    cfg = load_config(REPO / "configs" / "higgs.yaml", QUICK)
    run_config(cfg, out, progress=False)
    return out


def test_model_files_and_metrics(trained: Path) -> None:
    meta = json.loads((trained / "models" / "dnn" / "model.json").read_text())
    assert meta["format_version"] == 2
    assert meta["kind"] == "flat"
    assert meta["inputs"]["kind"] == "flat"
    assert len(meta["inputs"]["features"]) == 30
    # 30 features, of which PRI_tau_phi is the symmetry's reference (always 0, no input),
    # + 3 missing-value flags (auto)
    assert len(meta["input_names"]) == 32
    assert "PRI_tau_phi" not in meta["input_names"]
    assert meta["inputs"]["symmetry"]["phi_reference"] == "PRI_tau_phi"
    assert meta["split"]["method"] == "kfold"
    assert [m["file"] for m in meta["models"]] == [f"model_fold{i}.pt" for i in range(4)]
    for f in trained.glob("models/dnn/model*.pt"):
        assert f.stat().st_size > 1000
    member = json.loads((trained / "models" / "dnn_member1" / "model.json").read_text())
    # ensemble members vary the split too: hashed folds salted with seed + member
    assert member["split"] == {**meta["split"], "salt": meta["seed"] + 1}
    assert "salt" not in meta["split"]  # the deployed network keeps id % folds
    assert member["seed"] == meta["seed"] + 1
    top = json.loads((trained / "metrics.json").read_text())
    assert set(top) == {"networks", "baselines"}  # no cross_validation section configured
    metrics = top["networks"]["dnn"]
    assert metrics["kind"] == "flat"
    assert metrics["split"]["method"] == "kfold"
    m = metrics["datasets"]["higgs_challenge"]
    assert m["rows"] == 18000  # k-fold: every event scored by a model that did not see it
    assert 0.75 < m["auc"] <= 1.0
    assert m["ams_best"] > 0


def test_columns_aligned_with_csv(trained: Path) -> None:
    table = pq.read_table(trained / "columns" / "higgs_challenge.parquet").to_pandas()
    assert len(table) == 18000
    assert table["EventId"].tolist() == list(range(100000, 118000))  # entry order kept
    assert set(table["Label"]) == {0, 1}
    for col in ("score_dnn", "score_dnn_mcd_mean", "score_dnn_mcd_std"):
        assert table[col].between(0, 1).all(), col
    assert (table["score_dnn_mcd_std"] > 0).all()


def test_band_hists(trained: Path) -> None:
    hists = pickle.loads((trained / "hists.pkl").read_bytes())
    mcd = hists["score_dnn_mcdropout"]
    assert [ax.name for ax in mcd.axes] == ["process", "mc", "score"]
    assert len(mcd.axes["mc"]) == 6
    ens = hists["score_dnn_ensemble"]
    assert [ax.name for ax in ens.axes] == ["process", "member", "score"]
    summary = hists["score_dnn_mcdropout_summary"]
    assert list(summary.axes["stat"]) == ["nominal", "mean", "std", "q16", "q84", "up", "down"]
    # every replica holds every event: the per-replica totals equal the nominal total
    score = hists["score_dnn"]
    if "syst" in score.axes.name:  # the config's input variations: their nominal slice
        score = score[{"syst": "nominal"}]
    nominal = score[{"dataset": sum, "njet": sum, "process": "signal"}]
    per_replica = mcd[{"process": "signal"}].values(flow=True).sum(axis=1)
    np.testing.assert_allclose(per_replica, nominal.values(flow=True).sum(), rtol=1e-12)
    sig = summary[{"process": "signal"}]
    q16, q84 = sig[{"stat": "q16"}].values(), sig[{"stat": "q84"}].values()
    assert np.all(q16 <= q84)
    with uproot.open(trained / "hists.root") as f:
        # templates in the combine / cabinetry layout: same total as the nominal, never q84
        nom = f["score_dnn/signal/nominal"].values(flow=True)
        for var in ("mcdropout", "ensemble"):
            up = f[f"score_dnn/signal/{var}Up"].values(flow=True)
            down = f[f"score_dnn/signal/{var}Down"].values(flow=True)
            np.testing.assert_allclose([up.sum(), down.sum()], nom.sum(), rtol=1e-6)
            assert up.min() >= 0
            assert down.min() >= 0
        assert not np.allclose(f["score_dnn/signal/mcdropoutUp"].values(), q84)
        np.testing.assert_allclose(
            f["score_dnn/signal/mcdropout_replica5"].values(), mcd[{"process": "signal", "mc": 5}].values()
        )
        names = f.keys(recursive=True, cycle=False)
        assert not any(k.startswith("bands/") for k in names)
        # quantiles appear only as the descriptive summary rows, never as a template
        templates = [k for k in names if k.endswith(("Up", "Down"))]
        assert templates
        assert not any("q16" in k or "q84" in k or "summary" in k for k in templates)


def test_ranking_written(trained: Path) -> None:
    rows = (trained / "ranking" / "dnn.csv").read_text().splitlines()
    assert rows[0].startswith("rank,term,order,value,")  # then the error columns
    assert not any("_missing" in r.split(",")[1] for r in rows[1:])  # flags are not ranked
    n_inputs = 30  # physics features only (the missing flags are helper inputs)
    assert len(rows) - 1 == min(50, n_inputs + n_inputs * (n_inputs + 1) // 2)
    values = [float(r.split(",")[3]) for r in rows[1:]]
    assert values == sorted(values, reverse=True)
    history = (trained / "ranking" / "dnn_history.csv").read_text().splitlines()
    epochs = {int(r.split(",")[0]) for r in history[1:]}
    assert epochs == {1, 2, 3}


def test_models_reuse_is_bitwise(trained: Path, tmp_path: Path) -> None:
    """Applying the saved models with another executor and chunking gives the same bits."""
    cfg = load_config(
        REPO / "configs" / "higgs.yaml",
        [*QUICK, "executor.name=futures", "executor.workers=2", "executor.chunksize=20000"],
    )
    run = run_config(cfg, tmp_path, progress=False, models_dir=trained / "models")
    assert not (tmp_path / "models").exists()  # nothing retrained
    a = pq.read_table(trained / "columns" / "higgs_challenge.parquet").to_pandas()
    b = pq.read_table(tmp_path / "columns" / "higgs_challenge.parquet").to_pandas()
    for col in ("score_dnn", "score_dnn_mcd_mean", "score_dnn_mcd_std"):
        assert np.array_equal(a[col].to_numpy(), b[col].to_numpy()), col
    ref = pickle.loads((trained / "hists.pkl").read_bytes())
    for name in ("score_dnn", "score_dnn_mcdropout", "score_dnn_ensemble", "DER_mass_MMC_cut_dnn"):
        assert np.array_equal(ref[name].view(flow=True), run.hists[name].view(flow=True)), name
    assert run.manifest["networks"]["dnn"]["trained"] is False


def test_missing_models_dir_is_one_line_error(tmp_path: Path) -> None:
    empty = tmp_path / "nomodels"
    empty.mkdir()
    result = CliRunner().invoke(
        main,
        [
            "run",
            str(REPO / "configs" / "higgs.yaml"),
            "-o",
            str(tmp_path / "o"),
            "--models",
            str(empty),
        ],
    )
    assert result.exit_code == 2
    assert "no model.json for network 'dnn'" in result.output
    assert not (tmp_path / "o" / "manifest.json").exists()


def test_ams_formula() -> None:
    # s = 10, b = 90, b_reg = 10: sqrt(2 * ((110) * ln(1 + 10/100) - 10))
    expected = math.sqrt(2 * (110 * math.log(1.1) - 10))
    assert float(ams(10.0, 90.0)) == pytest.approx(expected, rel=1e-14)
    assert float(ams(0.0, 50.0)) == 0.0
