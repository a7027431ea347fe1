"""FlatBuilder on the real Higgs-challenge CSV: statistics, imputation, flags, serialisation."""

from __future__ import annotations

import json

import numpy as np
import pydantic
import pytest

from hepnn.errors import ConfigError, InputError, ModelError
from hepnn.nets.flat import FLAG_SUFFIX, MISSING_VALUE, FlatBuilder, missing_values
from hepnn.nets.inputs import load_builder, make_builder
from hepnn.nets.spec import FlatInputs


def builder(features: list[str], missing_flags="auto") -> FlatBuilder:
    return FlatBuilder(FlatInputs(features=features, missing_flags=missing_flags))


def _subset(cols: dict[str, np.ndarray], mask: np.ndarray) -> dict[str, np.ndarray]:
    return {k: v[mask] for k, v in cols.items()}


def fitted(cols: dict[str, np.ndarray], features: list[str], missing_flags="auto") -> FlatBuilder:
    b = builder(features, missing_flags)
    return b.fit(b.raw(cols))


def test_raw_marks_missing_as_nan(higgs, features):
    raw = builder(features).raw(higgs)
    assert raw.dtype == np.float64
    assert raw.shape == (18000, len(features))
    j = features.index("DER_mass_MMC")
    assert np.array_equal(np.isnan(raw[:, j]), higgs["DER_mass_MMC"] == MISSING_VALUE)
    present = ~np.isnan(raw[:, j])
    assert np.array_equal(raw[present, j], higgs["DER_mass_MMC"][present])


def test_statistics_from_training_non_missing_only(higgs, features):
    train = _subset(higgs, higgs["EventId"] % 2 == 0)
    prep = fitted(train, features)
    for j, name in enumerate(features):
        v = train[name]
        present = v[v != MISSING_VALUE]
        assert prep.mean[j] == pytest.approx(present.mean(), rel=1e-12, abs=1e-12)
        assert prep.std[j] == pytest.approx(present.std(), rel=1e-12)
    # Fitting on all events gives different statistics: nothing leaks from the rest.
    everything = fitted(higgs, features)
    assert not np.array_equal(everything.mean, prep.mean)
    # fit returns a fitted copy: the unfitted builder stays unfitted
    b = builder(features)
    b.fit(b.raw(train))
    assert b.mean is None
    with pytest.raises(ModelError, match="not fitted"):
        b.transform(b.raw(train))


def test_transform_standardises_and_imputes_zero(higgs, features):
    train = _subset(higgs, higgs["EventId"] % 2 == 0)
    prep = fitted(train, features, missing_flags="none")
    x = prep.transform(prep.raw(train))
    assert x.dtype == np.float32
    assert x.shape == (train["EventId"].size, len(features))
    j = features.index("DER_mass_MMC")
    missing = train["DER_mass_MMC"] == MISSING_VALUE
    assert missing.any()
    assert np.all(x[missing, j] == 0.0)
    # Non-missing values have mean 0 and std 1 on the training events.
    assert x[~missing, j].astype(np.float64).mean() == pytest.approx(0.0, abs=1e-6)
    assert x[~missing, j].astype(np.float64).std() == pytest.approx(1.0, abs=1e-6)
    expected = (train["DER_mass_MMC"][~missing] - prep.mean[j]) / prep.std[j]
    assert np.array_equal(x[~missing, j], expected.astype(np.float32))


def test_auto_flags_deduplicate_identical_patterns(higgs, features):
    prep = fitted(_subset(higgs, higgs["EventId"] % 2 == 0), features)
    # Higgs missing patterns: MMC undefined; >= 1 jet; >= 2 jets (7 features share it).
    assert [name for name, _ in prep.flags] == [
        "DER_mass_MMC_missing",
        "DER_deltaeta_jet_jet_missing",
        "PRI_jet_leading_pt_missing",
    ]
    assert all(name == feature + FLAG_SUFFIX for name, feature in prep.flags)
    assert prep.input_names == [*features, *(n for n, _ in prep.flags)]
    assert prep.helper_inputs() == [n for n, _ in prep.flags]
    assert prep.arch_inputs() == {"n_inputs": len(features) + 3}
    x = prep.transform(prep.raw(higgs))
    assert x.shape[1] == len(features) + 3
    flag = x[:, prep.input_names.index("PRI_jet_leading_pt_missing")]
    assert np.array_equal(flag, (higgs["PRI_jet_num"] == 0).astype(np.float32))


