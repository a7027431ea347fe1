"""A clean Taylor ranking with errors: helper inputs apart, defined-value masking,
event bootstrap, training spread from real models, unscaled inputs, separation."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from torch import nn

from hepnn.config import TaylorConfig
from hepnn.nets.data import TrainingData
from hepnn.nets.flat import FlatBuilder
from hepnn.nets.rank import (
    input_scale,
    physics_inputs,
    rank_network,
    write_network_ranking,
)
from hepnn.nets.spec import FlatInputs, NetworkSpec, SplitSpec, TrainingSpec
from hepnn.nets.split import route
from hepnn.nets.store import load_network, save_network
from hepnn.nets.train import train_network
from hepnn.taylor import (
    bootstrap_counts,
    gradient_sums,
    mean_abs_gradient,
    mean_abs_taylor,
    neighbour_separation,
    taylor_coefficients,
    write_ranking,
)


def training_data(cols, inputs: FlatInputs) -> TrainingData:
    label = (cols["Label"] == "s").astype(np.int64)
    return TrainingData(
        FlatBuilder(inputs).raw(cols),
        label,
        cols["EventId"].astype(np.int64),
        np.asarray(cols["Weight"], dtype=np.float64),
        np.ones(label.size, dtype=bool),
        [],
    )


def trained(name, spec, data, outdir):
    result = train_network(name, spec, data, progress=False)
    return load_network(save_network(outdir / name, name, result, data))


# --------------------------------------------------- Higgs-shaped networks
@pytest.fixture(scope="module")
def parity_net(higgs, features, tmp_path_factory):
    """All 30 Higgs features with automatic missing flags, one epoch, parity split."""
    inputs = FlatInputs(features=features)  # missing_flags: auto
    data = training_data(higgs, inputs)
    spec = NetworkSpec(
        inputs=inputs,
        params={"hidden": [16], "activation": "tanh", "dropout": 0.0},
        training=TrainingSpec(epochs=1, seed=3),
    )
    return data, trained("dnn", spec, data, tmp_path_factory.mktemp("parity"))


@pytest.fixture(scope="module")
def kfold_nets(higgs, features, tmp_path_factory):
    """A 3-fold network on 8 features (with flags) and a second ensemble member."""
    inputs = FlatInputs(features=features[:8])
    data = training_data(higgs, inputs)
    out = tmp_path_factory.mktemp("kfold")
    nets = []
    for seed in (5, 6):
        spec = NetworkSpec(
            inputs=inputs,
            params={"hidden": [8], "activation": "tanh", "dropout": 0.0},
            training=TrainingSpec(epochs=1, seed=seed),
            split=SplitSpec(method="kfold", folds=3),
        )
        nets.append(trained(f"k{seed}", spec, data, out))
    return data, nets


def test_flags_are_never_ranked(parity_net, tmp_path):
    data, loaded = parity_net
    helpers = loaded.builder.helper_inputs()
    assert helpers  # MMC undefined, < 2 jets, no jet: the flags exist ...
    assert all(h.endswith("_missing") for h in helpers)
    cfg = TaylorConfig(orders=[1, 2], events=600, bootstrap=20)
    result = rank_network(loaded, data, cfg, seed=0)
    names = set(loaded.builder.input_names) - set(helpers)
    for term in result.names:  # ... but no term is made of one
        assert set(term.split("*")) <= names
    assert len(result.names) == 30 + 30 * 31 // 2
    write_network_ranking("dnn", loaded, data, cfg, tmp_path, seed=0, formats=())
    with (tmp_path / "ranking" / "dnn.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert not any("_missing" in r["term"] for r in rows)
    with (tmp_path / "ranking" / "dnn_helpers.csv").open() as f:
        assert sorted(r["input"] for r in csv.DictReader(f)) == sorted(helpers)


def test_defined_fraction_masking_matches_numpy(parity_net):
    data, loaded = parity_net
    builder, model = loaded.builder, loaded.models[0]
    cfg = TaylorConfig(orders=[1, 2], events=2000, bootstrap=0)
    result = rank_network(loaded, data, cfg, seed=1)
    # the same rows, directly: per-event coefficients and a numpy mean where defined
    held = np.flatnonzero(data.ids % 2 == 1)
    rows = np.sort(np.random.default_rng(1).choice(held, size=2000, replace=False))
    raw = data.raw[rows]
    feats = physics_inputs(builder)
    coeffs = taylor_coefficients(model, builder.transform(raw), (1, 2), features=feats)
    t = np.abs(torch.cat([coeffs[1], coeffs[2]], dim=1).double().numpy())
    defined = ~np.isnan(raw)
    for k, term in enumerate(result.terms):
        m = defined[:, list(term)].all(axis=1)
        assert result.defined_fraction[k] == m.mean()
        assert result.values[k] == pytest.approx(t[m, k].mean(), rel=1e-9)
    # DER_mass_jet_jet exists only with >= 2 jets: ~29% of the challenge events
    mjj = result.names.index("DER_mass_jet_jet")
    assert result.defined_fraction[mjj] == pytest.approx(0.29, abs=0.03)
    assert result.defined_fraction[result.names.index("DER_mass_vis")] == 1.0
    # the mask changes the number: averaged over all events the imputed ones count
    plain = mean_abs_taylor(model, builder.transform(raw), orders=(1,), features=feats)
    assert plain.values[mjj] != pytest.approx(result.values[mjj], rel=1e-3)
    assert builder.defined(raw[~np.isnan(raw).any(axis=1)]) is None


class _Square(nn.Module):
    """logit = x0^2 / 2, so t_0 = x0 (output='logit'): <|t_0|> = <|x0|>."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * x[:, 0] ** 2 + 0.0 * x[:, 1]


