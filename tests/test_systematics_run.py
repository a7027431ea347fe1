"""Input variations through real networks: monotonicity, the linearised prediction, the syst axis.

Networks here are small (hand-made, or trained one epoch on the shipped events): the
bits and the propagation matter, not the physics of the network.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import awkward as ak
import hist
import numpy as np
import pytest
import torch
import uproot

from hepnn.models import build
from hepnn.nets.apply import network_score
from hepnn.nets.data import TrainingData
from hepnn.nets.flat import FlatBuilder
from hepnn.nets.linear import linear_shift
from hepnn.nets.spec import FlatInputs, NetworkSpec, TrainingSpec
from hepnn.nets.store import save_network
from hepnn.nets.train import FittedModel, TrainResult, train_network
from hepnn.systematics import Variation, vary_higgs_columns
from hepnn.workflow import WorkflowContext, find_workflow

REPO = Path(__file__).resolve().parents[1]
NANO_TT = REPO / "samples" / "nanoaod" / "nano_tt_v15.root"
TES = {"feature": "PRI_tau_pt", "kind": "scale", "up": 1.03, "down": 0.97}
MET = {"feature": "PRI_met", "kind": "shift", "up": 2.0, "down": -2.0}


@pytest.fixture(scope="module")
def higgs_df(higgs_csv_path: Path):
    import pandas as pd

    return pd.read_csv(higgs_csv_path)


@pytest.fixture(scope="module")
def columns(higgs_df) -> dict[str, np.ndarray]:
    return {
        k: higgs_df[k].to_numpy()
        for k in higgs_df.columns
        if k.startswith(("PRI_", "DER_", "Event"))
    }


def _tiny_data() -> TrainingData:
    return TrainingData(
        np.zeros((4, 1)), np.array([0, 1, 0, 1]), np.arange(4), None, np.ones(4, bool), []
    )


@pytest.fixture(scope="module")
def monotone_model(tmp_path_factory, columns) -> Path:
    """A network increasing in each of its inputs: tanh layers with positive weights."""
    features = ["PRI_tau_pt", "DER_sum_pt", "DER_mass_vis"]
    settings = FlatInputs(features=features, missing_flags="none")
    builder = FlatBuilder(settings)
    builder = builder.fit(builder.raw({f: columns[f] for f in features}))
    params = {"hidden": [16, 16], "activation": "tanh", "dropout": 0.0}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)
        net = build("mlp", n_inputs=3, **params).eval()
    with torch.no_grad():
        for layer in net.modules():
            if isinstance(layer, torch.nn.Linear):
                layer.weight.abs_()
    spec = NetworkSpec(inputs=settings, params=params)
    result = TrainResult(spec, [FittedModel(net, builder, [], 1, {})], {})
    return save_network(tmp_path_factory.mktemp("mono") / "dnn", "dnn", result, _tiny_data())


@pytest.fixture(scope="module")
def trained_model(tmp_path_factory, higgs_df) -> Path:
    """A small DNN trained one epoch on the 30 features of 9,000 shipped events (k-fold, 3 folds)."""
    higgs_df = higgs_df.iloc[:9000]
    features = [c for c in higgs_df.columns if c.startswith(("PRI_", "DER_"))]
    spec = NetworkSpec(
        inputs=FlatInputs(features=features),
        params={"hidden": [32, 32], "activation": "tanh", "dropout": 0.0},
        training=TrainingSpec(epochs=1, seed=3, batch_size=256),
        split={"method": "kfold", "folds": 3, "id_column": "EventId"},
    )
    raw = FlatBuilder(spec.inputs).raw({f: higgs_df[f].to_numpy() for f in features})
    data = TrainingData(
        raw, (higgs_df["Label"] == "s").to_numpy().astype(np.int64),
        higgs_df["EventId"].to_numpy().astype(np.int64), higgs_df["Weight"].to_numpy(),
        np.ones(len(higgs_df), bool), [],
    )  # fmt: skip
    result = train_network("dnn", spec, data, progress=False)
    return save_network(tmp_path_factory.mktemp("t") / "dnn", "dnn", result, data)


@pytest.mark.parametrize("spec", [TES, {**TES, "kind": "shift", "up": 3.0, "down": -3.0}])
def test_tau_scale_moves_a_monotone_network_one_way(monotone_model, columns, spec):
    tes = Variation("tes", **spec)
    nominal = network_score(monotone_model, columns)
    up = network_score(monotone_model, {**columns, **vary_higgs_columns(columns, tes, "Up")})
    down = network_score(monotone_model, {**columns, **vary_higgs_columns(columns, tes, "Down")})
    # every input of this network grows with the tau pT (DER_sum_pt, DER_mass_vis recomputed)
    assert np.all(up >= nominal)
    assert np.all(down <= nominal)
    assert (up > nominal).mean() > 0.5  # and it does move
    # a variation of a feature the network does not read changes nothing, bit for bit
    met = Variation("met", **MET)
    same = network_score(monotone_model, {**columns, **vary_higgs_columns(columns, met, "Up")})
    np.testing.assert_array_equal(same.view(np.uint32), nominal.view(np.uint32))


def test_linear_prediction_agrees_with_the_actual_shift(trained_model, columns):
    weights = None
    nominal = network_score(trained_model, columns).astype(np.float64)
    for spec, tolerance in (({**TES, "up": 1.01, "down": 0.99}, 0.2), ({**MET, "up": 0.5}, 0.2)):
        v = Variation("v", **spec)
        varied = {**columns, **vary_higgs_columns(columns, v, "Up")}
        actual = network_score(trained_model, varied).astype(np.float64) - nominal
        linear = linear_shift(trained_model, columns, varied)
        assert abs(linear.mean() - actual.mean()) <= tolerance * abs(actual.mean()), spec
        assert np.corrcoef(actual, linear)[0, 1] > 0.9
        assert weights is None


def test_linear_prediction_is_independent_of_the_chunking(trained_model, columns):
    v = Variation("tes", **TES)
    varied = {**columns, **vary_higgs_columns(columns, v, "Up")}
    whole = linear_shift(trained_model, columns, varied)
    cut = 1500
    parts = [
        linear_shift(
            trained_model,
            {k: a[sl] for k, a in columns.items()},
            {k: a[sl] for k, a in varied.items()},
        )
        for sl in (slice(0, cut), slice(cut, None))
    ]
    np.testing.assert_array_equal(np.concatenate(parts).view(np.uint64), whole.view(np.uint64))


def test_a_feature_the_workflow_cannot_vary_is_an_error(columns):
    from hepnn.errors import InputError

    with pytest.raises(InputError, match=r"systematics.jes: feature 'FatJet_pt'"):
        vary_higgs_columns(columns, Variation("jes", "FatJet_pt", "scale", 1.05, 0.95), "Up")
    cls = find_workflow(str(REPO / "workflows" / "fatjets.py")).cls
    ctx = WorkflowContext(datasets={"ttbar_v15": {}}, systematics={"tes": TES})
    with pytest.raises(InputError, match=r"systematics.tes: the fatjets workflow varies FatJet_pt"):
        cls(ctx).process(_nano_events(NANO_TT, "ttbar_v15"))


def _higgs_events(converted, n: int):
    from coffea.nanoevents import BaseSchema, NanoEventsFactory

    return NanoEventsFactory.from_root(
        {str(converted.root_path): converted.treename}, schemaclass=BaseSchema, entry_stop=n,
        metadata={"dataset": "higgs_challenge", "entrystart": 0},
    ).events()  # fmt: skip


def _same_hist(a: hist.Hist, b: hist.Hist) -> bool:
    return np.array_equal(a.values(flow=True), b.values(flow=True)) and np.array_equal(
        a.variances(flow=True), b.variances(flow=True)
    )


def test_syst_axis_with_a_nominal_bitwise_equal_to_a_run_without(higgs_converted, trained_model):
    cls = find_workflow(str(REPO / "workflows" / "higgs.py")).cls
    events = _higgs_events(higgs_converted, 4000)
    base = {"datasets": {"higgs_challenge": {"is_mc": True}}, "models": {"dnn": str(trained_model)},
            "kinds": {"dnn": "flat"}}  # fmt: skip
    plain = cls(WorkflowContext(**base)).process(events)
    varied = cls(WorkflowContext(**base, systematics={"tes": TES, "met": MET})).process(events)
    labels = ["nominal", "tesUp", "tesDown", "metUp", "metDown"]
    for name, h in plain.items():
        if name == "columns":
            continue
        assert "syst" not in h.axes.name, name
        v = varied[name]
        if "syst" in v.axes.name:
            assert list(v.axes["syst"]) == labels, name
            v = v[{"syst": "nominal"}]
        assert _same_hist(h, v), name
    for name in ("score_dnn", "PRI_tau_pt", "DER_mass_vis", "PRI_met", "DER_mass_vis_cut_dnn"):
        assert "syst" in varied[name].axes.name, name
    # the tau pT distribution of tesUp is the nominal one with pT x 1.03
    tau = varied["PRI_tau_pt"][{"dataset": sum, "njet": sum, "process": sum}]
    pt = ak.to_numpy(events.PRI_tau_pt)
    w = ak.to_numpy(events.Weight)
    expected = hist.Hist(tau.axes["x"], storage=hist.storage.Weight()).fill(pt * 1.03, weight=w)
    np.testing.assert_allclose(tau[{"syst": "tesUp"}].values(flow=True), expected.values(flow=True))
    # DER_mass_MMC cannot be recomputed: every variation leaves it as it is
    mmc = varied["DER_mass_MMC"]
    for label in labels[1:]:
        assert _same_hist(mmc[{"syst": label}], mmc[{"syst": "nominal"}])
    # the tau scale moves the score; columns gain the varied scores only
    score = varied["score_dnn"][{"dataset": sum, "njet": sum, "process": sum}]
    assert not _same_hist(score[{"syst": "tesUp"}], score[{"syst": "nominal"}])
    cols_plain = plain["columns"]["higgs_challenge"].data
    cols_varied = varied["columns"]["higgs_challenge"].data
    assert set(cols_varied) - set(cols_plain) == {f"score_dnn_{s}" for s in labels[1:]}
    for name, values in cols_plain.items():
        np.testing.assert_array_equal(cols_varied[name], values, err_msg=name)


def test_variations_never_touch_data(higgs_converted, trained_model):
    cls = find_workflow(str(REPO / "workflows" / "higgs.py")).cls
    events = _higgs_events(higgs_converted, 2000)
    ctx = WorkflowContext(
        datasets={"higgs_challenge": {"is_data": True}}, models={"dnn": str(trained_model)},
        kinds={"dnn": "flat"}, systematics={"tes": TES},
    )  # fmt: skip
    out = cls(ctx).process(events)
    for name in ("score_dnn", "PRI_tau_pt", "DER_mass_vis"):
        h = out[name]
        assert _same_hist(h[{"syst": "tesUp"}], h[{"syst": "nominal"}]), name


def _nano_events(path: Path, dataset: str):
    from coffea.nanoevents import NanoEventsFactory

    from hepnn.schemas import NanoSchema

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return NanoEventsFactory.from_root(
            {str(path): "Events"}, schemaclass=NanoSchema,
            metadata={"dataset": dataset, "entrystart": 0},
        ).events()  # fmt: skip


def test_fatjet_energy_scale_scales_the_fatjet_histograms():
    cls = find_workflow(str(REPO / "workflows" / "fatjets.py")).cls
    datasets = {"ttbar_v15": {"is_mc": True, "process": "ttbar"}, "data": {"is_mc": False}}
    jes = {"feature": "FatJet_pt", "kind": "scale", "up": 1.05, "down": 0.9}
    events = _nano_events(NANO_TT, "ttbar_v15")
    plain = cls(WorkflowContext(datasets=datasets)).process(events)
    varied = cls(WorkflowContext(datasets=datasets, systematics={"jes": jes})).process(events)
    for name in ("fatjet_pt", "fatjet_mass", "fatjet_msoftdrop", "fatjet_eta"):
        assert _same_hist(plain[name], varied[name][{"syst": "nominal"}]), name
    # expected: the branches read with uproot, scaled, selected at 170 GeV after the scale
    arrays = uproot.open(NANO_TT)["Events"].arrays(["FatJet_pt", "FatJet_msoftdrop", "genWeight"])
    for label, f in (("jesUp", 1.05), ("jesDown", 0.9)):
        pt = arrays.FatJet_pt * f
        sel = pt >= 170.0
        w = ak.flatten(ak.broadcast_arrays(arrays.genWeight, pt)[0][sel])  # genWeight itself
        for name, values in (
            ("fatjet_pt", pt[sel]),
            ("fatjet_msoftdrop", arrays.FatJet_msoftdrop[sel] * f),
        ):
            h = varied[name][{"dataset": "ttbar_v15", "syst": label}]
            expected = hist.Hist(h.axes[0], storage=hist.storage.Weight())
            expected.fill(ak.to_numpy(ak.flatten(values)), weight=ak.to_numpy(w))
            np.testing.assert_allclose(
                h.values(flow=True), expected.values(flow=True), err_msg=name
            )
    h = varied["fatjet_pt"]
    n_down = h[{"dataset": "ttbar_v15", "syst": "jesDown"}].values(flow=True).sum()
    n_nom = h[{"dataset": "ttbar_v15", "syst": "nominal"}].values(flow=True).sum()
    assert n_down < n_nom  # jets fall below the threshold
    # data: never varied
    data_events = _nano_events(REPO / "samples" / "nanoaod" / "nano_dimuon.root", "data")
    out = cls(WorkflowContext(datasets=datasets, systematics={"jes": jes})).process(data_events)
    assert _same_hist(out["fatjet_pt"][{"syst": "jesUp"}], out["fatjet_pt"][{"syst": "nominal"}])


@pytest.mark.slow
def test_run_writes_templates_and_the_variations_table(tmp_path: Path) -> None:
    """A whole run: templates in hists.root, the table, bands and plots on the nominal slice."""
    import csv

    from hepnn.config import load_config
    from hepnn.pipeline import run_config

    quick = [
        "networks.dnn.params.hidden=[16, 16]", "networks.dnn.training.epochs=1",
        "executor.block_size=2000", "executor.chunksize=2000",
        "uncertainty.mc_dropout.samples=3", "uncertainty.ensemble=null", "taylor=null",
        "outputs.plot_formats=[png]", "systematics={}",  # the shipped ones replaced by:
        "systematics.tes.feature=PRI_tau_pt", "systematics.tes.up=1.03", "systematics.tes.down=0.97",
        "systematics.met.feature=PRI_met", "systematics.met.kind=shift",
        "systematics.met.up=2.0", "systematics.met.down=-2.0",
    ]  # fmt: skip
    run = run_config(
        load_config(REPO / "configs" / "higgs.yaml", quick), tmp_path, test=True, progress=False
    )
    with uproot.open(tmp_path / "hists.root") as f:
        names = {k.split(";")[0] for k in f}
        for process in ("signal", "background"):
            for syst in ("nominal", "tesUp", "tesDown", "metUp", "metDown"):
                assert f"score_dnn/{process}/{syst}" in names
                assert f"score_dnn_higgs_challenge_2+_jets/{process}/{syst}" in names
                assert f"DER_mass_vis/{process}/{syst}" in names
        nominal = f["score_dnn/signal/nominal"].values()
        hsum = run.hists["score_dnn"][{"dataset": sum, "njet": sum, "syst": "nominal"}]
        np.testing.assert_array_equal(nominal, hsum[{"process": "signal"}].values())
        assert "score_dnn/signal/mcdropoutUp" in names  # the band templates beside them
    # the band summary used the nominal slice: its nominal equals the nominal template
    with (tmp_path / "systematics" / "dnn.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert {(r["variation"], r["direction"]) for r in rows} == {
        ("tes", "Up"),
        ("tes", "Down"),
        ("met", "Up"),
        ("met", "Down"),
    }
    tes_up = next(
        r
        for r in rows
        if r["variation"] == "tes" and r["direction"] == "Up" and r["process"] == "all"
    )
    assert float(tes_up["mean_shift"]) * float(tes_up["mean_shift_linear"]) > 0
    assert (tmp_path / "systematics" / "dnn.md").is_file()
    assert (tmp_path / "plots").is_dir()
    assert str(tmp_path / "systematics" / "dnn.csv") in {str(p) for p in run.files}
