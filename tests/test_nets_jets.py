"""Jet networks (image / sequence inputs): settings, split, inputs, model files, scores, bad inputs.

Fast tests on the shipped top-tagging jets (samples/toptag): the input builders of
hepnn.nets.inputs, the augmentation, the store and apply path of hepnn.nets for jet
networks, and the NanoAOD FatJet batches of hepnn.jets.batch.
"""

from __future__ import annotations

import json
from pathlib import Path

import awkward as ak
import numpy as np
import pytest
import torch
import uproot

from hepnn.config import load_config
from hepnn.errors import ConfigError, InputError, ModelError
from hepnn.jets.batch import JetBatch, fatjet_batch, jet_labels
from hepnn.models import build
from hepnn.nets.apply import (
    cache_info,
    clear_cache,
    get_network,
    jet_scores,
    network_score,
    replica_scores,
)
from hepnn.nets.augment import SequenceAugmenter
from hepnn.nets.data import TrainingData
from hepnn.nets.inputs import ImageBuilder, SequenceBuilder, load_builder, make_builder
from hepnn.nets.lifecycle import find_model
from hepnn.nets.report import classifier_metrics
from hepnn.nets.spec import AugmentSpec, NetworkSpec, SequenceInputs
from hepnn.nets.split import TEST, TRAIN, VAL, held_out, route, split_codes
from hepnn.nets.store import load_network, save_network
from hepnn.nets.train import FittedModel, TrainResult

REPO = Path(__file__).resolve().parents[1]
TOPTAG = REPO / "configs" / "toptag.yaml"


# ------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def datasets() -> dict:
    from hepnn.pipeline import cache_dir
    from hepnn.samples import load_samples, resolve_samples

    return resolve_samples(load_samples(REPO / "samples" / "toptag.yaml"), cache_dir())


@pytest.fixture(scope="module")
def toptag_arrays(datasets: dict) -> ak.Array:
    """The shipped top-tagging jets as converted NanoAOD-like arrays (flat branch names)."""
    f = datasets["toptag"].files[0]
    with uproot.open(f.root_path) as fh:
        return fh[f.treename].arrays(library="ak")


@pytest.fixture(scope="module")
def batch(toptag_arrays: ak.Array) -> JetBatch:
    b = fatjet_batch(toptag_arrays[:300])
    assert b is not None
    return b


def _spec(kind: str, **extra: object) -> NetworkSpec:
    inputs = {"kind": kind} | ({"max_constituents": 32} if kind == "sequence" else {})
    return NetworkSpec.model_validate(
        {
            "inputs": inputs,
            "params": {"filters": [4, 4], "dense": [8], "dropout": 0.1},
            "label": "label",
            "split": {"method": "random", "id_column": "event"},
        }
        | extra
    )


def _tiny_network(path: Path, kind: str, batch: JetBatch, arrays: ak.Array) -> Path:
    """A seeded, untrained small jet network of ``kind`` saved to ``path`` (weights do not matter)."""
    spec = _spec(kind)
    builder = make_builder(spec.inputs)
    raw = builder.raw(batch)
    fitted = builder.fit(raw)
    torch.manual_seed(7)
    model = build(spec.arch, **spec.params, **fitted.arch_inputs()).eval()
    labels = jet_labels(arrays, "label", batch)
    assert labels is not None
    ids = ak.to_numpy(arrays["event"])[batch.event_index].astype(np.int64)
    data = TrainingData(raw, labels, ids, None, ~fitted.unusable(batch), [], {})
    result = TrainResult(spec, [FittedModel(model, fitted, [], 1, {"note": "untrained"})], {})
    return save_network(path, "t", result, data)


