"""Honest physics figures: AMS at the challenge totals, negative weights, the DNN's options.

All on real shipped events: the 18,000-event Higgs-challenge CSV (a copy with a few
weights flipped where negative weights are needed: the CSV has none) and the
NanoAOD Drell-Yan file, whose ``genWeight`` has negative entries.
"""

from __future__ import annotations

import math
from pathlib import Path

import hist
import numpy as np
import pytest
import torch
import uproot
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import roc_auc_score

from hepnn.errors import InputError
from hepnn.metrics import (
    B_REG,
    CHALLENGE_TOTALS,
    ams,
    auc,
    best_ams,
    normalised_ams_hist,
    renormalise,
    signed_weighted_auc,
)
from hepnn.nets.data import TrainingData
from hepnn.nets.flat import FlatBuilder
from hepnn.nets.report import ams_normalisation, heldout_comparison, weighted_ams
from hepnn.nets.spec import FlatInputs, NetworkSpec, SplitSpec, TrainingSpec
from hepnn.nets.split import TEST, TRAIN, VAL, held_out, member_split, route, split_codes
from hepnn.nets.train import batch_loss, fit_model, train_network

NANO_DY = Path(__file__).resolve().parents[1] / "samples" / "nanoaod" / "nano_dy.root"


@pytest.fixture(scope="module")
def labels(higgs) -> np.ndarray:
    return (higgs["Label"] == "s").astype(np.int64)


@pytest.fixture(scope="module")
def mass_score(higgs) -> np.ndarray:
    """A physics score in [0, 1]: closeness of the MMC mass to 125 GeV (0 when undefined)."""
    m = higgs["DER_mass_MMC"].astype(np.float64)
    return np.where(m == -999.0, 0.0, np.exp(-np.abs(m - 125.0) / 25.0))


@pytest.fixture(scope="module")
def flipped(higgs) -> np.ndarray:
    """The real weights with every 40th flipped negative (450 of 18,000, NLO-like)."""
    w = higgs["Weight"].astype(np.float64).copy()
    w[::40] *= -1.0
    return w


# -- AMS at the challenge totals -------------------------------------------------------------


def test_renormalise_to_challenge_totals(higgs, labels):
    w = higgs["Weight"].astype(np.float64)
    raw_s, raw_b = w[labels == 1].sum(), w[labels == 0].sum()
    # The shipped subsample's raw totals are far from the challenge's (why AMS needs this).
    assert raw_s < CHALLENGE_TOTALS["signal"] / 10
    assert raw_b < CHALLENGE_TOTALS["background"] / 10
    out = renormalise(labels, w)
    assert out[labels == 1].sum() == pytest.approx(691.988607712, rel=1e-12)
    assert out[labels == 0].sum() == pytest.approx(410999.847322, rel=1e-12)
    # Per class a common factor: ratios of weights within a class are unchanged.
    sig = labels == 1
    np.testing.assert_allclose(out[sig] / w[sig], out[sig][0] / w[sig][0], rtol=1e-12)


def test_best_ams_recomputed_by_hand(mass_score, labels, higgs):
    w = higgs["Weight"].astype(np.float64)
    value, threshold = weighted_ams(mass_score, labels, w, challenge=True)
    # Oracle: s and b by summing the renormalised weights above the threshold.
    scale_s = CHALLENGE_TOTALS["signal"] / w[labels == 1].sum()
    scale_b = CHALLENGE_TOTALS["background"] / w[labels == 0].sum()
    above = mass_score >= threshold
    s = w[above & (labels == 1)].sum() * scale_s
    b = w[above & (labels == 0)].sum() * scale_b
    by_hand = math.sqrt(2 * ((s + b + 10.0) * math.log(1 + s / (b + 10.0)) - s))
    assert B_REG == 10.0
    assert value == pytest.approx(by_hand, rel=1e-9)
    assert value > 0.5  # a real separation at the challenge's normalisation


def test_ams_is_comparable_between_subsets(mass_score, labels, higgs):
    """Renormalised: a half sample gives the same AMS; raw weights: ~1/sqrt(2) of it."""
    w = higgs["Weight"].astype(np.float64)
    half = higgs["EventId"] % 2 == 0
    full_norm = weighted_ams(mass_score, labels, w, challenge=True)[0]
    half_norm = weighted_ams(mass_score[half], labels[half], w[half], challenge=True)[0]
    full_raw = weighted_ams(mass_score, labels, w, challenge=False)[0]
    half_raw = weighted_ams(mass_score[half], labels[half], w[half], challenge=False)[0]
    assert half_norm == pytest.approx(full_norm, rel=0.15)
    assert half_raw / full_raw < 0.85
    assert full_norm > 3 * full_raw


def test_ams_normalisation_is_stated():
    entry = ams_normalisation(True)
    assert entry["sum_w_signal"] == CHALLENGE_TOTALS["signal"]
    assert entry["sum_w_background"] == CHALLENGE_TOTALS["background"]
    assert entry["b_reg"] == 10.0
    assert "raw" in ams_normalisation(False)["weights"]


