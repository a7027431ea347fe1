"""Every step of the lifecycle works for every kind of network and every split.

The lifecycle must not care whether a network reads flat event features or jets, nor
which split it uses: here the jet networks of configs/toptag.yaml are trained on a
k-fold split (the DNN's usual split) and the toy DNN on a random split (the taggers'
usual split), through the whole run: training, application with routing, held-out
metrics, Taylor ranking, MC-dropout bands and ``hepnn rank``.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from hepnn.cli import main
from hepnn.config import load_config
from hepnn.nets.apply import get_network
from hepnn.nets.split import route
from hepnn.pipeline import run_config

REPO = Path(__file__).resolve().parents[1]

KFOLD_JETS = [
    "networks.cnn2d.training.epochs=1",
    "networks.cnn1d.training.epochs=1",
    "networks.cnn2d.params.filters=[4, 4]",
    "networks.cnn1d.params.filters=[8, 8]",
    "networks.cnn2d.split={method: kfold, folds: 3, id_column: event}",
    "networks.cnn1d.split={method: kfold, folds: 3, id_column: event}",
    "uncertainty.mc_dropout.samples=3",
    "cross_validation=null",
    "outputs.plot_formats=[png]",
]


@pytest.fixture(scope="module")
def kfold_jets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("kfold_jets")
    run_config(load_config(REPO / "configs" / "toptag.yaml", KFOLD_JETS), out, progress=False)
    return out


def test_kfold_jet_networks_route_every_jet_to_the_model_that_never_saw_it(kfold_jets: Path) -> None:
    table = pq.read_table(kfold_jets / "columns" / "toptag.parquet")
    event = table["event"].to_numpy()
    metrics = json.loads((kfold_jets / "metrics.json").read_text())
    for name in ("cnn2d", "cnn1d"):
        loaded = get_network(kfold_jets / "models" / name)
        assert len(loaded.models) == 3
        assert sorted(p.name for p in (kfold_jets / "models" / name).glob("*.pt")) == [
            "model_fold0.pt", "model_fold1.pt", "model_fold2.pt",
        ]  # fmt: skip
        score = table[f"score_{name}"].to_numpy()
        assert np.isfinite(score).all()
        # every jet is held out under k-fold: metrics use all 1,600 jets
        entry = metrics["networks"][name]["datasets"]["toptag"]
        assert entry["rows"] == len(event) == 1600
        assert metrics["networks"][name]["training"]["held_out"]["rows"] == 1600
        # each jet is scored by the model of its event's fold
        which = route(event, loaded.split)
        assert set(np.unique(which)) == {0, 1, 2}
        assert 0.5 < entry["auc"] <= 1.0


def test_kfold_jet_networks_get_bands_and_a_ranking(kfold_jets: Path) -> None:
    with (kfold_jets / "hists.pkl").open("rb") as fh:
        hists = pickle.load(fh)
    for name in ("cnn2d", "cnn1d"):
        h = hists[f"score_{name}_mcdropout"]
        assert len(h.axes["mc"]) == 3
        assert h.values().sum() > 0
        assert f"score_{name}_mcdropout_summary" in hists
        assert (kfold_jets / "ranking" / f"{name}.csv").is_file()
        assert (kfold_jets / "ranking" / f"{name}_taylor_map.png").is_file()
        # bootstrap over the jets and the spread of the 3 fold models: every value has an error
        doc = json.loads((kfold_jets / "ranking" / f"{name}.json").read_text())
        assert doc["metadata"]["training_replicas"] == ["fold0", "fold1", "fold2"]
        for row in doc["ranking"]:
            assert row["err_stat"] > 0
            assert row["err_train"] > 0
    table = pq.read_table(kfold_jets / "columns" / "toptag.parquet")
    assert np.isfinite(table["score_cnn1d_mcd_std"].to_numpy()).all()


def test_rank_cli_on_kfold_jet_networks(kfold_jets: Path, tmp_path: Path) -> None:
    sets = [arg for s in KFOLD_JETS for arg in ("--set", s)]
    config = str(REPO / "configs" / "toptag.yaml")
    args = ["rank", config, "--models", str(kfold_jets / "models"), "-o", str(tmp_path), *sets]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    for name in ("cnn2d", "cnn1d"):
        again = (tmp_path / "ranking" / f"{name}.csv").read_text()
        assert again == (kfold_jets / "ranking" / f"{name}.csv").read_text()


def test_flat_network_on_a_random_split(tmp_path: Path) -> None:
    overrides = [
        "networks.nn.split={method: random, fractions: [0.6, 0.2, 0.2], id_column: EventId, seed: 7}",
        "networks.nn.training.epochs=3",
        "taylor.orders=[1, 2]",
        "taylor.events=2000",
        "taylor.monitor_every=0",
        "uncertainty.mc_dropout={samples: 4}",
        "outputs.plots=false",
    ]
    cfg = load_config(REPO / "configs" / "toy_correlation.yaml", overrides)
    run = run_config(cfg, tmp_path, progress=False)
    metrics = run.metrics["networks"]["nn"]
    held = metrics["training"]["held_out"]
    assert held["rows"] == held["test_rows"]
    assert 0.1 * 4000 < held["rows"] < 0.3 * 4000
    entry = metrics["datasets"]["toy_correlation"]
    assert entry["rows"] == held["rows"]
    assert entry["auc"] == pytest.approx(held["auc"])
    assert "score_nn_mcdropout" in run.hists
    ranking = (tmp_path / "ranking" / "nn.csv").read_text().splitlines()
    assert ranking[0].startswith("rank,term,order,value,err_stat,")
    assert len(ranking) == 1 + 2 + 3  # x1, x2, x1^2, x2^2, x1*x2
