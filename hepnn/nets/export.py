"""Trained networks as TorchScript and ONNX files with their preprocessing inside the graph.

>>> written = export_models("outputs/higgs/models", "exported")   # hepnn export MODELS -o OUT

For every network folder (``<net>/model.json``) and every model of its split (one per
fold of a k-fold network), :func:`export_network` writes

* ``<net>/fold<i>.pt`` — TorchScript (``torch.jit.load``), traced in eval mode;
* ``<net>/fold<i>.onnx`` — ONNX (opset :data:`OPSET`, TorchScript-based exporter), a
  dynamic batch dimension;
* ``<net>/export.json`` — input name, columns and order, dtype and shape, the output
  (sigmoid score or logit), the fold rule (which file scores which event), the
  micro-batch size that reproduces :func:`hepnn.nets.apply.network_score` bitwise, and
  the sha256 of every file.

The graph (:class:`FlatGraph`, :class:`ImageGraph`, :class:`SequenceGraph`) takes *raw*
inputs and applies exactly what :meth:`~hepnn.nets.inputs.InputBuilder.transform` does:

* flat: float64 features in ``features`` order (``export.json`` → ``columns``); NaN or
  ``-999.0`` is missing; ``inputs.symmetry`` and ``inputs.transform`` are applied, the
  value is standardised in float64 with the training mean and std, rounded once to
  float32, a missing value set to 0 (the training mean), then the 0/1 missing flags
  appended; then the network;
* image: float32 jet images ``(N, channels, n_eta, n_phi)`` before the pixel
  normalisation (``ImageBuilder.raw``: the image itself is built outside the graph by
  :func:`hepnn.jets.images.jet_images`), ``(x - pixel_mean) / pixel_std``;
* sequence: float32 ``(N, features + 1, max_constituents)`` constituent sequences with
  the 0/1 mask as last channel (``SequenceBuilder.raw``, built outside by
  :func:`hepnn.jets.constituents.constituent_sequences`), standardised per feature on
  real constituents, padded slots 0.

Routing is not in the graph: a k-fold network's event with id ``e`` is scored by file
``e % k`` (:func:`hepnn.nets.split.route`), as in ``export.json``. Bits: the TorchScript
file run on CPU with one intra-op thread on zero-padded batches of ``micro_batch`` rows
gives exactly ``network_score``'s bits (CPU kernels sum in a batch-size-dependent order,
so other batch sizes agree to float32 rounding only); ONNX Runtime uses its own kernels
(agreement within 1e-5 on the sigmoid score, tested).
"""

from __future__ import annotations

import io
import math
import os
import warnings
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from hepnn.errors import ConfigError, ModelError
from hepnn.files import atomic_bytes, sha256_bytes, write_json
from hepnn.nets.flat import MISSING_VALUE, TWO_PI, FlatBuilder
from hepnn.nets.inputs import ImageBuilder, InputBuilder, SequenceBuilder
from hepnn.nets.store import MODEL_JSON, LoadedNetwork, load_network

Output = Literal["sigmoid", "logit"]

#: ONNX opset of the exported graphs.
OPSET = 17
#: Format tag of ``export.json``.
EXPORT_FORMAT = "hepnn-export"


class _Head(nn.Module):
    """The network, then the sigmoid (or the logit unchanged)."""

    def __init__(self, model: nn.Module, output: Output) -> None:
        super().__init__()
        self.model = model
        self.sigmoid = output == "sigmoid"

    def head(self, x: torch.Tensor) -> torch.Tensor:
        y = self.model(x)
        return torch.sigmoid(y) if self.sigmoid else y


