"""Bands as hist objects: replica histograms, summaries, ROOT templates, plots."""

from __future__ import annotations

import hist
import matplotlib as mpl
import numpy as np
import pytest
import torch
import uproot

from hepnn.bands import (
    QUANTILES,
    STATS,
    Ensemble,
    MCDropout,
    fill_replicas,
    fill_std_vs_score,
    nominal_hist,
    replica_hist,
    std_vs_score_hist,
    summarise,
    to_root_variations,
)
from hepnn.bands.plots import band_figure, plot_band, plot_std_vs_score
from hepnn.models import build

T = 30


@pytest.fixture
def values() -> np.ndarray:
    """(T, N) per-replica scores with a replica-dependent shift (a real spread)."""
    rng = np.random.default_rng(5)
    base = rng.beta(2, 3, 4000)
    shift = rng.normal(0, 0.05, (T, 1))
    return np.clip(base + shift, 0, 0.999)


@pytest.fixture
def weights() -> np.ndarray:
    return np.random.default_rng(6).uniform(0.5, 1.5, 4000)


def _filled(values, weights):
    h = fill_replicas(replica_hist(T), values, weights)
    h_nom = nominal_hist()
    h_nom.fill(score=values.mean(axis=0), weight=weights)
    return h, h_nom


# -- axes ----------------------------------------------------------------------------------


def test_replica_hist_axes():
    h = replica_hist(T)
    rep, var = h.axes
    assert isinstance(rep, hist.axis.IntCategory)
    assert rep.name == "mc"
    assert list(rep) == list(range(T))
    assert not rep.traits.overflow
    assert isinstance(var, hist.axis.Regular)
    assert (var.name, var.label) == ("score", "DNN score")
    assert (len(var.edges), var.edges[0], var.edges[-1]) == (21, 0.0, 1.0)
    assert isinstance(h.storage_type(), hist.storage.Weight)
    assert replica_hist(4, replica_axis="member").axes[0].name == "member"
    custom = replica_hist(3, hist.axis.Variable([0, 0.5, 0.9, 1], name="bdt"))
    assert custom.axes[1].name == "bdt"


@pytest.mark.parametrize("name", ["sample", "weight", "threads"])
def test_reserved_axis_names_rejected(name):
    with pytest.raises(ValueError, match="reserved"):
        replica_hist(3, hist.axis.Regular(5, 0, 1, name=name))
    with pytest.raises(ValueError, match="reserved"):
        nominal_hist(hist.axis.Regular(5, 0, 1, name=name))


def test_summary_axes(values, weights):
    s = summarise(*_filled(values, weights))
    stat, var = s.axes
    assert isinstance(stat, hist.axis.StrCategory)
    assert stat.name == "stat"
    assert list(stat) == list(STATS) == ["nominal", "mean", "std", "q16", "q84"]
    assert isinstance(var, hist.axis.Regular)
    assert var.name == "score"
    assert isinstance(s.storage_type(), hist.storage.Weight)
    assert s.metadata == {"replica_axis": "mc", "replicas": T}


# -- filling and summarising ---------------------------------------------------------------


def test_fill_replicas_per_replica_histograms(values, weights):
    h = fill_replicas(replica_hist(T), values, weights)
    edges = h.axes[1].edges
    for t in (0, 7, T - 1):
        ref, _ = np.histogram(values[t], bins=edges, weights=weights)
        np.testing.assert_allclose(h[t, :].values(), ref, rtol=1e-12)
        ref_var, _ = np.histogram(values[t], bins=edges, weights=weights**2)
        np.testing.assert_allclose(h[t, :].variances(), ref_var, rtol=1e-12)
    with pytest.raises(ValueError, match="shape"):
        fill_replicas(replica_hist(T), values[:-1], weights)
    with pytest.raises(ValueError, match="weights"):
        fill_replicas(replica_hist(T), values, weights[:-1])


