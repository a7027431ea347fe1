"""Taylor ranking of trained networks (hepnn.nets.rank) on the seeded Gaussian toys and Higgs."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from hepnn.config import TaylorConfig
from hepnn.io.toy import ToyGauss, generate_toy, log_likelihood_ratio, sample
from hepnn.nets.data import TrainingData
from hepnn.nets.flat import FlatBuilder
from hepnn.nets.rank import combine, epoch_monitor, rank_network, write_network_ranking
from hepnn.nets.spec import FlatInputs, NetworkSpec, SplitSpec, TrainingSpec
from hepnn.nets.store import load_network, save_network
from hepnn.nets.train import train_network
from hepnn.taylor import TaylorResult


def test_toy_is_seeded_and_cached(tmp_path: Path) -> None:
    spec = ToyGauss(events_per_class=500, seed=7)
    a, b = sample(spec), sample(spec)
    for key in a:
        assert np.array_equal(a[key], b[key])
    first = generate_toy(spec, tmp_path)
    mtime = first.root_path.stat().st_mtime_ns
    again = generate_toy(spec, tmp_path)
    assert again.root_path == first.root_path
    assert again.root_path.stat().st_mtime_ns == mtime  # reused, not regenerated
    assert (
        generate_toy(ToyGauss(events_per_class=500, seed=8), tmp_path).root_path != first.root_path
    )


def test_toy_moments_and_llr() -> None:
    spec = ToyGauss(events_per_class=50_000, rho_signal=0.5, rho_background=-0.5, seed=3)
    d = sample(spec)
    sig = d["Label"] == 1
    corr_s = np.corrcoef(d["x1"][sig], d["x2"][sig])[0, 1]
    corr_b = np.corrcoef(d["x1"][~sig], d["x2"][~sig])[0, 1]
    assert corr_s == pytest.approx(0.5, abs=0.02)
    assert corr_b == pytest.approx(-0.5, abs=0.02)
    assert d["x1"][sig].mean() == pytest.approx(0.5, abs=0.02)
    # LLR = -1/2 x^T (S_s^-1 - S_b^-1) x + linear: its x1*x2 coefficient is
    # (rho_s - rho_b) / (1 - rho^2) = 4/3 and the x1^2, x2^2 terms cancel. The mixed
    # second difference picks out 4 times that coefficient, linear terms cancel.
    x1 = np.array([1.0, 1.0, -1.0, -1.0])
    x2 = np.array([1.0, -1.0, 1.0, -1.0])
    llr = log_likelihood_ratio(x1, x2, spec)
    assert llr[0] - llr[1] - llr[2] + llr[3] == pytest.approx(16 / 3, rel=1e-12)
    # pure x1^2 curvature vanishes: LLR(2,0) - 2 LLR(1,0) + LLR(0,0) = 0
    c = log_likelihood_ratio(np.array([2.0, 1.0, 0.0]), np.zeros(3), spec)
    assert c[0] - 2 * c[1] + c[2] == pytest.approx(0.0, abs=1e-12)


# ----------------------------------------------------------------- helpers
def training_data(
    cols: dict[str, np.ndarray], inputs: FlatInputs, label: np.ndarray
) -> TrainingData:
    n = label.size
    return TrainingData(
        FlatBuilder(inputs).raw(cols),
        label.astype(np.int64),
        cols["EventId"].astype(np.int64),
        np.asarray(cols["Weight"], dtype=np.float64),
        np.ones(n, dtype=bool),
        [],
    )


TOY_INPUTS = FlatInputs(features=["x1", "x2"], missing_flags="none")


def toy_spec(seed: int, **split) -> NetworkSpec:
    return NetworkSpec(
        inputs=TOY_INPUTS,
        params={"hidden": [32], "activation": "tanh", "dropout": 0.0},
        training=TrainingSpec(epochs=12, batch_size=256, lr=3e-3, patience=12, seed=seed),
        split=SplitSpec(**split),
    )


@pytest.fixture(scope="module")
def toy() -> TrainingData:
    d = sample(ToyGauss(events_per_class=6000, rho_signal=0.5, rho_background=-0.5, seed=11))
    return training_data(d, TOY_INPUTS, d["Label"])


def train_and_load(name: str, spec: NetworkSpec, data: TrainingData, outdir: Path):
    result = train_network(name, spec, data, progress=False)
    return load_network(save_network(outdir / name, name, result, data))


def test_ranking_stable_under_retraining(tmp_path: Path, toy: TrainingData) -> None:
    """Two seeds, different networks, the same ranking (the lecture's point)."""
    tops, first_weights = [], []
    for seed in (1, 2):
        loaded = train_and_load(f"s{seed}", toy_spec(seed), toy, tmp_path)
        result = rank_network(loaded, toy, TaylorConfig(orders=[1, 2], events=4000), seed=0)
        tops.append({r.term for r in result.ranked(3)})
        first_weights.append(next(iter(loaded.models[0].state_dict().values())).flatten()[0])
    assert not torch.equal(first_weights[0], first_weights[1])  # the networks differ ...
    assert tops[0] == tops[1]  # ... their top terms do not
    assert tops[0] == {"x1", "x2", "x1*x2"}


# ------------------------------------------------------- Higgs: small network
@pytest.fixture(scope="module")
def higgs_net(higgs, features, tmp_path_factory):
    """A small flat network trained for two epochs on the 18k Higgs events, saved and loaded."""
    inputs = FlatInputs(features=features[:8])
    data = training_data(higgs, inputs, (higgs["Label"] == "s").astype(np.int64))
    spec = NetworkSpec(
        inputs=inputs,
        params={"hidden": [16], "activation": "tanh", "dropout": 0.0},
        training=TrainingSpec(epochs=2, seed=5),
    )
    return spec, data, train_and_load("dnn", spec, data, tmp_path_factory.mktemp("rank"))


@pytest.mark.parametrize("orders", [[1], [1, 2], [2], [1, 2, 3]])
def test_rank_network_gives_the_configured_orders(higgs_net, orders):
    _, data, loaded = higgs_net
    names = loaded.builder.input_names
    # MMC undefined; < 2 jets (DER_deltaeta_jet_jet, DER_mass_jet_jet): two missing flags
    assert names[8:] == ["DER_mass_MMC_missing", "DER_deltaeta_jet_jet_missing"]
    result = rank_network(loaded, data, TaylorConfig(orders=orders, events=500), seed=0)
    assert isinstance(result, TaylorResult)
    assert sorted(set(result.orders)) == sorted(orders)
    # only the 8 physics features are ranked; the flags are helper inputs
    f = 8
    per_order = {1: f, 2: f * (f + 1) // 2, 3: f * (f + 1) * (f + 2) // 6}
    assert len(result.names) == len(result.values) == sum(per_order[o] for o in orders)
    assert result.input_names == names
    assert not any("_missing" in term for term in result.names)
    if 1 in orders:
        firsts = [n for n, o in zip(result.names, result.orders, strict=True) if o == 1]
        assert firsts == names[:8]
    assert result.n_events == 500
    assert np.all(np.isfinite(result.values))
    assert np.all(result.values >= 0)
    assert result.output == "sigmoid"


def test_rank_network_uses_held_out_rows_only_and_is_seeded(higgs_net):
    _, data, loaded = higgs_net
    cfg = TaylorConfig(orders=[1, 2], events=1000)
    result = rank_network(loaded, data, cfg, seed=3)
    assert np.array_equal(result.values, rank_network(loaded, data, cfg, seed=3).values)
    assert not np.array_equal(result.values, rank_network(loaded, data, cfg, seed=4).values)
    # the even ids (training rows of a parity split) are never looked at
    raw = data.raw.copy()
    raw[data.ids % 2 == 0] = 1e6
    scrambled = dataclasses.replace(data, raw=raw)
    assert np.array_equal(result.values, rank_network(loaded, scrambled, cfg, seed=3).values)
    # all held-out rows when there are fewer than asked
    everything = rank_network(loaded, data, TaylorConfig(orders=[1], events=10**6), seed=0)
    assert everything.n_events == int((data.ids % 2 == 1).sum())
    # weighted ranking: the event weights enter
    plain = rank_network(loaded, data, TaylorConfig(orders=[1], events=1000), seed=3)
    weighted = rank_network(
        loaded, data, TaylorConfig(orders=[1], events=1000, use_weights=True), seed=3
    )
    assert weighted.weighted
    assert not plain.weighted
    assert plain.sum_weights == pytest.approx(1000.0)
    odd_w = data.weights[data.ids % 2 == 1]
    assert 1000 * odd_w.min() <= weighted.sum_weights <= 1000 * odd_w.max()
    assert weighted.sum_weights != pytest.approx(1000.0)
    assert not np.allclose(weighted.values, plain.values)
    logit = rank_network(
        loaded, data, TaylorConfig(orders=[1], events=1000, output="logit"), seed=3
    )
    assert logit.output == "logit"


def test_kfold_ranking_combines_the_folds(higgs, features, tmp_path):
    inputs = FlatInputs(features=features[:4], missing_flags="none")
    data = training_data(higgs, inputs, (higgs["Label"] == "s").astype(np.int64))
    spec = NetworkSpec(
        inputs=inputs,
        params={"hidden": [8], "activation": "tanh", "dropout": 0.0},
        training=TrainingSpec(epochs=1, seed=5),
        split=SplitSpec(method="kfold", folds=3),
    )
    loaded = train_and_load("k", spec, data, tmp_path)
    result = rank_network(loaded, data, TaylorConfig(orders=[1, 2], events=900), seed=0)
    assert result.n_events == 900  # every event is held out by its fold's model
    assert result.sum_weights == pytest.approx(900.0)
    # combine: an event-weighted mean of the per-fold rankings
    plain = {"defined_weights": None, "boot_sums": None, "boot_weights": None}
    a = dataclasses.replace(
        result, values=np.full(result.values.shape, 1.0), n_events=1, sum_weights=1.0, **plain
    )
    b = dataclasses.replace(
        result, values=np.full(result.values.shape, 4.0), n_events=3, sum_weights=3.0, **plain
    )
    both = combine([a, b])
    assert np.allclose(both.values, 3.25)
    assert both.n_events == 4
    assert both.sum_weights == 4.0
    assert combine([a]) is a
    # masked terms combine by their own defined weights: 1 event of a, 0.5 of b's 3
    half = dataclasses.replace(b, defined_weights=np.full(result.values.shape, 1.5))
    assert np.allclose(combine([a, half]).values, (1 * 1 + 4 * 1.5) / 2.5)
    assert np.allclose(combine([a, half]).defined_fraction, 2.5 / 4)


def test_write_network_ranking(higgs_net, tmp_path):
    _, data, loaded = higgs_net
    cfg = TaylorConfig(orders=[1, 2], events=300, top=5)
    files = write_network_ranking("dnn", loaded, data, cfg, tmp_path, seed=0, formats=())
    assert sorted(p.name for p in files) == [
        "dnn.csv", "dnn.json", "dnn.md", "dnn_helpers.csv", "dnn_helpers.md"
    ]  # fmt: skip
    helpers = (tmp_path / "ranking" / "dnn_helpers.csv").read_text().splitlines()
    assert helpers[0] == "input,value,n_events"
    assert sorted(row.split(",")[0] for row in helpers[1:]) == sorted(
        loaded.builder.helper_inputs()
    )
    assert all(p.parent == tmp_path / "ranking" and p.is_file() for p in files)
    doc = json.loads((tmp_path / "ranking" / "dnn.json").read_text())
    expected = rank_network(loaded, data, cfg, seed=0).to_records(5)
    assert doc["ranking"] == expected  # the same ranking, top 5 rows
    assert doc["metadata"]["model"] == "dnn"
    csv_rows = (tmp_path / "ranking" / "dnn.csv").read_text().splitlines()
    assert len(csv_rows) == 1 + 5
    assert csv_rows[1].split(",")[1] == expected[0]["term"]


# ------------------------------------------------------------- epoch monitor
def test_epoch_monitor_records_a_history(higgs_net):
    spec, data, _ = higgs_net
    spec = spec.model_copy(update={"training": TrainingSpec(epochs=4, patience=10, seed=5)})
    cfg = TaylorConfig(orders=[1, 2, 3], monitor_every=2, monitor_events=400)
    hook, monitor = epoch_monitor("dnn", spec.split, data, cfg, seed=0)
    with_monitor = train_network("dnn", spec, data, progress=False, on_epoch=hook)
    # first epoch always, then every second one
    assert [epoch for epoch, _ in monitor.history] == [1, 2, 4]
    names = with_monitor.models[0].builder.input_names
    assert monitor.input_names == names
    for _, result in monitor.history:
        assert isinstance(result, TaylorResult)
        assert sorted(set(result.orders)) == [1, 2]  # the monitor stops at second order
        assert result.n_events == 400
        assert result.input_names == names
    # the network changes between epochs, and the ranking follows it
    assert not np.array_equal(monitor.history[0][1].values, monitor.history[-1][1].values)
    # the last record is the ranking of the final network on the monitor's rows
    # (the best epoch is the last: the validation loss fell in every epoch)
    fitted = with_monitor.models[0]
    assert fitted.best_epoch == 4
    hook_again, again = epoch_monitor("dnn", spec.split, data, cfg, seed=0)
    hook_again(4, fitted.model, fitted.builder)
    assert np.array_equal(again.history[0][1].values, monitor.history[-1][1].values)
    # monitoring does not change the training
    without = train_network("dnn", spec, data, progress=False)
    sa = with_monitor.models[0].model.state_dict()
    sb = without.models[0].model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
