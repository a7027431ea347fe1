"""How a network's input is made: one interface, one implementation per kind of input.

An :class:`InputBuilder` turns a *source* (a mapping of event columns for ``flat``
inputs, a :class:`~hepnn.jets.batch.JetBatch` for ``image`` and ``sequence``
inputs) into network inputs in two steps, the same at training and at application:

1. :meth:`~InputBuilder.raw` — unnormalised per-row inputs (one row per event or jet);
2. :meth:`~InputBuilder.transform` — the fitted normalisation, elementwise (so an
   event's input has the same bits in any chunking).

:meth:`~InputBuilder.fit` learns the normalisation on the raw inputs of the
training rows only; :meth:`~InputBuilder.state` / :meth:`~InputBuilder.from_state`
store it in ``model.json``. A builder also says how many rows a fixed-size
inference micro-batch has (the bits depend on it) and which rows cannot be scored
(a jet without constituents).

Implementations: :class:`hepnn.nets.flat.FlatBuilder`, :class:`ImageBuilder`,
:class:`SequenceBuilder`. A new kind of input is a new subclass registered with
:func:`register_builder`, plus its settings in :mod:`hepnn.nets.spec`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from hepnn.errors import InputError, ModelError
from hepnn.jets.constituents import (
    CHARGE_FEATURES,
    PID_FEATURES,
    SequenceScaler,
    constituent_sequences,
)
from hepnn.jets.images import jet_images
from hepnn.nets.spec import ImageInputs, InputSpec, SequenceInputs

if TYPE_CHECKING:
    from hepnn.jets.batch import JetBatch

_BUILDERS: dict[str, type[InputBuilder]] = {}


class InputBuilder(ABC):
    """The inputs of one network (see the module docstring)."""

    #: The ``inputs.kind`` this builder implements.
    kind: ClassVar[str]
    #: Rows per inference micro-batch (fixed: the bits depend on it).
    micro_batch: ClassVar[int]
    settings: Any

    @abstractmethod
    def raw(self, source: Any) -> np.ndarray:
        """Unnormalised inputs, one row per event or jet of ``source``."""

    @abstractmethod
    def fit(self, raw: np.ndarray) -> InputBuilder:
        """A fitted copy, its normalisation learnt from the training rows ``raw``."""

    @abstractmethod
    def transform(self, raw: np.ndarray) -> np.ndarray:
        """Network inputs (float32) from :meth:`raw` output."""

    @property
    @abstractmethod
    def input_names(self) -> list[str]:
        """One name per input feature (per channel for images), for rankings."""

    @abstractmethod
    def arch_inputs(self) -> dict[str, Any]:
        """Architecture parameters that follow from the inputs (``n_inputs``, ...)."""

    @abstractmethod
    def state(self) -> dict[str, Any]:
        """The fitted normalisation as JSON data."""

    @classmethod
    @abstractmethod
    def from_state(cls, settings: Any, state: Mapping[str, Any]) -> InputBuilder:
        """Rebuild a fitted builder from :meth:`state` output."""

    def unusable(self, source: Any) -> np.ndarray | None:
        """Rows that cannot be scored (their score is NaN); None when every row can be."""
        return None

    def helper_inputs(self) -> list[str]:
        """Inputs that are not physics features (e.g. missing-value flags)."""
        return []

    def augmenter(self, augment: Any) -> Callable[..., Any] | None:
        """A training-batch augmentation for ``training.augment``, or None."""
        return None


def register_builder(cls: type[InputBuilder]) -> type[InputBuilder]:
    """Make ``cls`` the builder of inputs of kind ``cls.kind``."""
    _BUILDERS[cls.kind] = cls
    return cls


def builder_class(kind: str) -> type[InputBuilder]:
    """The builder class of a kind of input."""
    # The flat builder registers on import (it lives in its own module, which imports
    # this one); import it here so that any caller of this module finds every kind.
    from hepnn.nets import flat  # noqa: F401

    try:
        return _BUILDERS[kind]
    except KeyError:
        msg = f"unknown kind of input {kind!r}; known: {', '.join(sorted(_BUILDERS))}"
        raise ModelError(msg) from None


def make_builder(settings: InputSpec) -> InputBuilder:
    """An unfitted builder for a network's ``inputs`` settings."""
    return builder_class(settings.kind)(settings)


def load_builder(settings: Mapping[str, Any], state: Mapping[str, Any]) -> InputBuilder:
    """A fitted builder from ``model.json``: its ``inputs`` settings and one model's state."""
    from pydantic import TypeAdapter, ValidationError

    try:
        spec = TypeAdapter(InputSpec).validate_python(dict(settings))
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(map(str, first["loc"])) or "kind"
        msg = f"invalid inputs settings: {where}: {first['msg']}"
        raise ModelError(msg) from None
    return builder_class(spec.kind).from_state(spec, state)


# ------------------------------------------------------------------ jets
def _field(c: Any, name: str) -> Any:
    if name not in c.fields:
        msg = f"constituent field {name!r} needed by the network inputs is not in the file (have {', '.join(c.fields)})"
        raise InputError(msg)
    return c[name]


class _JetBuilder(InputBuilder):
    micro_batch: ClassVar[int] = 256  # small: a chunk of a few CMS FatJets pays for few rows

    def unusable(self, source: JetBatch) -> np.ndarray:
        """Jets without constituents (score NaN)."""
        return source.empty


