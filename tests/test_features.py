"""FeaturePrep on the real Higgs-challenge CSV: statistics, imputation, flags, serialisation."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hepnn.errors import ConfigError, InputError, ModelError
from hepnn.features import MISSING_VALUE, FeaturePrep, missing_mask


def _subset(cols: dict[str, np.ndarray], mask: np.ndarray) -> dict[str, np.ndarray]:
    return {k: v[mask] for k, v in cols.items()}


def test_statistics_from_training_non_missing_only(higgs, features):
    train = _subset(higgs, higgs["EventId"] % 2 == 0)
    prep = FeaturePrep.fit(train, features)
    for j, name in enumerate(features):
        v = train[name]
        present = v[v != MISSING_VALUE]
        assert prep.mean[j] == pytest.approx(present.mean(), rel=1e-12, abs=1e-12)
        assert prep.std[j] == pytest.approx(present.std(), rel=1e-12)
    # Fitting on all events gives different statistics: nothing leaks from the rest.
    everything = FeaturePrep.fit(higgs, features)
    assert not np.array_equal(everything.mean, prep.mean)


def test_transform_standardises_and_imputes_zero(higgs, features):
    train = _subset(higgs, higgs["EventId"] % 2 == 0)
    prep = FeaturePrep.fit(train, features, missing_flags="none")
    x = prep.transform(train)
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
    prep = FeaturePrep.fit(_subset(higgs, higgs["EventId"] % 2 == 0), features)
    # Higgs missing patterns: MMC undefined; >= 1 jet; >= 2 jets (7 features share it).
    assert [name for name, _ in prep.flags] == [
        "DER_mass_MMC_missing",
        "DER_deltaeta_jet_jet_missing",
        "PRI_jet_leading_pt_missing",
    ]
    assert prep.input_names == [*features, *(n for n, _ in prep.flags)]
    x = prep.transform(higgs)
    assert x.shape[1] == len(features) + 3
    flag = x[:, prep.input_names.index("PRI_jet_leading_pt_missing")]
    assert np.array_equal(flag, (higgs["PRI_jet_num"] == 0).astype(np.float32))


def test_flag_modes(higgs, features):
    train = _subset(higgs, higgs["EventId"] % 2 == 0)
    assert FeaturePrep.fit(train, features, "none").input_names == features
    listed = FeaturePrep.fit(train, features, ["PRI_jet_subleading_pt", "DER_mass_MMC"])
    assert listed.input_names[-2:] == ["PRI_jet_subleading_pt_missing", "DER_mass_MMC_missing"]
    with pytest.raises(ConfigError, match="PRI_nothing"):
        FeaturePrep.fit(train, features, ["PRI_nothing"])
    with pytest.raises(ConfigError, match="missing_flags"):
        FeaturePrep.fit(train, features, "sometimes")  # type: ignore[arg-type]


def test_nan_masked_and_sentinel_are_the_same_missing(higgs, features):
    prep = FeaturePrep.fit(higgs, features)
    sentinel = prep.transform(higgs)
    as_nan = {k: np.where(v == MISSING_VALUE, np.nan, v) for k, v in higgs.items() if k in features}
    as_masked = {k: np.ma.masked_equal(v, MISSING_VALUE) for k, v in as_nan.items()}
    assert np.array_equal(prep.transform(as_nan).view(np.uint32), sentinel.view(np.uint32))
    assert np.array_equal(prep.transform(as_masked).view(np.uint32), sentinel.view(np.uint32))
    values, mask = missing_mask(np.ma.array([1.0, 2.0, np.nan, -999.0], mask=[0, 1, 0, 0]))
    assert mask.tolist() == [False, True, True, True]
    assert values[0] == 1.0


def test_transform_is_chunk_independent(higgs, features):
    prep = FeaturePrep.fit(higgs, features)
    whole = prep.transform(higgs)
    parts = [
        prep.transform({k: v[a : a + 777] for k, v in higgs.items()}) for a in range(0, 18000, 777)
    ]
    assert np.array_equal(np.concatenate(parts).view(np.uint32), whole.view(np.uint32))


def test_dict_round_trip_through_json_is_exact(higgs, features):
    prep = FeaturePrep.fit(_subset(higgs, higgs["EventId"] % 2 == 0), features)
    again = FeaturePrep.from_dict(json.loads(json.dumps(prep.to_dict())))
    assert again == prep
    assert again.input_names == prep.input_names
    assert np.array_equal(
        again.transform(higgs).view(np.uint32), prep.transform(higgs).view(np.uint32)
    )
    broken = prep.to_dict()
    del broken["mean"]
    with pytest.raises(ModelError, match="malformed"):
        FeaturePrep.from_dict(broken)
    with pytest.raises(ModelError, match="format"):
        FeaturePrep.from_dict({**prep.to_dict(), "format": 99})


def test_absent_feature_is_a_model_error_naming_it(higgs, features):
    prep = FeaturePrep.fit(higgs, features)
    cols = {k: v for k, v in higgs.items() if k != "PRI_tau_eta"}
    with pytest.raises(ModelError, match="'PRI_tau_eta'"):
        prep.transform(cols)


def test_non_finite_after_preparation_is_an_input_error_naming_it(higgs, features):
    prep = FeaturePrep.fit(higgs, features)
    cols = dict(higgs)
    cols["PRI_met"] = higgs["PRI_met"].copy()
    cols["PRI_met"][5] = np.inf
    with pytest.raises(InputError, match="'PRI_met'"):
        prep.transform(cols)
    # A finite float64 that overflows float32 is caught too.
    cols["PRI_met"][5] = 1e300
    with pytest.raises(InputError, match="'PRI_met'"):
        prep.transform(cols)
    with pytest.raises(InputError, match="'PRI_met'"):
        FeaturePrep.fit({"PRI_met": np.array([1.0, np.inf])}, ["PRI_met"])


def test_constant_and_never_observed_features():
    cols = {"c": np.full(5, 3.0), "m": np.full(5, MISSING_VALUE)}
    prep = FeaturePrep.fit(cols, ["c", "m"])
    assert prep.std.tolist() == [1.0, 1.0]
    x = prep.transform(cols)
    assert np.array_equal(x, np.array([[0.0, 0.0, 1.0]] * 5, dtype=np.float32))
    with pytest.raises(InputError, match="'m' has 4 entries, expected 5"):
        prep.transform({"c": np.zeros(5), "m": np.zeros(4)})
