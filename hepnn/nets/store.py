"""A trained network on disk: state dicts beside one ``model.json``, for every kind of network.

>>> path = save_network(outdir / "dnn", "dnn", result, data)   # writes model*.pt, then model.json
>>> loaded = load_network(path)                                # LoadedNetwork, eval mode

``model.json`` (format ``hepnn-model``, version 2) holds everything needed to apply
the network: architecture (registry name and parameters), the ``inputs`` settings,
the split (which model scores which event), and per model its weight file, that
file's sha256 and the fitted input state (:meth:`hepnn.nets.inputs.InputBuilder.state`);
plus the spec it was trained with, its seed, training metrics and the content
digest of every training file. Weights are read with ``torch.load(...,
weights_only=True)`` only after their sha256 matched, and only from the model's
own folder. ``model.json`` is written last (the commit point) and atomically.
No wall times are stored: retraining gives the same bytes.
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from hepnn import __version__
from hepnn.errors import ModelError
from hepnn.files import atomic_bytes, atomic_text, json_text, sha256_bytes
from hepnn.models import build
from hepnn.nets.inputs import InputBuilder, load_builder
from hepnn.nets.spec import SplitSpec
from hepnn.nets.split import as_split
from hepnn.paths import inside

if TYPE_CHECKING:
    from hepnn.nets.data import TrainingData
    from hepnn.nets.train import TrainResult

MODEL_JSON = "model.json"
FORMAT = "hepnn-model"
FORMAT_VERSION = 2
HISTORY_FIELDS = ("model", "epoch", "train_loss", "val_loss", "val_auc", "val_auc_weighted", "lr")


@dataclass(frozen=True)
class LoadedNetwork:
    """A model folder loaded into memory, networks in eval mode.

    Attributes
    ----------
    path
        The model folder (resolved).
    meta
        The parsed ``model.json``.
    models, builders
        One network and one fitted input builder per model of the split.
    split
        Which model scores which event (:func:`hepnn.nets.split.route`).
    """

    path: Path
    meta: dict[str, Any]
    models: tuple[nn.Module, ...]
    builders: tuple[InputBuilder, ...]
    split: SplitSpec

    @property
    def name(self) -> str:
        return str(self.meta.get("name", self.path.name))

    @property
    def kind(self) -> str:
        """``flat``, ``image`` or ``sequence``."""
        return self.builders[0].kind

    @property
    def builder(self) -> InputBuilder:
        """The input builder of the first model (all models read the same inputs)."""
        return self.builders[0]

    @property
    def features(self) -> list[str]:
        """Columns a flat network reads."""
        return list(getattr(self.builders[0], "features", []))


def weight_file(split: SplitSpec, model: int) -> str:
    """File name of model ``model``'s state dict: ``model.pt``, or ``model_fold<i>.pt`` (kfold)."""
    return f"model_fold{model}.pt" if split.method == "kfold" else "model.pt"


def _applies_to(split: SplitSpec, model: int) -> str:
    if split.method == "kfold" and split.salt is not None:
        return f"hashed fold (salt {split.salt}) of {split.id_column} == {model}"
    if split.method == "kfold":
        return f"{split.id_column} % {split.folds} == {model}"
    if split.method == "parity":
        return f"all events; unbiased for {split.id_column} % 2 == 1 (trained on even ids)"
    return "all events; unbiased on the random split's test ids and on other samples"


def _history_csv(rows: list[dict[str, float]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=HISTORY_FIELDS, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: f"{row[k]:.6g}" if isinstance(row[k], float) else row[k] for k in HISTORY_FIELDS})
    return buf.getvalue()


def save_network(path: Path, name: str, result: TrainResult, data: TrainingData) -> Path:
    """Write the weight files, ``history.csv`` and then ``model.json`` of a trained network."""
    spec = result.spec
    path.mkdir(parents=True, exist_ok=True)
    entries = []
    for m, fitted in enumerate(result.models):
        buf = io.BytesIO()
        torch.save(fitted.model.state_dict(), buf)
        blob = buf.getvalue()
        file = weight_file(spec.split, m)
        atomic_bytes(path / file, blob)
        entries.append(
            {"model": m, "file": file, "sha256": sha256_bytes(blob),
             "applies_to": _applies_to(spec.split, m), "inputs": fitted.builder.state()}
        )  # fmt: skip
    atomic_text(path / "history.csv", _history_csv(result.history))
    doc = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "hepnn_version": __version__,
        "torch_version": torch.__version__,
        "name": name,
        "kind": spec.kind,
        "architecture": {"name": spec.arch, "params": dict(spec.params)},
        "inputs": spec.inputs.model_dump(mode="json"),
        "input_names": result.models[0].builder.input_names,
        "label": spec.label,
        "output": "logit",
        "seed": spec.training.seed,
        "split": spec.split.model_dump(mode="json"),
        "settings": spec.model_dump(mode="json"),
        "data_hash": data.digest(),
        "training_data": data.files,
        "metrics": result.metrics,
        "models": entries,
    }
    atomic_text(path / MODEL_JSON, json_text(doc, indent=1))
    return path


def model_json_path(path: str | os.PathLike[str]) -> Path:
    """``model.json`` of a model given as its folder, its JSON or one of its ``.pt``."""
    p = Path(path)
    candidate = p / MODEL_JSON if p.is_dir() else (p if p.name == MODEL_JSON else p.parent / MODEL_JSON)
    if not candidate.is_file():
        msg = f"model file not found: {candidate}"
        raise ModelError(msg)
    return candidate.resolve()


