"""train_network on the real Higgs-challenge CSV: reproducibility, splits, early stopping, files."""

from __future__ import annotations

import csv
import hashlib
import json
import time

import numpy as np
import pydantic
import pytest
import torch

from hepnn.errors import ConfigError, InputError
from hepnn.metrics import auc
from hepnn.nets.apply import network_score
from hepnn.nets.data import DataReader, TrainingData
from hepnn.nets.flat import FlatBuilder
from hepnn.nets.spec import FlatInputs, NetworkSpec, SplitSpec, TrainingSpec
from hepnn.nets.split import TEST, TRAIN, VAL, held_out, split_codes
from hepnn.nets.store import HISTORY_FIELDS, load_network, save_network
from hepnn.nets.train import TrainResult, balanced_weights, train_network
from hepnn.samples import Dataset, FileEntry

PARAMS = {"hidden": [32, 32], "activation": "tanh", "dropout": 0.1}


@pytest.fixture(scope="module")
def data(higgs: dict[str, np.ndarray], features: list[str]) -> TrainingData:
    """The 18k events as training rows (what DataReader hands to train_network)."""
    raw = FlatBuilder(FlatInputs(features=features)).raw(higgs)
    labels = (higgs["Label"] == "s").astype(np.int64)
    return TrainingData(
        raw,
        labels,
        higgs["EventId"].astype(np.int64),
        higgs["Weight"].astype(np.float64),
        np.ones(labels.size, dtype=bool),
        [{"dataset": "higgs", "source": "higgs_challenge_18k.csv", "digest": "", "rows": 18000}],
    )


def small(
    features: list[str], split=None, params=None, architecture=None, **training
) -> NetworkSpec:
    """A quick configuration: a few epochs of a small network."""
    return NetworkSpec(
        inputs=FlatInputs(features=features),
        architecture=architecture,
        params=PARAMS if params is None else params,
        training=TrainingSpec(**({"epochs": 4, "patience": 2, "seed": 7} | training)),
        split=SplitSpec(**(split or {})),
    )


def run(spec: NetworkSpec, data: TrainingData, **kw) -> TrainResult:
    return train_network("dnn", spec, data, progress=False, **kw)


def states_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def all_states_equal(a: TrainResult, b: TrainResult) -> bool:
    return len(a.models) == len(b.models) and all(
        states_equal(x.model, y.model) for x, y in zip(a.models, b.models, strict=True)
    )