# ------------------------------------------------------------------ settings
def test_config_rejects_unknown_keys_and_derived_params() -> None:
    with pytest.raises(ConfigError, match=r"unknown key 'networks\.cnn2d\.inputs\.image\.pixels'"):
        load_config(TOPTAG, ["networks.cnn2d.inputs.pixels=3"])
    with pytest.raises(ConfigError, match="in_channels"):
        load_config(TOPTAG, ["networks.cnn2d.params.in_channels=3"])
    with pytest.raises(ConfigError, match="fractions"):
        load_config(TOPTAG, ["networks.cnn2d.split.fractions=[0.5, 0.6, 0.1]"])
    with pytest.raises(ConfigError, match=r"networks\.cnn2d\.inputs: .*'voxel'"):
        load_config(TOPTAG, ["networks.cnn2d.inputs.kind=voxel"])
    with pytest.raises(ConfigError, match="channels must be distinct"):
        load_config(TOPTAG, ["networks.cnn2d.inputs.channels=[pt, pt]"])
    with pytest.raises(ConfigError, match=r"unknown key 'networks\.cnn2d\.max_jets'"):
        load_config(TOPTAG, ["networks.cnn2d.max_jets=5"])  # old tagger key: now max_events
    with pytest.raises(ConfigError, match="augment applies to sequence inputs"):
        load_config(TOPTAG, ["networks.cnn2d.training.augment.rotate=true"])
    with pytest.raises(ConfigError, match="both deta and dphi"):
        load_config(
            TOPTAG,
            [
                "networks.cnn1d.inputs.features=[log_pt, deta]",
                "networks.cnn1d.training.augment.rotate=true",
            ],
        )
    with pytest.raises(ConfigError, match="use_weights needs flat inputs"):
        load_config(TOPTAG, ["networks.cnn1d.training.use_weights=true"])


def test_shipped_config_is_one_network_map() -> None:
    cfg = load_config(TOPTAG)
    assert list(cfg.networks) == ["cnn2d", "cnn1d"]
    cnn2d, cnn1d = cfg.networks["cnn2d"], cfg.networks["cnn1d"]
    assert (cnn2d.kind, cnn2d.arch, cnn1d.kind, cnn1d.arch) == (
        "image",
        "cnn2d",
        "sequence",
        "cnn1d",
    )
    assert cnn1d.inputs.max_constituents == 64
    # the shipped taggers keep the old constant learning rate (new default 0.5)
    assert cnn2d.training.lr_factor == cnn1d.training.lr_factor == 1.0
    assert NetworkSpec.model_validate({"inputs": {"kind": "image"}}).training.lr_factor == 0.5
    assert cnn1d.training.augment.rotate
    assert cnn1d.training.augment.reflect
    assert (cnn2d.label, cnn2d.split.method, cnn2d.split.id_column) == ("label", "random", "event")


@pytest.mark.parametrize(
    ("sets", "where"),
    [
        (["taggers.cnn2d.kind=image"], "taggers"),
        (["networks.cnn2d.training.split.method=parity"], "networks.cnn2d.training"),
        (["networks.cnn2d.kind=image"], "networks.cnn2d"),
    ],
)
def test_old_tagger_form_is_refused_in_one_line(sets: list[str], where: str) -> None:
    with pytest.raises(ConfigError, match=f": {where}: networks and taggers are one map") as info:
        load_config(TOPTAG, sets)
    assert "\n" not in str(info.value)


# -------------------------------------------------------------- augmentation
def _augmenter(batch: JetBatch, *, scale: str = "standard", **augment: bool) -> tuple:
    """Fitted sequence builder, its augmenter and the network inputs of ``batch``."""
    builder = SequenceBuilder(SequenceInputs(max_constituents=32, scale=scale))
    raw = builder.raw(batch)
    fitted = builder.fit(raw)
    aug = SequenceAugmenter.build(AugmentSpec(**augment), fitted)
    return fitted, aug, torch.from_numpy(fitted.transform(raw))


def _unscale(builder: SequenceBuilder, x: torch.Tensor) -> np.ndarray:
    """Raw features (N, F, P) back from the scaled inputs, padded slots 0."""
    assert builder.scaler is not None
    mean = np.asarray(builder.scaler.mean)[None, :, None]
    std = np.asarray(builder.scaler.std)[None, :, None]
    mask = x[:, -1:].numpy().astype(np.float64)
    return (x[:, :-1].numpy().astype(np.float64) * std + mean) * mask


