"""hepnn.jets.taggers: settings, split, model files, deterministic scores, bad inputs (fast)."""

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
from hepnn.jets.tagger_report import classifier_metrics
from hepnn.jets.tagger_training import find_tagger
from hepnn.jets.taggers import (
    TEST,
    TRAIN,
    VAL,
    JetBatch,
    TaggerPrep,
    TaggerSpec,
    fatjet_batch,
    get_tagger,
    save_tagger,
    split_codes,
    tagger_scores,
)
from hepnn.modelio import load_model
from hepnn.models import build
from hepnn.variables import cache_info, clear_cache

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def toptag_arrays() -> ak.Array:
    """The shipped top-tagging jets as converted NanoAOD-like arrays (flat branch names)."""
    from hepnn.pipeline import cache_dir
    from hepnn.samples import load_samples, resolve_samples

    ds = resolve_samples(load_samples(REPO / "samples" / "toptag.yaml"), cache_dir())
    f = ds["toptag"].files[0]
    with uproot.open(f.root_path) as fh:
        return fh[f.treename].arrays(library="ak")


def _tiny_tagger(path: Path, kind: str, batch: JetBatch) -> Path:
    """A seeded, untrained small tagger of ``kind`` saved to ``path`` (weights do not matter here)."""
    spec = TaggerSpec.model_validate(
        {"kind": kind, "params": {"filters": [4, 4], "dense": [8], "dropout": 0.1}}
        | ({"sequence": {"max_constituents": 32}} if kind == "sequence" else {})
    )
    settings = spec.input_settings()
    raw = TaggerPrep(spec.kind, settings).raw(batch)
    prep = TaggerPrep.fit(spec.kind, settings, raw)
    torch.manual_seed(7)
    model = build(spec.arch, **spec.params, **prep.arch_inputs()).eval()
    return save_tagger(path, model, prep, spec, {"note": "untrained"}, "0" * 64, [])


@pytest.fixture(scope="module")
def batch(toptag_arrays: ak.Array) -> JetBatch:
    b = fatjet_batch(toptag_arrays[:300])
    assert b is not None
    return b


# ------------------------------------------------------------------ settings
def test_config_rejects_unknown_keys_and_derived_params(tmp_path: Path) -> None:
    cfg = REPO / "configs" / "toptag.yaml"
    with pytest.raises(ConfigError, match=r"unknown key 'taggers\.cnn2d\.image\.pixels'"):
        load_config(cfg, ["taggers.cnn2d.image.pixels=3"])
    with pytest.raises(ConfigError, match="in_channels"):
        load_config(cfg, ["taggers.cnn2d.params.in_channels=3"])
    with pytest.raises(ConfigError, match="fractions"):
        load_config(cfg, ["taggers.cnn2d.training.split.fractions=[0.5, 0.6, 0.1]"])
    assert load_config(cfg).taggers["cnn1d"].sequence.max_constituents == 64
    with pytest.raises(ConfigError, match="sequence taggers"):
        load_config(cfg, ["taggers.cnn2d.training.augment.rotate=true"])
    with pytest.raises(ConfigError, match="both deta and dphi"):
        load_config(
            cfg,
            [
                "taggers.cnn1d.sequence.features=[log_pt, deta]",
                "taggers.cnn1d.training.augment.rotate=true",
            ],
        )


# -------------------------------------------------------------- augmentation
def _augmenter(batch: JetBatch, *, scale: str = "standard", **augment: bool) -> tuple:
    """Fitted sequence prep, its augmenter and the network inputs of ``batch``."""
    from hepnn.jets.tagger_training import SequenceAugmenter
    from hepnn.jets.taggers import SequenceAugment, SequenceSettings

    settings = SequenceSettings(max_constituents=32, scale=scale).model_dump(mode="json")
    raw = TaggerPrep("sequence", settings).raw(batch)
    prep = TaggerPrep.fit("sequence", settings, raw)
    aug = SequenceAugmenter.build(SequenceAugment(**augment), prep)
    return prep, aug, torch.from_numpy(prep.transform(raw))


def _unscale(prep: TaggerPrep, x: torch.Tensor) -> np.ndarray:
    """Raw features (N, F, P) back from the scaled inputs, padded slots 0."""
    assert prep.scaler is not None
    mean = np.asarray(prep.scaler.mean)[None, :, None]
    std = np.asarray(prep.scaler.std)[None, :, None]
    mask = x[:, -1:].numpy().astype(np.float64)
    return (x[:, :-1].numpy().astype(np.float64) * std + mean) * mask


