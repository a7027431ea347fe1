"""Networks on lazy dask-awkward events (hepnn.nets.lazy): the same bits as eager events.

With dask 2026.8 (installed here) and dask-awkward <= 2026.2 (which declares dask < 2025.4),
dask-awkward's graph optimisation fails with ``Missing dependency ... finalize-hlgfinalizecompute``
even for ``(events.x * 2).compute()``; the results are computed with
``optimize_graph=False``, and the column projection is checked with
``dask_awkward.necessary_columns`` (which works).
"""

from __future__ import annotations

import itertools
from pathlib import Path

import awkward as ak
import numpy as np
import pytest
import torch

from hepnn.models import build
from hepnn.nets.apply import clear_cache, jet_scores, network_score
from hepnn.nets.data import TrainingData
from hepnn.nets.flat import FlatBuilder
from hepnn.nets.inputs import make_builder
from hepnn.nets.spec import FlatInputs, NetworkSpec, SplitSpec
from hepnn.nets.store import save_network
from hepnn.nets.train import FittedModel, TrainResult

dak = pytest.importorskip("dask_awkward")
from coffea.nanoevents import BaseSchema, NanoEventsFactory  # noqa: E402

from hepnn.jets.batch import fatjet_batch  # noqa: E402
from hepnn.schemas import NanoSchema  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
NANO_V15 = REPO / "samples" / "nanoaod" / "nano_tt_v15.root"


def bits(a: np.ndarray) -> np.ndarray:
    assert a.dtype == np.float32
    return a.view(np.uint32)


def _steps(path: str, tree: str, n: int, parts: int) -> dict:
    """The uproot files specification of ``path`` cut into ``parts`` partitions."""
    edges = np.linspace(0, n, parts + 1).astype(int)
    return {
        path: {
            "object_path": tree,
            "steps": [[int(a), int(b)] for a, b in itertools.pairwise(edges)],
        }
    }


def _compute(x) -> np.ndarray:
    return x.compute(optimize_graph=False)  # see the module docstring


@pytest.fixture(scope="module")
def higgs_file() -> tuple[str, str]:
    from hepnn.pipeline import cache_dir
    from hepnn.samples import load_samples, resolve_samples

    ds = resolve_samples(load_samples(REPO / "samples" / "higgs.yaml"), cache_dir())
    f = next(iter(ds.values())).files[0]
    return str(f.root_path), f.treename


@pytest.fixture(scope="module")
def kfold_dnn(higgs_file, tmp_path_factory) -> Path:
    """A 3-fold Higgs DNN with seeded weights (the bits matter here, not the physics)."""
    path, tree = higgs_file
    ev = NanoEventsFactory.from_root({path: tree}, schemaclass=BaseSchema, mode="eager").events()
    features = [n for n in ev.fields if n.startswith(("DER_", "PRI_"))]
    spec = NetworkSpec(
        inputs=FlatInputs(features=features),
        params={"hidden": [32, 32], "activation": "tanh", "dropout": 0.1},
        split=SplitSpec(method="kfold", folds=3, id_column="EventId"),
    )
    fitted = []
    for i in range(3):
        b = FlatBuilder(FlatInputs(features=features))
        b = b.fit(b.raw({k: ak.to_numpy(ev[k]) for k in features}))
        torch.manual_seed(30 + i)
        fitted.append(
            FittedModel(
                build("mlp", n_inputs=len(b.input_names), **spec.params).eval(), b, [], 1, {}
            )
        )
    data = TrainingData(
        np.zeros((4, 1)), np.arange(4) % 2, np.arange(4), None, np.ones(4, bool), []
    )
    return save_network(
        tmp_path_factory.mktemp("m") / "dnn", "dnn", TrainResult(spec, fitted, {}), data
    )


def test_lazy_dnn_equals_eager_bitwise(higgs_file, kfold_dnn: Path) -> None:
    path, tree = higgs_file
    eager_events = NanoEventsFactory.from_root(
        {path: tree}, schemaclass=BaseSchema, mode="eager"
    ).events()
    eager = network_score(kfold_dnn, eager_events)
    spec = _steps(path, tree, len(eager_events), 3)
    lazy_events = NanoEventsFactory.from_root(spec, schemaclass=BaseSchema, mode="dask").events()
    clear_cache()
    lazy = network_score(kfold_dnn, lazy_events)
    assert isinstance(lazy, dak.Array)
    assert lazy.npartitions == 3
    # typetracer pass: exactly the features and the k-fold id column are read
    (columns,) = dak.necessary_columns(lazy).values()
    assert set(columns) == {*network_features(kfold_dnn), "EventId"}
    got = ak.to_numpy(_compute(lazy))
    assert got.dtype == np.float32
    assert got.shape == eager.shape
    assert np.array_equal(bits(got), bits(eager))


