"""Saving and loading trained networks: state dicts beside a JSON description.

>>> save_model("models/higgs", net, prep, settings, metrics, data_hash)
>>> loaded = load_model("models/higgs")
>>> loaded.model, loaded.prep.input_names

Layout of a model directory::

    model.json          description (below); written last, so it is the commit point
    model.pt            state dict of a single model (parity split), or
    model_fold<i>.pt    state dict of the model applied to fold i (k-fold split)

Each ``.pt`` is a plain ``state_dict`` written with :func:`torch.save` and read
with ``torch.load(..., weights_only=True)``; other tools can load it directly.
``model.json`` holds::

    format, format_version, hepnn_version, torch_version
    architecture: {name, params}         params without n_inputs (from the prep)
    features, input_names                 of the first model
    output: "logit"                       the network returns logits
    seed, data_hash, settings (the full TrainSettings), metrics
    split: {method: "parity"|"kfold"|"single", folds, id_column}
    models: [{fold, file, sha256, applies_to, input_names, prep}]
    kind (optional): absent/"network" for these flat-feature networks;
        "jet-tagger" for :mod:`hepnn.jets.taggers` (same family, its ``prep``
        is an image or constituent-sequence preprocessing; ``load_model``
        refuses it with a pointer to ``hepnn.jets.taggers``)

Every file is written to a temporary name in the same directory and moved into
place with :func:`os.replace`; the sha256 of every ``.pt`` is verified on load.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hepnn import __version__
from hepnn.errors import ModelError
from hepnn.features import FeaturePrep
from hepnn.files import atomic_bytes
from hepnn.models import build

MODEL_JSON = "model.json"
FORMAT = "hepnn-model"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class LoadedModel:
    """A model directory loaded into memory, networks in eval mode.

    Attributes
    ----------
    path
        The model directory (resolved).
    meta
        The parsed ``model.json``.
    models, preps
        One network and one feature preparation per fold (one for a single model).
    method
        ``"parity"``, ``"kfold"`` or ``"single"`` (saved without a split).
    folds
        ``k`` of a k-fold model (events go to the model of ``event_id % k``), else 1.
    id_column
        Column holding the event id, for k-fold routing.
    """

    path: Path
    meta: dict[str, Any]
    models: tuple[nn.Module, ...]
    preps: tuple[FeaturePrep, ...]
    method: str
    folds: int
    id_column: str

    @property
    def kfold(self) -> bool:
        """True if events must be routed to the model of their fold."""
        return self.method == "kfold"

    @property
    def model(self) -> nn.Module:
        """The network of a single (non k-fold) model."""
        if self.kfold:
            msg = f"{self.path} holds {self.folds} fold models; use .models"
            raise ModelError(msg)
        return self.models[0]

    @property
    def prep(self) -> FeaturePrep:
        """The feature preparation of a single (non k-fold) model."""
        if self.kfold:
            msg = f"{self.path} holds {self.folds} fold models; use .preps"
            raise ModelError(msg)
        return self.preps[0]

    @property
    def features(self) -> list[str]:
        """Columns the model reads (the same for every fold)."""
        return list(self.preps[0].features)


def _settings_dict(settings: Any) -> dict[str, Any]:
    if hasattr(settings, "model_dump"):
        return settings.model_dump(mode="json")
    return dict(settings)


def _jsonable(obj: Any) -> Any:
    """Plain JSON: numpy scalars to Python, NaN/inf to null."""
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def save_model(
    path: str | os.PathLike[str],
    model: nn.Module | Sequence[nn.Module],
    prep: FeaturePrep | Sequence[FeaturePrep],
    settings: Any,
    metrics: Mapping[str, Any],
    data_hash: str,
) -> Path:
    """Write a model directory.

    Parameters
    ----------
    path
        The model directory (created if needed).
    model, prep
        A network and its feature preparation, or one of each per fold
        (fold ``i`` is applied to events with ``event_id % k == i``).
    settings
        :class:`hepnn.train.TrainSettings` or a mapping with at least
        ``architecture`` and ``params`` (and optionally ``seed`` and ``split``).
    metrics
        JSON-serialisable metrics (NaN is written as null).
    data_hash
        sha256 of the training data.

    Returns
    -------
    pathlib.Path
        The model directory.
    """
    models = [model] if isinstance(model, nn.Module) else list(model)
    preps = [prep] if isinstance(prep, FeaturePrep) else list(prep)
    if len(models) != len(preps) or not models:
        msg = f"got {len(models)} models and {len(preps)} feature preparations"
        raise ValueError(msg)
    cfg = _settings_dict(settings)
    split = dict(cfg.get("split") or {})
    method = split.get("method", "single" if len(models) == 1 else "kfold")
    if method == "kfold" and int(split.get("folds", len(models))) != len(models):
        msg = f"k-fold split with {split.get('folds')} folds but {len(models)} models"
        raise ValueError(msg)
    if method != "kfold" and len(models) != 1:
        msg = f"a {method!r} split has one model, got {len(models)}"
        raise ValueError(msg)
    split = {
        "method": method,
        "folds": len(models) if method == "kfold" else (2 if method == "parity" else 1),
        "id_column": split.get("id_column", "EventId"),
    }

    outdir = Path(path)
    outdir.mkdir(parents=True, exist_ok=True)
    entries = []
    for i, (net, p) in enumerate(zip(models, preps, strict=True)):
        name = "model.pt" if method != "kfold" else f"model_fold{i}.pt"
        buf = io.BytesIO()
        torch.save(net.state_dict(), buf)
        data = buf.getvalue()
        atomic_bytes(outdir / name, data)
        if method == "kfold":
            applies = f"{split['id_column']} % {len(models)} == {i}"
        elif method == "parity":
            applies = f"{split['id_column']} % 2 == 1 (unbiased); trained on even ids"
        else:
            applies = "all events"
        entries.append(
            {
                "fold": i if method == "kfold" else None,
                "file": name,
                "sha256": hashlib.sha256(data).hexdigest(),
                "applies_to": applies,
                "input_names": p.input_names,
                "prep": p.to_dict(),
            }
        )
    params = {k: v for k, v in dict(cfg.get("params") or {}).items() if k != "n_inputs"}
    doc = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "hepnn_version": __version__,
        "torch_version": torch.__version__,
        "architecture": {"name": cfg["architecture"], "params": params},
        "features": preps[0].features,
        "input_names": preps[0].input_names,
        "output": "logit",
        "seed": cfg.get("seed"),
        "data_hash": data_hash,
        "split": split,
        "settings": cfg,
        "metrics": dict(metrics),
        "models": entries,
    }
    text = json.dumps(_jsonable(doc), indent=1, allow_nan=False) + "\n"
    atomic_bytes(outdir / MODEL_JSON, text.encode())
    return outdir


def model_json_path(path: str | os.PathLike[str]) -> Path:
    """``model.json`` of a model given as its directory, its JSON or one of its ``.pt``.

    Raises
    ------
    ModelError
        Nothing exists at ``path`` or there is no ``model.json`` beside it.
    """
    p = Path(path)
    candidate = (
        p / MODEL_JSON if p.is_dir() else (p if p.name == MODEL_JSON else p.parent / MODEL_JSON)
    )
    if not candidate.is_file():
        msg = f"model file not found: {candidate}"
        raise ModelError(msg)
    return candidate.resolve()


def parse_model_json(json_path: Path, raw: bytes) -> dict[str, Any]:
    """Parse and check the structure of ``model.json`` bytes."""
    try:
        meta = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        msg = f"corrupt model description {json_path}: {exc}"
        raise ModelError(msg) from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        msg = f"not a hepnn model description: {json_path}"
        raise ModelError(msg)
    if meta.get("format_version") != FORMAT_VERSION:
        msg = f"unsupported model format version {meta.get('format_version')!r}: {json_path}"
        raise ModelError(msg)
    try:
        meta["architecture"]["name"]
        meta["architecture"]["params"]
        meta["split"]["method"]
        for entry in meta["models"]:
            entry["file"], entry["sha256"], entry["prep"]
    except (KeyError, TypeError):
        msg = f"incomplete model description {json_path}"
        raise ModelError(msg) from None
    return meta


def load_model(path: str | os.PathLike[str]) -> LoadedModel:
    """Load a model directory written by :func:`save_model`.

    Parameters
    ----------
    path
        The directory, its ``model.json`` or one of its ``.pt`` files.

    Returns
    -------
    LoadedModel
        Networks rebuilt through the registry, weights loaded, in eval mode.

    Raises
    ------
    ModelError
        One-line message naming the file: missing, corrupt or truncated file,
        ``model.pt sha256 mismatch: <path>``, unknown architecture, or weights
        that do not fit the architecture.
    """
    json_path = model_json_path(path)
    try:
        raw = json_path.read_bytes()
    except OSError as exc:
        msg = f"cannot read {json_path}: {exc.strerror}"
        raise ModelError(msg) from None
    return load_from_json(json_path, raw)


def read_weights(pt: Path, sha256: str) -> dict[str, torch.Tensor]:
    """A state dict from ``pt``, its sha256 checked, loaded with ``weights_only=True``.

    Raises
    ------
    ModelError
        Missing or unreadable file, ``model.pt sha256 mismatch: <path>``, or bytes
        that are not a weights-only torch file.
    """
    try:
        data = pt.read_bytes()
    except FileNotFoundError:
        msg = f"model file not found: {pt}"
        raise ModelError(msg) from None
    except OSError as exc:
        msg = f"cannot read {pt}: {exc.strerror}"
        raise ModelError(msg) from None
    # Hash the exact bytes we deserialise (no re-read between check and load).
    if hashlib.sha256(data).hexdigest() != sha256:
        msg = f"model.pt sha256 mismatch: {pt}"
        raise ModelError(msg)
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle/zip errors of many kinds
        msg = f"cannot load weights from {pt}: {type(exc).__name__}"
        raise ModelError(msg) from None


def load_from_json(json_path: Path, raw: bytes) -> LoadedModel:
    """Load a model from the bytes of its ``model.json`` (already read by the caller)."""
    meta = parse_model_json(json_path, raw)
    if meta.get("kind", "network") != "network":
        # e.g. a jet tagger (hepnn.jets.taggers): same file family, other inputs.
        msg = f"{json_path} is a {meta['kind']} model, not a flat-feature network; apply it with hepnn.jets.taggers.tagger_scores"
        raise ModelError(msg)
    arch = meta["architecture"]
    models, preps = [], []
    for entry in meta["models"]:
        pt = json_path.parent / entry["file"]
        state = read_weights(pt, entry["sha256"])
        prep = FeaturePrep.from_dict(entry["prep"])
        try:
            net = build(arch["name"], n_inputs=prep.n_inputs, **arch["params"])
        except KeyError as exc:
            msg = f"{exc.args[0]} (in {json_path})"
            raise ModelError(msg) from None
        except (TypeError, ValueError) as exc:
            msg = f"cannot build {arch['name']!r} from {json_path}: {exc}"
            raise ModelError(msg) from None
        try:
            net.load_state_dict(state)
        except (RuntimeError, TypeError, AttributeError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            msg = f"weights in {pt} do not fit architecture {arch['name']!r}: {first}"
            raise ModelError(msg) from None
        net.eval()
        models.append(net)
        preps.append(prep)
    split = meta["split"]
    method = split["method"]
    folds = int(split.get("folds", len(models))) if method == "kfold" else 1
    if method == "kfold" and folds != len(models):
        msg = f"k-fold model with {folds} folds but {len(models)} model files: {json_path}"
        raise ModelError(msg)
    if not models:
        msg = f"no models listed in {json_path}"
        raise ModelError(msg)
    features = preps[0].features
    if any(p.features != features for p in preps):
        msg = f"fold models read different features: {json_path}"
        raise ModelError(msg)
    return LoadedModel(
        path=json_path.parent,
        meta=meta,
        models=tuple(models),
        preps=tuple(preps),
        method=method,
        folds=folds,
        id_column=str(split.get("id_column", "EventId")),
    )