def test_augmentation_rotates_and_reflects_keeping_invariants(batch: JetBatch) -> None:
    """Rotation/reflection about the jet axis: ΔR, pT, E and the mask unchanged; seeded."""
    builder, aug, x = _augmenter(batch, rotate=True, reflect=True)
    assert aug is not None
    assert builder.augmenter(AugmentSpec(rotate=True, reflect=True)) == aug  # the builder's hook
    out = aug(x, torch.Generator().manual_seed(3))
    features = list(builder.settings.features)
    ieta, iphi, idr = (features.index(f) for f in ("deta", "dphi", "delta_r"))
    a, b = _unscale(builder, x), _unscale(builder, out)
    real = x[:, -1].numpy() != 0
    # Every jet's constituents move: ΔR = |(Δη, Δφ)| is kept, the angles are not.
    np.testing.assert_allclose(
        np.hypot(b[:, ieta], b[:, iphi])[real], a[:, idr][real], rtol=0, atol=2e-5
    )
    assert not np.allclose(b[:, ieta][real], a[:, ieta][real], atol=1e-2)
    # One rigid transformation per jet: the Δη·Δη' + Δφ·Δφ' between two constituents is kept.
    j = int(np.argmax(real.sum(axis=1)))
    dots_a = a[j][[ieta, iphi]][:, real[j]].T @ a[j][[ieta, iphi]][:, real[j]]
    dots_b = b[j][[ieta, iphi]][:, real[j]].T @ b[j][[ieta, iphi]][:, real[j]]
    np.testing.assert_allclose(dots_b, dots_a, atol=1e-4)
    # pT / energy features, ΔR and the mask channel are bitwise untouched; padding stays 0.
    same = [i for i in range(x.shape[1]) if i not in (ieta, iphi)]
    assert torch.equal(out[:, same], x[:, same])
    assert (out[:, :-1][x[:, -1:].expand_as(out[:, :-1]) == 0] == 0).all()
    # Seeded: same generator seed, same bits; another seed, other angles.
    assert torch.equal(aug(x, torch.Generator().manual_seed(3)), out)
    assert not torch.equal(aug(x, torch.Generator().manual_seed(4)), out)


def test_reflection_only_flips_signs(batch: JetBatch) -> None:
    builder, aug, x = _augmenter(batch, scale="none", reflect=True)
    assert aug is not None
    assert not aug.rotate
    out = aug(x, torch.Generator().manual_seed(0))
    features = list(builder.settings.features)
    for name in ("deta", "dphi"):
        i = features.index(name)
        assert torch.equal(out[:, i].abs(), x[:, i].abs())
        flipped = (out[:, i] * x[:, i]).sum(dim=1) < 0
        assert 0 < int(flipped.sum()) < len(x)  # about half of the jets
    assert _augmenter(batch)[1] is None  # nothing asked, nothing built
    image = ImageBuilder(_spec("image").inputs)
    assert image.augmenter(AugmentSpec(rotate=True)) is None  # images: no augmentation


