"""K-fold cross-validated evaluation (hepnn.nets.cv) on the real top-tagging jets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
from sklearn.ensemble import HistGradientBoostingClassifier

from hepnn.config import load_config
from hepnn.errors import ConfigError, InputError
from hepnn.metrics import auc
from hepnn.nets import cv as cv_module
from hepnn.nets.apply import forward
from hepnn.nets.cv import cross_validate, cross_validated_scores, paired_bootstrap
from hepnn.nets.data import DataReader, TrainingData
from hepnn.nets.report import GBT_NAME, MASS_NAME
from hepnn.nets.split import TEST, TRAIN, VAL, fold_codes, hashed_folds

REPO = Path(__file__).resolve().parents[1]
TOPTAG = REPO / "configs" / "toptag.yaml"
#: Tiny trainings: one epoch per fold model.
TINY = ["networks.cnn2d.training.epochs=1", "networks.cnn1d.training.epochs=1"]


@pytest.fixture(scope="module")
def reader() -> DataReader:
    from hepnn.pipeline import cache_dir
    from hepnn.samples import load_samples, resolve_samples

    return DataReader(resolve_samples(load_samples(REPO / "samples" / "toptag.yaml"), cache_dir()))


@pytest.fixture(scope="module")
def all_jets(reader: DataReader) -> TrainingData:
    """The 1,600 shipped jets, as the image network reads them."""
    cfg = load_config(TOPTAG)
    return reader.training_data("cnn2d", cfg.networks["cnn2d"])


def test_folds_partition_the_jets_reproducibly(all_jets: TrainingData) -> None:
    ids = all_jets.ids
    assert len(np.unique(ids)) == len(ids) == 1600
    folds = 5
    fold = hashed_folds(ids, folds, 1234)
    assert fold.dtype == np.int64
    assert set(fold.tolist()) == set(range(folds))
    # each fold near 1600/5 (binomial sd ~16)
    assert all(abs(int((fold == k).sum()) - 320) < 80 for k in range(folds))
    tested = np.zeros(len(ids), dtype=int)
    for k in range(folds):
        codes = fold_codes(fold, k, folds)
        assert set(np.unique(codes).tolist()) == {TRAIN, VAL, TEST}
        assert np.array_equal(codes == TEST, fold == k)
        assert np.array_equal(codes == VAL, fold == (k + 1) % folds)
        assert np.array_equal(codes == TRAIN, (fold != k) & (fold != (k + 1) % folds))
        tested += codes == TEST
    assert (tested == 1).all()  # every jet in exactly one test fold
    # reproducible from the seed, by id alone (order does not matter), other seed differs
    assert np.array_equal(hashed_folds(ids, folds, 1234), fold)
    perm = np.random.default_rng(0).permutation(len(ids))
    assert np.array_equal(hashed_folds(ids[perm], folds, 1234), fold[perm])
    assert (hashed_folds(ids, folds, 99) != fold).mean() > 0.5


def _small_specs(epochs: int = 1) -> dict[str, Any]:
    """The shipped networks' settings with one epoch and narrower layers (fast)."""
    cfg = load_config(TOPTAG)
    narrow = {
        "cnn2d": {"filters": [8, 8], "dense": [16]},
        "cnn1d": {"filters": [16, 16], "dense": [16]},
    }
    out = {}
    for name, spec in cfg.networks.items():
        training = spec.training.model_copy(update={"epochs": epochs})
        params = spec.params | narrow[name]
        out[name] = spec.model_copy(update={"training": training, "params": params})
    return out


def _take(data: TrainingData, rows: np.ndarray) -> TrainingData:
    return TrainingData(
        data.raw[rows], data.labels[rows], data.ids[rows], None, data.usable[rows], [],
        {k: v[rows] for k, v in data.baseline.items()},
    )  # fmt: skip