def test_flag_modes(higgs, features):
    train = _subset(higgs, higgs["EventId"] % 2 == 0)
    assert fitted(train, features, "none").input_names == features
    listed = fitted(train, features, ["PRI_jet_subleading_pt", "DER_mass_MMC"])
    assert listed.input_names[-2:] == ["PRI_jet_subleading_pt_missing", "DER_mass_MMC_missing"]
    with pytest.raises(ConfigError, match="PRI_nothing"):
        fitted(train, features, ["PRI_nothing"])
    with pytest.raises(pydantic.ValidationError, match="missing_flags"):
        FlatInputs(features=features, missing_flags="sometimes")
    with pytest.raises(pydantic.ValidationError, match="duplicate features: a"):
        FlatInputs(features=["a", "b", "a"])


def test_nan_masked_and_sentinel_are_the_same_missing(higgs, features):
    prep = fitted(higgs, features)
    sentinel = prep.transform(prep.raw(higgs))
    as_nan = {k: np.where(v == MISSING_VALUE, np.nan, v) for k, v in higgs.items() if k in features}
    as_masked = {k: np.ma.masked_equal(v, MISSING_VALUE) for k, v in as_nan.items()}
    for cols in (as_nan, as_masked):
        again = prep.transform(prep.raw(cols))
        assert np.array_equal(again.view(np.uint32), sentinel.view(np.uint32))
    source = np.ma.array([1.0, 2.0, np.nan, -999.0], mask=[0, 1, 0, 0])
    values = missing_values(source)
    assert np.isnan(values).tolist() == [False, True, True, True]
    assert values[0] == 1.0
    assert source.data[3] == -999.0  # the caller's column is not changed


def test_transform_is_chunk_independent(higgs, features):
    prep = fitted(higgs, features)
    whole = prep.transform(prep.raw(higgs))
    parts = [
        prep.transform(prep.raw({k: v[a : a + 777] for k, v in higgs.items()}))
        for a in range(0, 18000, 777)
    ]
    assert np.array_equal(np.concatenate(parts).view(np.uint32), whole.view(np.uint32))


def test_state_round_trip_through_json_is_exact(higgs, features):
    prep = fitted(_subset(higgs, higgs["EventId"] % 2 == 0), features)
    state = json.loads(json.dumps(prep.state()))
    again = FlatBuilder.from_state(prep.settings, state)
    assert again == prep
    assert again.input_names == prep.input_names
    raw = prep.raw(higgs)
    assert np.array_equal(again.transform(raw).view(np.uint32), prep.transform(raw).view(np.uint32))
    # the generic loader (settings and state as stored in model.json) gives the same
    generic = load_builder(prep.settings.model_dump(mode="json"), state)
    assert isinstance(generic, FlatBuilder)
    assert generic == prep
    assert isinstance(make_builder(prep.settings), FlatBuilder)
    broken = prep.state()
    del broken["mean"]
    with pytest.raises(ModelError, match="malformed"):
        FlatBuilder.from_state(prep.settings, broken)
    with pytest.raises(ModelError, match="format"):
        FlatBuilder.from_state(prep.settings, {**prep.state(), "format": 99})
    with pytest.raises(ModelError, match="input_names"):
        FlatBuilder.from_state(prep.settings, {**prep.state(), "input_names": ["x"]})
    with pytest.raises(ModelError, match="one entry per feature"):
        FlatBuilder.from_state(prep.settings, {**prep.state(), "mean": [0.0]})
    with pytest.raises(ModelError, match="invalid inputs settings"):
        load_builder({"kind": "flat"}, state)
    with pytest.raises(ModelError, match=r"invalid inputs settings.*'graph'"):
        load_builder({"kind": "graph"}, state)


