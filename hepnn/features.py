"""Feature preparation for networks: a small fitted, serialisable object.

>>> prep = FeaturePrep.fit(train_columns, ["DER_mass_MMC", "PRI_tau_pt"])
>>> x = prep.transform(columns)          # float32, shape (N, len(prep.input_names))
>>> FeaturePrep.from_dict(prep.to_dict()) == prep
True

Missing values are explicit. A value is missing when it equals
:data:`MISSING_VALUE` (``-999.0``, the Higgs-challenge convention), is NaN, or is
masked (a numpy masked array; :mod:`hepnn.variables` turns awkward ``None`` into
NaN before it gets here). Each feature is standardised with the mean and
standard deviation of its *non-missing* values in the *training* events; a
missing value is imputed with the training mean, i.e. 0 after standardising.
Optionally, 0/1 "missing flag" inputs tell the network which values were
imputed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np

from hepnn.errors import ConfigError, InputError, ModelError

#: Sentinel the Higgs challenge writes for "undefined".
MISSING_VALUE = -999.0

#: Suffix of the name of a missing-flag input.
FLAG_SUFFIX = "_missing"

#: Version of the dictionary produced by :meth:`FeaturePrep.to_dict`.
PREP_FORMAT = 1

MissingFlags = Literal["auto", "none"] | list[str]


def missing_mask(values: Any) -> tuple[np.ndarray, np.ndarray]:
    """Split a column into float64 values and a boolean "missing" mask.

    Parameters
    ----------
    values
        A 1D array-like. Masked entries of a numpy masked array, NaN and
        :data:`MISSING_VALUE` count as missing.

    Returns
    -------
    tuple of numpy.ndarray
        ``(values as float64, missing mask)``; the values at missing positions
        are unspecified.
    """
    if isinstance(values, np.ma.MaskedArray):
        arr = np.asarray(values.filled(np.nan), dtype=np.float64)
    else:
        arr = np.asarray(values, dtype=np.float64)
    mask = arr == MISSING_VALUE
    mask |= np.isnan(arr)  # masked entries were filled with NaN above
    return arr, mask


class FeaturePrep:
    """Standardisation, imputation and missing flags fitted on training events.

    Build one with :meth:`fit`; rebuild a saved one with :meth:`from_dict`.

    Parameters
    ----------
    features
        Feature (column) names, in network input order.
    mean, std
        Per-feature mean and standard deviation of the non-missing training
        values (``std`` is 1 for a constant or never-observed feature).
    flags
        ``(flag name, feature)`` pairs: a 0/1 input that is 1 when ``feature``
        is missing. Flags follow the features in the input order.

    Notes
    -----
    The transform is computed in float64 and rounded once to float32, so it is
    elementwise and chunk-independent: the same event gives the same bits in
    any chunking.
    """

    def __init__(
        self,
        features: Sequence[str],
        mean: Sequence[float],
        std: Sequence[float],
        flags: Sequence[tuple[str, str]] = (),
    ) -> None:
        self.features = [str(f) for f in features]
        self.mean = np.asarray(mean, dtype=np.float64)
        self.std = np.asarray(std, dtype=np.float64)
        self.flags = [(str(name), str(feature)) for name, feature in flags]
        if len(set(self.features)) != len(self.features):
            msg = f"duplicate feature names in {self.features}"
            raise ConfigError(msg)
        if self.mean.shape != (len(self.features),) or self.std.shape != (len(self.features),):
            msg = "mean and std must have one entry per feature"
            raise ModelError(msg)
        if not (np.all(np.isfinite(self.mean)) and np.all(self.std > 0)):
            msg = "feature preparation has non-finite means or non-positive standard deviations"
            raise ModelError(msg)
        unknown = [f for _, f in self.flags if f not in self.features]
        if unknown:
            msg = f"missing flag for unknown feature(s): {', '.join(unknown)}"
            raise ConfigError(msg)
        self._index = {f: i for i, f in enumerate(self.features)}

    # ------------------------------------------------------------------ fitting
    @classmethod
    def fit(
        cls,
        columns: Mapping[str, Any],
        features: Sequence[str],
        missing_flags: MissingFlags = "auto",
    ) -> FeaturePrep:
        """Fit on the *training* events only.

        Parameters
        ----------
        columns
            Feature name to 1D array of the training events.
        features
            Names of the features to use, in input order.
        missing_flags
            ``"auto"``: one flag per feature with missing values in training,
            skipping a feature whose missing pattern is identical to that of an
            earlier flagged feature (in the Higgs data the 3 jet-pair features
            share one pattern, so they get one flag, named after the first);
            ``"none"``: no flags; a list: flag exactly these features.

        Returns
        -------
        FeaturePrep

        Raises
        ------
        ModelError
            A feature is absent from ``columns``.
        ConfigError
            ``missing_flags`` names a feature that is not in ``features``.
        """
        features = list(features)
        if not features:
            msg = "no features configured"
            raise ConfigError(msg)
        means, stds, masks = [], [], []
        for name in features:
            values, mask = missing_mask(_column(columns, name))
            present = values[~mask]
            if np.any(~np.isfinite(present)):
                msg = f"feature {name!r}: infinite values in the training events"
                raise InputError(msg)
            if present.size == 0:
                # Never observed: every value will be imputed as 0.
                mean, std = 0.0, 1.0
            else:
                mean = float(present.mean())
                std = float(present.std())
                if not std > 0 or not math.isfinite(std):
                    std = 1.0  # constant feature: centre it, do not blow it up
            means.append(mean)
            stds.append(std)
            masks.append(mask)

        flags: list[tuple[str, str]] = []
        if missing_flags == "auto":
            # Hash each pattern to find identical ones cheaply, then confirm
            # with array_equal (hash collisions must not merge flags).
            seen: dict[bytes, list[np.ndarray]] = {}
            for name, mask in zip(features, masks, strict=True):
                if not mask.any():
                    continue
                key = np.packbits(mask).tobytes()
                if any(np.array_equal(mask, m) for m in seen.get(key, [])):
                    continue
                seen.setdefault(key, []).append(mask)
                flags.append((name + FLAG_SUFFIX, name))
        elif missing_flags == "none":
            pass
        elif isinstance(missing_flags, str):
            msg = (
                f"missing_flags must be 'auto', 'none' or a list of features, got {missing_flags!r}"
            )
            raise ConfigError(msg)
        else:
            unknown = [f for f in missing_flags if f not in features]
            if unknown:
                msg = f"missing_flags names feature(s) not among the features: {', '.join(unknown)}"
                raise ConfigError(msg)
            flags = [(f + FLAG_SUFFIX, f) for f in dict.fromkeys(missing_flags)]
        return cls(features, means, stds, flags)

    # -------------------------------------------------------------- applying
    @property
    def input_names(self) -> list[str]:
        """Names of the network inputs, in order: the features, then the flags."""
        return [*self.features, *(name for name, _ in self.flags)]

    @property
    def n_inputs(self) -> int:
        """Number of network inputs."""
        return len(self.features) + len(self.flags)

    def transform(self, columns: Mapping[str, Any]) -> np.ndarray:
        """Prepare network inputs.

        Parameters
        ----------
        columns
            Feature name to 1D array (numpy, masked numpy, anything
            ``np.asarray`` accepts). Extra columns are ignored.

        Returns
        -------
        numpy.ndarray
            float32, shape ``(N, n_inputs)``, columns in :attr:`input_names` order.

        Raises
        ------
        ModelError
            A feature the model needs is absent from ``columns``.
        InputError
            Columns of different lengths, or a value that is still not finite
            after preparation (e.g. ``inf``, or a value overflowing float32).
        """
        n = None
        # Fill an (inputs, events) buffer row by row (contiguous writes), then
        # transpose once: 6x faster than writing strided columns of (events, inputs).
        buf: np.ndarray | None = None
        masks: dict[str, np.ndarray] = {}
        for j, name in enumerate(self.features):
            values, mask = missing_mask(_column(columns, name))
            if values.ndim != 1:
                msg = f"feature {name!r}: expected a flat (1D) column, got shape {values.shape}"
                raise InputError(msg)
            if buf is None:
                n = values.shape[0]
                buf = np.empty((self.n_inputs, n), dtype=np.float32)
            elif values.shape[0] != n:
                msg = f"feature {name!r} has {values.shape[0]} entries, expected {n}"
                raise InputError(msg)
            with np.errstate(over="ignore", invalid="ignore"):
                # Overflow (inf, or beyond float32) is reported below, by feature.
                # Computed in float64, rounded once to float32 on the way out.
                row = buf[j]
                np.divide(
                    np.subtract(values, self.mean[j]), self.std[j], out=row, casting="same_kind"
                )
                row[mask] = 0.0  # impute with the training mean
            masks[name] = mask
        assert buf is not None  # at least one feature, checked in __init__
        for k, (_, feature) in enumerate(self.flags):
            buf[len(self.features) + k] = masks[feature]
        out = np.ascontiguousarray(buf.T)
        # Cheap test first: a float64 sum of float32 values cannot overflow, so
        # it is finite exactly when every value is; locate the culprits only then.
        if not np.isfinite(np.sum(out, dtype=np.float64)):
            finite = np.isfinite(out)
            bad = np.flatnonzero(~finite.all(axis=0))
            names = ", ".join(repr(self.input_names[b]) for b in bad)
            count = int((~finite).sum())
            msg = f"{count} non-finite value(s) after feature preparation in feature(s) {names}"
            raise InputError(msg)
        return out

    # -------------------------------------------------------- serialisation
    def to_dict(self) -> dict[str, Any]:
        """A plain, JSON-serialisable dictionary (stored in ``model.json``).

        Floats are written with ``float.__repr__`` by :mod:`json`, which round-trips
        float64 exactly, so a reloaded prep gives bitwise the same inputs.
        """
        return {
            "format": PREP_FORMAT,
            "missing_value": MISSING_VALUE,
            "features": list(self.features),
            "mean": [float(v) for v in self.mean],
            "std": [float(v) for v in self.std],
            "flags": [{"name": name, "feature": feature} for name, feature in self.flags],
            "input_names": self.input_names,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FeaturePrep:
        """Rebuild from :meth:`to_dict` output.

        Raises
        ------
        ModelError
            The dictionary is malformed or of an unknown format.
        """
        try:
            if data.get("format") != PREP_FORMAT:
                msg = f"unknown feature preparation format {data.get('format')!r}"
                raise ModelError(msg)
            prep = cls(
                data["features"],
                data["mean"],
                data["std"],
                [(f["name"], f["feature"]) for f in data["flags"]],
            )
        except (KeyError, TypeError, ValueError) as exc:
            msg = f"malformed feature preparation: {exc!r}"
            raise ModelError(msg) from None
        if "input_names" in data and list(data["input_names"]) != prep.input_names:
            msg = "feature preparation input_names do not match its features and flags"
            raise ModelError(msg)
        return prep

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, FeaturePrep):
            return NotImplemented
        return (
            self.features == other.features
            and self.flags == other.flags
            and np.array_equal(self.mean, other.mean)
            and np.array_equal(self.std, other.std)
        )

    __hash__ = None  # type: ignore[assignment]  # mutable arrays inside

    def __repr__(self) -> str:
        return f"FeaturePrep({len(self.features)} features, flags={[n for n, _ in self.flags]})"


def _column(columns: Mapping[str, Any], name: str) -> Any:
    """Look up a feature, raising a :class:`ModelError` that names it."""
    if name not in columns:
        msg = f"feature {name!r} required by the model is not in the data"
        raise ModelError(msg)
    return columns[name]