class ImageBuilder(_JetBuilder):
    """Jet images, then a per-pixel training mean and one global std (``pixel_norm``)."""

    kind: ClassVar[str] = "image"

    def __init__(
        self, settings: ImageInputs, pixel_mean: np.ndarray | None = None, pixel_std: float | None = None
    ) -> None:
        self.settings = settings
        self.pixel_mean = pixel_mean
        self.pixel_std = pixel_std

    def raw(self, source: JetBatch) -> np.ndarray:
        """``(N, channels, n_eta, n_phi)`` float32 images before the pixel normalisation."""
        s = self.settings
        c = source.constituents
        needs_charge = any(ch in ("charged_pt", "neutral_pt") for ch in s.channels)
        return jet_images(
            c.pt, c.eta, c.phi,
            charge=_field(c, "charge") if needs_charge else None,
            jet_eta=source.eta, jet_phi=source.phi,
            n_eta=s.n_eta, n_phi=s.n_phi, width=s.width,
            center=s.center, rotate=s.rotate, flip=s.flip,
            normalize=s.normalize, channels=s.channels,
        )  # fmt: skip

    def fit(self, raw: np.ndarray) -> ImageBuilder:
        if self.settings.pixel_norm == "none":
            return ImageBuilder(self.settings)
        mean = raw.mean(axis=0, dtype=np.float64).astype(np.float32)
        std = float(np.std(raw - mean, dtype=np.float64))
        return ImageBuilder(self.settings, mean, std if std > 0 else 1.0)

    def transform(self, raw: np.ndarray) -> np.ndarray:
        if self.pixel_mean is None or self.pixel_std is None:
            return raw
        return (raw - self.pixel_mean) / np.float32(self.pixel_std)

    @property
    def input_names(self) -> list[str]:
        return [f"image_{ch}" for ch in self.settings.channels]

    @property
    def extent(self) -> tuple[float, float]:
        """Full (Δη, Δφ) width of the image."""
        w = self.settings.width
        return (float(w), float(w)) if np.ndim(w) == 0 else (float(w[0]), float(w[1]))

    def arch_inputs(self) -> dict[str, Any]:
        s = self.settings
        return {"in_channels": len(s.channels), "image_size": [s.n_eta, s.n_phi]}

    def state(self) -> dict[str, Any]:
        # float32 -> float64 -> JSON -> float32 is exact: loaded models see the same bits.
        return {
            "pixel_mean": None if self.pixel_mean is None else self.pixel_mean.tolist(),
            "pixel_std": self.pixel_std,
        }

    @classmethod
    def from_state(cls, settings: ImageInputs, state: Mapping[str, Any]) -> ImageBuilder:
        try:
            mean = state.get("pixel_mean")
            std = state.get("pixel_std")
            return cls(
                settings,
                None if mean is None else np.asarray(mean, dtype=np.float32),
                None if std is None else float(std),
            )
        except (TypeError, ValueError, AttributeError) as err:
            msg = f"invalid image-input state: {err}"
            raise ModelError(msg) from None


class SequenceBuilder(_JetBuilder):
    """Constituent sequences with the mask as last channel, then a per-feature scaler."""

    kind: ClassVar[str] = "sequence"

    def __init__(self, settings: SequenceInputs, scaler: SequenceScaler | None = None) -> None:
        self.settings = settings
        self.scaler = scaler

    def raw(self, source: JetBatch) -> np.ndarray:
        """``(N, features + 1, max_constituents)`` float32, the last channel the 0/1 mask."""
        s = self.settings
        c = source.constituents
        feats = s.features
        x, mask = constituent_sequences(
            c.pt, c.eta, c.phi, c.energy,
            jet_pt=source.pt, jet_eta=source.eta, jet_phi=source.phi, jet_energy=source.energy,
            charge=_field(c, "charge") if set(feats) & set(CHARGE_FEATURES) else None,
            pid=_field(c, "pdgId") if set(feats) & set(PID_FEATURES) else None,
            max_constituents=s.max_constituents, features=feats,
            signed_deta=s.signed_deta,
        )  # fmt: skip
        return np.concatenate([x, mask.astype(np.float32)], axis=1)

    def fit(self, raw: np.ndarray) -> SequenceBuilder:
        if self.settings.scale == "none":
            return SequenceBuilder(self.settings)
        scaler = SequenceScaler.fit(raw[:, :-1], raw[:, -1:] != 0, self.settings.features)
        return SequenceBuilder(self.settings, scaler)

    def transform(self, raw: np.ndarray) -> np.ndarray:
        if self.scaler is None:
            return raw
        mask = raw[:, -1:]
        return np.concatenate([self.scaler.transform(raw[:, :-1], mask != 0), mask], axis=1)

    @property
    def input_names(self) -> list[str]:
        return list(self.settings.features)

    def helper_inputs(self) -> list[str]:
        return ["mask"]

    def arch_inputs(self) -> dict[str, Any]:
        return {"n_features": len(self.settings.features)}

    def state(self) -> dict[str, Any]:
        return {"scaler": None if self.scaler is None else self.scaler.to_dict()}

    @classmethod
    def from_state(cls, settings: SequenceInputs, state: Mapping[str, Any]) -> SequenceBuilder:
        try:
            scaler = state.get("scaler")
            return cls(settings, None if scaler is None else SequenceScaler.from_dict(scaler))
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            msg = f"invalid sequence-input state: {err}"
            raise ModelError(msg) from None

    def augmenter(self, augment: Any) -> Callable[..., Any] | None:
        from hepnn.nets.augment import SequenceAugmenter

        return SequenceAugmenter.build(augment, self)


register_builder(ImageBuilder)
register_builder(SequenceBuilder)
