"""Flat event features as network inputs: standardisation, imputation, missing flags.

>>> builder = FlatBuilder(FlatInputs(features=["DER_mass_MMC", "PRI_tau_pt"]))
>>> raw = builder.raw(columns)           # (N, 2) float64, NaN where a value is missing
>>> fitted = builder.fit(raw[train])     # statistics of the training events only
>>> x = fitted.transform(raw)            # (N, 2 + flags) float32

Missing values are explicit. A value is missing when it equals
:data:`MISSING_VALUE` (``-999.0``, the Higgs-challenge convention), is NaN, or is
masked (a numpy masked array or awkward ``None``); :meth:`FlatBuilder.raw` turns
all of them into NaN. Each feature is standardised with the mean and standard
deviation of its *non-missing* values in the *training* events; a missing value
is imputed with the training mean, i.e. 0 after standardising. Optionally, 0/1
"missing flag" inputs tell the network which values were imputed.

Heavy tails: ``inputs.transform: {feature: log1p}`` replaces a feature's value x by
log(1 + x) before the statistics are fitted and before standardising (for positive
energy-like features: masses, transverse momenta, Σp_T; a value ≤ −1 is an input
error). The transform is stored in ``model.json`` with the features, so an applied
network prepares its inputs exactly as in training.

Symmetries: ``inputs.symmetry`` (:class:`~hepnn.nets.spec.FlatSymmetry`) turns angles
into differences to a reference angle (wrapped to [−π, π), optionally reflected) and
pseudorapidities into signed-by-reference values, before everything else
(:meth:`FlatBuilder.symmetric`); the reference angle is then not an input. The wrap is
written with a comparison and one ±2π (not a modulo) so that numpy and the exported
torch graph give the same bits.

The transform is computed in float64 and rounded once to float32, elementwise, so
an event gets the same bits in any chunking.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from hepnn.errors import ConfigError, InputError, ModelError
from hepnn.nets.inputs import InputBuilder, register_builder
from hepnn.nets.spec import FlatInputs, FlatSymmetry

#: Sentinel the Higgs challenge writes for "undefined".
MISSING_VALUE = -999.0
#: Suffix of the name of a missing-flag input.
FLAG_SUFFIX = "_missing"
#: Version of the fitted state in ``model.json``.
STATE_FORMAT = 1
#: Per-feature transforms of ``inputs.transform`` (applied before standardising).
TRANSFORMS = {"log1p": np.log1p}


def apply_transform(name: str, values: np.ndarray, kind: str | None) -> np.ndarray:
    """``values`` of feature ``name`` through its transform (NaN = missing stays NaN).

    Raises
    ------
    InputError
        ``log1p`` of a value ≤ −1, naming the feature.
    """
    if kind is None:
        return values
    if kind == "log1p":
        bad = values <= -1.0
        if bad.any():
            msg = (
                f"feature {name!r}: transform log1p needs values > -1, "
                f"found {int(bad.sum())} (minimum {float(values[bad].min())})"
            )
            raise InputError(msg)
    return TRANSFORMS[kind](values)


TWO_PI = 2.0 * math.pi


def wrap_angle(d: np.ndarray) -> np.ndarray:
    """An angle difference in (−2π, 2π) wrapped to [−π, π) (NaN stays NaN)."""
    with np.errstate(invalid="ignore"):
        return np.where(d >= math.pi, d - TWO_PI, np.where(d < -math.pi, d + TWO_PI, d))


def apply_symmetry(symmetry: FlatSymmetry, features: Sequence[str], raw: np.ndarray) -> np.ndarray:
    """A copy of ``raw`` (``(N, features)`` float64, NaN = missing) with ``symmetry`` applied."""
    out = raw.copy()
    col = {name: j for j, name in enumerate(features)}
    # whole blocks of columns at once (elementwise: the same bits as column by column)
    if symmetry.phi_reference is not None:
        phis = [col[name] for name in symmetry.phis]
        delta = wrap_angle(raw[:, phis] - raw[:, [col[symmetry.phi_reference]]])
        if symmetry.phi_reflect is not None:
            flip = delta[:, symmetry.phis.index(symmetry.phi_reflect)] < 0  # NaN: no flip
            delta = np.where(flip[:, None], -delta, delta)
        out[:, phis] = delta
        out[:, col[symmetry.phi_reference]] = 0.0
    if symmetry.eta_reference is not None:
        etas = [col[name] for name in symmetry.etas]
        flip = raw[:, col[symmetry.eta_reference]] < 0
        out[:, etas] = np.where(flip[:, None], -out[:, etas], out[:, etas])
    return out


def missing_values(values: Any) -> np.ndarray:
    """A column as float64 with NaN where it is missing.

    Masked entries of a numpy masked array, NaN and :data:`MISSING_VALUE` count as missing.
    """
    if isinstance(values, np.ma.MaskedArray):
        arr = np.array(values.filled(np.nan), dtype=np.float64)
    else:
        arr = np.array(values, dtype=np.float64)  # a copy: changed below
    arr[arr == MISSING_VALUE] = np.nan
    return arr


def _auto_flags(features: Sequence[str], masks: Sequence[np.ndarray]) -> list[tuple[str, str]]:
    """One flag per distinct missing pattern, named after its first feature.

    In the Higgs data the 3 jet-pair features share one pattern and get one flag.
    Patterns are hashed to find identical ones cheaply, then confirmed with
    ``array_equal`` (hash collisions must not merge flags).
    """
    flags: list[tuple[str, str]] = []
    seen: dict[bytes, list[np.ndarray]] = {}
    for name, mask in zip(features, masks, strict=True):
        if not mask.any():
            continue
        key = np.packbits(mask).tobytes()
        if any(np.array_equal(mask, m) for m in seen.get(key, [])):
            continue
        seen.setdefault(key, []).append(mask)
        flags.append((name + FLAG_SUFFIX, name))
    return flags


class FlatBuilder(InputBuilder):
    """Inputs of a network on event-level features (see the module docstring).

    Parameters
    ----------
    settings
        The ``inputs`` of the network's spec.
    mean, std
        Per-feature mean and standard deviation of the non-missing training values
        (``std`` is 1 for a constant or never-observed feature); None before fitting.
    flags
        ``(flag name, feature)`` pairs: a 0/1 input that is 1 when ``feature`` is
        missing. Flags follow the features in the input order.
    """

    kind: ClassVar[str] = "flat"
    micro_batch: ClassVar[int] = 1024

    def __init__(
        self,
        settings: FlatInputs,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        flags: Sequence[tuple[str, str]] = (),
    ) -> None:
        self.settings = settings
        self.features = list(settings.features)
        symmetry = settings.symmetry
        dropped = symmetry.phi_reference if symmetry is not None else None
        #: Indices of the features that are network inputs (all but a φ reference).
        self.kept = [j for j, f in enumerate(self.features) if f != dropped]
        self.flags = [(str(name), str(feature)) for name, feature in flags]
        self.mean = None if mean is None else np.asarray(mean, dtype=np.float64)
        self.std = None if std is None else np.asarray(std, dtype=np.float64)
        if self.mean is not None and self.std is not None:
            n = len(self.features)
            if self.mean.shape != (n,) or self.std.shape != (n,):
                msg = "mean and std must have one entry per feature"
                raise ModelError(msg)
            if not (np.all(np.isfinite(self.mean)) and np.all(self.std > 0)):
                msg = "feature preparation has non-finite means or non-positive standard deviations"
                raise ModelError(msg)
        unknown = [f for _, f in self.flags if f not in self.input_features]
        if unknown:
            msg = f"missing flag for unknown feature(s): {', '.join(unknown)}"
            raise ModelError(msg)

    # ------------------------------------------------------------------ raw
    def raw(self, source: Mapping[str, Any]) -> np.ndarray:
        """``(N, features)`` float64 values of ``source`` (a mapping of columns), NaN = missing.

        Raises
        ------
        ModelError
            A feature is absent from ``source``.
        InputError
            A column that is not flat, or columns of different lengths.
        """
        out: np.ndarray | None = None
        for j, name in enumerate(self.features):
            if name not in source:
                msg = f"feature {name!r} required by the model is not in the data"
                raise ModelError(msg)
            values = missing_values(source[name])
            if values.ndim != 1:
                msg = f"feature {name!r}: expected a flat (1D) column, got shape {values.shape}"
                raise InputError(msg)
            if out is None:
                # column-major: each feature is one contiguous write (the values do not depend
                # on the layout; 2x faster than strided columns of a row-major array)
                out = np.empty((values.shape[0], len(self.features)), dtype=np.float64, order="F")
            elif values.shape[0] != out.shape[0]:
                msg = f"feature {name!r} has {values.shape[0]} entries, expected {out.shape[0]}"
                raise InputError(msg)
            out[:, j] = values
        assert out is not None  # FlatInputs has at least one feature
        return out

    def symmetric(self, raw: np.ndarray) -> np.ndarray:
        """``raw`` with ``inputs.symmetry`` applied (``raw`` itself without one)."""
        if self.settings.symmetry is None:
            return raw
        return apply_symmetry(self.settings.symmetry, self.features, raw)

    @property
    def input_features(self) -> list[str]:
        """The features that are network inputs, in order (all but a φ reference)."""
        return [self.features[j] for j in self.kept]

    def defined(self, raw: np.ndarray) -> np.ndarray | None:
        """``(N, inputs)`` bool: the input's value is defined (not imputed); None if all are.

        Flags are always defined; a rotated angle is undefined where it or its reference is.
        """
        ok = ~np.isnan(self.symmetric(raw)[:, self.kept])
        if ok.all():
            return None
        out = np.ones((raw.shape[0], len(self.input_names)), dtype=bool)
        out[:, : len(self.kept)] = ok
        return out

    # ------------------------------------------------------------------ fit
    def fit(self, raw: np.ndarray) -> FlatBuilder:
        """Fit on the raw inputs of the *training* events only."""
        raw = self.symmetric(raw)
        means, stds, masks = [], [], []
        transforms = self.settings.transform
        for j, name in enumerate(self.features):
            values = apply_transform(name, raw[:, j], transforms.get(name))
            mask = np.isnan(values)
            present = values[~mask]
            if np.any(~np.isfinite(present)):
                msg = f"feature {name!r}: infinite values in the training events"
                raise InputError(msg)
            if present.size == 0:
                mean, std = 0.0, 1.0  # never observed: every value will be imputed as 0
            else:
                mean = float(present.mean())
                std = float(present.std())
                if not std > 0 or not math.isfinite(std):
                    std = 1.0  # constant feature: centre it, do not blow it up
            means.append(mean)
            stds.append(std)
            masks.append(mask)
        chosen = self.settings.missing_flags
        if chosen == "auto":
            flags = _auto_flags(self.input_features, [masks[j] for j in self.kept])
        elif chosen == "none":
            flags = []
        else:
            unknown = [f for f in chosen if f not in self.input_features]
            if unknown:
                msg = f"missing_flags names feature(s) not among the inputs: {', '.join(unknown)}"
                raise ConfigError(msg)
            flags = [(f + FLAG_SUFFIX, f) for f in dict.fromkeys(chosen)]
        return FlatBuilder(self.settings, means, stds, flags)

    # ------------------------------------------------------------ transform
    @property
    def input_names(self) -> list[str]:
        """Names of the network inputs, in order: the features (but a φ reference), the flags."""
        return [*self.input_features, *(name for name, _ in self.flags)]

    def transform(self, raw: np.ndarray) -> np.ndarray:
        """``(N, inputs)`` float32 network inputs from :meth:`raw` output.

        Raises
        ------
        InputError
            A value that is still not finite after preparation (``inf``, or a value
            overflowing float32), naming the feature.
        """
        if self.mean is None or self.std is None:
            msg = "the flat inputs are not fitted"
            raise ModelError(msg)
        n_feat = len(self.kept)
        values = self.symmetric(raw)[:, self.kept]  # a copy: transformed in place below
        for i, j in enumerate(self.kept):
            kind = self.settings.transform.get(self.features[j])
            if kind is not None:
                values[:, i] = apply_transform(self.features[j], values[:, i], kind)
        mask = np.isnan(values)
        out = np.empty((raw.shape[0], n_feat + len(self.flags)), dtype=np.float32)
        with np.errstate(over="ignore", invalid="ignore"):
            # Computed in float64, rounded once to float32; overflow reported below.
            np.divide(
                np.subtract(values, self.mean[self.kept]),
                self.std[self.kept],
                out=out[:, :n_feat],
                casting="same_kind",
            )
        out[:, :n_feat][mask] = 0.0  # impute with the training mean
        position = {self.features[j]: i for i, j in enumerate(self.kept)}
        for k, (_, feature) in enumerate(self.flags):
            out[:, n_feat + k] = mask[:, position[feature]]
        # A float64 sum of float32 values cannot overflow: it is finite exactly when
        # every value is; locate the culprits only then.
        if not np.isfinite(np.sum(out, dtype=np.float64)):
            finite = np.isfinite(out)
            bad = np.flatnonzero(~finite.all(axis=0))
            names = ", ".join(repr(self.input_names[b]) for b in bad)
            count = int((~finite).sum())
            msg = f"{count} non-finite value(s) after feature preparation in feature(s) {names}"
            raise InputError(msg)
        return out

    def arch_inputs(self) -> dict[str, Any]:
        return {"n_inputs": len(self.input_names)}

    def helper_inputs(self) -> list[str]:
        """The missing flags: inputs that are not physics features."""
        return [name for name, _ in self.flags]

    # -------------------------------------------------------- serialisation
    def state(self) -> dict[str, Any]:
        """Fitted state for ``model.json``; floats round-trip exactly through JSON."""
        if self.mean is None or self.std is None:
            msg = "the flat inputs are not fitted"
            raise ModelError(msg)
        state = {
            "format": STATE_FORMAT,
            "missing_value": MISSING_VALUE,
            "mean": [float(v) for v in self.mean],
            "std": [float(v) for v in self.std],
            "flags": [{"name": name, "feature": feature} for name, feature in self.flags],
            "input_names": self.input_names,
        }
        if self.settings.transform:  # only when used: other models keep their bytes
            state["transform"] = dict(self.settings.transform)
        if self.settings.symmetry is not None:
            state["symmetry"] = self.settings.symmetry.model_dump()
        return state

    @classmethod
    def from_state(cls, settings: FlatInputs, state: Mapping[str, Any]) -> FlatBuilder:
        try:
            if state.get("format") != STATE_FORMAT:
                msg = f"unknown flat-input state format {state.get('format')!r}"
                raise ModelError(msg)
            built = cls(
                settings,
                state["mean"],
                state["std"],
                [(f["name"], f["feature"]) for f in state["flags"]],
            )
        except (KeyError, TypeError, ValueError) as exc:
            msg = f"malformed flat-input state: {exc!r}"
            raise ModelError(msg) from None
        if "input_names" in state and list(state["input_names"]) != built.input_names:
            msg = "flat-input state input_names do not match its features and flags"
            raise ModelError(msg)
        if dict(state.get("transform", {})) != dict(settings.transform):
            msg = "flat-input state transform does not match the inputs' transform"
            raise ModelError(msg)
        symmetry = settings.symmetry.model_dump() if settings.symmetry is not None else None
        if state.get("symmetry") != symmetry:
            msg = "flat-input state symmetry does not match the inputs' symmetry"
            raise ModelError(msg)
        return built

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, FlatBuilder):
            return NotImplemented
        return (
            self.features == other.features
            and self.settings.transform == other.settings.transform
            and self.settings.symmetry == other.settings.symmetry
            and self.flags == other.flags
            and np.array_equal(self.mean, other.mean)
            and np.array_equal(self.std, other.std)
        )

    __hash__ = None  # type: ignore[assignment]  # mutable arrays inside

    def __repr__(self) -> str:
        return f"FlatBuilder({len(self.features)} features, flags={self.helper_inputs()})"


register_builder(FlatBuilder)