class FlatGraph(_Head):
    """Raw float64 features → symmetry, transforms, imputation, standardisation, flags → score.

    The columns are :attr:`FlatBuilder.features` in order (a φ reference of
    ``inputs.symmetry`` included: it is read, then dropped). The symmetry is computed with
    the same comparisons and ±2π as :func:`hepnn.nets.flat.wrap_angle` (same bits);
    ``log1p`` uses torch's, which may differ from numpy's in the last bit of float64.
    """

    def __init__(self, model: nn.Module, builder: FlatBuilder, output: Output = "sigmoid") -> None:
        super().__init__(model, output)
        if builder.mean is None or builder.std is None:
            msg = "the flat inputs are not fitted"
            raise ModelError(msg)
        self.register_buffer("mean", torch.tensor(builder.mean, dtype=torch.float64))
        self.register_buffer("std", torch.tensor(builder.std, dtype=torch.float64))
        index = [builder.features.index(f) for _, f in builder.flags]
        self.register_buffer("flag_index", torch.tensor(index, dtype=torch.int64))
        self.register_buffer("kept", torch.tensor(builder.kept, dtype=torch.int64))
        self.has_flags = bool(index)
        col = {f: j for j, f in enumerate(builder.features)}
        self.n_features = len(builder.features)
        self.log1p = [col[f] for f, kind in builder.settings.transform.items() if kind == "log1p"]
        sym = builder.settings.symmetry
        self.phi_ref = col[sym.phi_reference] if sym and sym.phi_reference else -1
        self.phis = [col[f] for f in sym.phis] if sym else []
        self.phi_reflect = col[sym.phi_reflect] if sym and sym.phi_reflect else -1
        self.eta_ref = col[sym.eta_reference] if sym and sym.eta_reference else -1
        self.etas = [col[f] for f in sym.etas] if sym else []

    def prepare(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Symmetry and transforms on the raw columns: (values, missing), NaN = missing."""
        missing = torch.isnan(x) | (x == MISSING_VALUE)
        x = torch.where(missing, torch.full_like(x, float("nan")), x)
        cols = [x[:, j] for j in range(self.n_features)]
        if self.phi_ref >= 0:
            ref = cols[self.phi_ref]
            for j in self.phis:
                d = cols[j] - ref
                cols[j] = torch.where(
                    d >= math.pi, d - TWO_PI, torch.where(d < -math.pi, d + TWO_PI, d)
                )
            cols[self.phi_ref] = torch.zeros_like(ref)
            if self.phi_reflect >= 0:
                flip = cols[self.phi_reflect] < 0
                for j in self.phis:
                    cols[j] = torch.where(flip, -cols[j], cols[j])
        if self.eta_ref >= 0:
            flip = x[:, self.eta_ref] < 0
            for j in self.etas:
                cols[j] = torch.where(flip, -cols[j], cols[j])
        for j in self.log1p:
            cols[j] = torch.log1p(cols[j])
        x = torch.stack(cols, dim=1)
        return x, torch.isnan(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, missing = self.prepare(x)
        z = ((x - self.mean) / self.std).to(torch.float32)
        z = torch.where(missing, torch.zeros_like(z), z).index_select(1, self.kept)
        if self.has_flags:
            z = torch.cat([z, missing.index_select(1, self.flag_index).to(torch.float32)], dim=1)
        return self.head(z)


class ImageGraph(_Head):
    """Raw float32 jet images → pixel normalisation → network → score."""

    def __init__(self, model: nn.Module, builder: ImageBuilder, output: Output = "sigmoid") -> None:
        super().__init__(model, output)
        self.normalise = builder.pixel_mean is not None and builder.pixel_std is not None
        mean = builder.pixel_mean if self.normalise else np.zeros(1, np.float32)
        self.register_buffer("pixel_mean", torch.from_numpy(np.asarray(mean, np.float32).copy()))
        self.register_buffer("pixel_std", torch.tensor(np.float32(builder.pixel_std or 1.0)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.normalise:
            x = (x - self.pixel_mean) / self.pixel_std
        return self.head(x)


class SequenceGraph(_Head):
    """Raw float32 constituent sequences (mask last) → per-feature scaling → network → score."""

    def __init__(
        self, model: nn.Module, builder: SequenceBuilder, output: Output = "sigmoid"
    ) -> None:
        super().__init__(model, output)
        scaler = builder.scaler
        self.scale = scaler is not None
        n = len(builder.settings.features)
        mean = np.asarray(scaler.mean if scaler else [0.0] * n, dtype=np.float32)[None, :, None]
        std = np.asarray(scaler.std if scaler else [1.0] * n, dtype=np.float32)[None, :, None]
        self.register_buffer("mean", torch.from_numpy(mean.copy()))
        self.register_buffer("std", torch.from_numpy(std.copy()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.scale:
            mask = x[:, -1:, :]
            feats = (x[:, :-1, :] - self.mean) / self.std
            feats = torch.where(mask != 0, feats, torch.zeros_like(feats))
            x = torch.cat([feats, mask], dim=1)
        return self.head(x)


def export_graph(model: nn.Module, builder: InputBuilder, output: Output = "sigmoid") -> nn.Module:
    """The graph of one model: raw inputs in, score out (eval mode)."""
    if output not in ("sigmoid", "logit"):
        msg = f"output must be 'sigmoid' or 'logit', got {output!r}"
        raise ConfigError(msg)
    if isinstance(builder, FlatBuilder):
        graph: nn.Module = FlatGraph(model, builder, output)
    elif isinstance(builder, ImageBuilder):
        graph = ImageGraph(model, builder, output)
    elif isinstance(builder, SequenceBuilder):
        graph = SequenceGraph(model, builder, output)
    else:
        msg = f"cannot export a network with {type(builder).__name__} inputs"
        raise ModelError(msg)
    return graph.eval()


def example_input(builder: InputBuilder, rows: int = 2) -> torch.Tensor:
    """A raw input of ``rows`` rows of the right shape and dtype (zeros; a flat row has no missing value)."""
    if isinstance(builder, FlatBuilder):
        return torch.zeros((rows, len(builder.features)), dtype=torch.float64)
    if isinstance(builder, ImageBuilder):
        s = builder.settings
        return torch.zeros((rows, len(s.channels), s.n_eta, s.n_phi), dtype=torch.float32)
    if isinstance(builder, SequenceBuilder):
        s = builder.settings
        x = torch.zeros((rows, len(s.features) + 1, s.max_constituents), dtype=torch.float32)
        x[:, -1, 0] = 1.0  # one real constituent per jet
        return x
    msg = f"cannot export a network with {type(builder).__name__} inputs"
    raise ModelError(msg)


def _input_description(loaded: LoadedNetwork) -> dict[str, Any]:
    b = loaded.builder
    if isinstance(b, FlatBuilder):
        return {
            "name": "features",
            "columns": list(b.features),
            "dtype": "float64",
            "shape": ["N", len(b.features)],
            "missing": f"NaN or {MISSING_VALUE} (imputed with the training mean, i.e. 0 after "
            "standardising; flagged where the model has missing flags)",
            "network_inputs": b.input_names,
            "flags": [{"name": n, "feature": f} for n, f in b.flags],
        }
    s = b.settings
    if isinstance(b, ImageBuilder):
        return {
            "name": "images",
            "channels": list(s.channels),
            "dtype": "float32",
            "shape": ["N", len(s.channels), s.n_eta, s.n_phi],
            "prepared_outside": "hepnn.nets.inputs.ImageBuilder.raw (hepnn.jets.images.jet_images) "
            "with the settings under 'settings'; the pixel normalisation is in the graph",
            "settings": s.model_dump(mode="json"),
        }
    return {
        "name": "sequences",
        "features": list(s.features),
        "dtype": "float32",
        "shape": ["N", len(s.features) + 1, s.max_constituents],
        "mask": "last channel: 1 for a real constituent, 0 for a padded slot",
        "prepared_outside": "hepnn.nets.inputs.SequenceBuilder.raw "
        "(hepnn.jets.constituents.constituent_sequences) with the settings under 'settings'; "
        "the per-feature standardisation is in the graph",
        "settings": s.model_dump(mode="json"),
    }


def _routing(loaded: LoadedNetwork, files: list[str]) -> dict[str, Any]:
    s = loaded.split
    if s.method == "kfold":
        rule = f"{s.id_column} % {s.folds}"
        how = f"an event with {rule} == i is scored by fold{{i}} (every event by a model that never saw it)"
    else:
        rule = "0"
        how = "one model scores every event"
    return {"method": s.method, "id_column": s.id_column, "folds": len(files), "rule": rule,
            "description": how, "split": s.model_dump(mode="json")}  # fmt: skip


def _onnx_bytes(graph: nn.Module, example: torch.Tensor, input_name: str) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shape checks: constant here
        torch.onnx.export(
            graph, (example,), buf, input_names=[input_name], output_names=["score"],
            dynamic_axes={input_name: {0: "N"}, "score": {0: "N"}}, opset_version=OPSET, dynamo=False,
        )  # fmt: skip
    return buf.getvalue()


def export_network(
    model_path: str | os.PathLike[str],
    outdir: str | os.PathLike[str],
    *,
    output: Output = "sigmoid",
    onnx: bool = True,
) -> list[Path]:
    """Export every model of one network folder into ``outdir`` (see the module docstring).

    Parameters
    ----------
    model_path
        The network's folder (``model.json`` and its weight files).
    outdir
        Folder for ``fold<i>.pt``, ``fold<i>.onnx`` and ``export.json``.
    output
        ``sigmoid`` (probability-like score in [0, 1], as ``network_score``) or ``logit``.
    onnx
        Also write ONNX files (needs the ``onnx`` package: ``pip install 'hepnn[export]'``).

    Returns
    -------
    list of Path
        The files written, ``export.json`` last.
    """
    loaded = load_network(model_path)
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    desc = _input_description(loaded)
    written: list[Path] = []
    entries = []
    for m, (model, builder) in enumerate(zip(loaded.models, loaded.builders, strict=True)):
        graph = export_graph(model, builder, output)
        example = example_input(builder)
        with torch.no_grad(), warnings.catch_warnings():
            # the architectures' input-shape checks become constants of the trace
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            traced = torch.jit.trace(graph, (example,), check_trace=False)
        buf = io.BytesIO()
        torch.jit.save(traced, buf)
        entry: dict[str, Any] = {
            "fold": m,
            "applies_to": loaded.meta["models"][m].get("applies_to", ""),
        }
        atomic_bytes(out / f"fold{m}.pt", buf.getvalue())
        entry["torchscript"] = {"file": f"fold{m}.pt", "sha256": sha256_bytes(buf.getvalue())}
        written.append(out / f"fold{m}.pt")
        if onnx:
            blob = _onnx_bytes(graph, example, desc["name"])
            atomic_bytes(out / f"fold{m}.onnx", blob)
            entry["onnx"] = {"file": f"fold{m}.onnx", "sha256": sha256_bytes(blob), "opset": OPSET}
            written.append(out / f"fold{m}.onnx")
        entries.append(entry)
    doc = {
        "format": EXPORT_FORMAT,
        "format_version": 1,
        "network": loaded.name,
        "kind": loaded.kind,
        "source": {
            "model_json": str(loaded.path / MODEL_JSON),
            "weights_sha256": [e["sha256"] for e in loaded.meta["models"]],
        },
        "input": desc,
        "output": {
            "name": "score",
            "dtype": "float32",
            "shape": ["N"],
            "meaning": "sigmoid(logit): signal-like score in [0, 1]"
            if output == "sigmoid"
            else "logit: log(p / (1 - p)) of the signal class",
        },
        "routing": _routing(loaded, [f"fold{m}" for m in range(len(entries))]),
        "micro_batch": builder_micro_batch(loaded),
        "bitwise": "TorchScript on CPU, one intra-op thread, zero-padded batches of micro_batch rows "
        "reproduce hepnn.nets.apply.network_score / jet_scores exactly; ONNX Runtime agrees within 1e-5",
        "files": entries,
    }
    write_json(out / "export.json", doc)
    written.append(out / "export.json")
    return written


def builder_micro_batch(loaded: LoadedNetwork) -> int:
    """Rows per micro-batch of ``network_score`` for this network (the bits depend on it)."""
    return int(loaded.builder.micro_batch)


def export_models(
    models_dir: str | os.PathLike[str],
    outdir: str | os.PathLike[str],
    *,
    output: Output = "sigmoid",
    onnx: bool = True,
) -> dict[str, list[Path]]:
    """Export every network folder under ``models_dir`` (or ``models_dir`` itself) to ``outdir/<net>/``.

    Raises
    ------
    ModelError
        No ``model.json`` in ``models_dir`` or its sub-folders.
    """
    root = Path(models_dir)
    if (root / MODEL_JSON).is_file():
        folders = [root]
    else:
        folders = sorted(p.parent for p in root.glob(f"*/{MODEL_JSON}"))
    if not folders:
        msg = f"{root}: no {MODEL_JSON} here or in its sub-folders (expected OUT/models of a hepnn run)"
        raise ModelError(msg)
    if onnx:
        try:
            import onnx as _onnx  # noqa: F401
        except ImportError:
            msg = (
                "ONNX export needs the onnx package: pip install 'hepnn[export]' (or use --no-onnx)"
            )
            raise ConfigError(msg) from None
    return {
        p.name: export_network(p, Path(outdir) / p.name, output=output, onnx=onnx) for p in folders
    }
