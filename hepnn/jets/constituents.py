"""Per-constituent sequences for 1D CNNs (P-CNN / DeepJet style), and a fitted scaler.

>>> X, mask = constituent_sequences(pt, eta, phi, energy, jet_pt=jpt, jet_eta=jeta,
...                                 jet_phi=jphi, jet_energy=je, max_constituents=128)
>>> scaler = SequenceScaler.fit(X[train], mask[train])
>>> Xs = scaler.transform(X, mask)               # padded slots stay exactly 0
>>> x_net = np.concatenate([Xs, mask], axis=1)   # (N, F+1, P): input of ``cnn1d``

Constituents come either as awkward arrays (jets x constituents, jagged) or as
padded numpy arrays ``(N, P)`` together with a mask ``(N, P)`` or ``(N, 1, P)``.
Everything is vectorised over all jets: the constituents are flattened once,
with ``offsets`` marking where each jet starts (see :func:`flatten_constituents`).

Conventions
-----------
- Constituents are ordered by decreasing pT (stable: ties keep input order), then
  padded with zeros or truncated to ``max_constituents``.
- ``deta = eta - jet_eta`` (optionally times ``sign(jet_eta)``, the ParT
  convention, with ``signed_deta=True``); ``dphi`` is wrapped to (-pi, pi].
- Logarithms of pT and E are taken of ``max(x, LOG_FLOOR)`` so that a
  zero-energy constituent gives a large negative finite number, never ``-inf``.
- NaN or infinite inputs of real constituents raise :class:`~hepnn.errors.InputError`
  naming the first offending jet.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import awkward as ak
import numpy as np

from hepnn.errors import InputError

#: Floor applied before taking logarithms of pT and energies (GeV).
LOG_FLOOR = 1e-6

#: Version of the dictionary written by :meth:`SequenceScaler.to_dict`.
SCALER_FORMAT = 1

#: Kinematic features (always computable).
KINEMATIC_FEATURES = (
    "log_pt",
    "log_e",
    "log_pt_rel",
    "log_e_rel",
    "deta",
    "dphi",
    "delta_r",
)
#: Features that need ``charge``.
CHARGE_FEATURES = ("charge",)
#: PID "one-hot-ish" flags from ``|pdgId|`` (CMS PF convention: 1 = HF hadron is
#: counted as a neutral hadron, 2 = HF EM as a photon; other charged hadrons
#: (K, p) as charged hadrons, other neutral hadrons (n, K0) as neutral hadrons).
PID_FEATURES = (
    "is_electron",
    "is_muon",
    "is_photon",
    "is_charged_hadron",
    "is_neutral_hadron",
)
ALL_FEATURES = KINEMATIC_FEATURES + CHARGE_FEATURES + PID_FEATURES
#: Default features: the seven kinematic ones.
DEFAULT_FEATURES = KINEMATIC_FEATURES

_PID_CODES: dict[str, tuple[int, ...]] = {
    "is_electron": (11,),
    "is_muon": (13,),
    "is_photon": (22, 2),
    "is_charged_hadron": (211, 321, 2212),
    "is_neutral_hadron": (130, 2112, 310, 1),
}


def wrap_phi(x: np.ndarray) -> np.ndarray:
    """Wrap angles to (-pi, pi] (note: -pi maps to +pi)."""
    x = np.asarray(x, dtype=np.float64)
    return x - 2.0 * np.pi * np.ceil((x - np.pi) / (2.0 * np.pi))


@dataclass(frozen=True)
class FlatConstituents:
    """Constituents of ``n_jets`` jets flattened into 1D arrays.

    Attributes
    ----------
    offsets
        ``(n_jets + 1,)`` int64; the constituents of jet ``j`` are
        ``[offsets[j], offsets[j + 1])`` of every array in ``fields``.
    fields
        1D float64 arrays, one per input name.
    """

    offsets: np.ndarray
    fields: dict[str, np.ndarray]
    _cache: dict[str, np.ndarray] = field(default_factory=dict, repr=False, compare=False)

    @property
    def n_jets(self) -> int:
        return len(self.offsets) - 1

    @property
    def counts(self) -> np.ndarray:
        """Number of constituents of each jet."""
        return np.diff(self.offsets)

    def jet_index(self) -> np.ndarray:
        """Jet index of every flat constituent (``np.repeat`` of the counts; cached)."""
        cached = self._cache.get("jet_index")
        if cached is None:
            cached = np.repeat(np.arange(self.n_jets, dtype=np.int64), self.counts)
            self._cache["jet_index"] = cached
        return cached

    def jet_of(self, flat_index: np.ndarray | int) -> np.ndarray:
        """Jet index of the given flat positions (binary search, no full array)."""
        return np.searchsorted(self.offsets, flat_index, side="right") - 1


def _mask_2d(mask: Any, shape: tuple[int, ...]) -> np.ndarray:
    m = np.asarray(mask)
    if m.ndim == 3 and m.shape[1] == 1:
        m = m[:, 0, :]
    if m.shape != shape:
        msg = f"mask shape {np.asarray(mask).shape} does not fit the padded inputs of shape {shape}"
        raise ValueError(msg)
    if m.dtype != bool:
        if not np.all((m == 0) | (m == 1)):
            msg = "mask must contain only 0 and 1"
            raise InputError(msg)
        m = m != 0
    return m


def flatten_constituents(
    arrays: Mapping[str, Any], mask: Any = None, *, dtype: Any = np.float64
) -> FlatConstituents:
    """Flatten per-jet constituent arrays (all of the same layout) into 1D arrays.

    Parameters
    ----------
    arrays
        Name -> awkward array (jets x constituents, jagged) or numpy array
        ``(N, P)`` padded. All must have the same jets and constituent counts.
        ``None`` values are skipped (optional inputs).
    mask
        For padded numpy inputs: ``(N, P)`` or ``(N, 1, P)``, bool or 0/1; required.
    dtype
        dtype of the flat arrays.

    Returns
    -------
    FlatConstituents
    """
    items = {k: v for k, v in arrays.items() if v is not None}
    if not items:
        msg = "no constituent arrays given"
        raise ValueError(msg)
    first = next(iter(items.values()))
    fields: dict[str, np.ndarray] = {}
    if isinstance(first, np.ndarray):
        shape = first.shape
        if first.ndim != 2:
            msg = f"padded constituent arrays must be 2D (jets, slots), got shape {shape}"
            raise ValueError(msg)
        if mask is None:
            msg = "padded numpy constituent arrays need mask= (1 for real constituents)"
            raise ValueError(msg)
        m = _mask_2d(mask, shape)
        counts = m.sum(axis=1)
        for name, arr in items.items():
            a = np.asarray(arr)
            if a.shape != shape:
                msg = f"constituent array {name!r} has shape {a.shape}, expected {shape}"
                raise ValueError(msg)
            fields[name] = a[m].astype(dtype, copy=False)
    else:
        counts = None
        for name, arr in items.items():
            a = ak.Array(arr) if not isinstance(arr, ak.Array) else arr
            if a.ndim != 2:
                msg = f"constituent array {name!r} must be jets x constituents (2D), got {a.ndim}D"
                raise ValueError(msg)
            c = ak.to_numpy(ak.num(a, axis=1)).astype(np.int64)
            if counts is None:
                counts = c
            elif len(c) != len(counts) or not np.array_equal(c, counts):
                msg = f"constituent array {name!r} has other constituent counts than {next(iter(items))!r}"
                raise ValueError(msg)
            try:
                flat = ak.to_numpy(ak.flatten(a, axis=1), allow_missing=False)
            except ValueError:
                msg = f"constituent array {name!r} contains missing (None) values"
                raise InputError(msg) from None
            fields[name] = np.asarray(flat, dtype=dtype)
        assert counts is not None
    offsets = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    return FlatConstituents(offsets=offsets, fields=fields)


def segment_sum(values: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Sum of ``values`` over each segment ``[offsets[j], offsets[j+1])``; 0 for empty ones.

    ``np.add.reduceat`` on the contiguous segments is ~10x faster than
    ``np.bincount(jet_index, weights)``, but it returns ``values[i]`` (not 0) for
    an empty segment and rejects a start index equal to ``len(values)``: both
    are patched here.
    """
    n = len(offsets) - 1
    out = np.zeros(n, dtype=np.result_type(values.dtype, np.float64))
    if len(values) == 0 or n == 0:
        return out
    starts = offsets[:-1]
    nonempty = offsets[1:] > starts
    out[nonempty] = np.add.reduceat(values, starts[nonempty])
    return out


