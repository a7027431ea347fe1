"""What a config says about one network: ``networks: {name: NetworkSpec}``.

Pure settings (pydantic, no torch), read by the config schema. Every network,
whatever its inputs, is one entry of the same shape:

.. code-block:: yaml

    networks:
      dnn:
        inputs: {kind: flat, features: [DER_mass_MMC, ...], missing_flags: auto}
        architecture: mlp               # default by kind: flat mlp, image cnn2d, sequence cnn1d
        params: {hidden: [128, 128, 128], activation: tanh, dropout: 0.1}
        label: Label                    # 0/1 branch: per event, or per jet as <jets>_<field>
        weight: Weight                  # event weights (training.use_weights, metrics)
        training: {epochs: 100, batch_size: 128, lr: 0.001, patience: 10, seed: 1234}
        split: {method: kfold, folds: 4, id_column: EventId}
      cnn2d:
        inputs: {kind: image, n_eta: 33, n_phi: 33, width: 1.6, channels: [pt]}
        label: label
        training: {epochs: 30, batch_size: 64, lr: 0.003, patience: 8, lr_factor: 1.0}
        split: {method: random, fractions: [0.64, 0.16, 0.20], id_column: event, seed: 1234}

The inputs of each kind are built by :mod:`hepnn.nets.inputs`; the split rules are
in :mod:`hepnn.nets.split`.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    StringConstraints,
    field_validator,
    model_serializer,
    model_validator,
)

from hepnn.jets.constituents import ALL_FEATURES, KINEMATIC_FEATURES
from hepnn.jets.images import CHANNELS

#: Default architecture of each kind of input.
DEFAULT_ARCHITECTURE = {"flat": "mlp", "image": "cnn2d", "sequence": "cnn1d"}
#: Constructor parameters that follow from the inputs (never set in ``params``).
DERIVED_PARAMS = frozenset({"n_inputs", "in_channels", "image_size", "n_features"})


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


#: Options added in hepnn 0.2.x that are left out of every dump while unset, so that a
#: config or ``model.json`` that does not use them keeps its bytes (and hashes).
_UNSET_OMITTED: dict[str, tuple[Any, ...]] = {
    "FlatInputs": ("transform", {}, "symmetry", None),
    "SplitSpec": ("salt", None, "val_fraction", None),
    "TrainingSpec": ("class_balance", False),
}


def _omit_unset(model: BaseModel, data: Any) -> Any:
    """``data`` (a dump of ``model``) without the new options that hold their default."""
    pairs = _UNSET_OMITTED.get(type(model).__name__, ())
    if isinstance(data, dict):
        for key, default in zip(pairs[::2], pairs[1::2], strict=True):
            if key in data and data[key] == default:
                del data[key]
    return data


# ------------------------------------------------------------------- inputs
class FlatSymmetry(_Strict):
    """Inputs invariant under the detector's symmetries: a rotation in φ, reflections.

    The pp collision and the detector are (to a good approximation) symmetric under a
    common rotation of every azimuthal angle, under φ → −φ and under η → −η. A network
    on raw angles must learn these symmetries from the training events; with
    ``symmetry`` its inputs have them built in:

    * every angle of ``phis`` becomes its difference to ``phi_reference``, wrapped to
      [−π, π); ``phi_reference`` itself is then always 0 and is not a network input;
    * with ``phi_reflect`` (one of ``phis``), all those differences change sign where that
      one's is negative (so it is always in [0, π));
    * every pseudorapidity of ``etas`` is multiplied by the sign of ``eta_reference`` (+1
      where it is 0 or missing): the reference's own η becomes |η|.

    A missing reference makes the rotated angles missing. Every name must be a feature.
    """

    phi_reference: str | None = None
    phis: list[str] = Field(default_factory=list)
    phi_reflect: str | None = None
    eta_reference: str | None = None
    etas: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _consistent(self) -> FlatSymmetry:
        if self.phis and self.phi_reference is None:
            msg = "symmetry.phis needs symmetry.phi_reference"
            raise ValueError(msg)
        if self.phi_reference is not None and self.phi_reference in self.phis:
            msg = f"symmetry.phi_reference {self.phi_reference!r} cannot also be in phis"
            raise ValueError(msg)
        if self.phi_reflect is not None and self.phi_reflect not in self.phis:
            msg = f"symmetry.phi_reflect {self.phi_reflect!r} must be one of phis"
            raise ValueError(msg)
        if self.etas and self.eta_reference is None:
            msg = "symmetry.etas needs symmetry.eta_reference"
            raise ValueError(msg)
        return self

    def names(self) -> list[str]:
        """Every feature the symmetry reads."""
        refs = [self.phi_reference, self.eta_reference]
        return [n for n in [*refs, *self.phis, *self.etas] if n is not None]


class FlatInputs(_Strict):
    """Event-level features: standardised on the training events, missing values imputed.

    ``missing_flags``: ``auto`` adds one 0/1 input per distinct missing-value pattern
    of the training events, ``none`` adds none, a list flags exactly those features.
    """

    kind: Literal["flat"] = "flat"
    features: list[str] = Field(min_length=1)
    missing_flags: Literal["auto", "none"] | list[str] = "auto"
    transform: dict[str, Literal["log1p"]] = Field(
        default_factory=dict,
        description="per feature, applied before standardising: log1p = log(1 + x), x > -1",
    )

    symmetry: FlatSymmetry | None = Field(
        None, description="φ rotation and η / φ reflections of angle features (FlatSymmetry)"
    )

    @model_validator(mode="after")
    def _transform_features(self) -> FlatInputs:
        unknown = sorted(set(self.transform) - set(self.features))
        if unknown:
            msg = f"transform names feature(s) not among the features: {', '.join(unknown)}"
            raise ValueError(msg)
        if self.symmetry is not None:
            unknown = sorted(set(self.symmetry.names()) - set(self.features))
            if unknown:
                msg = f"symmetry names feature(s) not among the features: {', '.join(unknown)}"
                raise ValueError(msg)
            both = sorted(set(self.symmetry.names()) & set(self.transform))
            if both:
                msg = f"feature(s) both transformed and in symmetry: {', '.join(both)}"
                raise ValueError(msg)
        return self

    @model_serializer(mode="wrap")
    def _dump(self, handler: SerializerFunctionWrapHandler) -> Any:
        return _omit_unset(self, handler(self))

    @field_validator("features")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        dup = sorted({f for f in v if v.count(f) > 1})
        if dup:
            msg = f"duplicate features: {', '.join(dup)}"
            raise ValueError(msg)
        return v


class ImageInputs(_Strict):
    """Jet images (:func:`hepnn.jets.images.jet_images`) with a fitted pixel normalisation."""

    kind: Literal["image"] = "image"
    jets: str = Field("FatJet", description="jet collection the constituent links refer to")
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


class SequenceInputs(_Strict):
    """pT-ordered constituent sequences (:func:`hepnn.jets.constituents.constituent_sequences`)."""

    kind: Literal["sequence"] = "sequence"
    jets: str = Field("FatJet", description="jet collection the constituent links refer to")
    max_constituents: int = Field(64, ge=1)
    features: list[str] = Field(default_factory=lambda: list(KINEMATIC_FEATURES))
    signed_deta: bool = False
    scale: Literal["standard", "none"] = Field(
        "standard", description="scaler fitted on the training jets' real constituents"
    )

    @field_validator("features")
    @classmethod
    def _features(cls, v: list[str]) -> list[str]:
        if not v or len(set(v)) != len(v) or any(f not in ALL_FEATURES for f in v):
            msg = f"features must be distinct names from {', '.join(ALL_FEATURES)}"
            raise ValueError(msg)
        return v


InputSpec = Annotated[FlatInputs | ImageInputs | SequenceInputs, Field(discriminator="kind")]


# -------------------------------------------------------------------- split
class SplitSpec(_Strict):
    """Which events train, validate (early stopping) and are held out, by event id.

    ``parity``: one model, trained on even ids, validated on odd ids; the odd ids
    are its unbiased events. ``kfold`` (``folds >= 3``): ``folds`` models; model
    ``i`` is applied to ids with ``id % folds == i``, validated on fold ``i + 1``,
    trained on the rest: every event is scored by a model that never saw it.
    ``random``: one model; each id is hashed with ``seed`` into train /
    validation / test by ``fractions``; the test events are held out.
    """

    method: Literal["parity", "kfold", "random"] = "parity"
    folds: int = Field(2, ge=2, description="k of a kfold split (>= 3)")
    fractions: tuple[float, float, float] = Field(
        (0.64, 0.16, 0.20), description="train / validation / test shares of a random split"
    )
    id_column: str = Field("EventId", description="integer event id branch")
    seed: int = Field(1234, ge=0, description="hash seed of a random split")
    salt: int | None = Field(
        None,
        ge=0,
        description="kfold: hashed folds keyed by salt instead of id % folds (ensemble members); "
        "random: train/validation re-hashed with salt, test ids unchanged",
    )
    val_fraction: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="kfold: validate on this hashed share of the non-test rows instead of a whole fold",
    )

    @model_serializer(mode="wrap")
    def _dump(self, handler: SerializerFunctionWrapHandler) -> Any:
        return _omit_unset(self, handler(self))

    @field_validator("fractions")
    @classmethod
    def _fractions(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if min(v) < 0 or v[0] <= 0 or v[1] <= 0 or not math.isclose(sum(v), 1.0, abs_tol=1e-9):
            msg = (
                "fractions (train, validation, test) must be >= 0, train and validation > 0, sum 1"
            )
            raise ValueError(msg)
        return v

    @model_validator(mode="after")
    def _folds(self) -> SplitSpec:
        if self.method == "kfold" and self.folds < 3:
            msg = "kfold needs folds >= 3 (apply on fold i, validate on fold i+1, train on the rest); use method 'parity' for a 2-way split"
            raise ValueError(msg)
        if self.val_fraction is not None and self.method != "kfold":
            msg = "val_fraction applies to method 'kfold' only (random: set fractions)"
            raise ValueError(msg)
        return self

    @property
    def n_models(self) -> int:
        """Models trained under this split (``folds`` for kfold, else 1)."""
        return self.folds if self.method == "kfold" else 1


# ----------------------------------------------------------------- training
class AugmentSpec(_Strict):
    """Random symmetry transformations of training jets' constituents (sequence inputs).

    Both act on the (Δη, Δφ) of every constituent of a jet together, drawn anew for
    every jet in every epoch; pT, energies and ΔR are unchanged. Validation, test and
    applied scores never see them.
    """

    rotate: bool = Field(False, description="rotate (Δη, Δφ) about the jet axis by a uniform angle")
    reflect: bool = Field(False, description="Δη → −Δη and Δφ → −Δφ, each with probability 1/2")

    @property
    def active(self) -> bool:
        return self.rotate or self.reflect


class TrainingSpec(_Strict):
    """Optimiser, early stopping and augmentation of one network (Adam, BCE on the logit)."""

    epochs: int = Field(100, ge=1)
    batch_size: int = Field(128, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    patience: int = Field(
        10, ge=1, description="stop after this many epochs without a lower val loss"
    )
    lr_factor: float = Field(
        0.5,
        gt=0,
        le=1,
        description="ReduceLROnPlateau factor after lr_patience epochs; 1 = constant",
    )
    lr_patience: int = Field(3, ge=0)
    seed: int = Field(1234, ge=0, description="weights, batch order, dropout and augmentation")
    threads: int = Field(1, ge=1, description="intra-op threads (pinned: they change the bits)")
    use_weights: bool = Field(
        False,
        description="weight the loss by the event weights, signal and background totals equal",
    )
    augment: AugmentSpec = Field(default_factory=AugmentSpec)
    class_balance: bool = Field(
        False,
        description="without use_weights: weight the loss so that signal and background rows "
        "each carry half of the total (flat inputs)",
    )

    @model_serializer(mode="wrap")
    def _dump(self, handler: SerializerFunctionWrapHandler) -> Any:
        return _omit_unset(self, handler(self))


# ------------------------------------------------------------------ network
class NetworkSpec(_Strict):
    """One network of a config (see the module docstring)."""

    inputs: InputSpec
    architecture: str | None = Field(None, description="registry name; default by input kind")
    params: dict[str, Any] = Field(default_factory=dict)
    label: str = Field("Label", description="0/1 branch: per event, or per jet as <jets>_<field>")
    weight: str = Field("Weight", description="event-weight branch (flat inputs)")
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    split: SplitSpec = Field(default_factory=SplitSpec)
    datasets: list[str] | None = Field(
        None, description="datasets to train on (default all but is_data ones)"
    )
    max_events: int | None = Field(None, ge=1, description="train on the first N events (jets)")
    train: bool = Field(
        True, description="false: only applied when --models provides it (e.g. unlabelled data)"
    )

    @field_validator("params")
    @classmethod
    def _no_derived(cls, v: dict[str, Any]) -> dict[str, Any]:
        derived = DERIVED_PARAMS & set(v)
        if derived:
            msg = f"params must not set {', '.join(sorted(derived))}: they follow from the inputs"
            raise ValueError(msg)
        return v

    @model_validator(mode="after")
    def _augment_needs_angles(self) -> NetworkSpec:
        aug = self.training.augment
        if aug.active and not isinstance(self.inputs, SequenceInputs):
            msg = "training.augment applies to sequence inputs (images are already canonicalised)"
            raise ValueError(msg)
        angles = {"deta", "dphi"} & set(getattr(self.inputs, "features", []))
        if aug.rotate and len(angles) == 1:
            msg = "training.augment.rotate needs both deta and dphi (or neither) in the features"
            raise ValueError(msg)
        if self.training.use_weights and not isinstance(self.inputs, FlatInputs):
            msg = "training.use_weights needs flat inputs (jets carry no event weight here)"
            raise ValueError(msg)
        return self

    @property
    def kind(self) -> str:
        """``flat``, ``image`` or ``sequence``."""
        return self.inputs.kind

    @property
    def arch(self) -> str:
        """The architecture's registry name."""
        return self.architecture or DEFAULT_ARCHITECTURE[self.kind]


NetworkName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z][A-Za-z0-9_]*$")]
#: Type of ``Config.networks``: names become file and column names (``score_<name>``).
NetworkMap = dict[NetworkName, NetworkSpec]

#: Message for configs written for hepnn 0.1 (``taggers:`` beside ``networks:``).
OLD_FORM_HELP = (
    "networks and taggers are one map since hepnn 0.2: write every network as "
    "networks: {name: {inputs: {kind: flat|image|sequence, ...}, architecture, params, "
    "training, split}} (features and missing_flags go to inputs, split out of training; "
    "a tagger's image/sequence settings go to inputs); see README 'Networks'"
)


def old_form(name: str, entry: Any) -> str | None:
    """Where ``entry`` (a raw ``networks`` / ``taggers`` value) is in the hepnn 0.1 form."""
    if not isinstance(entry, dict):
        return None
    training = entry.get("training")
    if isinstance(training, dict) and ({"features", "split", "architecture"} & set(training)):
        return f"networks.{name}.training"
    if "kind" in entry or "image" in entry or "sequence" in entry:
        return f"networks.{name}"
    return None
