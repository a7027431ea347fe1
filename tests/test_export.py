"""``hepnn export``: TorchScript and ONNX files that reproduce network_score / jet_scores per fold."""

from __future__ import annotations

import json
from pathlib import Path

import awkward as ak
import numpy as np
import pytest
import torch
import uproot
import yaml
from click.testing import CliRunner

from hepnn.cli import main
from hepnn.jets.batch import JetBatch, fatjet_batch, jet_labels
from hepnn.models import build
from hepnn.models.forward import padded_apply, torch_threads
from hepnn.nets.apply import get_network, jet_scores, network_score
from hepnn.nets.data import TrainingData
from hepnn.nets.flat import FlatBuilder
from hepnn.nets.inputs import make_builder
from hepnn.nets.spec import FlatInputs, NetworkSpec, SplitSpec
from hepnn.nets.split import route
from hepnn.nets.store import save_network
from hepnn.nets.train import FittedModel, TrainResult

REPO = Path(__file__).resolve().parents[1]
#: ONNX Runtime uses its own kernels: agreement with network_score on the sigmoid score.
ONNX_ATOL = 1e-5


def bits(a: np.ndarray) -> np.ndarray:
    assert a.dtype == np.float32
    return a.view(np.uint32)


def _data(n: int = 4) -> TrainingData:
    return TrainingData(
        np.zeros((n, 1)), np.arange(n) % 2, np.arange(n), None, np.ones(n, bool), []
    )


#: The shipped DNN's input symmetry (φ differences to the tau, signed η).
SYMMETRY = yaml.safe_load((REPO / "configs" / "higgs.yaml").read_text())["networks"]["dnn"][
    "inputs"
]["symmetry"]


@pytest.fixture(scope="module", params=["plain", "symmetry"])
def higgs_kfold(request, tmp_path_factory, higgs, features) -> Path:
    """A 3-fold flat network on the 30 Higgs features (seeded weights: bits matter, not physics).

    ``symmetry``: with the shipped config's ``inputs.symmetry`` (the graph reads the φ
    reference and drops it).
    """
    ids = higgs["EventId"]
    inputs = FlatInputs(
        features=features, symmetry=SYMMETRY if request.param == "symmetry" else None
    )
    spec = NetworkSpec(
        inputs=inputs,
        params={"hidden": [32, 32], "activation": "tanh", "dropout": 0.1},
        split=SplitSpec(method="kfold", folds=3, id_column="EventId"),
    )
    fitted = []
    for i in range(3):
        b = FlatBuilder(inputs)
        train = (ids % 3 != i) & (ids % 3 != (i + 1) % 3)
        b = b.fit(b.raw({f: higgs[f][train] for f in features}))
        torch.manual_seed(20 + i)
        net = build("mlp", n_inputs=len(b.input_names), **spec.params).eval()
        fitted.append(FittedModel(net, b, [], 1, {}))
    return save_network(
        tmp_path_factory.mktemp("m") / "dnn", "dnn", TrainResult(spec, fitted, {}), _data()
    )


@pytest.fixture(scope="module")
def exported(higgs_kfold: Path, tmp_path_factory) -> Path:
    pytest.importorskip(
        "onnx", reason="ONNX export needs the export extra: pip install 'hepnn[export]'"
    )
    out = tmp_path_factory.mktemp("export")
    result = CliRunner().invoke(main, ["export", str(higgs_kfold.parent), "-o", str(out)])
    assert result.exit_code == 0, result.output
    return out / "dnn"


def _scripted(path: Path, x: np.ndarray, micro_batch: int) -> np.ndarray:
    """The TorchScript file on zero-padded micro-batches, one thread: network_score's exact forward."""
    module = torch.jit.load(str(path))
    with torch_threads(1):
        return padded_apply(module, torch.from_numpy(np.ascontiguousarray(x)), micro_batch).numpy()