def check_finite(flat: FlatConstituents, names: Sequence[str], what: str = "constituent") -> None:
    """Raise :class:`InputError` naming the first jet with a NaN/inf in ``names``."""
    for name in names:
        arr = flat.fields.get(name)
        if arr is None:
            continue
        bad = ~np.isfinite(arr)
        if bad.any():
            where = np.flatnonzero(bad)
            jets = np.unique(flat.jet_of(where))
            more = f" (and {len(jets) - 1} more jets)" if len(jets) > 1 else ""
            msg = f"{what} {name} of jet {int(jets[0])} is NaN or infinite{more}"
            raise InputError(msg)


def per_jet_array(value: Any, n_jets: int, name: str) -> np.ndarray:
    """A per-jet input (scalar broadcast, numpy or awkward 1D) as float64 (n_jets,)."""
    arr = np.asarray(ak.to_numpy(value) if isinstance(value, ak.Array) else value, dtype=np.float64)
    if arr.ndim == 0:
        arr = np.full(n_jets, float(arr))
    if arr.shape != (n_jets,):
        msg = f"{name} must have shape ({n_jets},) (one value per jet), got {arr.shape}"
        raise ValueError(msg)
    bad = ~np.isfinite(arr)
    if bad.any():
        msg = f"{name} of jet {int(np.flatnonzero(bad)[0])} is NaN or infinite"
        raise InputError(msg)
    return arr