def test_summary_matches_numpy_over_replicas(values, weights):
    h, h_nom = _filled(values, weights)
    s = summarise(h, h_nom)
    reps = h.view(flow=True).value  # (T, bins + flow)
    out = s.view(flow=True)
    q16, q84 = np.quantile(reps, [0.16, 0.84], axis=0)
    assert QUANTILES == {"q16": 0.16, "q84": 0.84}
    np.testing.assert_array_equal(out.value[STATS.index("q16")], q16)
    np.testing.assert_array_equal(out.value[STATS.index("q84")], q84)
    np.testing.assert_array_equal(out.value[STATS.index("mean")], reps.mean(axis=0))
    np.testing.assert_array_equal(out.value[STATS.index("std")], reps.std(axis=0))
    np.testing.assert_array_equal(s["nominal", :].values(), h_nom.values())
    np.testing.assert_array_equal(s["nominal", :].variances(), h_nom.variances())
    # Per-bin check by hand for one bin, replica by replica.
    b = 8
    col = np.array([h[t, b].value for t in range(T)])
    assert s["q84", b].value == np.quantile(col, 0.84)
    assert s["q16", b].value < s["q84", b].value  # a real band


def test_summarise_rejects_other_binning(values, weights):
    h, _ = _filled(values, weights)
    with pytest.raises(ValueError, match="same variable axes"):
        summarise(h, nominal_hist(hist.axis.Regular(10, 0, 1, name="score")))


def test_chunk_sum_equals_single_fill(values, weights):
    # Unit weights: counts are exact in float, so the sum must be bitwise equal.
    once = fill_replicas(replica_hist(T), values)
    parts = fill_replicas(replica_hist(T), values[:, :1700]) + fill_replicas(
        replica_hist(T), values[:, 1700:]
    )
    np.testing.assert_array_equal(once.view(flow=True).value, parts.view(flow=True).value)
    # Float weights: equal up to summation order.
    once_w = fill_replicas(replica_hist(T), values, weights)
    parts_w = fill_replicas(replica_hist(T), values[:, :1700], weights[:1700]) + fill_replicas(
        replica_hist(T), values[:, 1700:], weights[1700:]
    )
    np.testing.assert_allclose(once_w.values(), parts_w.values(), rtol=1e-12)
    np.testing.assert_allclose(once_w.variances(), parts_w.variances(), rtol=1e-12)
    h_nom = nominal_hist().fill(score=values[0], weight=weights)
    np.testing.assert_allclose(
        summarise(once_w, h_nom).values(), summarise(parts_w, h_nom).values(), rtol=1e-12
    )


def test_zero_band_for_p0_end_to_end():
    torch.manual_seed(0)
    net = build("mlp", n_inputs=4, hidden=[16], dropout=0.0).eval()
    x = np.random.default_rng(0).normal(size=(2000, 4)).astype(np.float32)
    mc = MCDropout(net, samples=10, seed=3)
    h = fill_replicas(replica_hist(10), mc.scores(x))
    h_nom = nominal_hist().fill(score=mc.nominal(x))
    s = summarise(h, h_nom)
    nom = s["nominal", :].values()
    assert nom.sum() > 0
    for stat in ("mean", "q16", "q84"):
        np.testing.assert_array_equal(s[stat, :].values(), nom)
    assert np.all(s["std", :].values() == 0.0)


def test_std_vs_score_hist():
    h = std_vs_score_hist()
    assert [a.name for a in h.axes] == ["score", "score_std"]
    assert isinstance(h.storage_type(), hist.storage.Weight)
    nominal = np.array([0.05, 0.55, 0.55, 0.95])
    std = np.array([0.01, 0.11, 0.11, 0.2])
    fill_std_vs_score(h, nominal, std, np.array([1.0, 2.0, 3.0, 4.0]))
    assert h.sum().value == 10.0
    assert h[hist.loc(0.55), hist.loc(0.11)].value == 5.0


# -- ROOT templates ------------------------------------------------------------------------


