"""Jet taggers trained from a config and applied as deterministic per-jet columns.

>>> scores = tagger_scores("outputs/toptag/models/cnn2d", constituents, jets)  # (N,) float32

A config lists taggers beside its networks; ``hepnn run`` trains them on the
constituents of its datasets (:func:`hepnn.jets.tagger_training.prepare_taggers`,
or takes them from ``--models DIR``), hands the workflow their folders
(``WorkflowContext.taggers``) and derives metrics and ROC curves after the run
(:func:`hepnn.jets.tagger_report.tagger_outputs`):

.. code-block:: yaml

    taggers:
      cnn2d:
        kind: image                 # image | sequence
        architecture: cnn2d         # registry name (default: cnn2d / cnn1d by kind)
        params: {filters: [16, 32, 32], dense: [64], dropout: 0.1}
        image: {n_eta: 33, n_phi: 33, width: 1.6, channels: [pt], normalize: sum}
        label: label                # 0/1 branch: per event (label) or per jet (FatJet_label)
        training:
          epochs: 30
          batch_size: 64
          lr: 0.003
          split: {method: random, fractions: [0.64, 0.16, 0.2], id_column: event, seed: 1234}

Inputs are built by the same code at training and at application
(:meth:`TaggerPrep.raw` on a :class:`JetBatch`): :func:`~hepnn.jets.images.jet_images`
then a per-pixel training mean and one global std, or
:func:`~hepnn.jets.constituents.constituent_sequences` then a
:class:`~hepnn.jets.constituents.SequenceScaler` with the mask as last channel.
The fitted preprocessing is saved in ``model.json`` beside ``model.pt``
(:mod:`hepnn.modelio` family, ``"kind": "jet-tagger"``, weights read with
``torch.load(weights_only=True)`` after a sha256 check).

Split, by event number only (a reordered or re-chunked file gives the same split):
``random`` puts event ``e`` in train / validation / test by a seeded hash of
``e`` against the cumulative ``fractions`` (so the fractions hold on average,
not exactly); ``parity`` tests on odd events and splits the even ones into
train / validation by the same hash. Early stopping uses the validation jets;
metrics use only test jets of the datasets the tagger trained on (matched by
the content hash of their files), and every jet of other datasets.
With ``cross_validation:`` in the config, a run also scores every jet out of
fold, K models per tagger trained for evaluation only (:mod:`hepnn.jets.tagger_cv`).

Determinism: one pinned intra-op thread and fixed-size zero-padded micro-batches
(:func:`hepnn.inference.padded_apply`), the model cached once per process in
:func:`hepnn.variables.get_model`'s cache: a jet's score is bitwise the same for
every chunking and executor. Jets without constituents get an all-zero input,
score NaN and the ``empty`` flag.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import awkward as ak
import numpy as np
import torch
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)
from torch import nn

from hepnn import __version__
from hepnn.errors import InputError, ModelError
from hepnn.files import atomic_bytes, atomic_text
from hepnn.jets.constituents import (
    ALL_FEATURES,
    CHARGE_FEATURES,
    KINEMATIC_FEATURES,
    PID_FEATURES,
    SequenceScaler,
    constituent_sequences,
)
from hepnn.jets.images import CHANNELS, jet_images
from hepnn.jets.nanoaod import LAYOUTS, _get, _has, fatjet_constituents
from hepnn.modelio import (
    FORMAT,
    FORMAT_VERSION,
    _jsonable,
    parse_model_json,
    read_weights,
)
from hepnn.models import build
from hepnn.models.forward import INFERENCE_THREADS, inference_lock, padded_apply, torch_threads
from hepnn.variables import get_model

if TYPE_CHECKING:
    pass

#: ``kind`` of a tagger's ``model.json`` (see :mod:`hepnn.modelio`).
TAGGER_KIND = "jet-tagger"
#: Rows per forward pass when scoring. Fixed (the bits depend on it); small
#: enough that a chunk of a few CMS FatJets does not pay for 1,024 padded images.
TAGGER_MICRO_BATCH = 256
#: Default architectures by tagger kind.
DEFAULT_ARCHITECTURE = {"image": "cnn2d", "sequence": "cnn1d"}
#: Split codes returned by :func:`split_codes`.
TRAIN, VAL, TEST = 0, 1, 2
SPLIT_NAMES = ("train", "validation", "test")


# ----------------------------------------------------------------- settings
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ImageSettings(_Strict):
    """Jet-image inputs (:func:`hepnn.jets.images.jet_images`) and their normalisation."""

    n_eta: int = Field(33, ge=1)
    n_phi: int = Field(33, ge=1)
    width: float | tuple[float, float] = Field(1.6, description="full Δη (and Δφ) extent")
    channels: list[str] = Field(default_factory=lambda: ["pt"])
    normalize: Literal["sum", "max"] | None = "sum"
    center: Literal["centroid", "jet"] = "centroid"
    rotate: bool = True
    flip: bool = True
    pixel_norm: Literal["mean_std", "none"] = Field(
        "mean_std", description="subtract the per-pixel training mean, divide by one global std"
    )

    @field_validator("channels")
    @classmethod
    def _channels(cls, v: list[str]) -> list[str]:
        if not v or len(set(v)) != len(v) or any(c not in CHANNELS for c in v):
            msg = f"channels must be distinct names from {', '.join(CHANNELS)}"
            raise ValueError(msg)
        return v


class SequenceSettings(_Strict):
    """Constituent-sequence inputs (:func:`hepnn.jets.constituents.constituent_sequences`)."""

    max_constituents: int = Field(64, ge=1)
    features: list[str] = Field(default_factory=lambda: list(KINEMATIC_FEATURES))
    signed_deta: bool = False
    scale: Literal["standard", "none"] = Field(
        "standard", description="SequenceScaler fitted on the training jets' real constituents"
    )

    @field_validator("features")
    @classmethod
    def _features(cls, v: list[str]) -> list[str]:
        if not v or len(set(v)) != len(v) or any(f not in ALL_FEATURES for f in v):
            msg = f"features must be distinct names from {', '.join(ALL_FEATURES)}"
            raise ValueError(msg)
        return v


class TaggerSplit(_Strict):
    """Train / validation / test assignment by event number (see the module docstring)."""

    method: Literal["random", "parity"] = "random"
    fractions: tuple[float, float, float] = (0.64, 0.16, 0.20)
    id_column: str = "event"
    seed: int = Field(1234, ge=0)

    @field_validator("fractions")
    @classmethod
    def _fractions(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if min(v) < 0 or v[0] <= 0 or v[1] <= 0 or not math.isclose(sum(v), 1.0, abs_tol=1e-9):
            msg = (
                "fractions (train, validation, test) must be >= 0, train and validation > 0, sum 1"
            )
            raise ValueError(msg)
        return v


class SequenceAugment(_Strict):
    """Random symmetry transformations of the training jets' constituents (sequence taggers).

    Both act on the (Δη, Δφ) of every constituent of a jet together, drawn anew for
    every jet in every epoch; pT, energies and ΔR are unchanged. Validation, test and
    applied scores never see them.
    """

    rotate: bool = Field(False, description="rotate (Δη, Δφ) about the jet axis by a uniform angle")
    reflect: bool = Field(False, description="Δη → −Δη and Δφ → −Δφ, each with probability 1/2")

    @property
    def active(self) -> bool:
        return self.rotate or self.reflect


class TaggerTraining(_Strict):
    """Optimiser, early stopping, augmentation and split of one tagger."""

    epochs: int = Field(30, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(3e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    patience: int = Field(
        8, ge=1, description="stop after this many epochs without a lower val loss"
    )
    lr_factor: float = Field(1.0, gt=0, le=1, description="ReduceLROnPlateau factor; 1 = constant")
    lr_patience: int = Field(3, ge=0)
    seed: int = Field(1234, ge=0, description="weights, batch order, dropout and augmentation")
    threads: int = Field(1, ge=1, description="intra-op threads (pinned: they change the bits)")
    split: TaggerSplit = Field(default_factory=TaggerSplit)
    augment: SequenceAugment = Field(default_factory=SequenceAugment)


class TaggerSpec(_Strict):
    """One tagger of a config (``taggers: {name: ...}``)."""

    kind: Literal["image", "sequence"]
    architecture: str | None = Field(None, description="registry name; default cnn2d / cnn1d")
    params: dict[str, Any] = Field(default_factory=dict)
    image: ImageSettings = Field(default_factory=ImageSettings)
    sequence: SequenceSettings = Field(default_factory=SequenceSettings)
    training: TaggerTraining = Field(default_factory=TaggerTraining)
    label: str = Field("label", description="0/1 branch: per event, or per jet as <jets>_<field>")
    jets: str = Field("FatJet", description="jet collection the constituent links refer to")
    datasets: list[str] | None = Field(None, description="datasets to train on (default all)")
    max_jets: int | None = Field(None, ge=1)
    train: bool = Field(
        True, description="false: only applied when --models provides it (e.g. unlabelled data)"
    )

    @field_validator("params")
    @classmethod
    def _no_derived(cls, v: dict[str, Any]) -> dict[str, Any]:
        derived = {"in_channels", "image_size", "n_features", "n_inputs"} & set(v)
        if derived:
            msg = f"params must not set {', '.join(sorted(derived))}: they follow from the inputs"
            raise ValueError(msg)
        return v

    @model_validator(mode="after")
    def _augment_needs_angles(self) -> TaggerSpec:
        aug = self.training.augment
        if aug.active and self.kind != "sequence":
            msg = "training.augment applies to sequence taggers (images are already canonicalised)"
            raise ValueError(msg)
        if aug.rotate and len({"deta", "dphi"} & set(self.sequence.features)) == 1:
            msg = "training.augment.rotate needs both deta and dphi (or neither) in the features"
            raise ValueError(msg)
        return self

    @property
    def arch(self) -> str:
        return self.architecture or DEFAULT_ARCHITECTURE[self.kind]

    def input_settings(self) -> dict[str, Any]:
        """The image or sequence settings of this kind, as plain data."""
        s = self.image if self.kind == "image" else self.sequence
        return s.model_dump(mode="json")


TaggerName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z][A-Za-z0-9_]*$")]
#: Type of ``Config.taggers``: names become column names (``score_<name>``).
TaggerMap = dict[TaggerName, TaggerSpec]


# --------------------------------------------------------------- jet batch
@dataclass(frozen=True)
class JetBatch:
    """Jets with their constituents, flat over events.

    Attributes
    ----------
    constituents
        awkward ``jets x constituents`` records (``pt, eta, phi, mass, energy``
        and, when the file has them, ``charge``, ``pdgId``).
    pt, eta, phi, mass, energy
        ``(N,)`` float64 jet kinematics.
    event_index
        ``(N,)`` row of each jet's event in the chunk (or file).
    jet_index
        ``(N,)`` position of each jet in its event's collection.
    """

    constituents: ak.Array
    pt: np.ndarray
    eta: np.ndarray
    phi: np.ndarray
    mass: np.ndarray
    energy: np.ndarray
    event_index: np.ndarray
    jet_index: np.ndarray

    def __len__(self) -> int:
        return len(self.pt)

    @property
    def n_constituents(self) -> np.ndarray:
        return ak.to_numpy(ak.num(self.constituents, axis=1)).astype(np.int64)

    @property
    def empty(self) -> np.ndarray:
        """Jets without constituents (or zero constituent pT): no meaningful input."""
        return (self.n_constituents == 0) | ~(ak.to_numpy(ak.sum(self.constituents.pt, axis=1)) > 0)

    @property
    def ptd(self) -> np.ndarray:
        """p_T^D = sqrt(sum pT^2) / sum pT of the constituents (0 for empty jets)."""
        pt = self.constituents.pt
        s1 = ak.to_numpy(ak.sum(pt, axis=1)).astype(np.float64)
        s2 = ak.to_numpy(ak.sum(pt * pt, axis=1)).astype(np.float64)
        return np.where(s1 > 0, np.sqrt(s2) / np.where(s1 > 0, s1, 1.0), 0.0)

    def take(self, rows: np.ndarray) -> JetBatch:
        """The jets at ``rows`` (indices or boolean mask)."""
        return JetBatch(
            self.constituents[rows],
            *(getattr(self, f)[rows] for f in ("pt", "eta", "phi", "mass", "energy")),
            self.event_index[rows],
            self.jet_index[rows],
        )

    @classmethod
    def from_arrays(cls, constituents: Any, jets: Any) -> JetBatch:
        """A batch from awkward constituents (jets x constituents) and per-jet kinematics.

        ``jets`` is a record array or mapping with ``pt``, ``eta``, ``phi`` and
        ``mass`` (or ``energy``), one value per jet.
        """
        cons = constituents if isinstance(constituents, ak.Array) else ak.Array(constituents)
        if "energy" not in cons.fields:
            p = cons.pt * np.cosh(cons.eta)
            cons = ak.with_field(cons, np.sqrt(p * p + cons.mass * cons.mass), "energy")

        def get(name: str) -> np.ndarray | None:
            fields = jets.fields if isinstance(jets, ak.Array) else list(jets)
            if name not in fields:
                return None
            v = jets[name]
            return np.asarray(ak.to_numpy(v) if isinstance(v, ak.Array) else v, dtype=np.float64)

        pt, eta, phi, mass, energy = (get(n) for n in ("pt", "eta", "phi", "mass", "energy"))
        if pt is None or eta is None or phi is None or (mass is None and energy is None):
            msg = "jets need pt, eta, phi and mass (or energy)"
            raise InputError(msg)
        if energy is None:
            assert mass is not None
            energy = np.sqrt((pt * np.cosh(eta)) ** 2 + mass**2)
        if mass is None:
            mass = np.sqrt(np.maximum(energy**2 - (pt * np.cosh(eta)) ** 2, 0.0))
        n = len(pt)
        if len(cons) != n:
            msg = f"{len(cons)} constituent lists for {n} jets"
            raise InputError(msg)
        idx = np.arange(n, dtype=np.int64)
        return cls(cons, pt, eta, phi, mass, energy, idx, np.zeros(n, dtype=np.int64))


def constituent_layout(events: Any) -> str | None:
    """The constituent layout of ``events`` (:data:`hepnn.jets.nanoaod.LAYOUTS`), or None."""
    for name, lay in LAYOUTS.items():
        if _has(events, lay.links, lay.cand_idx) and _has(events, lay.candidates, "pt"):
            return name
    return None


def _first_bad(values: np.ndarray) -> tuple[int, str] | None:
    bad = ~np.isfinite(values)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        return i, "NaN" if np.isnan(values[i]) else "infinite"
    return None


def fatjet_batch(
    events: Any,
    *,
    jets: str = "FatJet",
    pt_min: float | None = None,
    entry_start: int = 0,
) -> JetBatch | None:
    """The jets of ``events`` (NanoEvents or flat uproot arrays) with their PF constituents.

    Parameters
    ----------
    events
        A chunk's NanoEvents, or ``tree.arrays()`` with NanoAOD branch names.
    jets
        The jet collection (``FatJet``).
    pt_min
        Keep jets with ``pt >= pt_min`` (all when None).
    entry_start
        Entry number of ``events[0]`` in its file, for error messages.

    Returns
    -------
    JetBatch or None
        None when the events have no constituent link table (e.g. plain NanoAOD
        before v15): such jets cannot be tagged.

    Raises
    ------
    InputError
        A link index outside its collection (names the branch and entry), or a
        NaN / infinite / negative-pT constituent or jet (names branch and entry).
    """
    layout = constituent_layout(events)
    if layout is None:
        return None
    lay = LAYOUTS[layout]
    jet_pt = _get(events, jets, "pt")
    cons = fatjet_constituents(events, layout=layout, jets=jets, entry_start=entry_start)
    local = ak.local_index(jet_pt, axis=1)
    if pt_min is not None:
        sel = jet_pt >= pt_min
        cons, local = cons[sel], local[sel]
    else:
        sel = None
    n_per_event = ak.to_numpy(ak.num(local, axis=1)).astype(np.int64)
    event_index = np.repeat(np.arange(len(n_per_event), dtype=np.int64), n_per_event)
    kin = {}
    for field in ("pt", "eta", "phi", "mass"):
        v = _get(events, jets, field)
        kin[field] = ak.to_numpy(ak.flatten(v if sel is None else v[sel])).astype(np.float64)
        bad = _first_bad(kin[field])
        if bad is not None:
            i, what = bad
            msg = (
                f"branch {jets}_{field}: {what} value for {jets} {int(ak.flatten(local)[i])} "
                f"in entry {entry_start + int(event_index[i])}"
            )
            raise InputError(msg)
    flat = ak.flatten(cons, axis=1)
    counts = ak.to_numpy(ak.num(flat, axis=1)).astype(np.int64)
    jet_of = np.repeat(np.arange(len(counts)), counts)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    jet_index = ak.to_numpy(ak.flatten(local)).astype(np.int64)
    for field in ("pt", "eta", "phi", "mass"):
        values = ak.to_numpy(ak.flatten(flat[field])).astype(np.float64)
        bad = _first_bad(values)
        if bad is None and field == "pt" and (values < 0).any():
            bad = (int(np.flatnonzero(values < 0)[0]), "negative")
        if bad is not None:
            i, what = bad
            j = int(jet_of[i])
            msg = (
                f"branch {lay.candidates}_{field}: {what} value for constituent {i - int(starts[j])} "
                f"of {jets} {int(jet_index[j])} in entry {entry_start + int(event_index[j])}"
            )
            raise InputError(msg)
    energy = np.sqrt((kin["pt"] * np.cosh(kin["eta"])) ** 2 + kin["mass"] ** 2)
    return JetBatch(
        flat, kin["pt"], kin["eta"], kin["phi"], kin["mass"], energy, event_index, jet_index
    )


def jet_labels(
    events: Any, name: str, batch: JetBatch, *, jets: str = "FatJet"
) -> np.ndarray | None:
    """0/1 label of every jet of ``batch``: a per-jet ``<jets>_<field>`` or a per-event branch.

    Returns None when ``events`` has no such branch.
    """
    prefix = f"{jets}_"
    if name.startswith(prefix) and _has(events, jets, name[len(prefix) :]):
        per_jet = _get(events, jets, name[len(prefix) :])
        flat_index = np.concatenate([[0], np.cumsum(ak.to_numpy(ak.num(per_jet, axis=1)))])
        values = ak.to_numpy(ak.flatten(per_jet))[flat_index[batch.event_index] + batch.jet_index]
    elif name in events.fields:
        values = ak.to_numpy(events[name])[batch.event_index]
    else:
        return None
    return np.asarray(values).astype(np.int64)


# ------------------------------------------------------------ preprocessing
@dataclass(frozen=True)
class TaggerPrep:
    """How a tagger's network input is made from a :class:`JetBatch`; fitted, serialisable.

    ``raw`` builds the unnormalised input (images, or sequences with the mask
    as last channel), ``transform`` applies the fitted normalisation.
    """

    kind: Literal["image", "sequence"]
    settings: dict[str, Any]
    pixel_mean: np.ndarray | None = None
    pixel_std: float | None = None
    scaler: SequenceScaler | None = None

    def raw(self, batch: JetBatch) -> np.ndarray:
        """Unnormalised float32 inputs ``(N, C, n_eta, n_phi)`` or ``(N, F + 1, P)``."""
        c = batch.constituents
        s = self.settings
        if self.kind == "image":
            needs_charge = any(ch in ("charged_pt", "neutral_pt") for ch in s["channels"])
            width = s["width"] if np.ndim(s["width"]) == 0 else tuple(s["width"])
            return jet_images(
                c.pt, c.eta, c.phi,
                charge=_field(c, "charge") if needs_charge else None,
                jet_eta=batch.eta, jet_phi=batch.phi,
                n_eta=s["n_eta"], n_phi=s["n_phi"], width=width,
                center=s["center"], rotate=s["rotate"], flip=s["flip"],
                normalize=s["normalize"], channels=s["channels"],
            )  # fmt: skip
        feats = s["features"]
        X, mask = constituent_sequences(
            c.pt, c.eta, c.phi, c.energy,
            jet_pt=batch.pt, jet_eta=batch.eta, jet_phi=batch.phi, jet_energy=batch.energy,
            charge=_field(c, "charge") if set(feats) & set(CHARGE_FEATURES) else None,
            pid=_field(c, "pdgId") if set(feats) & set(PID_FEATURES) else None,
            max_constituents=s["max_constituents"], features=feats,
            signed_deta=s["signed_deta"],
        )  # fmt: skip
        return np.concatenate([X, mask.astype(np.float32)], axis=1)

    @classmethod
    def fit(
        cls, kind: Literal["image", "sequence"], settings: dict[str, Any], raw: np.ndarray
    ) -> TaggerPrep:
        """Fit the normalisation on the raw inputs of the training jets."""
        if kind == "image":
            if settings["pixel_norm"] == "none":
                return cls(kind, settings)
            mean = raw.mean(axis=0, dtype=np.float64).astype(np.float32)
            std = float(np.std(raw - mean, dtype=np.float64))
            return cls(kind, settings, mean, std if std > 0 else 1.0)
        if settings["scale"] == "none":
            return cls(kind, settings)
        scaler = SequenceScaler.fit(raw[:, :-1], raw[:, -1:] != 0, settings["features"])
        return cls(kind, settings, scaler=scaler)

    def transform(self, raw: np.ndarray) -> np.ndarray:
        """Network input (float32) from :meth:`raw` output; elementwise, so chunk-independent."""
        if self.kind == "image":
            if self.pixel_mean is None or self.pixel_std is None:
                return raw
            return (raw - self.pixel_mean) / np.float32(self.pixel_std)
        if self.scaler is None:
            return raw
        mask = raw[:, -1:]
        return np.concatenate([self.scaler.transform(raw[:, :-1], mask != 0), mask], axis=1)

    def arch_inputs(self) -> dict[str, Any]:
        """Constructor parameters that follow from the inputs."""
        s = self.settings
        if self.kind == "image":
            return {"in_channels": len(s["channels"]), "image_size": [s["n_eta"], s["n_phi"]]}
        return {"n_features": len(s["features"])}

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "settings": self.settings,
            # float32 -> float64 -> JSON -> float32 is exact: loaded models see the same bits.
            "pixel_mean": None if self.pixel_mean is None else self.pixel_mean.tolist(),
            "pixel_std": self.pixel_std,
            "scaler": None if self.scaler is None else self.scaler.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TaggerPrep:
        try:
            kind = d["kind"]
            if kind not in ("image", "sequence"):
                raise ValueError(kind)
            mean = d.get("pixel_mean")
            return cls(
                kind,
                dict(d["settings"]),
                None if mean is None else np.asarray(mean, dtype=np.float32),
                None if d.get("pixel_std") is None else float(d["pixel_std"]),
                None if d.get("scaler") is None else SequenceScaler.from_dict(d["scaler"]),
            )
        except (KeyError, TypeError, ValueError) as err:
            msg = f"invalid tagger preprocessing: {err}"
            raise ModelError(msg) from None


def _field(c: ak.Array, name: str) -> ak.Array:
    if name not in c.fields:
        msg = f"constituent field {name!r} needed by the tagger inputs is not in the file (have {', '.join(c.fields)})"
        raise InputError(msg)
    return c[name]


# --------------------------------------------------------------- model files
@dataclass(frozen=True)
class LoadedTagger:
    """A tagger folder loaded into memory, network in eval mode."""

    path: Path
    meta: dict[str, Any]
    model: nn.Module
    prep: TaggerPrep

    @property
    def kind(self) -> str:
        return self.prep.kind

    @property
    def split(self) -> dict[str, Any]:
        return dict(self.meta["split"])


def save_tagger(
    path: Path,
    model: nn.Module,
    prep: TaggerPrep,
    spec: TaggerSpec,
    metrics: Mapping[str, Any],
    data_hash: str,
    training_data: list[dict[str, Any]],
) -> Path:
    """Write ``model.pt`` then ``model.json`` (the commit point) into ``path``."""
    path.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    data = buf.getvalue()
    atomic_bytes(path / "model.pt", data)
    split = spec.training.split
    doc = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": TAGGER_KIND,
        "hepnn_version": __version__,
        "torch_version": torch.__version__,
        "architecture": {"name": spec.arch, "params": {**spec.params, **prep.arch_inputs()}},
        "tagger": {"kind": spec.kind, "jets": spec.jets, "label": spec.label},
        "output": "logit",
        "seed": spec.training.seed,
        "data_hash": data_hash,
        "split": split.model_dump(mode="json"),
        "settings": spec.model_dump(mode="json"),
        "metrics": dict(metrics),
        "training_data": training_data,
        "models": [
            {
                "fold": None,
                "file": "model.pt",
                "sha256": hashlib.sha256(data).hexdigest(),
                "applies_to": f"all jets; unbiased on the {split.method} test split and on other samples",
                "prep": prep.to_dict(),
            }
        ],
    }
    text = json.dumps(_jsonable(doc), indent=1, allow_nan=False) + "\n"
    atomic_text(path / "model.json", text)
    return path


def load_tagger(json_path: Path, raw: bytes) -> LoadedTagger:
    """Load a tagger from its ``model.json`` bytes (the loader of :func:`get_tagger`)."""
    meta = parse_model_json(json_path, raw)
    if meta.get("kind") != TAGGER_KIND:
        msg = f"{json_path} is not a jet tagger (kind {meta.get('kind', 'network')!r}); apply it with hepnn.variables.network_score"
        raise ModelError(msg)
    entry = meta["models"][0]
    state = read_weights(json_path.parent / entry["file"], entry["sha256"])
    prep = TaggerPrep.from_dict(entry["prep"])
    arch = meta["architecture"]
    try:
        net = build(arch["name"], **arch["params"])
        net.load_state_dict(state)
    except KeyError as exc:
        msg = f"{exc.args[0]} (in {json_path})"
        raise ModelError(msg) from None
    except (TypeError, ValueError, RuntimeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        msg = f"cannot build {arch['name']!r} with its weights from {json_path}: {first}"
        raise ModelError(msg) from None
    net.eval()
    return LoadedTagger(json_path.parent, meta, net, prep)


def get_tagger(model_path: str | os.PathLike[str]) -> LoadedTagger:
    """A tagger loaded once per process (the :func:`hepnn.variables.get_model` cache)."""
    return get_model(model_path, loader=load_tagger)


# ------------------------------------------------------------------ scoring
def _forward(
    model: nn.Module, x: np.ndarray, batch_size: int, *, sigmoid: bool = False
) -> np.ndarray:
    """Logits (or sigmoid scores) of ``x`` in fixed-size padded micro-batches, one pinned thread.

    The sigmoid is applied inside each fixed-size micro-batch: applied to the
    whole chunk at once, its vectorised body and scalar tail disagree in the last
    bit, so a jet's score would depend on its position in the chunk (measured:
    up to 26 of 1,600 jets differed by 1 ulp between chunkings).
    """

    def fn(t: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(model(t)) if sigmoid else model(t)

    with inference_lock, torch_threads(INFERENCE_THREADS):
        return padded_apply(fn, torch.from_numpy(np.ascontiguousarray(x)), batch_size).numpy()


def score_batch(
    model_path: str | os.PathLike[str],
    batch: JetBatch,
    *,
    batch_size: int = TAGGER_MICRO_BATCH,
) -> tuple[np.ndarray, np.ndarray]:
    """``(scores, raw_inputs)`` of every jet of ``batch``; scores NaN for empty jets."""
    loaded = get_tagger(model_path)
    raw = loaded.prep.raw(batch)
    scores = _forward(loaded.model, loaded.prep.transform(raw), batch_size, sigmoid=True)
    scores[batch.empty] = np.nan
    return scores, raw


def tagger_scores(
    model_path: str | os.PathLike[str],
    constituents: Any,
    jets: Any,
    *,
    batch_size: int = TAGGER_MICRO_BATCH,
) -> np.ndarray:
    """The tagger's score of every jet, as a deterministic column.

    Parameters
    ----------
    model_path
        A tagger folder (or its ``model.json``) written by :func:`save_tagger`.
    constituents
        awkward ``jets x constituents`` with ``pt, eta, phi`` and ``mass`` or
        ``energy`` (plus ``charge`` / ``pdgId`` if the tagger's inputs use them),
        e.g. ``ak.flatten(fatjet_constituents(events), axis=1)``.
    jets
        Per-jet ``pt, eta, phi`` and ``mass`` (or ``energy``): an awkward record
        array (``ak.flatten(events.FatJet)``) or a mapping of arrays.
    batch_size
        Micro-batch size; scores are bitwise independent of the chunking for a fixed value.

    Returns
    -------
    numpy.ndarray
        float32 sigmoid scores, NaN for jets without constituents.
    """
    return score_batch(model_path, JetBatch.from_arrays(constituents, jets), batch_size=batch_size)[
        0
    ]


def apply_taggers(
    taggers: Mapping[str, str | os.PathLike[str]], batch: JetBatch
) -> tuple[dict[str, np.ndarray], np.ndarray, tuple[float, float]]:
    """Scores of every tagger, plus the raw images of the first image tagger and their extent.

    The images are what the image tagger sees before its pixel normalisation
    (for average-image histograms); with no image tagger, :class:`ImageSettings`
    defaults. The extent is the full (Δη, Δφ) width of the image.
    """
    scores: dict[str, np.ndarray] = {}
    images, settings = None, None
    for name, path in taggers.items():
        scores[name], raw = score_batch(path, batch)
        if images is None and raw.ndim == 4:
            images, settings = raw, get_tagger(path).prep.settings
    if images is None or settings is None:
        settings = ImageSettings().model_dump(mode="json")
        images = TaggerPrep("image", settings).raw(batch)
    w = settings["width"]
    extent = (float(w), float(w)) if np.ndim(w) == 0 else (float(w[0]), float(w[1]))
    return scores, images, extent


# -------------------------------------------------------------------- split
def _hash_uniform(ids: np.ndarray, seed: int) -> np.ndarray:
    """A uniform number in [0, 1) per id: SplitMix64 of ``id`` xor a key from ``seed``."""
    key = np.random.SeedSequence([seed, 0x7A66]).generate_state(1, dtype=np.uint64)[0]
    x = np.asarray(ids).astype(np.uint64) ^ key
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(11)).astype(np.float64) * 2.0**-53


def split_codes(ids: Any, split: Mapping[str, Any]) -> np.ndarray:
    """:data:`TRAIN` / :data:`VAL` / :data:`TEST` (int8) of each event id under ``split``.

    ``split`` is a :class:`TaggerSplit` or its dict (as in ``model.json``).
    """
    s = split.model_dump() if isinstance(split, BaseModel) else dict(split)
    ids = np.asarray(ids).astype(np.int64)
    u = _hash_uniform(ids, int(s["seed"]))
    f_train, f_val, _ = (float(f) for f in s["fractions"])
    if s["method"] == "parity":
        odd = ids % 2 == 1
        val = u >= f_train / (f_train + f_val)
        return np.where(odd, TEST, np.where(val, VAL, TRAIN)).astype(np.int8)
    return np.where(u < f_train, TRAIN, np.where(u < f_train + f_val, VAL, TEST)).astype(np.int8)


__all__ = [
    "ImageSettings",
    "JetBatch",
    "LoadedTagger",
    "SequenceAugment",
    "SequenceSettings",
    "TaggerMap",
    "TaggerPrep",
    "TaggerSpec",
    "TaggerSplit",
    "TaggerTraining",
    "apply_taggers",
    "fatjet_batch",
    "get_tagger",
    "jet_labels",
    "load_tagger",
    "save_tagger",
    "score_batch",
    "split_codes",
    "tagger_scores",
]