def pid_flags(pdg_id: np.ndarray) -> dict[str, np.ndarray]:
    """The :data:`PID_FEATURES` flags (float 0/1) from PDG ids."""
    a = np.abs(np.asarray(pdg_id).astype(np.int64))
    return {name: np.isin(a, codes).astype(np.float64) for name, codes in _PID_CODES.items()}


def constituent_sequences(
    pt: Any,
    eta: Any,
    phi: Any,
    energy: Any,
    *,
    jet_pt: Any,
    jet_eta: Any,
    jet_phi: Any,
    jet_energy: Any,
    charge: Any = None,
    pid: Any = None,
    mask: Any = None,
    max_constituents: int = 128,
    features: Sequence[str] = DEFAULT_FEATURES,
    signed_deta: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """pT-ordered, padded per-constituent feature sequences.

    Parameters
    ----------
    pt, eta, phi, energy
        Constituent kinematics: awkward jets x constituents, or numpy ``(N, P)``
        with ``mask``.
    jet_pt, jet_eta, jet_phi, jet_energy
        Per-jet values ``(N,)`` (or scalars).
    charge, pid
        Optional constituent charge and PDG id, needed for the ``charge`` and
        ``is_*`` features.
    mask
        ``(N, P)`` or ``(N, 1, P)`` mask for padded numpy inputs.
    max_constituents
        ``P`` of the output: the leading ``P`` constituents by pT are kept.
    features
        Names from :data:`ALL_FEATURES`, in output order.
    signed_deta
        Multiply ``deta`` by ``sign(jet_eta)`` (ParT / weaver convention).

    Returns
    -------
    X : numpy.ndarray
        ``(N, F, P)`` float32; padded slots are exactly 0.
    mask : numpy.ndarray
        ``(N, 1, P)`` bool, True for real constituents.
    """
    if int(max_constituents) != max_constituents or max_constituents < 1:
        msg = f"max_constituents must be a positive integer, got {max_constituents!r}"
        raise ValueError(msg)
    features = list(features)
    unknown = [f for f in features if f not in ALL_FEATURES]
    if unknown or not features or len(set(features)) != len(features):
        msg = f"features must be distinct names from {', '.join(ALL_FEATURES)}; got {features}"
        raise ValueError(msg)
    if "charge" in features and charge is None:
        msg = "feature 'charge' needs charge="
        raise ValueError(msg)
    if any(f in PID_FEATURES for f in features) and pid is None:
        msg = "PID features need pid= (PDG ids)"
        raise ValueError(msg)

    flat = flatten_constituents(
        {"pt": pt, "eta": eta, "phi": phi, "energy": energy, "charge": charge, "pid": pid},
        mask,
    )
    check_finite(flat, ("pt", "eta", "phi", "energy", "charge"))
    n = flat.n_jets
    jpt = per_jet_array(jet_pt, n, "jet_pt")
    jeta = per_jet_array(jet_eta, n, "jet_eta")
    jphi = per_jet_array(jet_phi, n, "jet_phi")
    je = per_jet_array(jet_energy, n, "jet_energy")
    jet = flat.jet_index()
    f = flat.fields

    # Order by decreasing pT within each jet: lexsort's last key is the primary one.
    order = np.lexsort((-f["pt"], jet))
    pos = np.arange(len(order), dtype=np.int64) - np.repeat(flat.offsets[:-1], flat.counts)
    keep = pos < max_constituents
    src = order[keep]
    jk, pk = jet[keep], pos[keep]  # jet is sorted, so jet[order] == jet

    def take(name: str) -> np.ndarray:
        return f[name][src]

    cache: dict[str, np.ndarray] = {}

    def deta() -> np.ndarray:
        if "deta" not in cache:
            d = take("eta") - jeta[jk]
            cache["deta"] = d * np.where(jeta[jk] < 0, -1.0, 1.0) if signed_deta else d
        return cache["deta"]

    def dphi() -> np.ndarray:
        if "dphi" not in cache:
            cache["dphi"] = wrap_phi(take("phi") - jphi[jk])
        return cache["dphi"]

    def log(x: np.ndarray) -> np.ndarray:
        return np.log(np.maximum(x, LOG_FLOOR))

    pids = pid_flags(take("pid")) if pid is not None else {}
    compute = {
        "log_pt": lambda: log(take("pt")),
        "log_e": lambda: log(take("energy")),
        "log_pt_rel": lambda: log(take("pt")) - log(jpt[jk]),
        "log_e_rel": lambda: log(take("energy")) - log(je[jk]),
        "deta": deta,
        "dphi": dphi,
        "delta_r": lambda: np.hypot(deta(), dphi()),
        "charge": lambda: take("charge"),
        **{name: (lambda name=name: pids[name]) for name in PID_FEATURES},
    }
    X = np.zeros((n, len(features), max_constituents), dtype=np.float32)
    for i, name in enumerate(features):
        X[jk, i, pk] = compute[name]()
    out_mask = np.zeros((n, 1, max_constituents), dtype=bool)
    out_mask[jk, 0, pk] = True
    return X, out_mask


@dataclass(frozen=True)
class SequenceScaler:
    """Per-feature standardisation fitted on the real constituents of training jets.

    ``transform`` computes ``(x - mean) / std`` on real constituents and leaves
    padded slots exactly 0, so the zero-padding convention survives scaling.
    """

    features: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def fit(
        cls, X: np.ndarray, mask: np.ndarray, features: Sequence[str] | None = None
    ) -> SequenceScaler:
        """Fit on ``X`` ``(N, F, P)`` with ``mask`` ``(N, 1, P)`` (or ``(N, P)``).

        A feature with zero spread gets ``std = 1``.
        """
        X = np.asarray(X)
        if X.ndim != 3:
            msg = f"X must be (N, F, P), got shape {X.shape}"
            raise ValueError(msg)
        m = _mask_2d(mask, (X.shape[0], X.shape[2]))
        n_real = int(m.sum())
        if n_real == 0:
            msg = "cannot fit a SequenceScaler without any real constituent"
            raise ValueError(msg)
        names = (
            tuple(features) if features is not None else tuple(f"f{i}" for i in range(X.shape[1]))
        )
        if len(names) != X.shape[1]:
            msg = f"{len(names)} feature names for {X.shape[1]} features"
            raise ValueError(msg)
        vals = np.transpose(X, (0, 2, 1))[m].astype(np.float64)  # (n_real, F)
        mean = vals.mean(axis=0)
        std = vals.std(axis=0)
        std = np.where(std > 0, std, 1.0)
        return cls(names, tuple(float(v) for v in mean), tuple(float(v) for v in std))

    def transform(self, X: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Standardised copy of ``X`` (float32), padded slots exactly 0."""
        X = np.asarray(X)
        if X.ndim != 3 or X.shape[1] != len(self.features):
            msg = f"X must be (N, {len(self.features)}, P), got shape {X.shape}"
            raise ValueError(msg)
        m = _mask_2d(mask, (X.shape[0], X.shape[2]))[:, None, :]
        mean = np.asarray(self.mean, dtype=np.float32)[None, :, None]
        std = np.asarray(self.std, dtype=np.float32)[None, :, None]
        out = (X.astype(np.float32) - mean) / std
        return np.where(m, out, np.float32(0.0))

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (for ``model.json``)."""
        return {
            "format": SCALER_FORMAT,
            "features": list(self.features),
            "mean": list(self.mean),
            "std": list(self.std),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SequenceScaler:
        """Inverse of :meth:`to_dict`; validates the content."""
        try:
            fmt = d["format"]
            features = tuple(str(f) for f in d["features"])
            mean = tuple(float(v) for v in d["mean"])
            std = tuple(float(v) for v in d["std"])
        except (KeyError, TypeError, ValueError) as err:
            msg = f"invalid SequenceScaler dictionary: {err}"
            raise ValueError(msg) from None
        if fmt != SCALER_FORMAT:
            msg = f"SequenceScaler format {fmt!r} is not supported (expected {SCALER_FORMAT})"
            raise ValueError(msg)
        if not len(features) == len(mean) == len(std):
            msg = "SequenceScaler dictionary: features, mean and std differ in length"
            raise ValueError(msg)
        if not all(math.isfinite(v) for v in mean + std) or any(s <= 0 for s in std):
            msg = "SequenceScaler dictionary: mean/std must be finite and std > 0"
            raise ValueError(msg)
        return cls(features, mean, std)