def test_flat_export_per_fold_bitwise_and_onnx(
    exported: Path, higgs_kfold: Path, higgs, features
) -> None:
    doc = json.loads((exported / "export.json").read_text())
    assert doc["input"]["columns"] == features
    assert doc["input"]["dtype"] == "float64"
    assert doc["routing"]["rule"] == "EventId % 3"
    assert [f["torchscript"]["file"] for f in doc["files"]] == ["fold0.pt", "fold1.pt", "fold2.pt"]
    cols = {f: higgs[f] for f in [*features, "EventId"]}
    expected = network_score(higgs_kfold, cols)
    raw = np.stack([higgs[f].astype(np.float64) for f in features], axis=1)  # -999 kept as written
    assert (raw == -999.0).any()
    which = route(higgs["EventId"], get_network(higgs_kfold).split)
    ort = pytest.importorskip("onnxruntime")
    for fold in range(3):
        rows = np.flatnonzero(which == fold)
        got = _scripted(exported / f"fold{fold}.pt", raw[rows], doc["micro_batch"])
        assert np.array_equal(bits(got), bits(expected[rows])), f"fold {fold}"
        sess = ort.InferenceSession(
            str(exported / f"fold{fold}.onnx"), providers=["CPUExecutionProvider"]
        )
        onnx_scores = sess.run(["score"], {"features": raw[rows]})[0]
        assert onnx_scores.dtype == np.float32
        assert np.max(np.abs(onnx_scores - expected[rows])) < ONNX_ATOL
    # the wrong fold's file gives other scores: the routing matters
    other = _scripted(exported / "fold0.pt", raw[which == 1], doc["micro_batch"])
    assert not np.array_equal(other, expected[which == 1])


def test_log1p_transform_is_in_the_graph(higgs, features, tmp_path: Path) -> None:
    """``inputs.transform: log1p`` is exported (torch's log1p: float32 scores within 1 ulp-ish)."""
    logged = ["DER_mass_MMC", "DER_pt_h", "PRI_met"]
    inputs = FlatInputs(features=features, transform=dict.fromkeys(logged, "log1p"))
    spec = NetworkSpec(inputs=inputs, params={"hidden": [16], "activation": "tanh", "dropout": 0.0},
                       split=SplitSpec(method="parity", id_column="EventId"))  # fmt: skip
    b = FlatBuilder(inputs)
    b = b.fit(b.raw({f: higgs[f] for f in features}))
    torch.manual_seed(3)
    net = build("mlp", n_inputs=len(b.input_names), **spec.params).eval()
    path = save_network(
        tmp_path / "dnn", "dnn", TrainResult(spec, [FittedModel(net, b, [], 1, {})], {}), _data()
    )
    result = CliRunner().invoke(
        main, ["export", str(path), "-o", str(tmp_path / "out"), "--no-onnx"]
    )
    assert result.exit_code == 0, result.output
    cols = {f: higgs[f][:4096] for f in [*features, "EventId"]}
    expected = network_score(path, cols)
    raw = np.stack([cols[f].astype(np.float64) for f in features], axis=1)
    got = _scripted(tmp_path / "out" / "dnn" / "fold0.pt", raw, 1024)
    assert np.max(np.abs(got - expected)) < 1e-6
    # without the transform in the graph the scores would be far off
    plain = FlatBuilder(FlatInputs(features=features))
    plain = plain.fit(plain.raw({f: higgs[f] for f in features}))
    assert np.max(np.abs(got - net_scores(net, plain.transform(plain.raw(cols))))) > 1e-3


