"""network_score as a deterministic column, and the model files behind it."""

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
from hepnn.features import MISSING_VALUE, FeaturePrep
from hepnn.modelio import load_model, save_model
from hepnn.models import build, forward
from hepnn.variables import cache_info, clear_cache, network_score

PARAMS = {"hidden": [128, 128, 128], "activation": "tanh", "dropout": 0.1}


def bits(a: np.ndarray) -> np.ndarray:
    """The float32 bit patterns, for exact comparisons."""
    assert a.dtype == np.float32
    return a.view(np.uint32)


def _net(n_inputs: int, seed: int) -> torch.nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build("mlp", n_inputs=n_inputs, **PARAMS).eval()


@pytest.fixture(scope="module")
def parity_model(tmp_path_factory, higgs, features) -> Path:
    """A 3×128 network (random weights: the bits, not the physics, matter here)."""
    even = higgs["EventId"] % 2 == 0
    prep = FeaturePrep.fit({f: higgs[f][even] for f in features}, features)
    settings = {"architecture": "mlp", "params": PARAMS, "seed": 1, "split": {"method": "parity"}}
    return save_model(
        tmp_path_factory.mktemp("m") / "parity",
        _net(prep.n_inputs, 1),
        prep,
        settings,
        {},
        "0" * 64,
    )


@pytest.fixture(scope="module")
def kfold_model(tmp_path_factory, higgs, features) -> Path:
    ids = higgs["EventId"]
    nets, preps = [], []
    for i in range(3):
        train = (ids % 3 != i) & (ids % 3 != (i + 1) % 3)
        preps.append(FeaturePrep.fit({f: higgs[f][train] for f in features}, features))
        nets.append(_net(preps[-1].n_inputs, 10 + i))
    settings = {
        "architecture": "mlp",
        "params": PARAMS,
        "seed": 1,
        "split": {"method": "kfold", "folds": 3, "id_column": "EventId"},
    }
    return save_model(tmp_path_factory.mktemp("m") / "kfold", nets, preps, settings, {}, "0" * 64)


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
        from hepnn.variables import network_score
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


def test_rewritten_model_is_reloaded(tmp_path, higgs, features):
    prep = FeaturePrep.fit(higgs, features)
    settings = {"architecture": "mlp", "params": PARAMS}
    path = save_model(tmp_path / "m", _net(prep.n_inputs, 1), prep, settings, {}, "")
    clear_cache()
    first = network_score(path, higgs)
    save_model(path, _net(prep.n_inputs, 2), prep, settings, {}, "")
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
    prep = FeaturePrep.fit(higgs, features)
    path = save_model(
        tmp_path / "m",
        _net(prep.n_inputs, 1),
        prep,
        {"architecture": "mlp", "params": PARAMS},
        {},
        "",
    )
    network_score(path, higgs)  # warm cache: the tamper must still be seen
    _tamper(path / "model.pt")
    with pytest.raises(ModelError, match=r"model\.pt sha256 mismatch: .*model\.pt"):
        network_score(path, higgs)
    clear_cache()
    with pytest.raises(ModelError, match="sha256 mismatch"):
        load_model(path)


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


def test_coffea_base_schema_events(tmp_path, kfold_model, higgs, features):
    uproot = pytest.importorskip("uproot")
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
    loaded = load_model(kfold_model)
    assert loaded.kfold
    assert loaded.folds == 3
    ids = higgs["EventId"]
    scores = network_score(kfold_model, higgs, output="logit")
    for i, (net, prep) in enumerate(zip(loaded.models, loaded.preps, strict=True)):
        rows = ids % 3 == i
        x = torch.from_numpy(prep.transform({k: v[rows] for k, v in higgs.items()}))
        with torch.inference_mode():
            np.testing.assert_allclose(scores[rows], net(x).numpy(), rtol=1e-5, atol=1e-6)
    no_ids = {k: v for k, v in higgs.items() if k != "EventId"}
    explicit = network_score(kfold_model, no_ids, output="logit", event_ids=ids)
    assert np.array_equal(bits(explicit), bits(scores))
    with pytest.raises(ModelError, match="EventId"):
        network_score(kfold_model, no_ids)
    with pytest.raises(ModelError, match="fold models"):
        _ = loaded.model


def test_output_modes_and_empty_input(parity_model, higgs):
    logit = network_score(parity_model, higgs, output="logit")
    prob = network_score(parity_model, higgs)
    assert np.array_equal(bits(prob), bits(torch.sigmoid(torch.from_numpy(logit)).numpy()))
    empty = network_score(parity_model, {k: v[:0] for k, v in higgs.items()})
    assert empty.dtype == np.float32
    assert empty.shape == (0,)


def test_load_model_round_trip(parity_model):
    loaded = load_model(parity_model / "model.pt")
    assert not loaded.model.training
    meta = json.loads((parity_model / "model.json").read_text())
    assert loaded.prep.input_names == meta["input_names"]
    assert meta["models"][0]["file"] == "model.pt"
    assert meta["split"] == {"method": "parity", "folds": 2, "id_column": "EventId"}


def test_broken_model_files_are_one_line_model_errors(tmp_path, parity_model):
    with pytest.raises(ModelError, match="model file not found"):
        load_model(tmp_path / "nowhere")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.pt").write_bytes((parity_model / "model.pt").read_bytes())
    text = (parity_model / "model.json").read_text()
    (broken / "model.json").write_text(text[: len(text) // 2])  # truncated
    with pytest.raises(ModelError, match=r"corrupt model description .*model\.json") as err:
        load_model(broken)
    assert "\n" not in str(err.value)
    meta = json.loads(text)
    meta["architecture"]["name"] = "no-such-net"
    (broken / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="no-such-net"):
        load_model(broken)
    meta["architecture"] = {"name": "mlp", "params": {**PARAMS, "hidden": [64]}}
    (broken / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="do not fit") as err:
        load_model(broken)
    assert "\n" not in str(err.value)
    (broken / "model.pt").unlink()
    with pytest.raises(ModelError, match=r"model file not found: .*model\.pt"):
        load_model(broken)


def test_thread_pinning_is_in_force():
    seen = []
    with forward.torch_threads(forward.INFERENCE_THREADS):
        seen.append(torch.get_num_threads())
    assert seen == [1]
