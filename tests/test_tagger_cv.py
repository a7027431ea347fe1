"""K-fold cross-validated evaluation (hepnn.jets.tagger_cv) on the real top-tagging jets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hepnn.config import load_config
from hepnn.errors import ConfigError, InputError
from hepnn.jets import tagger_cv
from hepnn.jets.tagger_cv import (
    cross_validate,
    cross_validated_scores,
    fold_assignment,
    fold_codes,
    paired_bootstrap,
)
from hepnn.jets.tagger_report import GBT_NAME, _gbt
from hepnn.jets.tagger_training import TrainingJets, read_training_jets
from hepnn.jets.taggers import TEST, TRAIN, VAL, TaggerPrep, _forward
from hepnn.metrics import auc

REPO = Path(__file__).resolve().parents[1]
TOPTAG = REPO / "configs" / "toptag.yaml"


@pytest.fixture(scope="module")
def datasets() -> dict[str, Any]:
    from hepnn.pipeline import cache_dir
    from hepnn.samples import load_samples, resolve_samples

    return resolve_samples(load_samples(REPO / "samples" / "toptag.yaml"), cache_dir())


@pytest.fixture(scope="module")
def all_jets(datasets: dict[str, Any]) -> TrainingJets:
    """The 1,600 shipped jets, as the taggers read them."""
    cfg = load_config(TOPTAG)
    return read_training_jets("cnn2d", cfg.taggers["cnn2d"], datasets)


def test_folds_partition_the_jets_reproducibly(all_jets: TrainingJets) -> None:
    ids = all_jets.ids
    assert len(np.unique(ids)) == len(ids) == 1600
    folds = 5
    fold = fold_assignment(ids, folds, 1234)
    assert set(fold.tolist()) == set(range(folds))
    # each fold near 1600/5 (binomial sd ~16)
    assert all(abs(int((fold == k).sum()) - 320) < 80 for k in range(folds))
    tested = np.zeros(len(ids), dtype=int)
    for k in range(folds):
        codes = fold_codes(fold, k, folds)
        assert set(np.unique(codes).tolist()) == {TRAIN, VAL, TEST}
        assert np.array_equal(codes == TEST, fold == k)
        assert np.array_equal(codes == VAL, fold == (k + 1) % folds)
        # validation is disjoint from test and train, which together are everything else
        assert not ((codes == VAL) & ((codes == TEST) | (codes == TRAIN))).any()
        tested += codes == TEST
    assert (tested == 1).all()  # every jet in exactly one test fold
    # reproducible from the seed, by id alone (order does not matter), other seed differs
    assert np.array_equal(fold_assignment(ids, folds, 1234), fold)
    perm = np.random.default_rng(0).permutation(len(ids))
    assert np.array_equal(fold_assignment(ids[perm], folds, 1234), fold[perm])
    assert (fold_assignment(ids, folds, 99) != fold).mean() > 0.5


def _small_specs(epochs: int = 1) -> dict[str, Any]:
    cfg = load_config(TOPTAG)
    out = {}
    for name, spec in cfg.taggers.items():
        training = spec.training.model_copy(update={"epochs": epochs})
        out[name] = spec.model_copy(update={"training": training})
    return out


def test_out_of_fold_scores_come_from_models_that_did_not_train_on_the_jet(
    all_jets: TrainingJets, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every score is the output of the one model of its tagger whose test fold held the jet."""
    rows = np.arange(300)
    jets = TrainingJets(all_jets.batch.take(rows), all_jets.labels[rows], all_jets.ids[rows], [])
    specs = _small_specs()
    folds = 3
    fold = fold_assignment(jets.ids, folds, 7)
    calls: list[tuple[str, np.ndarray, Any]] = []
    real_fit = tagger_cv.fit_tagger

    def recording_fit(name: str, spec: Any, raw: Any, labels: Any, split: np.ndarray,
                      usable: Any, **kw: Any) -> Any:  # fmt: skip
        fitted = real_fit(name, spec, raw, labels, split, usable, **kw)
        calls.append((name.split(" ", maxsplit=1)[0], split.copy(), fitted))
        return fitted

    monkeypatch.setattr(tagger_cv, "fit_tagger", recording_fit)
    scores = cross_validated_scores(specs, jets, fold, 7, progress=False)
    assert len(calls) == folds * len(specs)
    for name, spec in specs.items():
        assert np.isfinite(scores[name]).all()
        raw = TaggerPrep(spec.kind, spec.input_settings()).raw(jets.batch)
        own = [(split, fitted) for n, split, fitted in calls if n == name]
        tested = np.zeros(len(rows), dtype=int)
        for split, fitted in own:
            test = split == TEST
            tested += test
            expect = _forward(fitted.model, fitted.prep.transform(raw[test]), 256, sigmoid=True)
            assert np.array_equal(scores[name][test], expect)
            # ... and the other models, which trained or early-stopped on these jets, differ
            for other_split, other in own:
                if other is not fitted:
                    assert (other_split[test] != TEST).all()
                    seen = _forward(other.model, other.prep.transform(raw[test]), 256, sigmoid=True)
                    assert not np.array_equal(scores[name][test], seen)
        assert (tested == 1).all()
    # GBT refit per fold on that fold's training jets only
    feats = {
        "jet_mass": jets.batch.mass.astype(np.float32),
        "n_constituents": jets.batch.n_constituents,
        "jet_ptd": jets.batch.ptd.astype(np.float32),
    }
    for k in range(folds):
        codes = fold_codes(fold, k, folds)
        expect = _gbt(feats, codes == TRAIN, codes == TEST, jets.labels, 7)
        assert np.array_equal(scores[GBT_NAME][codes == TEST], expect)
    assert np.array_equal(scores["mass"], jets.batch.mass.astype(np.float32))
    # reproducible: a rerun gives the same bits
    monkeypatch.setattr(tagger_cv, "fit_tagger", real_fit)
    again = cross_validated_scores(specs, jets, fold, 7, progress=False)
    for name, s in scores.items():
        assert np.array_equal(again[name], s), name


