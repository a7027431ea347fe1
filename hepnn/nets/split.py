"""Splits by event id and the named seed streams of training.

Every split is a function of the event id alone, never of the position in a file,
so a reordered or re-chunked file gives the same split (see
:class:`hepnn.nets.spec.SplitSpec` for the three methods). For model ``m`` of a
split, :func:`split_codes` gives each event :data:`TRAIN`, :data:`VAL` (early
stopping) or :data:`TEST` (held out, never used in training); :func:`route` gives
the model that scores an event when the network is applied, and :func:`held_out`
the events whose applied score is unbiased.

Seeds: one integer seed drives everything random in a training. It is expanded
with :class:`numpy.random.SeedSequence` into independent streams (:class:`Stream`)
per model and epoch (:func:`stream_seed`); never renumber a stream (it changes
every result).
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import IntEnum
from typing import Any

import numpy as np

from hepnn.nets.spec import SplitSpec

#: Codes of :func:`split_codes`.
TRAIN, VAL, TEST = 0, 1, 2


class Stream(IntEnum):
    """Independent random streams of one training (the second word of the seed sequence)."""

    INIT = 0  # weight initialisation
    ORDER = 1  # mini-batch order
    DROPOUT = 2  # dropout masks (reseeded per epoch)
    AUGMENT = 3  # augmentation draws


def stream_seed(seed: int, stream: Stream, model: int = 0, epoch: int = 0) -> int:
    """An independent 63-bit seed for ``(stream, model, epoch)`` of a training seeded ``seed``."""
    state = np.random.SeedSequence([seed, int(stream), model, epoch]).generate_state(
        2, dtype=np.uint32
    )
    return int(state[0]) << 31 | int(state[1]) >> 1


def as_split(split: SplitSpec | Mapping[str, Any]) -> SplitSpec:
    """A :class:`SplitSpec` from itself or its dictionary (as in ``model.json``)."""
    return split if isinstance(split, SplitSpec) else SplitSpec.model_validate(dict(split))


def hash_uniform(ids: np.ndarray, seed: int) -> np.ndarray:
    """A uniform number in [0, 1) per id: SplitMix64 of ``id`` xor a key from ``seed``.

    Written out rather than taken from numpy's generators: it must be a pure
    function of each id (no state, no order), vectorised over ids.
    """
    key = np.random.SeedSequence([seed, 0x7A66]).generate_state(1, dtype=np.uint64)[0]
    x = np.asarray(ids).astype(np.uint64) ^ key
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(11)).astype(np.float64) * 2.0**-53


def hashed_folds(ids: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """The fold (0..folds-1, int64) of every id: ``floor(folds * u)``, ``u`` the seeded id hash.

    Fold sizes are equal on average, not exactly; jets of one event share a fold.
    With the seed of a ``random`` split the last fold holds (about) its test ids.
    """
    u = hash_uniform(np.asarray(ids).astype(np.int64), seed)
    return np.minimum((u * folds).astype(np.int64), folds - 1)


def fold_codes(fold: np.ndarray, model: int, folds: int) -> np.ndarray:
    """Codes of model ``model`` when events are in ``fold``: test ``model``, validate ``model + 1``."""
    return np.where(
        fold == model, TEST, np.where(fold == (model + 1) % folds, VAL, TRAIN)
    ).astype(np.int8)


#: Second word of the hash key of a ``val_fraction`` draw (independent of the fold hash).
_VAL_KEY = 0x5641


def kfold_folds(ids: np.ndarray, split: SplitSpec | Mapping[str, Any]) -> np.ndarray:
    """The fold (int64) of every id of a kfold split: ``id % folds``, or hashed with ``salt``."""
    s = as_split(split)
    ids = np.asarray(ids).astype(np.int64)
    if s.salt is None:
        return ids % s.folds
    return hashed_folds(ids, s.folds, s.salt)


def split_codes(ids: np.ndarray, split: SplitSpec | Mapping[str, Any], model: int = 0) -> np.ndarray:
    """:data:`TRAIN` / :data:`VAL` / :data:`TEST` (int8) of each id for model ``model``.

    kfold: test fold ``model``; validation fold ``model + 1``, or with ``val_fraction``
    the non-test ids whose hash (keyed by ``salt`` or 0 and a fixed constant) falls
    below ``val_fraction`` — every other fold then trains, (k-1)/k x (1 - val_fraction)
    of the rows instead of (k-2)/k. random: with ``salt``, the non-test ids are
    re-hashed into train / validation at the same proportions; the test ids are
    those of the unsalted split.
    """
    s = as_split(split)
    ids = np.asarray(ids).astype(np.int64)
    if s.method == "parity":
        return np.where(ids % 2 == 0, TRAIN, VAL).astype(np.int8)
    if s.method == "kfold":
        fold = kfold_folds(ids, s)
        if s.val_fraction is None:
            return fold_codes(fold, model, s.folds)
        v = hash_uniform(ids, (s.salt or 0) * 0x10000 + _VAL_KEY)
        return np.where(fold == model, TEST, np.where(v < s.val_fraction, VAL, TRAIN)).astype(np.int8)
    u = hash_uniform(ids, s.seed)
    f_train, f_val, _ = s.fractions
    codes = np.where(u < f_train, TRAIN, np.where(u < f_train + f_val, VAL, TEST)).astype(np.int8)
    if s.salt is not None:
        v = hash_uniform(ids, s.salt)
        share = f_train / (f_train + f_val)
        codes = np.where(codes == TEST, TEST, np.where(v < share, TRAIN, VAL)).astype(np.int8)
    return codes


def member_split(split: SplitSpec, seed: int, member: int) -> SplitSpec:
    """The split of ensemble member ``member`` (>= 1) of a network whose training seed is ``seed``.

    Members vary the split as well as the seed, so that the ensemble spread covers
    the choice of training events: kfold members get hashed folds salted with
    ``seed + member`` (every event is still scored by a model of that member that
    never saw it); random members re-draw train / validation with that salt and keep
    the test ids; a parity split has nothing to vary and is kept. Member 0 (the
    deployed network) always keeps ``split`` unchanged.
    """
    if member == 0 or split.method == "parity":
        return split
    return split.model_copy(update={"salt": int(seed) + int(member)})


def route(ids: np.ndarray, split: SplitSpec | Mapping[str, Any]) -> np.ndarray:
    """The model (int64) that scores each id when the network is applied."""
    s = as_split(split)
    ids = np.asarray(ids).astype(np.int64)
    if s.method == "kfold":
        return kfold_folds(ids, s)
    return np.zeros(ids.shape, dtype=np.int64)


def held_out(ids: np.ndarray, split: SplitSpec | Mapping[str, Any]) -> np.ndarray:
    """Events of the training data whose applied score is unbiased.

    kfold: every event (scored by the model of its fold, which never saw it);
    parity: the odd ids (used for early stopping, never for the weights);
    random: the test ids.
    """
    s = as_split(split)
    ids = np.asarray(ids).astype(np.int64)
    if s.method == "kfold":
        return np.ones(ids.shape, dtype=bool)
    if s.method == "parity":
        return ids % 2 == 1
    return split_codes(ids, s) == TEST