def test_bootstrap_matches_the_std_of_the_mean():
    rng = np.random.default_rng(7)
    errs = {}
    for n in (1000, 4000):
        x = rng.normal(size=(n, 2)).astype(np.float32)
        counts = bootstrap_counts(n, 400, seed=(1, n))
        r = mean_abs_taylor(_Square(), x, orders=(1,), output="logit", bootstrap=counts)
        a = np.abs(x[:, 0].astype(np.float64))
        assert r.values[0] == pytest.approx(a.mean(), rel=1e-6)
        analytic = a.std(ddof=1) / np.sqrt(n)
        assert r.err_stat[0] == pytest.approx(analytic, rel=0.15)
        errs[n] = r.err_stat[0]
    assert errs[1000] / errs[4000] == pytest.approx(2.0, rel=0.2)  # ~ 1/sqrt(N)
    # counts are seeded: the same seed, the same replicas
    assert np.array_equal(bootstrap_counts(50, 3, 9), bootstrap_counts(50, 3, 9))
    assert bootstrap_counts(50, 3, 9).sum(axis=1).tolist() == [50.0, 50.0, 50.0]


class _Poly(nn.Module):
    """A polynomial in the original units u = mu + sigma * x (x: standardised input)."""

    def __init__(self, mu, sigma):
        super().__init__()
        self.mu = torch.tensor(mu)
        self.sigma = torch.tensor(sigma)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = self.mu + self.sigma * x
        return 0.3 * u[:, 0] - 0.2 * u[:, 1] + 0.5 * u[:, 0] * u[:, 1] + 0.25 * u[:, 1] ** 2


def test_unscaled_is_standardised_over_sigma():
    mu, sigma = [3.0, -1.0], [4.0, 0.5]
    x = np.random.default_rng(2).normal(size=(3000, 2)).astype(np.float32)
    model = _Poly(mu, sigma)
    std = mean_abs_taylor(model, x, orders=(1, 2), output="logit")
    raw = mean_abs_taylor(model, x, orders=(1, 2), output="logit", scale=sigma)
    assert raw.inputs == "unscaled"
    factors = [1 / np.prod([sigma[i] for i in t]) for t in std.terms]
    np.testing.assert_allclose(raw.values, std.values * factors, rtol=1e-12)
    # in the original units the polynomial's own coefficients come back
    assert raw.value("x0*x1") == pytest.approx(0.5, rel=1e-5)  # t_01 = d2f/du0du1
    assert raw.value("x1*x1") == pytest.approx(0.25, rel=1e-5)  # t_11 = (1/2) d2f/du1^2
    assert raw.value("x0*x0") == pytest.approx(0.0, abs=1e-6)


def test_unscaled_on_a_real_network(parity_net):
    data, loaded = parity_net
    std = rank_network(loaded, data, TaylorConfig(orders=[1, 2], events=500, bootstrap=0), seed=0)
    cfg = TaylorConfig(orders=[1, 2], events=500, bootstrap=0, inputs="unscaled")
    raw = rank_network(loaded, data, cfg, seed=0)
    sigma = input_scale(loaded.builder)
    assert np.array_equal(sigma[:30], loaded.builder.std)
    factors = np.array([1 / np.prod(sigma[list(t)]) for t in std.terms])
    np.testing.assert_allclose(raw.values, std.values * factors, rtol=1e-6)
    assert raw.metadata()["inputs"].startswith("derivatives in the original")