def test_out_of_fold_scores_come_from_models_that_did_not_train_on_the_jet(
    reader: DataReader, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every score is the output of the one model of its network whose test fold held the jet."""
    rows = np.arange(300)
    specs = _small_specs()
    data = {n: _take(reader.training_data(n, s), rows) for n, s in specs.items()}
    first = data["cnn2d"]
    folds = 3
    fold = hashed_folds(first.ids, folds, 7)
    calls: list[tuple[str, np.ndarray, Any]] = []
    real_fit = cv_module.fit_model

    def recording_fit(name: str, spec: Any, d: TrainingData, codes: np.ndarray, **kw: Any) -> Any:
        fitted = real_fit(name, spec, d, codes, **kw)
        calls.append((name.split(" ", maxsplit=1)[0], codes.copy(), fitted))
        return fitted

    monkeypatch.setattr(cv_module, "fit_model", recording_fit)
    scores = cross_validated_scores(specs, data, fold, 7, progress=False)
    assert len(calls) == folds * len(specs)
    assert set(scores) == {"cnn2d", "cnn1d", MASS_NAME, GBT_NAME}
    for name in specs:
        assert scores[name].dtype == np.float64
        assert np.isfinite(scores[name]).all()  # every jet gets an out-of-fold score
        raw = data[name].raw
        own = [(codes, fitted) for n, codes, fitted in calls if n == name]
        tested = np.zeros(len(rows), dtype=int)
        for codes, fitted in own:
            test = codes == TEST
            tested += test
            x = fitted.builder.transform(raw[test])
            expect = forward(fitted.model, x, fitted.builder.micro_batch)
            assert np.array_equal(scores[name][test], expect)
            # ... and the other models, which trained or early-stopped on these jets, differ
            for other_codes, other in own:
                if other is not fitted:
                    assert (other_codes[test] != TEST).all()
                    seen = forward(other.model, other.builder.transform(raw[test]), 256)
                    assert not np.array_equal(scores[name][test], seen)
        assert (tested == 1).all()
    # GBT refit per fold on that fold's training jets only
    for k in range(folds):
        codes = fold_codes(fold, k, folds)
        # computed here with scikit-learn, not with hepnn's own baseline helper
        x = np.stack([np.asarray(v, dtype=np.float64) for v in first.baseline.values()], axis=1)
        gbt = HistGradientBoostingClassifier(random_state=7).fit(
            x[codes == TRAIN], first.labels[codes == TRAIN]
        )
        expect = gbt.predict_proba(x[codes == TEST])[:, 1]
        assert np.array_equal(scores[GBT_NAME][codes == TEST], expect)
    assert np.array_equal(scores[MASS_NAME], first.baseline["jet_mass"].astype(np.float64))
    # reproducible: a rerun gives the same bits
    monkeypatch.setattr(cv_module, "fit_model", real_fit)
    again = cross_validated_scores(specs, data, fold, 7, progress=False)
    for name, s in scores.items():
        assert np.array_equal(again[name], s), name


def test_cross_validate_scores_every_jet_out_of_fold(reader: DataReader, tmp_path: Path) -> None:
    """The metrics block, the score table and the ROC plot of a tiny 3-fold run."""
    sets = [*TINY, "cross_validation.folds=3", "cross_validation.bootstrap=20",
            "networks.cnn2d.max_events=600", "networks.cnn1d.max_events=600"]  # fmt: skip
    cfg = load_config(TOPTAG, sets)
    block, files = cross_validate(cfg, reader, tmp_path, progress=False, formats=("png",))
    assert {"folds", "seed", "rows", "fold_rows", "classifiers", "auc_difference_to_gbt",
            "baseline", "evaluated_on", "bootstrap_note"} <= set(block)  # fmt: skip
    assert (block["folds"], block["seed"], block["baseline"]) == (3, 1234, GBT_NAME)
    assert block["rows"] == sum(block["fold_rows"]) == 600
    assert len(block["fold_rows"]) == 3
    assert list(block["classifiers"]) == ["cnn2d", "cnn1d", MASS_NAME, GBT_NAME]
    for name, entry in block["classifiers"].items():
        assert entry["rows"] == 600, name
        assert 0.5 < entry["auc"] <= 1.0, name
        assert len(entry["fold_auc"]) == 3
        assert entry["fold_auc_mean"] == pytest.approx(np.mean(entry["fold_auc"]))
    gbt = block["classifiers"][GBT_NAME]["auc"]
    assert set(block["auc_difference_to_gbt"]) == {"cnn2d", "cnn1d"}
    for name, d in block["auc_difference_to_gbt"].items():
        assert d["difference"] == pytest.approx(block["classifiers"][name]["auc"] - gbt)
        assert d["resamples"] == 20
        assert d["standard_error"] > 0
    table = pq.read_table(tmp_path / "cross_validation" / "scores.parquet")
    assert table.num_rows == 600
    assert set(table.column_names) == {"id", "label", "fold", "score_cnn2d", "score_cnn1d",
                                       f"score_{MASS_NAME}", f"score_{GBT_NAME}"}  # fmt: skip
    for name in ("cnn2d", "cnn1d", GBT_NAME):
        assert np.isfinite(table[f"score_{name}"].to_numpy()).all()
    fold = table["fold"].to_numpy()
    assert np.array_equal(fold, hashed_folds(table["id"].to_numpy(), 3, 1234))
    assert [int((fold == k).sum()) for k in range(3)] == block["fold_rows"]
    plot = tmp_path / "plots" / "roc_cross_validation.png"
    assert plot in files
    assert plot.stat().st_size > 5_000


def test_paired_bootstrap_is_seeded(all_jets: TrainingData) -> None:
    y = all_jets.labels
    mass = all_jets.baseline["jet_mass"].astype(np.float64)
    ptd = all_jets.baseline["jet_ptd"].astype(np.float64)
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


def test_paired_bootstrap_is_the_auc_of_the_drawn_rows(all_jets: TrainingData) -> None:
    """Draw counts as weights give each resample's AUC: the same as sklearn on the drawn rows."""
    y = all_jets.labels
    mass = all_jets.baseline["jet_mass"].astype(np.float64)
    ptd = np.round(all_jets.baseline["jet_ptd"].astype(np.float64), 2)  # many tied scores
    got = paired_bootstrap(mass, -ptd, y, 40, 11)
    rng = np.random.default_rng(11)
    diffs = []
    for _ in range(40):
        idx = rng.integers(0, len(y), len(y))
        diffs.append(auc(mass[idx], y[idx]) - auc(-ptd[idx], y[idx]))
    assert got["standard_error"] == pytest.approx(np.std(diffs, ddof=1), rel=1e-9)
    assert got["interval_68"] == pytest.approx(list(np.percentile(diffs, [16, 84])), rel=1e-9)


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["cross_validation.folds=2"], r"cross_validation.folds: .*at least 3"),
        (["cross_validation.folds=1"], r"cross_validation.folds: .*at least 3"),
        (["cross_validation.bootstrap=5"], r"cross_validation.bootstrap: .*greater than or equal to 10"),
        (["cross_validation.fold=5"], r"unknown key 'cross_validation.fold'"),
        (["networks={}"], r"cross_validation needs at least one network to train"),
        (["networks.cnn2d.train=false", "networks.cnn1d.train=false"],
         r"cross_validation needs at least one network to train"),
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


def test_too_few_jets_for_the_folds(reader: DataReader, tmp_path: Path) -> None:
    sets = [
        "networks.cnn2d.max_events=8",
        "networks.cnn1d.max_events=8",
        "cross_validation.folds=5",
    ]
    cfg = load_config(TOPTAG, sets)
    with pytest.raises(InputError, match=r"fold \d of 5 has .*\(of 8\): too few rows for 5 folds"):
        cross_validate(cfg, reader, tmp_path, progress=False, formats=())


def test_networks_on_different_rows_are_refused(reader: DataReader, tmp_path: Path) -> None:
    """A paired comparison needs the same rows: a network capped at 100 jets is refused."""
    cfg = load_config(TOPTAG, [*TINY, "networks.cnn2d.max_events=100"])
    with pytest.raises(ConfigError, match="networks cnn2d and cnn1d train on different rows"):
        cross_validate(cfg, reader, tmp_path, progress=False, formats=())
    assert not (tmp_path / "cross_validation").exists()  # refused before any training