# -- negative weights --------------------------------------------------------------------------


def _mann_whitney(score, y, w):
    """Brute-force Σ w_s w_b ([x_s > x_b] + ½[x_s = x_b]) / (W_s W_b)."""
    xs, ws = score[y == 1], w[y == 1]
    xb, wb = score[y == 0], w[y == 0]
    gt = (xs[:, None] > xb[None, :]) + 0.5 * (xs[:, None] == xb[None, :])
    return float(ws @ gt @ wb / (ws.sum() * wb.sum()))


def test_weighted_auc_keeps_negative_weights(mass_score, labels, higgs, flipped):
    rows = slice(0, 3000)  # the brute-force oracle is quadratic
    x, y, w = np.round(mass_score[rows], 2), labels[rows], flipped[rows]  # rounded: real ties
    assert (w < 0).sum() > 50
    assert auc(x, y, w) == pytest.approx(_mann_whitney(x, y, w), rel=1e-12)
    # Without negative weights the signed path agrees with sklearn.
    w_pos = higgs["Weight"][rows].astype(np.float64)
    assert signed_weighted_auc(x, y, w_pos) == pytest.approx(
        roc_auc_score(y, x, sample_weight=w_pos), rel=1e-12
    )


def test_ams_with_negative_weights(mass_score, labels, flipped):
    value, threshold = weighted_ams(mass_score, labels, flipped, challenge=True)
    assert math.isfinite(value)
    assert value > 0
    assert 0 <= threshold < 1
    # Where s < 0 or b + b_reg <= 0 there is no AMS.
    out = ams(np.array([-1.0, 5.0, 5.0]), np.array([100.0, -20.0, 100.0]))
    assert math.isnan(out[0])
    assert math.isnan(out[1])
    assert out[2] > 0
    h = normalised_ams_hist(mass_score, labels, flipped)
    assert h[{"process": "signal"}].sum(flow=True).value == pytest.approx(CHALLENGE_TOTALS["signal"])
    assert best_ams(h)[0] == pytest.approx(value)


def test_batch_loss_with_negative_weights():
    logits = torch.tensor([2.0, -1.0, 0.5, 3.0])
    y = torch.tensor([1.0, 0.0, 1.0, 0.0])
    w = torch.tensor([1.0, -0.5, 2.0, 1.5])
    per_row = torch.nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="none")
    expected = float((per_row * w).sum() / w.abs().sum())
    assert float(batch_loss(logits, y, w)) == pytest.approx(expected, rel=1e-6)
    # Non-negative weights: exactly the weighted mean (existing trainings keep their bits).
    wp = w.abs()
    assert torch.equal(batch_loss(logits, y, wp), (per_row * wp).sum() / wp.sum())


def _data(higgs, features, labels, weights, rows):
    raw = FlatBuilder(FlatInputs(features=features)).raw(higgs)[rows]
    return TrainingData(
        raw, labels[rows], higgs["EventId"][rows].astype(np.int64), weights[rows],
        np.ones(len(raw), dtype=bool), [], {f: raw[:, j] for j, f in enumerate(features)},
    )  # fmt: skip


def _spec(features, **training) -> NetworkSpec:
    return NetworkSpec.model_validate({
        "inputs": {"kind": "flat", "features": features},
        "params": {"hidden": [16], "dropout": 0.1},
        "training": {"epochs": 2, "batch_size": 256, **training},
        "split": {"method": "kfold", "folds": 3},
    })  # fmt: skip


def test_training_with_negative_weights(higgs, features, labels, flipped):
    data = _data(higgs, features, labels, flipped, slice(0, 4000))
    assert (data.weights < 0).any()
    spec = _spec(features, use_weights=True)
    fitted = fit_model("dnn", spec, data, split_codes(data.ids, spec.split, 0), progress=False)
    m = fitted.metrics
    assert math.isfinite(m["val_loss"])
    assert 0.5 < m["val_auc"] <= 1
    assert math.isfinite(m["val_auc_weighted"])  # the signed AUC, no sklearn ValueError


def test_histograms_sum_negative_genweights():
    with uproot.open(NANO_DY) as f:
        w = f["Events"]["genWeight"].array(library="np").astype(np.float64)
    assert (w < 0).any()
    assert (w > 0).any()
    h = hist.Hist(hist.axis.Regular(1, 0, 1, name="x"), storage=hist.storage.Weight())
    h.fill(x=np.full(len(w), 0.5), weight=w)
    assert h.sum().value == pytest.approx(w.sum(), rel=1e-12)
    assert h.sum().variance == pytest.approx((w**2).sum(), rel=1e-12)


# -- training options ------------------------------------------------------------------------


def test_unset_options_keep_the_bytes():
    """Configs and model.json that do not use the new options dump exactly as before."""
    assert set(SplitSpec().model_dump()) == {"method", "folds", "fractions", "id_column", "seed"}
    assert "transform" not in FlatInputs(features=["a"]).model_dump()
    assert "class_balance" not in TrainingSpec().model_dump()
    state = FlatBuilder(FlatInputs(features=["a"])).fit(np.array([[1.0], [2.0]])).state()
    assert "transform" not in state