def network_features(model: Path) -> list[str]:
    from hepnn.nets.apply import get_network

    return get_network(model).features


def test_lazy_missing_column_is_a_model_error(kfold_dnn: Path, tmp_path: Path) -> None:
    import uproot

    from hepnn.errors import ModelError

    flat = tmp_path / "f.root"
    with uproot.recreate(flat) as f:
        f["Events"] = {"DER_mass_MMC": np.arange(10.0)}
    ev = NanoEventsFactory.from_root(
        {str(flat): "Events"}, schemaclass=BaseSchema, mode="dask"
    ).events()
    with pytest.raises(ModelError, match="'DER_mass_vis'"):
        network_score(kfold_dnn, ev)


@pytest.fixture(scope="module")
def nano_tagger(tmp_path_factory) -> Path:
    """A seeded, untrained cnn1d on the FatJets of a NanoAOD v15 file (inputs fitted on them)."""
    events = NanoEventsFactory.from_root(
        {str(NANO_V15): "Events"}, schemaclass=NanoSchema, mode="virtual"
    ).events()
    batch = fatjet_batch(events)
    assert batch is not None
    assert len(batch.pt) > 0
    spec = NetworkSpec.model_validate(
        {"inputs": {"kind": "sequence", "max_constituents": 32},
         "params": {"filters": [4, 4], "dense": [8], "dropout": 0.1},
         "split": {"method": "random", "id_column": "event"}}
    )  # fmt: skip
    builder = make_builder(spec.inputs)
    raw = builder.raw(batch)
    fitted = builder.fit(raw[~batch.empty])
    torch.manual_seed(5)
    model = build(spec.arch, **spec.params, **fitted.arch_inputs()).eval()
    n = len(raw)
    data = TrainingData(raw, np.arange(n) % 2, np.arange(n), None, ~batch.empty, [], {})
    result = TrainResult(spec, [FittedModel(model, fitted, [], 1, {})], {})
    return save_network(tmp_path_factory.mktemp("t") / "cnn1d", "cnn1d", result, data)


@pytest.mark.slow  # ~90 s on 2 shared cores: the unoptimised graph reads all 1,600 branches
def test_lazy_tagger_on_nanoaod_equals_eager_bitwise(nano_tagger: Path) -> None:
    events = NanoEventsFactory.from_root(
        {str(NANO_V15): "Events"}, schemaclass=NanoSchema, mode="virtual"
    ).events()
    batch = fatjet_batch(events)
    eager = jet_scores(nano_tagger, batch)
    spec = _steps(str(NANO_V15), "Events", len(events), 2)
    # BaseSchema (flat NanoAOD branch names, which fatjet_batch reads too): without graph
    # optimisation (module docstring) every branch is read, and NanoAODSchema's GenPart
    # transform then fails on this file inside coffea.
    lazy_events = NanoEventsFactory.from_root(spec, schemaclass=BaseSchema, mode="dask").events()
    lazy = jet_scores(nano_tagger, lazy_events)
    assert isinstance(lazy, dak.Array)
    (columns,) = dak.necessary_columns(lazy).values()
    assert any(c.startswith("FatJetPFCand_") for c in columns)
    assert any(c.startswith("PFCand_") for c in columns)
    assert not any(c.startswith(("Muon_", "GenPart_", "Jet_")) for c in columns)
    per_event = _compute(lazy)
    assert ak.to_list(ak.num(per_event)) == ak.to_list(ak.num(events.FatJet))
    got = ak.to_numpy(ak.flatten(per_event))
    assert got.dtype == np.float32
    assert np.array_equal(np.isnan(got), np.isnan(eager))
    ok = ~np.isnan(eager)
    assert ok.any()
    assert np.array_equal(bits(got[ok]), bits(eager[ok]))