def test_augmentation_rotates_and_reflects_keeping_invariants(batch: JetBatch) -> None:
    """Rotation/reflection about the jet axis: ΔR, pT, E and the mask unchanged; seeded."""
    prep, aug, x = _augmenter(batch, rotate=True, reflect=True)
    assert aug is not None
    out = aug(x, torch.Generator().manual_seed(3))
    features = list(prep.settings["features"])
    ieta, iphi, idr = (features.index(f) for f in ("deta", "dphi", "delta_r"))
    a, b = _unscale(prep, x), _unscale(prep, out)
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
    prep, aug, x = _augmenter(batch, scale="none", reflect=True)
    assert aug is not None
    assert not aug.rotate
    out = aug(x, torch.Generator().manual_seed(0))
    features = list(prep.settings["features"])
    for name in ("deta", "dphi"):
        i = features.index(name)
        assert torch.equal(out[:, i].abs(), x[:, i].abs())
        flipped = (out[:, i] * x[:, i]).sum(dim=1) < 0
        assert 0 < int(flipped.sum()) < len(x)  # about half of the jets
    assert _augmenter(batch)[1] is None  # nothing asked, nothing built


def test_split_is_a_function_of_the_event_number_only() -> None:
    ids = np.arange(100_000)
    split = {"method": "random", "fractions": (0.64, 0.16, 0.2), "seed": 1234}
    codes = split_codes(ids, split)
    frac = np.bincount(codes, minlength=3) / len(ids)
    assert np.allclose(frac, [0.64, 0.16, 0.2], atol=0.01)
    perm = np.random.default_rng(0).permutation(len(ids))
    assert np.array_equal(split_codes(ids[perm], split), codes[perm])  # order-free
    assert not np.array_equal(split_codes(ids, {**split, "seed": 1}), codes)
    parity = split_codes(ids, {**split, "method": "parity"})
    assert (parity[ids % 2 == 1] == TEST).all()
    assert set(np.unique(parity[ids % 2 == 0])) == {TRAIN, VAL}


def test_rejection_counts_background_at_the_working_point() -> None:
    label = np.array([1] * 10 + [0] * 4)
    score = np.array([0.9] * 3 + [0.1] * 7 + [0.95, 0.5, 0.2, 0.0])
    m = classifier_metrics(score, label)  # 3 signal jets = 30%: threshold 0.9
    assert m["background_passing"] == 1
    assert m["rejection"] == 4.0
    m = classifier_metrics(score, np.where(score == 0.95, 1, label))  # no background passes
    assert m["rejection"] is None
    assert m["rejection_lower_bound"] == 3


# --------------------------------------------------------------- model files
@pytest.mark.parametrize("kind", ["image", "sequence"])
def test_scores_are_chunking_independent_and_cached(
    tmp_path: Path, batch: JetBatch, kind: str
) -> None:
    path = _tiny_tagger(tmp_path / kind, kind, batch)
    clear_cache()
    whole = tagger_scores(path, batch.constituents, {"pt": batch.pt, "eta": batch.eta,
                                                     "phi": batch.phi, "mass": batch.mass})  # fmt: skip
    assert whole.dtype == np.float32
    assert np.isfinite(whole).all()
    for size in (1, 37, 256, 257):
        parts = []
        stop = 3 if size == 1 else len(batch)  # single jets: a few suffice
        for a in range(0, stop, size):
            b = batch.take(np.arange(a, min(a + size, stop)))
            parts.append(tagger_scores(path, b.constituents, {"pt": b.pt, "eta": b.eta,
                                                              "phi": b.phi, "energy": b.energy}))  # fmt: skip
        assert np.array_equal(np.concatenate(parts), whole[:stop]), size
    info = cache_info()
    assert info["loads"] == 1
    assert info["hits"] > 0