# -------------------------------------------------------------------- inputs
@pytest.mark.parametrize("kind", ["image", "sequence"])
def test_builder_state_round_trip_and_chunk_independent_inputs(batch: JetBatch, kind: str) -> None:
    spec = _spec(kind)
    builder = make_builder(spec.inputs)
    raw = builder.raw(batch)
    assert raw.dtype == np.float32
    assert raw.shape[0] == len(batch)
    fitted = builder.fit(raw)
    x = fitted.transform(raw)
    state = json.loads(json.dumps(fitted.state()))  # through JSON as in model.json
    again = load_builder(spec.inputs.model_dump(mode="json"), state)
    assert type(again) is type(fitted)
    assert np.array_equal(again.transform(raw), x)  # bitwise after the JSON round trip
    # elementwise: the inputs of a jet do not depend on the other jets of its chunk
    parts = [fitted.transform(builder.raw(batch.take(np.arange(a, min(a + 37, len(batch))))))
             for a in range(0, len(batch), 37)]  # fmt: skip
    assert np.array_equal(np.concatenate(parts), x)
    if kind == "image":
        assert x.shape[1:] == (1, 33, 33)
        assert fitted.arch_inputs() == {"in_channels": 1, "image_size": [33, 33]}
        assert fitted.input_names == ["image_pt"]
        # pixel_norm mean_std: the training images have per-pixel mean ~0
        assert np.abs(x.mean(axis=0)).max() < 1e-5
    else:
        assert x.shape[1:] == (8, 32)  # 7 features + the mask, 32 slots
        assert fitted.arch_inputs() == {"n_features": 7}
        assert fitted.helper_inputs() == ["mask"]
        assert np.array_equal(x[:, -1], raw[:, -1])  # the mask is not scaled
    with pytest.raises(ModelError, match="invalid inputs settings"):
        load_builder({"kind": kind, "bogus": 1}, state)


def test_split_is_a_function_of_the_event_number_only() -> None:
    ids = np.arange(100_000)
    split = {"method": "random", "fractions": (0.64, 0.16, 0.2), "seed": 1234}
    codes = split_codes(ids, split)
    frac = np.bincount(codes, minlength=3) / len(ids)
    assert np.allclose(frac, [0.64, 0.16, 0.2], atol=0.01)
    perm = np.random.default_rng(0).permutation(len(ids))
    assert np.array_equal(split_codes(ids[perm], split), codes[perm])  # order-free
    assert not np.array_equal(split_codes(ids, {**split, "seed": 1}), codes)
    assert np.array_equal(held_out(ids, split), codes == TEST)
    assert (route(ids, split) == 0).all()
    # parity is the same rule for every kind of network: train even, validate odd,
    # the odd ids are the held-out ones (no test code)
    parity = split_codes(ids, {**split, "method": "parity"})
    assert (parity[ids % 2 == 0] == TRAIN).all()
    assert (parity[ids % 2 == 1] == VAL).all()
    assert np.array_equal(held_out(ids, {"method": "parity"}), ids % 2 == 1)


def test_rejection_counts_background_at_the_working_point() -> None:
    label = np.array([1] * 10 + [0] * 4)
    score = np.array([0.9] * 3 + [0.1] * 7 + [0.95, 0.5, 0.2, 0.0])
    m = classifier_metrics(score, label)  # 3 signal jets = 30%: threshold 0.9
    assert m["rows"] == 14
    assert m["background_passing"] == 1
    assert m["rejection"] == 4.0
    m = classifier_metrics(score, np.where(score == 0.95, 1, label))  # no background passes
    assert m["rejection"] is None
    assert m["rejection_lower_bound"] == 3


# --------------------------------------------------------------- model files
@pytest.mark.parametrize("kind", ["image", "sequence"])
def test_scores_are_chunking_independent_and_cached(
    tmp_path: Path, batch: JetBatch, toptag_arrays: ak.Array, kind: str
) -> None:
    path = _tiny_network(tmp_path / kind, kind, batch, toptag_arrays)
    clear_cache()
    whole = jet_scores(path, batch)
    assert whole.dtype == np.float32
    assert whole.shape == (len(batch),)
    assert np.isfinite(whole).all()
    assert len(np.unique(whole)) > 10  # a real score, not a constant
    for size in (1, 37, 256, 257):
        parts = []
        stop = 3 if size == 1 else len(batch)  # single jets: a few suffice
        for a in range(0, stop, size):
            b = batch.take(np.arange(a, min(a + size, stop)))
            # rebuilt from plain arrays: what a user of JetBatch.from_arrays passes
            b = JetBatch.from_arrays(
                b.constituents, {"pt": b.pt, "eta": b.eta, "phi": b.phi, "energy": b.energy}
            )
            parts.append(jet_scores(path, b))
        assert np.array_equal(np.concatenate(parts), whole[:stop]), size
    # the caller's thread count does not change the bits
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert np.array_equal(jet_scores(path, batch), whole)
    finally:
        torch.set_num_threads(old)
    info = cache_info()
    assert info["loads"] == 1
    assert info["hits"] > 0
    logits = jet_scores(path, batch, output="logit")
    np.testing.assert_allclose(1 / (1 + np.exp(-logits.astype(np.float64))), whole, rtol=1e-5)