def test_training_spread_from_the_real_models(kfold_nets):
    data, (net, member) = kfold_nets
    cfg = TaylorConfig(orders=[1, 2], events=1200, bootstrap=50)
    folds = rank_network(net, data, cfg, seed=0)
    # without members: the k fold models, each on its own held-out rows
    assert folds.train_labels == ["fold0", "fold1", "fold2"]
    rows = np.sort(np.random.default_rng(0).choice(data.ids.size, size=1200, replace=False))
    which = route(data.ids[rows], net.split)
    for m in range(3):
        sub = rows[which == m]
        builder = net.builders[m]
        raw = data.raw[sub]
        direct = mean_abs_taylor(
            net.models[m], builder.transform(raw), orders=(1, 2),
            features=physics_inputs(builder), defined=builder.defined(raw),
        )  # fmt: skip
        np.testing.assert_allclose(folds.train_values[m], direct.values, rtol=1e-12)
    np.testing.assert_allclose(folds.err_train, np.std(folds.train_values, axis=0, ddof=1))
    # with a member: the members' rankings on the same rows
    both = rank_network(net, data, cfg, seed=0, members=[member])
    assert both.train_labels == ["member0", "member1"]
    np.testing.assert_array_equal(both.train_values[0], folds.values)
    alone = rank_network(member, data, cfg, seed=0)
    np.testing.assert_allclose(both.train_values[1], alone.values, rtol=1e-12)
    assert not np.allclose(both.train_values[0], both.train_values[1])  # different networks
    assert np.all(both.err_train > 0)
    assert np.all(both.err >= np.maximum(both.err_stat, both.err_train))


def test_written_columns_errors_and_marks(kfold_nets, tmp_path):
    data, (net, member) = kfold_nets
    cfg = TaylorConfig(orders=[1, 2], events=1200, bootstrap=50, top=10)
    files = write_network_ranking(
        "dnn", net, data, cfg, tmp_path, seed=0, members=[member], formats=("png",)
    )
    assert tmp_path / "ranking" / "dnn.png" in files
    with (tmp_path / "ranking" / "dnn.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[:4] == ["rank", "term", "order", "value"]
    assert list(rows[0])[4:] == [
        "err_stat", "err_train", "err", "defined_fraction", "z_next", "separated"
    ]  # fmt: skip
    for r in rows:
        assert float(r["err_stat"]) > 0
        assert float(r["err_train"]) > 0
        stat, train = float(r["err_stat"]), float(r["err_train"])
        assert float(r["err"]) == pytest.approx(np.hypot(stat, train))
        assert r["separated"] == ("true" if float(r["z_next"]) > 2 else "false")
    doc = json.loads((tmp_path / "ranking" / "dnn.json").read_text())
    assert doc["metadata"]["bootstrap_replicas"] == 50
    assert doc["metadata"]["training_replicas"] == ["member0", "member1"]
    assert set(doc["training_replicas"]["values"]) == {r["term"] for r in rows}
    md = (tmp_path / "ranking" / "dnn.md").read_text()
    assert "| rank | term | order |" in md
    assert "± err" in md
    table = [line for line in md.splitlines() if line.startswith("| ") and line[2].isdigit()]
    for line, r in zip(table, rows, strict=True):
        assert line.rstrip(" |").endswith("≈") == (r["separated"] == "false")


def test_neighbour_separation_counts_correlations():
    rng = np.random.default_rng(0)
    common = rng.normal(size=(500, 1))
    boot = np.array([1.0, 0.9]) + 0.1 * common + 0.01 * rng.normal(size=(500, 2))
    z = neighbour_separation(np.array([1.0, 0.9]), boot, None)
    # each value has an error ~0.1 (quadrature of the two: ~1.4 sigma apart) but they
    # move together: the difference 0.1 has an error ~0.014
    assert z[0] == pytest.approx(0.1 / (0.01 * np.sqrt(2)), rel=0.15)
    assert np.isnan(z[1])
    assert np.all(np.isnan(neighbour_separation(np.array([2.0, 1.0]), None, None)))


def test_plain_results_keep_four_columns(tmp_path):
    x = np.random.default_rng(0).normal(size=(100, 2))
    result = mean_abs_taylor(_Poly([0.0, 0.0], [1.0, 1.0]), x, output="logit")
    assert not result.has_errors
    paths = write_ranking(result, tmp_path, "m", formats=())
    assert paths["csv"].read_text().splitlines()[0] == "rank,term,order,value"


def test_map_bootstrap_is_a_reweighting_of_the_same_gradients():
    """Jet maps: a bootstrap replica equals the map with the resampling counts as weights."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 1))
    x = np.random.default_rng(1).normal(size=(300, 2, 3)).astype(np.float32)
    mask = np.random.default_rng(2).uniform(size=(300, 3)) > 0.3
    counts = bootstrap_counts(300, 4, seed=3)
    sums = gradient_sums(net, x, mask=mask, bootstrap=counts, chunk_size=128)
    np.testing.assert_allclose(sums.mean(), mean_abs_gradient(net, x, mask=mask), rtol=1e-12)
    reps = sums.replica_means()
    for b in range(4):
        direct = mean_abs_gradient(net, x, weights=counts[b], mask=mask)
        np.testing.assert_allclose(reps[b], direct, rtol=1e-10)


# ------------------------------------------------------------ the lecture's toy
#: The lecture's toy table: derivatives in the unscaled inputs (arXiv:1803.08782 convention).
LECTURE = {"x1": 0.16, "x2": 0.16, "x1*x2": 0.07, "x1*x1": 0.04, "x2*x2": 0.04}
