"""network_score as a deterministic column, and the model files behind it (hepnn.nets.apply/store)."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import awkward as ak
import numpy as np
import pytest
import torch

from hepnn.errors import ModelError
from hepnn.models import build, forward
from hepnn.nets.apply import (
    EventColumns,
    apply_network,
    cache_info,
    clear_cache,
    get_network,
    jet_scores,
    network_score,
    replica_scores,
)
from hepnn.nets.apply import forward as nets_forward
from hepnn.nets.data import TrainingData
from hepnn.nets.flat import MISSING_VALUE, FlatBuilder
from hepnn.nets.spec import FlatInputs, NetworkSpec, SplitSpec, TrainingSpec
from hepnn.nets.split import route
from hepnn.nets.store import (
    FORMAT_VERSION,
    load_network,
    model_json_path,
    parse_model_json,
    save_network,
    weight_file,
)
from hepnn.nets.train import FittedModel, TrainResult, train_network

PARAMS = {"hidden": [128, 128, 128], "activation": "tanh", "dropout": 0.1}


def bits(a: np.ndarray) -> np.ndarray:
    """The float32 bit patterns, for exact comparisons."""
    assert a.dtype == np.float32
    return a.view(np.uint32)


def _net(n_inputs: int, seed: int) -> torch.nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build("mlp", n_inputs=n_inputs, **PARAMS).eval()


def _fit(higgs: dict[str, np.ndarray], features: list[str], rows: np.ndarray) -> FlatBuilder:
    b = FlatBuilder(FlatInputs(features=features))
    return b.fit(b.raw({f: higgs[f][rows] for f in features}))


def _tiny_data() -> TrainingData:
    """Stands in for the training rows when saving hand-made networks (digest, files)."""
    return TrainingData(
        np.zeros((4, 1)), np.array([0, 1, 0, 1]), np.arange(4), None, np.ones(4, bool), []
    )


def _save(path: Path, nets, builders, split: dict) -> Path:
    """Save networks with given weights as the model folder of a flat network."""
    spec = NetworkSpec(inputs=builders[0].settings, params=PARAMS, split=SplitSpec(**split))
    fitted = [FittedModel(n, b, [], 1, {}) for n, b in zip(nets, builders, strict=True)]
    return save_network(path, "dnn", TrainResult(spec, fitted, {}), _tiny_data())


@pytest.fixture(scope="module")
def parity_model(tmp_path_factory, higgs, features) -> Path:
    """A 3x128 network (random weights: the bits, not the physics, matter here)."""
    b = _fit(higgs, features, higgs["EventId"] % 2 == 0)
    return _save(tmp_path_factory.mktemp("m") / "parity", [_net(33, 1)], [b], {"method": "parity"})


@pytest.fixture(scope="module")
def kfold_model(tmp_path_factory, higgs, features) -> Path:
    ids = higgs["EventId"]
    nets, builders = [], []
    for i in range(3):
        builders.append(_fit(higgs, features, (ids % 3 != i) & (ids % 3 != (i + 1) % 3)))
        nets.append(_net(len(builders[-1].input_names), 10 + i))
    split = {"method": "kfold", "folds": 3, "id_column": "EventId"}
    return _save(tmp_path_factory.mktemp("m") / "kfold", nets, builders, split)


def _chunks(cols: dict[str, np.ndarray], cuts: list[int]) -> list[dict[str, np.ndarray]]:
    edges = [0, *cuts, len(cols["EventId"])]
    return [{k: v[a:b] for k, v in cols.items()} for a, b in itertools.pairwise(edges)]


@pytest.mark.parametrize("which", ["parity_model", "kfold_model"])
def test_bitwise_identical_for_any_chunking(which, request, higgs):
    model = request.getfixturevalue(which)
    whole = network_score(model, higgs)
    assert whole.dtype == np.float32
    assert whole.shape == (18000,)
    by_1000 = np.concatenate(
        [network_score(model, c) for c in _chunks(higgs, list(range(1000, 18000, 1000)))]
    )
    rng = np.random.default_rng(0)
    cuts = sorted(rng.choice(np.arange(1, 18000), size=12, replace=False).tolist())
    random_split = np.concatenate([network_score(model, c) for c in _chunks(higgs, cuts)])
    assert np.array_equal(bits(by_1000), bits(whole))
    assert np.array_equal(bits(random_split), bits(whole))
    # The score of any one chunk is the slice of the score of the whole.
    for a, b in [(0, 1), (17, 1041), (5000, 5000 + 1024), (17999, 18000)]:
        part = network_score(model, {k: v[a:b] for k, v in higgs.items()})
        assert np.array_equal(bits(part), bits(whole[a:b]))
    # A permutation of the events permutes the scores, bit for bit.
    perm = rng.permutation(18000)
    shuffled = network_score(model, {k: v[perm] for k, v in higgs.items()})
    assert np.array_equal(bits(shuffled), bits(whole[perm]))


def test_bitwise_identical_for_caller_thread_counts(parity_model, higgs):
    results = []
    for n in (1, 2, 3):
        torch.set_num_threads(n)
        results.append(network_score(parity_model, higgs))
        assert torch.get_num_threads() == n  # restored after the pinned section
    assert all(np.array_equal(bits(r), bits(results[0])) for r in results)


def test_bitwise_identical_in_a_fresh_process(
    parity_model, kfold_model, higgs, higgs_csv_path, tmp_path
):
    out = tmp_path / "scores.npz"
    script = textwrap.dedent(
        f"""
        import numpy as np, torch
        torch.set_num_threads(2)
        from hepnn.nets.apply import network_score
        d = np.genfromtxt({str(higgs_csv_path)!r}, delimiter=",", names=True, dtype=None, encoding="utf-8")
        cols = {{n: d[n] for n in d.dtype.names}}
        np.savez({str(out)!r}, parity=network_score({str(parity_model)!r}, cols, output="logit"),
                 kfold=network_score({str(kfold_model)!r}, cols))
        """
    )
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    subprocess.run([sys.executable, "-c", script], check=True, env=env, timeout=120)
    fresh = np.load(out)
    assert np.array_equal(
        bits(fresh["parity"]), bits(network_score(parity_model, higgs, output="logit"))
    )
    assert np.array_equal(bits(fresh["kfold"]), bits(network_score(kfold_model, higgs)))


def test_model_loaded_once_per_process(parity_model, higgs):
    clear_cache()
    for c in _chunks(higgs, [3000, 6000, 9000, 12000]):
        network_score(parity_model, c)
    network_score(parity_model / "model.json", higgs)  # same model, other spelling
    assert cache_info() == {"hits": 5, "loads": 1, "size": 1}
    assert get_network(parity_model / "model.pt") is get_network(parity_model)


def test_rewritten_model_is_reloaded(tmp_path, higgs, features):
    b = _fit(higgs, features, np.ones(18000, bool))
    path = _save(tmp_path / "m", [_net(33, 1)], [b], {})
    clear_cache()
    first = network_score(path, higgs)
    _save(path, [_net(33, 2)], [b], {})
    second = network_score(path, higgs)
    assert cache_info()["loads"] == 2
    assert not np.array_equal(first, second)


def _tamper(pt: Path) -> None:
    data = bytearray(pt.read_bytes())
    data[-100] ^= 0xFF
    st = pt.stat()
    pt.write_bytes(bytes(data))
    # Make sure the mtime moves even on a coarse-grained file system.
    os.utime(pt, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))


def test_hash_tamper_is_a_model_error(tmp_path, higgs, features):
    b = _fit(higgs, features, np.ones(18000, bool))
    path = _save(tmp_path / "m", [_net(33, 1)], [b], {})
    network_score(path, higgs)  # warm cache: the tamper must still be seen
    _tamper(path / "model.pt")
    with pytest.raises(ModelError, match=r"model\.pt sha256 mismatch: .*model\.pt"):
        network_score(path, higgs)
    clear_cache()
    with pytest.raises(ModelError, match="sha256 mismatch"):
        load_network(path)


def test_missing_feature_is_a_model_error_naming_it(parity_model, higgs):
    cols = {k: v for k, v in higgs.items() if k != "DER_pt_h"}
    with pytest.raises(ModelError, match="'DER_pt_h'"):
        network_score(parity_model, cols)


def test_awkward_option_arrays_are_missing(parity_model, higgs, features):
    expected = network_score(parity_model, higgs)
    record = ak.zip(
        {
            f: ak.mask(ak.Array(higgs[f]), higgs[f] != MISSING_VALUE)
            if f.startswith("DER")
            else ak.Array(higgs[f])
            for f in features
        }
    )
    assert "?" in str(record.type)  # option types really present
    assert np.array_equal(bits(network_score(parity_model, record)), bits(expected))
    as_dict = {f: ak.mask(ak.Array(higgs[f]), higgs[f] != MISSING_VALUE) for f in features}
    assert np.array_equal(bits(network_score(parity_model, as_dict)), bits(expected))
    assert np.array_equal(bits(network_score(parity_model, EventColumns(higgs))), bits(expected))


def test_coffea_base_schema_events(tmp_path, kfold_model, higgs, features):
    import uproot
    from coffea.nanoevents import BaseSchema, NanoEventsFactory

    n = 3000
    path = tmp_path / "events.root"
    with uproot.recreate(path) as f:
        f.mktree("Events", {**dict.fromkeys(features, np.float64), "EventId": np.int64})
        f["Events"].extend({k: higgs[k][:n] for k in [*features, "EventId"]})
    events = NanoEventsFactory.from_root({str(path): "Events"}, schemaclass=BaseSchema).events()
    # k-fold routing reads the EventId field of the events.
    scores = network_score(kfold_model, events)
    expected = network_score(kfold_model, {k: v[:n] for k, v in higgs.items()})
    assert np.array_equal(bits(scores), bits(expected))


def test_kfold_routing(kfold_model, higgs):
    loaded = load_network(kfold_model)
    assert loaded.split.method == "kfold"
    assert loaded.split.folds == 3
    assert len(loaded.models) == len(loaded.builders) == 3
    assert [e["file"] for e in loaded.meta["models"]] == [
        weight_file(loaded.split, m) for m in range(3)
    ]
    ids = higgs["EventId"]
    assert np.array_equal(route(ids, loaded.split), ids % 3)
    scores = network_score(kfold_model, higgs, output="logit")
    for i, (net, builder) in enumerate(zip(loaded.models, loaded.builders, strict=True)):
        rows = ids % 3 == i
        x = torch.from_numpy(builder.transform(builder.raw({k: v[rows] for k, v in higgs.items()})))
        with torch.inference_mode():
            np.testing.assert_allclose(scores[rows], net(x).numpy(), rtol=1e-5, atol=1e-6)
    no_ids = {k: v for k, v in higgs.items() if k != "EventId"}
    explicit = network_score(kfold_model, no_ids, output="logit", event_ids=ids)
    assert np.array_equal(bits(explicit), bits(scores))
    with pytest.raises(ModelError, match="EventId"):
        network_score(kfold_model, no_ids)


def test_output_modes_and_empty_input(parity_model, higgs):
    logit = network_score(parity_model, higgs, output="logit")
    prob = network_score(parity_model, higgs)
    assert np.array_equal(bits(prob), bits(torch.sigmoid(torch.from_numpy(logit)).numpy()))
    empty = network_score(parity_model, {k: v[:0] for k, v in higgs.items()})
    assert empty.dtype == np.float32
    assert empty.shape == (0,)


def test_flat_network_does_not_score_jets(parity_model):
    with pytest.raises(ModelError, match=r"scores events; use hepnn\.nets\.apply\.network_score"):
        jet_scores(parity_model, None)  # type: ignore[arg-type]


def test_replica_scores_are_seeded_and_chunk_independent(parity_model, higgs):
    reps = replica_scores(parity_model, higgs, samples=3, seed=5)
    assert reps.shape == (3, 18000)
    assert reps.dtype == np.float32
    assert np.array_equal(bits(reps), bits(replica_scores(parity_model, higgs, samples=3, seed=5)))
    halves = [replica_scores(parity_model, c, samples=3, seed=5) for c in _chunks(higgs, [7001])]
    assert np.array_equal(bits(np.concatenate(halves, axis=1)), bits(reps))
    nominal = network_score(parity_model, higgs)
    assert not np.array_equal(reps[0], nominal)  # dropout is on in the replicas
    assert not np.array_equal(reps[0], reps[1])
    assert abs(float(reps.mean()) - float(nominal.mean())) < 0.05


# ------------------------------------------------------------------ model store
@pytest.fixture(scope="module")
def trained(higgs, features, tmp_path_factory):
    """A small network trained for one epoch on the real sample, and its saved folder."""
    raw = FlatBuilder(FlatInputs(features=features)).raw(higgs)
    labels = (higgs["Label"] == "s").astype(np.int64)
    data = TrainingData(
        raw, labels, higgs["EventId"].astype(np.int64), higgs["Weight"], np.ones(18000, bool), []
    )
    spec = NetworkSpec(
        inputs=FlatInputs(features=features),
        params={"hidden": [32, 32], "activation": "tanh", "dropout": 0.1},
        training=TrainingSpec(epochs=1, seed=3),
    )
    result = train_network("dnn", spec, data, progress=False)
    return result, save_network(tmp_path_factory.mktemp("t") / "dnn", "dnn", result, data)


def test_save_load_round_trip_gives_the_same_bits(trained, higgs):
    result, path = trained
    fitted = result.models[0]
    in_memory = nets_forward(
        fitted.model, fitted.builder.transform(fitted.builder.raw(higgs)), 1024, "logit"
    )
    loaded = load_network(path)
    assert not loaded.models[0].training
    assert loaded.builder == fitted.builder
    sa, sb = loaded.models[0].state_dict(), fitted.model.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    from_disk = network_score(path, higgs, output="logit")
    assert np.array_equal(bits(from_disk), bits(in_memory))
    direct = apply_network(loaded, EventColumns(higgs), output="logit")
    assert np.array_equal(bits(direct), bits(in_memory))


def test_load_network_round_trip(parity_model):
    loaded = load_network(parity_model / "model.pt")
    assert loaded.path == parity_model.resolve()
    assert not loaded.models[0].training
    assert loaded.kind == "flat"
    assert loaded.name == "dnn"
    meta = json.loads((parity_model / "model.json").read_text())
    assert loaded.builder.input_names == meta["input_names"]
    assert meta["models"][0]["file"] == "model.pt"
    assert meta["split"]["method"] == "parity"
    assert meta["split"]["id_column"] == "EventId"
    assert meta["format_version"] == FORMAT_VERSION == 2
    assert model_json_path(parity_model) == model_json_path(parity_model / "model.json")


def _broken_copy(tmp_path: Path, model: Path) -> tuple[Path, dict]:
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in model.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    return broken, json.loads((model / "model.json").read_text())


def test_broken_model_files_are_one_line_model_errors(tmp_path, parity_model):
    with pytest.raises(ModelError, match="model file not found"):
        load_network(tmp_path / "nowhere")
    broken, meta = _broken_copy(tmp_path, parity_model)
    text = (parity_model / "model.json").read_text()
    (broken / "model.json").write_text(text[: len(text) // 2])  # truncated
    with pytest.raises(ModelError, match=r"corrupt model description .*model\.json") as err:
        load_network(broken)
    assert "\n" not in str(err.value)
    (broken / "model.json").write_text(json.dumps({**meta, "format": "other"}))
    with pytest.raises(ModelError, match="not a hepnn model description"):
        load_network(broken)
    (broken / "model.json").write_text(json.dumps({**meta, "models": []}))
    with pytest.raises(ModelError, match="no models listed"):
        load_network(broken)
    del_inputs = {**meta, "models": [{k: v for k, v in meta["models"][0].items() if k != "inputs"}]}
    (broken / "model.json").write_text(json.dumps(del_inputs))
    with pytest.raises(ModelError, match="incomplete model description"):
        load_network(broken)
    meta["architecture"]["name"] = "no-such-net"
    (broken / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="no-such-net"):
        load_network(broken)
    meta["architecture"] = {"name": "mlp", "params": {**PARAMS, "hidden": [64]}}
    (broken / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="do not fit") as err:
        load_network(broken)
    assert "\n" not in str(err.value)
    (broken / "model.pt").unlink()
    with pytest.raises(ModelError, match=r"model file not found: .*model\.pt"):
        load_network(broken)


@pytest.mark.parametrize("bad", ["../x.pt", "ABSOLUTE", "sub/model.pt", "..", ""])
def test_weight_files_outside_the_model_folder_are_refused(tmp_path, parity_model, bad):
    broken, meta = _broken_copy(tmp_path, parity_model)
    if bad == "ABSOLUTE":
        bad = str(broken / "model.pt")  # an absolute path, even to the right file
    # a file the weights could be read from, if the name were followed
    (tmp_path / "x.pt").write_bytes((parity_model / "model.pt").read_bytes())
    meta["models"][0]["file"] = bad
    (broken / "model.json").write_text(json.dumps(meta))
    with pytest.raises(
        ModelError, match=r"models\.file must be a file name in the model folder"
    ) as err:
        load_network(broken)
    assert "\n" not in str(err.value)
    with pytest.raises(ModelError, match=r"models\.file"):
        get_network(broken)


def test_old_format_version_is_refused_in_one_line(tmp_path, parity_model):
    broken, meta = _broken_copy(tmp_path, parity_model)
    (broken / "model.json").write_text(json.dumps({**meta, "format_version": 1}))
    with pytest.raises(ModelError, match="model format version 1, this hepnn reads 2") as err:
        load_network(broken)
    assert "\n" not in str(err.value)
    assert "retrain" in str(err.value)
    with pytest.raises(ModelError, match="format version 1"):
        parse_model_json(broken / "model.json", (broken / "model.json").read_bytes())


def test_model_count_must_match_the_split(tmp_path, parity_model):
    broken, meta = _broken_copy(tmp_path, parity_model)
    meta["split"] = {"method": "kfold", "folds": 3, "id_column": "EventId"}
    (broken / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="kfold split has 3 model"):
        load_network(broken)


def test_thread_pinning_is_in_force():
    seen = []
    with forward.torch_threads(forward.INFERENCE_THREADS):
        seen.append(torch.get_num_threads())
    assert seen == [1]