def test_to_root_variations_roundtrip(values, weights, tmp_path):
    s = summarise(*_filled(values, weights))
    out = to_root_variations(s, "ttbar")
    assert list(out) == ["ttbar", "ttbar_mcdropoutUp", "ttbar_mcdropoutDown"]
    np.testing.assert_array_equal(out["ttbar"].values(flow=True), s["nominal", :].values(flow=True))
    np.testing.assert_array_equal(out["ttbar"].variances(), s["nominal", :].variances())
    np.testing.assert_array_equal(out["ttbar_mcdropoutUp"].values(), s["q84", :].values())
    np.testing.assert_array_equal(out["ttbar_mcdropoutDown"].values(), s["q16", :].values())
    path = tmp_path / "templates.root"
    with uproot.recreate(path) as f:
        for key, h in out.items():
            f[key] = h
    with uproot.open(path) as f:
        for key, h in out.items():
            np.testing.assert_allclose(f[key].values(), h.values())
            np.testing.assert_allclose(f[key].axis().edges(), h.axes[0].edges)


def test_to_root_variations_names_and_1d_only():
    rng = np.random.default_rng(0)
    h = fill_replicas(replica_hist(4, replica_axis="member"), rng.random((4, 100)))
    s = summarise(h, nominal_hist().fill(score=rng.random(100)))
    assert set(to_root_variations(s, "sig")) == {"sig", "sig_ensembleUp", "sig_ensembleDown"}
    assert "sig_nnUp" in to_root_variations(s, "sig", variation="nn")
    two_d = replica_hist(3, hist.axis.Regular(2, 0, 1, name="a"))
    two_d = hist.Hist(
        *two_d.axes, hist.axis.Regular(2, 0, 1, name="b"), storage=hist.storage.Weight()
    )
    nom_2d = hist.Hist(*two_d.axes[1:], storage=hist.storage.Weight())
    with pytest.raises(ValueError, match="1D"):
        to_root_variations(summarise(two_d, nom_2d), "x")


# -- plots ---------------------------------------------------------------------------------


@pytest.fixture
def mc_and_ensemble():
    x = np.random.default_rng(2).normal(size=(3000, 3)).astype(np.float32)
    nets = []
    for seed in range(3):
        torch.manual_seed(seed)
        nets.append(build("mlp", n_inputs=3, hidden=[16], dropout=0.2).eval())
    mc = MCDropout(nets[0], samples=20, seed=1)
    h_nom = nominal_hist().fill(score=mc.nominal(x))
    s_mc = summarise(fill_replicas(replica_hist(20), mc.scores(x)), h_nom)
    ens = Ensemble(nets)
    s_ens = summarise(fill_replicas(replica_hist(3, replica_axis="member"), ens.scores(x)), h_nom)
    _mean, std = mc.mean_std(x)
    h2d = fill_std_vs_score(std_vs_score_hist(), mc.nominal(x), std)
    return h_nom, {"MC dropout": s_mc, "Ensemble": s_ens}, h2d


def test_band_figure_draws_q16_q84_envelope(mc_and_ensemble):
    h_nom, summaries, _ = mc_and_ensemble
    fig = band_figure(h_nom, summaries)
    ax = fig.axes[0]
    patches = [p for p in ax.patches if isinstance(p, mpl.patches.StepPatch) and p.get_fill()]
    assert len(patches) == 2
    for patch, s in zip(patches, summaries.values(), strict=True):
        data = patch.get_data()
        np.testing.assert_array_equal(data.values, s["q84", :].values())
        np.testing.assert_array_equal(data.baseline, s["q16", :].values())
        np.testing.assert_array_equal(data.edges, h_nom.axes[0].edges)


def test_plot_files_written(mc_and_ensemble, tmp_path):
    h_nom, summaries, h2d = mc_and_ensemble
    written = plot_band(h_nom, summaries, tmp_path / "plots" / "score_band")
    written += plot_std_vs_score(h2d, tmp_path / "plots" / "std_vs_score.png")
    assert sorted(p.name for p in written) == [
        "score_band.pdf",
        "score_band.png",
        "std_vs_score.pdf",
        "std_vs_score.png",
    ]
    for p in written:
        assert p.stat().st_size > 1000
    assert written[0].read_bytes()[:4] == b"\x89PNG"
    assert written[1].read_bytes()[:4] == b"%PDF"


def test_band_figure_rejects_other_binning(mc_and_ensemble):
    _, summaries, _ = mc_and_ensemble
    other = nominal_hist(hist.axis.Regular(10, 0, 1, name="score"))
    with pytest.raises(ValueError, match="binning"):
        band_figure(other, summaries)