@pytest.mark.parametrize("kind", ["image", "sequence"])
def test_replica_scores_are_bitwise_reproducible(
    tmp_path: Path, batch: JetBatch, toptag_arrays: ak.Array, kind: str
) -> None:
    """MC-dropout replicas of a jet network: seeded, the same bits in any chunking."""
    path = _tiny_network(tmp_path / kind, kind, batch, toptag_arrays)
    rep = replica_scores(path, batch, samples=4, seed=11)
    assert rep.shape == (4, len(batch))
    assert rep.dtype == np.float32
    assert np.isfinite(rep).all()
    assert np.array_equal(replica_scores(path, batch, samples=4, seed=11), rep)
    clear_cache()  # a fresh load gives the same bits too
    assert np.array_equal(replica_scores(path, batch, samples=4, seed=11), rep)
    halves = [batch.take(np.arange(0, 123)), batch.take(np.arange(123, len(batch)))]
    parts = [replica_scores(path, h, samples=4, seed=11) for h in halves]
    assert np.array_equal(np.concatenate(parts, axis=1), rep)
    # replicas differ from one another and from another seed; dropout only thins
    assert not np.array_equal(rep[0], rep[1])
    assert not np.array_equal(replica_scores(path, batch, samples=4, seed=12), rep)
    nominal = jet_scores(path, batch)
    assert not np.array_equal(rep[0], nominal)