def test_model_json_is_a_modelio_family_member(tmp_path: Path, batch: JetBatch) -> None:
    path = _tiny_tagger(tmp_path / "t", "image", batch)
    meta = json.loads((path / "model.json").read_text())
    assert meta["format"] == "hepnn-model"
    assert meta["kind"] == "jet-tagger"
    assert meta["architecture"]["params"]["image_size"] == [33, 33]
    assert len(meta["models"][0]["sha256"]) == 64
    state = torch.load(path / "model.pt", weights_only=True)
    assert "net.1.weight" in state
    with pytest.raises(ModelError, match=r"hepnn\.jets\.taggers"):
        load_model(path)  # the flat-feature loader refuses a tagger with a pointer
    spec = TaggerSpec(kind="sequence")
    with pytest.raises(ModelError, match="expected a sequence tagger"):
        find_tagger("t", tmp_path, spec)
    pt = path / "model.pt"
    data = bytearray(pt.read_bytes())
    data[len(data) // 2] ^= 0xFF
    pt.write_bytes(bytes(data))
    clear_cache()
    with pytest.raises(ModelError, match="sha256 mismatch"):
        get_tagger(path)


def test_empty_jets_get_nan_and_zero_input(tmp_path: Path, batch: JetBatch) -> None:
    path = _tiny_tagger(tmp_path / "t", "sequence", batch)
    cons = ak.concatenate([batch.constituents[:2], batch.constituents[:0]], axis=0)
    cons = ak.concatenate([cons[:1], cons[1:2][:, :0], cons[1:2]])  # jet 1 has no constituents
    jets = {"pt": [500.0, 500.0, 500.0], "eta": [0.1, 0.2, 0.3], "phi": [0.0, 1.0, 2.0],
            "mass": [170.0, 20.0, 80.0]}  # fmt: skip
    scores = tagger_scores(path, cons, jets)
    assert np.isfinite(scores[[0, 2]]).all()
    assert np.isnan(scores[1])


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
            "FatJet_pt": [[400.0, 300.0], [500.0]],
            "FatJet_eta": [[0.1, -1.0], [0.5]],
            "FatJet_phi": [[0.2, 2.0], [-3.1]],
            "FatJet_mass": [[170.0, 30.0], [80.0]],
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
    b = fatjet_batch(_event_arrays(), entry_start=100)
    assert b is not None
    assert b.n_constituents.tolist() == [3, 0, 2]  # FatJet 1 of event 0 has no links
    assert b.empty.tolist() == [False, True, False]
    assert b.event_index.tolist() == [0, 0, 1]
    assert b.jet_index.tolist() == [0, 1, 0]
    assert ak.to_list(b.constituents.charge[0]) == [1, -1, 0]
    assert fatjet_batch(_event_arrays(), pt_min=350.0).jet_index.tolist() == [0, 0]
    no_links = ak.Array({"FatJet_pt": [[400.0]], "FatJet_eta": [[0.0]]})
    assert fatjet_batch(no_links) is None


def test_nan_constituent_names_branch_and_entry() -> None:
    with pytest.raises(InputError, match=r"branch PFCand_pt: NaN value .* in entry 101"):
        fatjet_batch(_event_arrays(nan=True), entry_start=100)


def test_link_index_out_of_range_names_branch() -> None:
    with pytest.raises(InputError, match=r"branch FatJetPFCand_pfCandIdx: index 7 .* entry 101"):
        fatjet_batch(_event_arrays(bad_index=True), entry_start=100)


def test_training_is_byte_reproducible(tmp_path: Path) -> None:
    """Same config, same data: the same model folder, byte for byte (so --resume can match it)."""
    from hepnn.jets.tagger_training import train_tagger
    from hepnn.pipeline import cache_dir
    from hepnn.samples import load_samples, resolve_samples

    datasets = resolve_samples(load_samples(REPO / "samples" / "toptag.yaml"), cache_dir())
    spec = TaggerSpec.model_validate(
        {
            "kind": "sequence",
            "params": {"filters": [8, 8], "dense": [8]},
            "sequence": {"max_constituents": 32},
            "max_jets": 400,
            "training": {"epochs": 2, "augment": {"rotate": True, "reflect": True}},
        }
    )
    paths = [train_tagger("t", spec, datasets, tmp_path / str(i), progress=False) for i in (0, 1)]
    for name in ("model.json", "model.pt", "history.csv"):
        assert (paths[0] / name).read_bytes() == (paths[1] / name).read_bytes(), name
    meta = json.loads((paths[0] / "model.json").read_text())
    assert meta["metrics"]["n_train"] + meta["metrics"]["n_val"] + meta["metrics"]["n_test"] == 400
    assert meta["training_data"][0]["jets"] == 1600  # read, then capped by max_jets
    # The augmentation is random but seeded, and only touches the training batches:
    # the validation AUC is that of the saved network on the unaugmented jets.
    from hepnn.jets.tagger_training import read_training_jets
    from hepnn.metrics import auc

    jets = read_training_jets("t", spec, datasets)
    val = split_codes(jets.ids, spec.training.split) == VAL
    scores = tagger_scores(paths[0], jets.batch.constituents[val], _jet_kinematics(jets.batch, val))
    assert auc(scores, jets.labels[val]) == pytest.approx(meta["metrics"]["val_auc"], abs=1e-12)
    plain = TaggerSpec.model_validate(
        spec.model_dump() | {"training": spec.training.model_dump() | {"augment": {}}}
    )
    other = train_tagger("t", plain, datasets, tmp_path / "p", progress=False)
    assert (other / "model.pt").read_bytes() != (paths[0] / "model.pt").read_bytes()


def _jet_kinematics(batch: JetBatch, rows: np.ndarray) -> dict[str, np.ndarray]:
    return {f: getattr(batch, f)[rows] for f in ("pt", "eta", "phi", "mass", "energy")}
