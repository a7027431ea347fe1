"""Input-space validation against data (hepnn.review): the test statistic, the binning,
and the closure tests with pseudo-data from the shipped Higgs events."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from hepnn.config import load_config, resolved_dict
from hepnn.errors import ConfigError, InputError
from hepnn.review import (
    Sample,
    Term,
    make_binning,
    pseudo_data,
    read_ranking,
    saturated_chi2,
    term_gof,
)

REPO = Path(__file__).resolve().parents[1]

#: 20 terms as a Higgs DNN ranking lists them: first order and pairs, with missing values.
TERMS = [
    "DER_mass_MMC", "DER_mass_transverse_met_lep", "DER_deltar_tau_lep", "PRI_tau_pt",
    "DER_mass_jet_jet", "DER_pt_ratio_lep_tau", "PRI_lep_pt", "DER_mass_vis", "PRI_met",
    "DER_mass_MMC*DER_mass_vis", "DER_mass_transverse_met_lep*PRI_tau_pt",
    "DER_deltar_tau_lep*PRI_tau_pt", "DER_mass_MMC*DER_mass_MMC", "PRI_met*DER_mass_MMC",
    "PRI_lep_pt*PRI_met", "DER_pt_h", "DER_met_phi_centrality", "PRI_jet_num",
    "DER_mass_jet_jet*DER_deltar_tau_lep", "DER_sum_pt",
]  # fmt: skip
SEEDS = (1, 2, 3, 4, 5)


@pytest.fixture(scope="module")
def sim(higgs, features) -> tuple[Sample, np.ndarray]:
    """Every shipped Higgs event as weighted simulation (-999 → NaN), with its EventId."""
    raw = np.stack([np.where(higgs[f] == -999.0, np.nan, higgs[f]) for f in features], axis=1)
    return Sample(raw, list(features), higgs["Weight"]), higgs["EventId"]


def _terms() -> list[Term]:
    return [Term(t, len(t.split("*")), i + 1) for i, t in enumerate(TERMS)]


def _p_values(sim, seed: int, **mismodel) -> dict[str, float]:
    sample, ids = sim
    rest, data = pseudo_data(sample, ids, fraction=0.5, seed=seed, **mismodel)
    return {t.name: term_gof(t, rest, data).p_value for t in _terms()}


# ------------------------------------------------------------ the statistic
def test_saturated_chi2_is_baker_cousins_without_simulation_uncertainty() -> None:
    n = np.array([3.0, 0.0, 12.0, 40.0])
    mu = np.array([5.0, 1.5, 10.0, 44.0])
    expected = 2 * np.sum(mu - n + np.where(n > 0, n * np.log(np.where(n > 0, n, 1) / mu), 0))
    assert saturated_chi2(n, mu, np.zeros(4)) == pytest.approx(expected, rel=1e-12)
    # the simulation's uncertainty can only lower it, towards 0 when it dominates
    values = [saturated_chi2(n, mu, np.full(4, v)) for v in (0.0, 1.0, 10.0, 1e6)]
    assert all(a > b for a, b in itertools.pairwise(values))
    assert values[-1] < 1e-3 * values[0]
    assert saturated_chi2(mu, mu, mu) == pytest.approx(0.0, abs=1e-12)


def test_saturated_chi2_follows_chi2_with_simulation_fluctuations() -> None:
    """Toys: data Poisson(μ), simulation μ fluctuated by its own σ: ⟨χ²⟩ ≈ ndf, p uniform."""
    rng = np.random.default_rng(17)
    mu = np.linspace(20, 80, 15)
    var = 0.5 * mu  # simulation with twice the data statistics
    chi2 = []
    for _ in range(2000):
        n = rng.poisson(mu)
        sim_mu = np.clip(mu + rng.normal(0, np.sqrt(var)), 1, None)
        chi2.append(saturated_chi2(n, sim_mu, var))
    chi2 = np.array(chi2)
    assert chi2.mean() == pytest.approx(len(mu), rel=0.05)
    p = stats.chi2.sf(chi2, len(mu))
    assert stats.kstest(p, "uniform").pvalue > 1e-3
    # ignoring the simulation's uncertainty would flag far too often
    naive = np.array([saturated_chi2(rng.poisson(mu), np.clip(mu + rng.normal(0, np.sqrt(var)), 1, None), 0 * mu)
                      for _ in range(500)])  # fmt: skip
    assert (stats.chi2.sf(naive, len(mu)) < 0.01).mean() > 0.05


# ------------------------------------------------------------ binning
def test_quantile_bins_have_the_expected_events(sim) -> None:
    sample, _ = sim
    w = sample.weights
    x = sample.column("DER_mass_vis")
    b = make_binning(x, w, n_data=2000, min_expected=20, max_bins=20)
    assert b.n_bins == 20
    expected = np.bincount(b.assign(x), weights=w * 2000 / w.sum(), minlength=b.n_bins)
    assert expected.min() >= 20
    assert expected.max() < 3 * expected.min()  # quantiles: roughly equal
    # a discrete feature: ties give fewer, merged bins (PRI_jet_num takes 0..3)
    j = sample.column("PRI_jet_num")
    bj = make_binning(j, w, n_data=2000)
    assert 2 <= bj.n_bins <= 4
    assert np.bincount(bj.assign(j), weights=w * 2000 / w.sum()).min() >= 20
    # few data events: fewer bins, each still with enough expected events
    small = make_binning(x, w, n_data=150, min_expected=20)
    assert small.n_bins == 7
    # a pair: slices of the first feature, quantiles of the second inside, unrolled
    y = sample.column("DER_mass_MMC")
    ok = np.isfinite(y)
    b2 = make_binning(x[ok], w[ok], n_data=2000, y=y[ok], min_expected=20, max_bins=25)
    idx = b2.assign(x[ok], y[ok])
    counts = np.bincount(idx, weights=w[ok] * 2000 / w[ok].sum(), minlength=b2.n_bins)
    assert b2.n_bins >= 16
    assert counts.min() >= 20
    assert idx.max() == b2.n_bins - 1


def test_read_ranking_skips_flags_and_third_order(tmp_path: Path) -> None:
    path = tmp_path / "dnn.csv"
    path.write_text(
        "rank,term,order,value,error\n1,DER_mass_MMC_missing,1,0.1,0.01\n2,PRI_tau_pt,1,0.09,0.01\n"
        "3,PRI_tau_pt*DER_mass_MMC_missing,2,0.05,0.01\n4,PRI_met*PRI_tau_pt,2,0.04,0.01\n"
        "5,PRI_met*PRI_met*PRI_tau_pt,3,0.03,0.01\n6,PRI_met,1,0.02,0.01\n",
        encoding="utf-8",
    )
    terms = read_ranking(path, top=20)
    assert [(t.name, t.rank) for t in terms] == [
        ("PRI_tau_pt", 2),
        ("PRI_met*PRI_tau_pt", 4),
        ("PRI_met", 6),
    ]
    assert terms[1].features == ("PRI_met", "PRI_tau_pt")
    assert [t.name for t in read_ranking(path, top=2)] == ["PRI_tau_pt", "PRI_met*PRI_tau_pt"]
    path.write_text("rank,term,order\nx,PRI_met,1\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"dnn.csv: line 2: expected integer"):
        read_ranking(path, top=3)


# ------------------------------------------------------------ closure tests
@pytest.fixture(scope="module")
def null_p(sim) -> dict[int, dict[str, float]]:
    return {seed: _p_values(sim, seed) for seed in SEEDS}


def test_pseudo_data_halves_are_independent_and_unweighted(sim) -> None:
    sample, ids = sim
    rest, data = pseudo_data(sample, ids, fraction=0.5, seed=1)
    assert np.all(data.weights == 1)
    # the simulation compared is the other half of the events, untouched
    assert 0.45 < len(rest) / len(sample) < 0.55
    # accept-reject keeps ~ Σw / max(w) of the pool: signal (w ~ 5e-4) almost never
    assert 1500 < len(data) < 2500
    again = pseudo_data(sample, ids, fraction=0.5, seed=1)[1]
    assert np.array_equal(again.raw, data.raw, equal_nan=True)  # seeded
    other = pseudo_data(sample, ids, fraction=0.5, seed=2)[1]
    assert len(other) != len(data) or not np.array_equal(other.raw, data.raw, equal_nan=True)


def test_pseudo_data_without_mismodelling_flags_nothing_beyond_the_expected_rate(null_p) -> None:
    p = np.array([list(v.values()) for v in null_p.values()])
    assert p.shape == (len(SEEDS), 20)
    for row in p:  # per pseudo-experiment: 20 × 0.05 = 1 expected below 0.05
        assert (row < 0.05).sum() <= 3
        assert (row < 0.01).sum() <= 1
    # pooled over the five pseudo-experiments the p-values are close to uniform
    assert stats.kstest(p.ravel(), "uniform").pvalue > 1e-3


@pytest.mark.parametrize(
    ("feature", "mismodel"),
    [("PRI_tau_pt", {"scale": 1.05}), ("PRI_met", {"shift": 3.0})],
    ids=["tau_pt_scale_1.05", "met_shift_3GeV"],
)
def test_a_mismodelled_input_is_flagged_with_every_term_containing_it(
    sim, null_p, feature, mismodel
) -> None:
    for seed in SEEDS[:3]:
        p = _p_values(sim, seed, feature=feature, **mismodel)
        related = {t for t in TERMS if feature in t.split("*")}
        assert len(related) >= 3
        flagged = {t for t, v in p.items() if v < 0.01}
        assert related <= flagged  # the input and the terms containing it
        unrelated = [t for t in TERMS if t not in related]
        # the other inputs of the pseudo-data are untouched: their tests are the null ones
        assert [p[t] for t in unrelated] == [null_p[seed][t] for t in unrelated]
        assert len(flagged - related) <= 1


def test_pseudo_data_needs_positive_weights_and_a_known_feature(sim) -> None:
    sample, ids = sim
    with pytest.raises(ConfigError, match=r"mismodel\.feature: 'nope' is not an input"):
        pseudo_data(sample, ids, fraction=0.5, seed=1, feature="nope")
    bad = Sample(sample.raw, sample.features, -sample.weights)
    with pytest.raises(InputError, match="non-positive weights"):
        pseudo_data(bad, ids, fraction=0.5, seed=1)


def test_a_term_needs_data_where_it_is_defined(sim) -> None:
    sample, ids = sim
    rest, data = pseudo_data(sample, ids, fraction=0.5, seed=1)
    few = Sample(data.raw[:30], data.features, data.weights[:30])
    with pytest.raises(
        InputError, match=r"term DER_mass_jet_jet: .* data events where it is defined"
    ):
        term_gof(Term("DER_mass_jet_jet", 1, 5), rest, few)
    # only defined events count: DER_mass_jet_jet exists with two or more jets
    res = term_gof(Term("DER_mass_jet_jet", 1, 5), rest, data)
    jets = data.column("PRI_jet_num") >= 2
    assert res.n_data == int(jets.sum())
    assert res.defined_data == pytest.approx(jets.mean())


# ------------------------------------------------------------ config
def test_review_section_is_validated_strictly() -> None:
    cfg = load_config(REPO / "configs" / "higgs.yaml")
    assert cfg.review is not None
    assert cfg.review.top == 20
    assert cfg.review.pseudo_data is not None
    assert cfg.review.pseudo_data.mismodel is not None
    for bad, where in [
        ("review.top=0", "review.top"),
        ("review.pseudo_data.fraction=1.5", "review.pseudo_data.fraction"),
        ("review.flag_p=2", "review.flag_p"),
        ("review.pseudo_data.mismodel.scale=-1", "review.pseudo_data.mismodel.scale"),
        ("review.colour=red", "'review.colour'"),
        (
            "review.pseudo_data.mismodel.feature=PRI_x",
            "mismodel.feature: 'PRI_x' is not a flat input",
        ),
    ]:
        with pytest.raises(ConfigError, match=rf"higgs.yaml: .*{where}") as err:
            load_config(REPO / "configs" / "higgs.yaml", [bad])
        assert "\n" not in str(err.value)


def test_a_config_without_review_resolves_as_before(tmp_path: Path) -> None:
    text = (REPO / "configs" / "higgs.yaml").read_text(encoding="utf-8").split("\nreview:")[0]
    path = tmp_path / "higgs.yaml"
    path.write_text(
        text.replace("../samples/higgs.yaml", str(REPO / "samples" / "higgs.yaml")),
        encoding="utf-8",
    )
    cfg = load_config(path)
    assert cfg.review is None
    assert "review" not in resolved_dict(cfg)  # config.resolved.yaml and the hash unchanged
    assert "review" in resolved_dict(load_config(REPO / "configs" / "higgs.yaml"))