def test_model_json_is_the_one_model_format(
    tmp_path: Path, batch: JetBatch, toptag_arrays: ak.Array
) -> None:
    path = _tiny_network(tmp_path / "t", "image", batch, toptag_arrays)
    meta = json.loads((path / "model.json").read_text())
    assert meta["format"] == "hepnn-model"
    assert meta["format_version"] == 2
    assert meta["kind"] == "image"
    assert meta["inputs"]["kind"] == "image"
    assert meta["architecture"] == {
        "name": "cnn2d",
        "params": {"filters": [4, 4], "dense": [8], "dropout": 0.1},
    }
    assert meta["input_names"] == ["image_pt"]
    assert meta["label"] == "label"
    assert meta["split"]["method"] == "random"
    assert len(meta["models"]) == 1
    entry = meta["models"][0]
    assert entry["file"] == "model.pt"
    assert len(entry["sha256"]) == 64
    assert len(entry["inputs"]["pixel_mean"]) == 1  # one channel of 33 x 33 pixel means
    state = torch.load(path / "model.pt", weights_only=True)
    assert "net.1.weight" in state
    loaded = load_network(path)
    assert (loaded.kind, loaded.name) == ("image", "t")
    assert isinstance(loaded.builder, ImageBuilder)
    with pytest.raises(ModelError, match=r"scores jets; use hepnn\.nets\.apply\.jet_scores"):
        network_score(path, {"x": np.zeros(3)})  # the flat-event scorer refuses a jet network
    with pytest.raises(ModelError, match="expected a sequence network, found image"):
        find_model("t", tmp_path, _spec("sequence"))
    with pytest.raises(ModelError, match=r"no model\.json for network 'u'"):
        find_model("u", tmp_path, _spec("image"))
    pt = path / "model.pt"
    data = bytearray(pt.read_bytes())
    data[len(data) // 2] ^= 0xFF
    pt.write_bytes(bytes(data))
    clear_cache()
    with pytest.raises(ModelError, match="sha256 mismatch"):
        get_network(path)


def test_old_model_format_is_refused_with_advice(
    tmp_path: Path, batch: JetBatch, toptag_arrays: ak.Array
) -> None:
    path = _tiny_network(tmp_path / "t", "sequence", batch, toptag_arrays)
    meta = json.loads((path / "model.json").read_text())
    meta["format_version"] = 1
    (path / "model.json").write_text(json.dumps(meta))
    clear_cache()
    with pytest.raises(ModelError, match="model format version 1, this hepnn reads 2: retrain"):
        jet_scores(path, batch)


def test_empty_jets_get_nan(tmp_path: Path, batch: JetBatch, toptag_arrays: ak.Array) -> None:
    for kind in ("image", "sequence"):
        path = _tiny_network(tmp_path / kind, kind, batch, toptag_arrays)
        cons = batch.constituents[:2]
        cons = ak.concatenate([cons[:1], cons[1:2][:, :0], cons[1:2]])  # jet 1 has no constituents
        jets = {"pt": [500.0, 500.0, 500.0], "eta": [0.1, 0.2, 0.3], "phi": [0.0, 1.0, 2.0],
                "mass": [170.0, 20.0, 80.0]}  # fmt: skip
        b = JetBatch.from_arrays(cons, jets)
        assert b.empty.tolist() == [False, True, False]
        scores = jet_scores(path, b)
        assert np.isfinite(scores[[0, 2]]).all(), kind
        assert np.isnan(scores[1]), kind
        # the other jets score as they would alone
        alone = jet_scores(path, b.take(np.array([0, 2])))
        assert np.array_equal(scores[[0, 2]], alone), kind
        rep = replica_scores(path, b, samples=3, seed=1)
        assert np.isnan(rep[:, 1]).all()
        assert np.isfinite(rep[:, [0, 2]]).all()


# ---------------------------------------------------------------- bad inputs
def _event_arrays(*, nan: bool = False, bad_index: bool = False) -> ak.Array:
    """Two events, NanoAOD v15 layout with flat branch names; 2 + 1 FatJets."""
    pf_pt = [[50.0, 30.0, 20.0], [40.0, 10.0]]
    if nan:
        pf_pt[1][1] = float("nan")
    links = [[0, 1, 2], [0, 1]]
    if bad_index:
        links[1][1] = 7
    return ak.Array(
        {
            "event": [10, 11],
            "label": [1, 0],
            "FatJet_pt": [[400.0, 300.0], [500.0]],
            "FatJet_eta": [[0.1, -1.0], [0.5]],
            "FatJet_phi": [[0.2, 2.0], [-3.1]],
            "FatJet_mass": [[170.0, 30.0], [80.0]],
            "FatJet_truth": [[1, 0], [1]],
            "PFCand_pt": pf_pt,
            "PFCand_eta": [[0.1, 0.2, 0.0], [0.5, 0.4]],
            "PFCand_phi": [[0.2, 0.3, 0.1], [-3.1, 3.1]],
            "PFCand_mass": [[0.0, 0.1, 0.0], [0.0, 0.0]],
            "PFCand_pdgId": [[211, -211, 22], [130, 22]],
            "FatJetPFCand_jetIdx": [[0, 0, 0], [0, 0]],
            "FatJetPFCand_pfCandIdx": links,
        }
    )


def test_fatjet_batch_links_constituents_and_flags_empty_jets() -> None:
    events = _event_arrays()
    b = fatjet_batch(events, entry_start=100)
    assert b is not None
    assert b.n_constituents.tolist() == [3, 0, 2]  # FatJet 1 of event 0 has no links
    assert b.empty.tolist() == [False, True, False]
    assert b.event_index.tolist() == [0, 0, 1]
    assert b.jet_index.tolist() == [0, 1, 0]
    assert ak.to_list(b.constituents.charge[0]) == [1, -1, 0]
    np.testing.assert_allclose(
        b.ptd, [np.sqrt(50**2 + 30**2 + 20**2) / 100, 0.0, np.sqrt(40**2 + 10**2) / 50]
    )
    assert fatjet_batch(events, pt_min=350.0).jet_index.tolist() == [0, 0]
    no_links = ak.Array({"FatJet_pt": [[400.0]], "FatJet_eta": [[0.0]]})
    assert fatjet_batch(no_links) is None
    # labels per event or per jet (<jets>_<field>); None without the branch
    assert jet_labels(events, "label", b).tolist() == [1, 1, 0]
    assert jet_labels(events, "FatJet_truth", b).tolist() == [1, 0, 1]
    assert jet_labels(events, "nolabel", b) is None


def test_nan_constituent_names_branch_and_entry() -> None:
    with pytest.raises(InputError, match=r"branch PFCand_pt: NaN value .* in entry 101"):
        fatjet_batch(_event_arrays(nan=True), entry_start=100)


def test_link_index_out_of_range_names_branch() -> None:
    with pytest.raises(InputError, match=r"branch FatJetPFCand_pfCandIdx: index 7 .* entry 101"):
        fatjet_batch(_event_arrays(bad_index=True), entry_start=100)


# ------------------------------------------------------------------ training
def test_training_is_byte_reproducible(datasets: dict, tmp_path: Path) -> None:
    """Same spec, same data: the same model folder, byte for byte (so --resume can match it)."""
    from hepnn.metrics import auc
    from hepnn.nets.data import DataReader
    from hepnn.nets.train import train_network

    spec = NetworkSpec.model_validate(
        {
            "inputs": {"kind": "sequence", "max_constituents": 32},
            "params": {"filters": [8, 8], "dense": [8]},
            "label": "label",
            "split": {"method": "random", "id_column": "event"},
            "max_events": 400,
            "training": {"epochs": 2, "augment": {"rotate": True, "reflect": True}},
        }
    )
    reader = DataReader(datasets)
    data = reader.training_data("t", spec)
    assert reader.training_data("t", spec) is data  # read once per run
    assert len(data) == 400
    paths = []
    for i in (0, 1):
        result = train_network("t", spec, data, progress=False)
        paths.append(save_network(tmp_path / str(i), "t", result, data))
    for name in ("model.json", "model.pt", "history.csv"):
        assert (paths[0] / name).read_bytes() == (paths[1] / name).read_bytes(), name
    meta = json.loads((paths[0] / "model.json").read_text())
    m = meta["models"][0]
    train_m = meta["metrics"]["models"][0]
    held = meta["metrics"]["held_out"]
    assert train_m["n_train"] + train_m["n_val"] + held["test_rows"] == 400
    assert held["rows"] == held["test_rows"]  # random split: the test jets are held out
    assert meta["training_data"][0]["rows"] == 1600  # read, then capped by max_events
    assert meta["training_data"][0]["dataset"] == "toptag"
    assert m["file"] == "model.pt"
    # The augmentation is random but seeded, and only touches the training batches:
    # the validation AUC is that of the saved network on the unaugmented jets.
    batch, labels, ids, _ = reader.read_jets("t", spec)
    assert len(batch) == 400
    clear_cache()
    val = split_codes(ids, spec.split) == VAL
    scores = jet_scores(paths[0], batch.take(val), output="logit")
    assert auc(scores, labels[val]) == pytest.approx(train_m["val_auc"], abs=1e-12)
    test = split_codes(ids, spec.split) == TEST
    scores = jet_scores(paths[0], batch.take(test), output="logit")
    assert auc(scores, labels[test]) == pytest.approx(held["auc"], abs=1e-12)
    plain = spec.model_copy(
        update={"training": spec.training.model_copy(update={"augment": AugmentSpec()})}
    )
    other = save_network(tmp_path / "p", "t", train_network("t", plain, data, progress=False), data)
    assert (other / "model.pt").read_bytes() != (paths[0] / "model.pt").read_bytes()