def net_scores(net: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return torch.sigmoid(net(torch.from_numpy(x))).reshape(-1).numpy()


def test_nan_and_sentinel_are_the_same_missing_value(exported: Path, higgs, features) -> None:
    raw = np.stack([higgs[f].astype(np.float64) for f in features], axis=1)[:2048]
    as_nan = np.where(raw == -999.0, np.nan, raw)
    a = _scripted(exported / "fold1.pt", raw, 1024)
    b = _scripted(exported / "fold1.pt", as_nan, 1024)
    assert np.array_equal(bits(a), bits(b))


# -------------------------------------------------------------------- jets
@pytest.fixture(scope="module")
def toptag() -> tuple[ak.Array, JetBatch]:
    from hepnn.pipeline import cache_dir
    from hepnn.samples import load_samples, resolve_samples

    ds = resolve_samples(load_samples(REPO / "samples" / "toptag.yaml"), cache_dir())["toptag"]
    with uproot.open(ds.files[0].root_path) as fh:
        arrays = fh[ds.files[0].treename].arrays(library="ak")[:600]
    batch = fatjet_batch(arrays)
    assert batch is not None
    return arrays, batch


def _tiny_jet_network(path: Path, kind: str, arrays: ak.Array, batch: JetBatch) -> Path:
    inputs = {"kind": kind} | ({"max_constituents": 32} if kind == "sequence" else {})
    spec = NetworkSpec.model_validate(
        {"inputs": inputs, "params": {"filters": [4, 4], "dense": [8], "dropout": 0.1},
         "label": "label", "split": {"method": "random", "id_column": "event"}}
    )  # fmt: skip
    builder = make_builder(spec.inputs)
    raw = builder.raw(batch)
    fitted = builder.fit(raw)
    torch.manual_seed(7)
    model = build(spec.arch, **spec.params, **fitted.arch_inputs()).eval()
    labels = jet_labels(arrays, "label", batch)
    ids = ak.to_numpy(arrays["event"])[batch.event_index].astype(np.int64)
    data = TrainingData(raw, labels, ids, None, ~fitted.unusable(batch), [], {})
    result = TrainResult(spec, [FittedModel(model, fitted, [], 1, {})], {})
    return save_network(path, kind, result, data)


@pytest.mark.parametrize("kind", ["image", "sequence"])
def test_tagger_export_bitwise_and_onnx(kind: str, toptag, tmp_path: Path) -> None:
    pytest.importorskip(
        "onnx", reason="ONNX export needs the export extra: pip install 'hepnn[export]'"
    )
    arrays, batch = toptag
    model = _tiny_jet_network(tmp_path / "models" / kind, kind, arrays, batch)
    result = CliRunner().invoke(
        main, ["export", str(tmp_path / "models"), "-o", str(tmp_path / "x")]
    )
    assert result.exit_code == 0, result.output
    out = tmp_path / "x" / kind
    doc = json.loads((out / "export.json").read_text())
    assert doc["kind"] == kind
    assert doc["routing"]["method"] == "random"
    expected = jet_scores(model, batch)
    raw = get_network(model).builder.raw(batch)  # image / sequence preparation stays outside
    assert list(raw.shape[1:]) == doc["input"]["shape"][1:]
    ok = ~np.isnan(expected)
    got = _scripted(out / "fold0.pt", raw, doc["micro_batch"])
    assert np.array_equal(bits(got[ok]), bits(expected[ok]))
    ort = pytest.importorskip("onnxruntime")
    sess = ort.InferenceSession(str(out / "fold0.onnx"), providers=["CPUExecutionProvider"])
    onnx_scores = sess.run(["score"], {doc["input"]["name"]: raw})[0]
    assert np.max(np.abs(onnx_scores[ok] - expected[ok])) < ONNX_ATOL


def test_export_of_a_folder_without_models_is_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["export", str(tmp_path), "-o", str(tmp_path / "x")])
    assert result.exit_code == 2
    assert "no model.json" in result.output


def test_logit_export_without_onnx(higgs_kfold: Path, higgs, features, tmp_path: Path) -> None:
    args = ["export", str(higgs_kfold), "-o", str(tmp_path), "--score", "logit", "--no-onnx"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    out = tmp_path / "dnn"
    assert sorted(p.name for p in out.iterdir()) == [
        "export.json",
        "fold0.pt",
        "fold1.pt",
        "fold2.pt",
    ]
    assert json.loads((out / "export.json").read_text())["output"]["meaning"].startswith("logit")
    cols = {f: higgs[f][:3000] for f in [*features, "EventId"]}
    expected = network_score(higgs_kfold, cols, output="logit")
    raw = np.stack([cols[f].astype(np.float64) for f in features], axis=1)
    which = route(cols["EventId"], get_network(higgs_kfold).split)
    for fold in range(3):
        rows = np.flatnonzero(which == fold)
        got = _scripted(out / f"fold{fold}.pt", raw[rows], 1024)
        assert np.array_equal(bits(got), bits(expected[rows]))