def test_absent_feature_is_a_model_error_naming_it(higgs, features):
    prep = fitted(higgs, features)
    cols = {k: v for k, v in higgs.items() if k != "PRI_tau_eta"}
    with pytest.raises(ModelError, match="'PRI_tau_eta'"):
        prep.raw(cols)


def test_non_finite_after_preparation_is_an_input_error_naming_it(higgs, features):
    prep = fitted(higgs, features)
    cols = dict(higgs)
    cols["PRI_met"] = higgs["PRI_met"].copy()
    cols["PRI_met"][5] = np.inf
    with pytest.raises(InputError, match="'PRI_met'"):
        prep.transform(prep.raw(cols))
    # A finite float64 that overflows float32 is caught too.
    cols["PRI_met"][5] = 1e300
    with pytest.raises(InputError, match="'PRI_met'"):
        prep.transform(prep.raw(cols))
    b = builder(["PRI_met"])
    with pytest.raises(InputError, match="'PRI_met'"):
        b.fit(b.raw({"PRI_met": np.array([1.0, np.inf])}))


def test_constant_and_never_observed_features():
    cols = {"c": np.full(5, 3.0), "m": np.full(5, MISSING_VALUE)}
    prep = fitted(cols, ["c", "m"])
    assert prep.std.tolist() == [1.0, 1.0]
    x = prep.transform(prep.raw(cols))
    assert np.array_equal(x, np.array([[0.0, 0.0, 1.0]] * 5, dtype=np.float32))
    with pytest.raises(InputError, match="'m' has 4 entries, expected 5"):
        prep.raw({"c": np.zeros(5), "m": np.zeros(4)})
    with pytest.raises(InputError, match="flat"):
        prep.raw({"c": np.zeros((5, 2)), "m": np.zeros(5)})


# ----------------------------------------------------------------- symmetry
PHIS = ["PRI_lep_phi", "PRI_met_phi", "PRI_jet_leading_phi", "PRI_jet_subleading_phi"]
ETAS = ["PRI_tau_eta", "PRI_lep_eta", "PRI_jet_leading_eta", "PRI_jet_subleading_eta"]
SYM = {"phi_reference": "PRI_tau_phi", "phis": PHIS, "phi_reflect": "PRI_lep_phi",
       "eta_reference": "PRI_tau_eta", "etas": ETAS}  # fmt: skip


def _moved(higgs, *, rotate: float = 0.0, mirror_phi: bool = False, mirror_eta: bool = False):
    """The events rotated in φ by ``rotate`` and optionally mirrored (missing stays missing)."""
    out = dict(higgs)
    for name in ["PRI_tau_phi", *PHIS]:
        v = higgs[name].astype(np.float64)
        ok = v != MISSING_VALUE
        new = (-v if mirror_phi else v) + rotate
        out[name] = np.where(ok, (new + np.pi) % (2 * np.pi) - np.pi, v)
    if mirror_eta:
        for name in ETAS:
            v = higgs[name]
            out[name] = np.where(v != MISSING_VALUE, -v, v)
    return out