def test_paired_bootstrap_is_seeded(all_jets: TrainingJets) -> None:
    y = all_jets.labels
    mass = all_jets.batch.mass
    ptd = all_jets.batch.ptd
    a = paired_bootstrap(mass, -ptd, y, 200, 5)
    assert a == paired_bootstrap(mass, -ptd, y, 200, 5)
    b = paired_bootstrap(mass, -ptd, y, 200, 6)
    assert b["standard_error"] != a["standard_error"]
    assert a["difference"] == auc(mass, y) - auc(-ptd, y)
    lo, hi = a["interval_68"]
    assert lo < a["difference"] < hi
    assert 0.002 < a["standard_error"] < 0.05
    assert hi - lo == pytest.approx(2 * a["standard_error"], rel=0.3)
    same = paired_bootstrap(mass, mass, y, 50, 5)  # paired: identical scores, no spread
    assert same["difference"] == same["standard_error"] == 0.0


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["cross_validation.folds=2"], r"cross_validation.folds: .*at least 3"),
        (["cross_validation.folds=1"], r"cross_validation.folds: .*at least 3"),
        (["cross_validation.bootstrap=5"], r"cross_validation.bootstrap: .*greater than or equal to 10"),
        (["cross_validation.fold=5"], r"unknown key 'cross_validation.fold'"),
        (["taggers={}"], r"cross_validation needs at least one tagger"),
    ],
)  # fmt: skip
def test_config_errors(sets: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(TOPTAG, sets)


def test_config_default_and_shipped() -> None:
    cv = load_config(TOPTAG).cross_validation
    assert cv is not None
    assert (cv.folds, cv.bootstrap, cv.seed) == (5, 1000, None)
    assert load_config(TOPTAG, ["cross_validation=null"]).cross_validation is None


def test_too_few_jets_for_the_folds(datasets: dict[str, Any], tmp_path: Path) -> None:
    sets = ["taggers.cnn2d.max_jets=8", "taggers.cnn1d.max_jets=8", "cross_validation.folds=5"]
    cfg = load_config(TOPTAG, sets)
    with pytest.raises(InputError, match=r"fold \d of 5 has .*\(of 8\): too few jets for 5 folds"):
        cross_validate(cfg, datasets, tmp_path, progress=False, plots=False)


def test_taggers_on_different_jets_are_refused(datasets: dict[str, Any], tmp_path: Path) -> None:
    cfg = load_config(TOPTAG, ["taggers.cnn2d.max_jets=100"])
    with pytest.raises(ConfigError, match="cnn2d and cnn1d train on different jets"):
        cross_validate(cfg, datasets, tmp_path, progress=False, plots=False)