def test_log1p_transform(higgs):
    feats = ["DER_mass_MMC", "PRI_met"]
    settings = FlatInputs(features=feats, transform={"PRI_met": "log1p"})
    builder = FlatBuilder(settings)
    raw = builder.raw(higgs)
    fitted = builder.fit(raw)
    x = fitted.transform(raw)
    met = np.log1p(higgs["PRI_met"].astype(np.float64))
    expected = ((met - met.mean()) / met.std()).astype(np.float32)
    np.testing.assert_allclose(x[:, 1], expected, rtol=1e-5, atol=1e-6)
    state = fitted.state()
    assert state["transform"] == {"PRI_met": "log1p"}
    assert FlatBuilder.from_state(settings, state) == fitted
    bad = raw.copy()
    bad[0, 1] = -1.0
    with pytest.raises(InputError, match="PRI_met"):
        fitted.transform(bad)
    with pytest.raises(ValueError, match="not among the features"):
        FlatInputs(features=feats, transform={"PRI_tau_pt": "log1p"})


def test_val_fraction_trains_on_more_rows(higgs):
    ids = higgs["EventId"].astype(np.int64)
    plain = SplitSpec(method="kfold", folds=4)
    more = SplitSpec(method="kfold", folds=4, val_fraction=0.2)
    for m in range(4):
        a, b = split_codes(ids, plain, m), split_codes(ids, more, m)
        np.testing.assert_array_equal(a == TEST, b == TEST)  # same held-out fold
        assert (b == TRAIN).mean() == pytest.approx(0.75 * 0.8, abs=0.02)
        assert (a == TRAIN).mean() == pytest.approx(0.5, abs=0.02)
        assert (b == VAL).mean() == pytest.approx(0.75 * 0.2, abs=0.02)
    with pytest.raises(ValueError, match="applies to method"):
        SplitSpec(method="parity", val_fraction=0.2)


def test_members_vary_the_split(higgs):
    ids = higgs["EventId"].astype(np.int64)
    nominal = SplitSpec(method="kfold", folds=4)
    assert member_split(nominal, 1234, 0) is nominal
    folds = [route(ids, member_split(nominal, 1234, i)) for i in range(3)]
    np.testing.assert_array_equal(folds[0], ids % 4)  # the deployed network: unchanged
    assert (folds[1] != folds[0]).mean() > 0.6
    assert (folds[2] != folds[1]).mean() > 0.6
    for i in (1, 2):
        split = member_split(nominal, 1234, i)
        assert split.salt == 1234 + i
        tests = np.stack([split_codes(ids, split, m) == TEST for m in range(4)])
        assert np.all(tests.sum(axis=0) == 1)  # every event held out by exactly one model
        np.testing.assert_array_equal(tests[folds[i], np.arange(len(ids))], True)
        assert held_out(ids, split).all()
    rnd = SplitSpec(method="random")
    salted = member_split(rnd, 1234, 1)
    a, b = split_codes(ids, rnd), split_codes(ids, salted)
    np.testing.assert_array_equal(a == TEST, b == TEST)  # test ids kept
    assert (a != b).mean() > 0.2


def test_class_balance_weights(higgs, features, labels):
    from hepnn.nets.train import balanced_weights

    y = labels
    w = balanced_weights(y, np.ones(len(y)))
    assert w[y == 1].sum() == pytest.approx(len(y) / 2)
    assert w[y == 0].sum() == pytest.approx(len(y) / 2)
    with pytest.raises(InputError, match="signal weights sum"):
        balanced_weights(y, np.where(y == 1, -1.0, 1.0))


def test_heldout_comparison_against_an_independent_tree(higgs, features, labels):
    rows = slice(0, 3000)
    w = higgs["Weight"].astype(np.float64)
    data = _data(higgs, features, labels, w, rows)
    spec = _spec(features)
    result = train_network("dnn", spec, data, progress=False)
    out = heldout_comparison(result, data, seed=7, challenge=True, resamples=50)
    # Oracle: the tree trained per fold by hand on the non-test rows, scoring the test fold.
    which = route(data.ids, spec.split)
    gbt = np.empty(len(data))
    for m in range(3):
        train = split_codes(data.ids, spec.split, m) != TEST
        clf = HistGradientBoostingClassifier(random_state=7).fit(data.raw[train], data.labels[train])
        gbt[which == m] = clf.predict_proba(data.raw[which == m])[:, 1]
    assert out["rows"] == len(data)
    assert out["boosted_trees"]["auc"] == pytest.approx(roc_auc_score(data.labels, gbt), rel=1e-12)
    diff = out["auc_difference"]
    assert diff["difference"] == pytest.approx(out["network"]["auc"] - out["boosted_trees"]["auc"])
    assert diff["standard_error"] > 0
    assert out["ams_normalisation"]["sum_w_signal"] == CHALLENGE_TOTALS["signal"]
    assert out["network"]["ams_best"] > 0