def test_symmetry_inputs_are_invariant(higgs, features):
    """A common φ rotation, φ → −φ and η → −η of every event leave the network inputs alone."""
    b = FlatBuilder(FlatInputs(features=features, symmetry=SYM))
    fit = b.fit(b.raw(higgs))
    assert "PRI_tau_phi" not in fit.input_names  # the reference is always 0: not an input
    assert len(fit.input_names) == len(features) - 1 + len(fit.flags)
    x = fit.transform(fit.raw(higgs))
    # events with the lepton exactly back-to-back with (or on) the tau in φ sit on the edge
    # of the reflection, where rounding of the rotated angles decides the sign: left out
    dphi = np.abs(fit.symmetric(fit.raw(higgs))[:, features.index("PRI_lep_phi")])
    edge = (dphi < 1e-9) | (dphi > np.pi - 1e-9)
    assert edge.sum() < 5
    for moved in (
        _moved(higgs, rotate=1.234),
        _moved(higgs, mirror_phi=True),
        _moved(higgs, mirror_eta=True),
        _moved(higgs, rotate=-2.5, mirror_phi=True, mirror_eta=True),
    ):
        y = fit.transform(fit.raw(moved))
        np.testing.assert_allclose(y[~edge], x[~edge], atol=1e-5)  # float rounding of the rotated angles
    # without the symmetry the raw angles change: the inputs are not invariant
    plain = builder(features)
    plain = plain.fit(plain.raw(higgs))
    moved = _moved(higgs, rotate=1.234)
    assert np.abs(plain.transform(plain.raw(moved)) - plain.transform(plain.raw(higgs))).max() > 1


def test_symmetry_values(higgs, features):
    """Δφ in [−π, π) (the reflected one in [0, π)), η signed by the tau's; missing stays missing."""
    b = FlatBuilder(FlatInputs(features=features, symmetry=SYM))
    raw = b.raw(higgs)
    s = b.symmetric(raw)
    col = {f: j for j, f in enumerate(features)}
    lep = s[:, col["PRI_lep_phi"]]
    assert lep.min() >= 0.0
    assert lep.max() < np.pi
    d = raw[:, col["PRI_met_phi"]] - raw[:, col["PRI_tau_phi"]]
    expect = np.abs((d + np.pi) % (2 * np.pi) - np.pi)
    np.testing.assert_allclose(np.abs(s[:, col["PRI_met_phi"]]), expect, atol=1e-12)
    assert (s[:, col["PRI_tau_eta"]] >= 0).all()
    jet = col["PRI_jet_subleading_phi"]
    assert np.array_equal(np.isnan(s[:, jet]), np.isnan(raw[:, jet]))
    assert np.isnan(s[:, jet]).any()
    defined = b.fit(raw).defined(raw)
    assert defined is not None
    assert defined.mean(axis=0).min() == pytest.approx(np.mean(~np.isnan(raw[:, jet])))


def test_symmetry_validation(features):
    with pytest.raises(pydantic.ValidationError, match="not among the features: nope"):
        FlatInputs(features=features, symmetry={**SYM, "phis": ["nope"], "phi_reflect": None})
    with pytest.raises(pydantic.ValidationError, match="phi_reflect 'PRI_met' must be one of phis"):
        FlatInputs(features=features, symmetry={**SYM, "phi_reflect": "PRI_met"})
    with pytest.raises(pydantic.ValidationError, match="cannot also be in phis"):
        FlatInputs(
            features=features, symmetry={**SYM, "phis": ["PRI_tau_phi"], "phi_reflect": None}
        )
    with pytest.raises(pydantic.ValidationError, match="both transformed and in symmetry"):
        FlatInputs(features=features, symmetry=SYM, transform={"PRI_lep_eta": "log1p"})


def test_symmetry_state_round_trip_and_mismatch(higgs, features):
    inputs = FlatInputs(features=features, symmetry=SYM)
    b = FlatBuilder(inputs)
    fit = b.fit(b.raw(higgs))
    state = json.loads(json.dumps(fit.state()))
    assert state["symmetry"]["phi_reference"] == "PRI_tau_phi"
    assert FlatBuilder.from_state(inputs, state) == fit
    with pytest.raises(ModelError, match="input_names do not match"):  # 30 vs 29 features
        FlatBuilder.from_state(FlatInputs(features=features), state)
    other = {**state, "symmetry": {**state["symmetry"], "phi_reflect": None}}
    with pytest.raises(ModelError, match="symmetry does not match"):
        FlatBuilder.from_state(inputs, other)