def parse_model_json(json_path: Path, raw: bytes) -> dict[str, Any]:
    """Parse ``model.json`` bytes and check their structure (one-line errors naming the file)."""
    try:
        meta = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        msg = f"corrupt model description {json_path}: {exc}"
        raise ModelError(msg) from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        msg = f"not a hepnn model description: {json_path}"
        raise ModelError(msg)
    if meta.get("format_version") != FORMAT_VERSION:
        msg = (
            f"{json_path}: model format version {meta.get('format_version')!r}, this hepnn reads "
            f"{FORMAT_VERSION}: retrain the network with this version (hepnn run CONFIG)"
        )
        raise ModelError(msg)
    try:
        meta["architecture"]["name"], meta["architecture"]["params"], meta["inputs"]["kind"]
        meta["split"]["method"]
        files = [entry["file"] for entry in meta["models"]]
        for entry in meta["models"]:
            entry["sha256"], entry["inputs"]
    except (KeyError, TypeError):
        msg = f"incomplete model description {json_path}"
        raise ModelError(msg) from None
    bad = [f for f in files if not isinstance(f, str) or Path(f).name != f or f in ("", ".", "..")]
    if bad:
        msg = f"{json_path}: models.file must be a file name in the model folder, got {bad[0]!r}"
        raise ModelError(msg)
    if not files:
        msg = f"no models listed in {json_path}"
        raise ModelError(msg)
    return meta


def read_weights(pt: Path, sha256: str) -> dict[str, torch.Tensor]:
    """A state dict from ``pt``, its sha256 checked, loaded with ``weights_only=True``."""
    try:
        data = pt.read_bytes()
    except FileNotFoundError:
        msg = f"model file not found: {pt}"
        raise ModelError(msg) from None
    except OSError as exc:
        msg = f"cannot read {pt}: {exc.strerror}"
        raise ModelError(msg) from None
    # Hash the exact bytes we deserialise (no re-read between check and load).
    if sha256_bytes(data) != sha256:
        msg = f"model.pt sha256 mismatch: {pt}"
        raise ModelError(msg)
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle/zip errors of many kinds
        msg = f"cannot load weights from {pt}: {type(exc).__name__}"
        raise ModelError(msg) from None


def _one_line(exc: BaseException) -> str:
    """An exception as one line (a pydantic error: its first location and message)."""
    errors = getattr(exc, "errors", None)
    if callable(errors):
        try:
            first = errors()[0]
            return f"{'.'.join(map(str, first['loc'])) or '<top level>'}: {first['msg']}"
        except (TypeError, IndexError, KeyError):
            pass
    return " ".join(str(exc).split()) or type(exc).__name__


def load_from_json(json_path: Path, raw: bytes) -> LoadedNetwork:
    """Load a network from the bytes of its ``model.json`` (already read by the caller)."""
    meta = parse_model_json(json_path, raw)
    arch = meta["architecture"]
    try:
        split = as_split(meta["split"])
    except ValueError as exc:
        msg = f"invalid split in {json_path}: {_one_line(exc)}"
        raise ModelError(msg) from None
    if len(meta["models"]) != split.n_models:
        msg = f"{json_path}: a {split.method} split has {split.n_models} model(s), {len(meta['models'])} listed"
        raise ModelError(msg)
    models, builders = [], []
    for entry in meta["models"]:
        pt = json_path.parent / entry["file"]
        if not inside(json_path.parent, pt):  # a symbolic link out of the folder
            msg = f"{json_path}: models.file {entry['file']!r} resolves outside the model folder"
            raise ModelError(msg)
        state = read_weights(pt, entry["sha256"])
        try:
            builder = load_builder(meta["inputs"], entry["inputs"])
        except ModelError as exc:
            raise ModelError(f"{json_path}: {_one_line(exc)}") from None
        except (TypeError, ValueError, KeyError, AttributeError, IndexError) as exc:  # untrusted JSON
            msg = f"{json_path}: models[{entry.get('model', '?')}].inputs: invalid ({type(exc).__name__}: {_one_line(exc)})"
            raise ModelError(msg) from None
        try:
            net = build(arch["name"], **arch["params"], **builder.arch_inputs())
        except KeyError as exc:
            msg = f"{exc.args[0]} (in {json_path})"
            raise ModelError(msg) from None
        except (TypeError, ValueError, RuntimeError, MemoryError, OverflowError) as exc:
            msg = f"cannot build {arch['name']!r} from {json_path}: {_one_line(exc)[:200]}"
            raise ModelError(msg) from None
        try:
            net.load_state_dict(state)
        except (RuntimeError, TypeError, AttributeError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            msg = f"weights in {pt} do not fit architecture {arch['name']!r}: {first}"
            raise ModelError(msg) from None
        net.eval()
        models.append(net)
        builders.append(builder)
    return LoadedNetwork(json_path.parent, meta, tuple(models), tuple(builders), split)


def load_network(path: str | os.PathLike[str]) -> LoadedNetwork:
    """Load a model folder (or its ``model.json`` / ``.pt``) written by :func:`save_network`.

    Prefer :func:`hepnn.nets.apply.get_network`, which caches per process.
    """
    json_path = model_json_path(path)
    try:
        raw = json_path.read_bytes()
    except OSError as exc:
        msg = f"cannot read {json_path}: {exc.strerror}"
        raise ModelError(msg) from None
    return load_from_json(json_path, raw)