def test_parity_rerun_gives_bitwise_identical_weights(data, features, tmp_path):
    spec = small(features)
    first = run(spec, data)
    # The caller's thread count must not matter: training pins training.threads.
    torch.set_num_threads(2)
    second = run(spec, data)
    assert torch.get_num_threads() == 2
    assert all_states_equal(first, second)
    assert first.history == second.history
    assert first.metrics == second.metrics
    # No wall times are stored: the saved files are the same bytes.
    a = save_network(tmp_path / "a", "dnn", first, data)
    b = save_network(tmp_path / "b", "dnn", second, data)
    for name in ("model.json", "model.pt", "history.csv"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    other = run(small(features, seed=8), data)
    assert not all_states_equal(first, other)


def test_kfold_rerun_gives_bitwise_identical_weights(data, features):
    spec = small(features, split={"method": "kfold", "folds": 3}, epochs=2)
    first, second = run(spec, data), run(spec, data)
    assert len(first.models) == 3
    assert all_states_equal(first, second)
    assert first.metrics == second.metrics
    # the models of one training differ from each other (own seed streams, own rows)
    assert not states_equal(first.models[0].model, first.models[1].model)


def test_caller_rng_is_untouched(data, features):
    torch.manual_seed(99)
    before = torch.get_rng_state()
    run(small(features, epochs=1), data)
    assert torch.equal(torch.get_rng_state(), before)


def test_epoch_hook_cadence_and_no_influence(data, features):
    calls = []

    def noisy(epoch, model, builder):
        # A monitor that draws random numbers and back-propagates must not
        # change the training (dropout reseeded per epoch, grads zeroed).
        n_inputs = len(builder.input_names)
        calls.append((epoch, model.training, n_inputs))
        torch.rand(1000)
        x = torch.randn(64, n_inputs, requires_grad=True)
        model(x).sum().backward()

    spec = small(features, patience=10)
    with_hook = run(spec, data, on_epoch=noisy)
    without = run(spec, data)
    assert [c[0] for c in calls] == [1, 2, 3, 4]
    assert all(not training for _, training, _ in calls)
    assert calls[0][2] == len(features) + 3  # the three Higgs missing flags
    assert all_states_equal(with_hook, without)
    # k-fold: the hook sees the first model only
    calls.clear()
    run(small(features, split={"method": "kfold", "folds": 3}, epochs=1), data, on_epoch=noisy)
    assert [c[0] for c in calls] == [1]


def test_best_epoch_state_is_kept(data, features):
    # A large learning rate makes the validation loss bounce: early stopping triggers.
    spec = small(features, lr=0.05, epochs=12, patience=2, lr_factor=1.0)
    result = run(spec, data)
    fitted = result.models[0]
    losses = [h["val_loss"] for h in fitted.history]
    assert fitted.best_epoch == int(np.argmin(losses)) + 1
    assert len(losses) <= fitted.best_epoch + spec.training.patience
    assert len(losses) < spec.training.epochs  # it did stop early
    assert fitted.metrics["best_epoch"] == fitted.best_epoch
    assert fitted.metrics["epochs_run"] == len(losses)
    assert all(h["lr"] == 0.05 for h in fitted.history)  # lr_factor 1: constant
    # The returned weights reproduce the best epoch's validation loss.
    odd = data.ids % 2 == 1
    x = torch.from_numpy(fitted.builder.transform(data.raw[odd]))
    y = torch.from_numpy(data.labels[odd].astype(np.float32))
    with torch.inference_mode():
        loss = torch.nn.functional.binary_cross_entropy_with_logits(fitted.model(x), y)
    assert float(loss) == pytest.approx(losses[fitted.best_epoch - 1], rel=1e-5)


def test_lr_schedule_halves_on_plateau(data, features):
    spec = small(features, lr=0.05, epochs=8, patience=8, lr_patience=0)
    lrs = [h["lr"] for h in run(spec, data).history]
    assert lrs[0] == 0.05
    assert min(lrs) < 0.05
    assert all(v in {0.05 * 0.5**k for k in range(9)} for v in lrs)


def test_saved_model_and_history(data, features, higgs, tmp_path):
    spec = small(features)
    result = run(spec, data)
    out = save_network(tmp_path / "m", "dnn", result, data)
    assert out == tmp_path / "m"
    meta = json.loads((out / "model.json").read_text())
    assert meta["format_version"] == 2
    assert meta["name"] == "dnn"
    assert meta["kind"] == "flat"
    assert meta["seed"] == 7
    assert meta["data_hash"] == data.digest()
    assert meta["training_data"] == data.files
    assert meta["architecture"] == {"name": "mlp", "params": PARAMS}
    assert meta["inputs"] == {"kind": "flat", "features": features, "missing_flags": "auto"}
    assert meta["input_names"] == result.models[0].builder.input_names
    assert meta["settings"] == spec.model_dump(mode="json")
    assert meta["split"]["method"] == "parity"
    entry = meta["models"][0]
    assert entry["file"] == "model.pt"
    assert entry["sha256"] == hashlib.sha256((out / "model.pt").read_bytes()).hexdigest()
    assert entry["inputs"] == json.loads(json.dumps(result.models[0].builder.state()))
    assert meta["metrics"]["models"][0]["best_epoch"] == result.models[0].best_epoch
    with (out / "history.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(result.history) == len(result.models[0].history)
    assert tuple(rows[0]) == HISTORY_FIELDS
    assert [int(r["epoch"]) for r in rows] == list(range(1, len(rows) + 1))

    loaded = load_network(out)
    assert loaded.kind == "flat"
    assert loaded.name == "dnn"
    assert loaded.features == features
    assert states_equal(loaded.models[0], result.models[0].model)
    assert loaded.builder == result.models[0].builder
    scores = network_score(out, higgs, output="logit")
    x = torch.from_numpy(result.models[0].builder.transform(data.raw))
    with torch.inference_mode():
        direct = result.models[0].model(x).numpy()
    np.testing.assert_allclose(scores, direct, rtol=1e-5, atol=1e-6)


def test_parity_held_out_metrics(data, features, higgs, tmp_path):
    result = run(small(features, epochs=1), data)
    even = data.ids % 2 == 0
    assert result.models[0].metrics["n_train"] == int(even.sum())
    assert result.models[0].metrics["n_val"] == int((~even).sum())
    held = result.metrics["held_out"]
    assert held["rows"] == int((~even).sum())
    assert held["test_rows"] == 0
    assert result.metrics["n_unusable"] == 0
    assert result.metrics["models"] == [result.models[0].metrics]
    # the held-out AUC is that of the applied scores of the odd events
    path = save_network(tmp_path / "p", "dnn", result, data)
    scores = network_score(path, higgs, output="logit")
    assert held["auc"] == pytest.approx(auc(scores[~even], data.labels[~even]), abs=1e-12)
    assert held["auc_weighted"] == pytest.approx(
        auc(scores[~even], data.labels[~even], data.weights[~even]), abs=1e-12
    )
    # parity validates on the held-out events: the two AUCs agree
    assert held["auc"] == pytest.approx(result.models[0].metrics["val_auc"], abs=1e-9)
    assert 0.6 < held["auc"] < 1.0


def test_kfold_models_never_see_their_fold(data, features, higgs, tmp_path):
    spec = small(features, split={"method": "kfold", "folds": 3}, epochs=2)
    result = run(spec, data)
    ids = data.ids
    assert len(result.models) == 3
    for m, fitted in enumerate(result.models):
        codes = split_codes(ids, spec.split, m)
        assert np.array_equal(codes == TEST, ids % 3 == m)
        assert np.array_equal(codes == VAL, ids % 3 == (m + 1) % 3)
        assert fitted.metrics["n_train"] == int((codes == TRAIN).sum())
        assert fitted.metrics["n_val"] == int((codes == VAL).sum())
        assert {h["model"] for h in fitted.history} == {m}
        # Standardisation fitted on this model's training events only.
        v = higgs["DER_mass_MMC"][codes == TRAIN]
        assert fitted.builder.mean[0] == pytest.approx(v[v != -999.0].mean(), rel=1e-12)
    held = result.metrics["held_out"]
    assert held["rows"] == 18000  # every event scored by the model that never saw it
    assert held_out(ids, spec.split).all()
    assert len(result.metrics["models"]) == 3
    assert 0.6 < held["auc"] < 1.0

    # The saved k-fold model routes each event by EventId % 3 to its model.
    path = save_network(tmp_path / "k", "dnn", result, data)
    assert sorted(p.name for p in path.glob("*.pt")) == [
        "model_fold0.pt",
        "model_fold1.pt",
        "model_fold2.pt",
    ]
    meta = json.loads((path / "model.json").read_text())
    assert [e["applies_to"] for e in meta["models"]] == [f"EventId % 3 == {m}" for m in range(3)]
    scores = network_score(path, higgs, output="logit")
    for m, fitted in enumerate(result.models):
        rows = ids % 3 == m
        x = torch.from_numpy(fitted.builder.transform(data.raw[rows]))
        with torch.inference_mode():
            direct = fitted.model(x).numpy()
        np.testing.assert_allclose(scores[rows], direct, rtol=1e-5, atol=1e-6)
        # ... and not by another fold's model
        other = result.models[(m + 1) % 3]
        with torch.inference_mode():
            wrong = other.model(torch.from_numpy(other.builder.transform(data.raw[rows]))).numpy()
        assert not np.allclose(scores[rows], wrong, rtol=1e-3, atol=1e-3)
    # the held-out AUC is that of the routed scores
    assert held["auc"] == pytest.approx(auc(scores, data.labels), abs=1e-12)


def test_random_split_holds_out_the_test_ids(data, features):
    spec = small(features, split={"method": "random", "seed": 3}, epochs=1)
    result = run(spec, data)
    codes = split_codes(data.ids, spec.split)
    assert len(result.models) == 1
    held = result.metrics["held_out"]
    assert held["rows"] == held["test_rows"] == int((codes == TEST).sum())
    assert 0.15 * 18000 < held["rows"] < 0.25 * 18000
    assert result.models[0].metrics["n_train"] == int((codes == TRAIN).sum())
    assert np.isfinite(held["auc"])


def test_event_weights(data, features):
    w = balanced_weights(data.labels, data.weights)
    assert w[data.labels == 1].sum() == pytest.approx(data.labels.size / 2)
    assert w[data.labels == 0].sum() == pytest.approx(data.labels.size / 2)
    with pytest.raises(InputError, match="background weights sum to 0"):
        balanced_weights(data.labels, np.where(data.labels == 1, 1.0, 0.0))
    weighted = run(small(features, epochs=1, use_weights=True), data)
    plain = run(small(features, epochs=1), data)
    assert not all_states_equal(weighted, plain)
    assert np.isfinite(weighted.models[0].metrics["val_auc_weighted"])
    no_weights = TrainingData(data.raw, data.labels, data.ids, None, data.usable, data.files)
    with pytest.raises(ConfigError, match="use_weights"):
        run(small(features, use_weights=True), no_weights)
    # without weights the weighted figures are absent, not made up
    unweighted = run(small(features, epochs=1), no_weights)
    assert np.isnan(unweighted.models[0].metrics["val_auc_weighted"])
    assert unweighted.metrics["held_out"]["auc_weighted"] is None


def test_spec_validation(features):
    inputs = {"kind": "flat", "features": features}
    with pytest.raises(pydantic.ValidationError, match="extra"):
        NetworkSpec(inputs=inputs, learning_rate=0.1)
    with pytest.raises(pydantic.ValidationError, match="extra"):
        NetworkSpec(inputs=inputs, training={"learning_rate": 0.1})
    with pytest.raises(pydantic.ValidationError, match="folds >= 3"):
        NetworkSpec(inputs=inputs, split={"method": "kfold", "folds": 2})
    with pytest.raises(pydantic.ValidationError, match="n_inputs"):
        NetworkSpec(inputs=inputs, params={"n_inputs": 3})
    with pytest.raises(pydantic.ValidationError, match="duplicate"):
        NetworkSpec(inputs={"kind": "flat", "features": ["a", "a"]})
    with pytest.raises(pydantic.ValidationError, match="augment"):
        NetworkSpec(inputs=inputs, training={"augment": {"rotate": True}})
    spec = NetworkSpec(inputs=inputs)
    assert spec.kind == "flat"
    assert spec.arch == "mlp"
    assert spec.split.method == "parity"
    assert spec.split.n_models == 1
    assert NetworkSpec(inputs=inputs, split={"method": "kfold", "folds": 4}).split.n_models == 4


def test_bad_training_inputs(data, features):
    with pytest.raises(ConfigError, match="unknown architecture"):
        run(small(features, architecture="nope"), data)
    with pytest.raises(ConfigError, match="cannot build"):
        run(small(features, params={"hidden": [8], "activation": "swish"}), data)
    signal_only = TrainingData(
        data.raw, np.ones_like(data.labels), data.ids, data.weights, data.usable, data.files
    )
    with pytest.raises(InputError, match="training rows of model 0 need signal and background"):
        run(small(features, epochs=1), signal_only)


def test_data_reader_reads_the_converted_sample_once(
    higgs_converted, higgs_csv_path, higgs, features
):
    datasets = {
        "higgs": Dataset(
            "higgs",
            "csv",
            [FileEntry(higgs_csv_path, higgs_converted.root_path, higgs_converted.treename, 18000)],
        )
    }
    reader = DataReader(datasets)
    spec = small(features)
    got = reader.training_data("dnn", spec)
    assert reader.training_data("dnn", spec) is got  # read once, handed on
    assert np.array_equal(got.raw, FlatBuilder(spec.inputs).raw(higgs), equal_nan=True)
    assert np.array_equal(got.labels, (higgs["Label"] == "s").astype(np.int64))
    assert np.array_equal(got.ids, higgs["EventId"])
    assert np.array_equal(got.weights, higgs["Weight"])
    assert got.usable.all()
    digest = hashlib.sha256(higgs_csv_path.read_bytes()).hexdigest()
    assert got.files == [
        {"dataset": "higgs", "source": str(higgs_csv_path), "digest": digest, "rows": 18000}
    ]
    assert list(got.baseline) == features
    first = reader.training_data("dnn", spec.model_copy(update={"max_events": 100}))
    assert len(first) == 100
    assert np.array_equal(first.ids, higgs["EventId"][:100])
    # Bad label and id branches are one-line input errors.
    bad_label = small(features).model_copy(update={"label": "PRI_jet_num"})
    with pytest.raises(InputError, match="'PRI_jet_num' must hold 0/1"):
        reader.training_data("dnn", bad_label)
    bad_ids = small(features, split={"id_column": "Weight"})
    with pytest.raises(InputError, match="'Weight' must hold integers"):
        reader.training_data("dnn", bad_ids)
    absent = small([*features[:2], "PRI_nothing"])
    with pytest.raises(InputError, match="PRI_nothing"):
        reader.training_data("dnn", absent)
    with pytest.raises(ConfigError, match="unknown dataset 'ttbar'"):
        reader.training_data("dnn", small(features).model_copy(update={"datasets": ["ttbar"]}))


def test_progress_bar_runs(data, features):
    result = train_network("dnn", small(features, epochs=1), data, progress=True)
    assert len(result.history) == 1


@pytest.mark.slow
def test_full_training_default_settings(data, features):
    """The default configuration on the 18k sample: quick, and as good as a GBT (~0.893)."""
    spec = NetworkSpec(
        inputs=FlatInputs(features=features),
        params={"hidden": [128, 128, 128], "activation": "tanh", "dropout": 0.1},
    )
    t0 = time.perf_counter()
    result = run(spec, data)
    elapsed = time.perf_counter() - t0
    assert elapsed < 120
    assert result.metrics["held_out"]["auc"] >= 0.89
