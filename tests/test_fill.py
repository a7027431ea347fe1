"""Grouped histogram fills and numpy access to missing values, on the real Higgs events."""

from __future__ import annotations

import awkward as ak
import hist
import numpy as np
import pytest

from hepnn.fill import CategoryGroups, factorize
from hepnn.io.higgs_layout import MISSING_VALUE
from hepnn.io.missing import mask_missing, present_values

JETS = np.array(["0 jets", "1 jet", "2+ jets"])


def _axes() -> list[hist.axis.AxesMixin]:
    return [
        hist.axis.StrCategory(["higgs"], name="dataset"),
        hist.axis.StrCategory(["signal", "background", "unlabelled"], name="process"),
        hist.axis.StrCategory(list(JETS), name="njet"),
    ]


@pytest.fixture(scope="module")
def cats(higgs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {
        "process": np.where(higgs["Label"] == "s", "signal", "background"),
        "njet": JETS[np.clip(higgs["PRI_jet_num"], 0, 2)],
        "weight": higgs["Weight"].astype(np.float64),
    }


def test_grouped_fill_is_bitwise_one_fill(
    higgs: dict[str, np.ndarray], cats: dict[str, np.ndarray]
) -> None:
    """Per-combination fills give the same bits as one fill with the string arrays."""
    x = higgs["DER_mass_jet_jet"].astype(np.float64)
    present = x != MISSING_VALUE
    assert 0 < present.sum() < len(x)  # a real missing pattern (events with < 2 jets)
    ref = hist.Hist(
        *_axes(), hist.axis.Regular(40, 0, 1500, name="x"), storage=hist.storage.Weight()
    )
    ref.fill(dataset="higgs", process=cats["process"][present], njet=cats["njet"][present],
             x=x[present], weight=cats["weight"][present])  # fmt: skip
    got = hist.Hist(
        *_axes(), hist.axis.Regular(40, 0, 1500, name="x"), storage=hist.storage.Weight()
    )
    groups = CategoryGroups(process=cats["process"], njet=cats["njet"])
    groups.fill(got, where=present, dataset="higgs", x=x, weight=cats["weight"])
    assert np.array_equal(got.view(flow=True), ref.view(flow=True))
    assert got.sum(flow=True).value == pytest.approx(cats["weight"][present].sum())
    # six combinations of 2 processes x 3 jet bins, each in increasing event order
    assert len(groups.groups) == 6
    assert all(np.all(np.diff(idx) > 0) for _, idx in groups.groups)
    assert sum(len(idx) for _, idx in groups.groups) == len(x)


def test_grouped_fill_weight_only(cats: dict[str, np.ndarray]) -> None:
    """A yield table (only the weight per event) fills as with arrays."""
    ref = hist.Hist(*_axes(), storage=hist.storage.Weight())
    ref.fill(dataset="higgs", process=cats["process"], njet=cats["njet"], weight=cats["weight"])
    got = hist.Hist(*_axes(), storage=hist.storage.Weight())
    CategoryGroups(process=cats["process"], njet=cats["njet"]).fill(
        got, dataset="higgs", weight=cats["weight"]
    )
    assert np.array_equal(got.view(flow=True), ref.view(flow=True))


def test_grouped_fill_rejects_wrong_length(cats: dict[str, np.ndarray]) -> None:
    groups = CategoryGroups(process=cats["process"])
    h = hist.Hist(_axes()[1], hist.axis.Regular(4, 0, 1, name="x"))
    with pytest.raises(ValueError, match="fill value 'x' has 3 entries"):
        groups.fill(h, x=np.zeros(3))
    with pytest.raises(ValueError, match=r"unknown \['y'\], missing \['x'\]"):
        groups.fill(h, y=np.zeros(len(cats["process"])))
    with pytest.raises(ValueError, match="differ in length"):
        CategoryGroups(process=cats["process"], njet=cats["njet"][:10])


def test_present_values(higgs: dict[str, np.ndarray]) -> None:
    """(present, values) agree with awkward's is_none and the masked values."""
    raw = higgs["DER_mass_MMC"]
    masked = mask_missing(raw)
    present, values = present_values(masked)
    assert np.array_equal(present, ~ak.to_numpy(ak.is_none(masked)))
    assert np.array_equal(values[present], ak.to_numpy(masked[present]).astype(np.float64))
    assert not present.all()
    # any option array (here an IndexedOptionArray from awkward's own mask) and a plain one
    generic = ak.mask(ak.Array(raw), raw != MISSING_VALUE)
    p2, v2 = present_values(generic[::-1])
    assert np.array_equal(p2, present[::-1])
    assert np.array_equal(v2[p2], values[present][::-1])
    p3, v3 = present_values(ak.Array(raw))
    assert p3.all()
    assert np.array_equal(v3, raw.astype(np.float64))


@pytest.mark.parametrize(
    "values",
    [
        np.array(["signal", "background", "background", "signal"]),
        np.arange(1000) % 40,  # more distinct values than compared one by one: numpy's unique
        np.array([np.nan, 1.0, np.nan, 2.0]),  # NaN != NaN: numpy's unique as well
        np.array([], dtype="U7"),
    ],
)
def test_factorize_indexes_the_values(values: np.ndarray) -> None:
    uniques, codes = factorize(values)
    assert codes.dtype == np.int64
    assert codes.shape == values.shape
    assert np.array_equal(uniques[codes], values, equal_nan=values.dtype.kind == "f")
    assert len(uniques) == len(np.unique(values))


def test_factorize_of_real_categories(cats: dict[str, np.ndarray]) -> None:
    """Process and jet bin of the 18k events: found in order of appearance, no sort."""
    for name in ("process", "njet"):
        uniques, codes = factorize(cats[name])
        assert sorted(uniques.tolist()) == np.unique(cats[name]).tolist()
        assert uniques[0] == cats[name][0]
        assert np.array_equal(uniques[codes], cats[name])
