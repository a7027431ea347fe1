"""Training jet taggers from a config: ``prepare_taggers`` (called by ``hepnn run``).

Every jet of the tagger's datasets is read with uproot (only the needed
branches), its inputs built by :meth:`hepnn.jets.taggers.TaggerPrep.raw` (the
code that scores it later), split by event number
(:func:`hepnn.jets.taggers.split_codes`), normalised with statistics of the
training jets, and a registry network is trained seeded with early stopping
on the validation loss. The model folder (``model.pt``, ``model.json``,
``history.csv``) records the preprocessing, split, seed, metrics and the
content hash of every training file, so that metrics after the run know which
jets the tagger has seen.
"""

from __future__ import annotations

import copy
import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import awkward as ak
import numpy as np
import torch
import uproot
from torch import nn

from hepnn.errors import ConfigError, InputError, ModelError
from hepnn.files import atomic_bytes
from hepnn.jets.nanoaod import LAYOUTS
from hepnn.jets.taggers import (
    TAGGER_KIND,
    TAGGER_MICRO_BATCH,
    TEST,
    TRAIN,
    VAL,
    JetBatch,
    SequenceAugment,
    TaggerPrep,
    TaggerSpec,
    _forward,
    fatjet_batch,
    jet_labels,
    save_tagger,
    split_codes,
)
from hepnn.metrics import auc
from hepnn.modelio import parse_model_json
from hepnn.models import build
from hepnn.models.forward import torch_threads

if TYPE_CHECKING:
    from hepnn.config import Config
    from hepnn.samples import Dataset, FileEntry


def source_digest(entry: FileEntry, fmt: str) -> str:
    """Content hash of a dataset file as the user gave it (npy folder, CSV or ROOT file)."""
    if fmt == "part-npy":
        from hepnn.io.part_npy import content_hash, find_files

        return content_hash(find_files(entry.source)[1])
    h = hashlib.sha256()
    with Path(entry.source).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass
class TrainingJets:
    batch: JetBatch
    labels: np.ndarray
    ids: np.ndarray
    files: list[dict[str, Any]]


def _needed_branches(tree: Any, spec: TaggerSpec) -> list[str]:
    keys = set(tree.keys())
    jets = spec.jets
    wanted = {f"{jets}_{f}" for f in ("pt", "eta", "phi", "mass")}
    wanted |= {spec.label, spec.training.split.id_column}
    for lay in LAYOUTS.values():
        wanted |= {f"{lay.candidates}_{f}" for f in ("pt", "eta", "phi", "mass", "charge", "pdgId")}
        wanted |= {f"{lay.links}_{lay.cand_idx}", f"{lay.links}_{lay.jet_idx}"}
    required = [spec.label, spec.training.split.id_column]
    required += [f"{jets}_{f}" for f in ("pt", "eta", "phi", "mass")]
    missing = [b for b in required if b not in keys]
    if missing:
        msg = f"branch(es) {', '.join(missing)} needed to train the tagger not in the tree"
        raise InputError(msg)
    return sorted(wanted & keys)


def read_training_jets(name: str, spec: TaggerSpec, datasets: dict[str, Dataset]) -> TrainingJets:
    """Every jet (with constituents, label and event id) of the tagger's training datasets."""
    batches, labels, ids, files = [], [], [], []
    for ds_name in spec.datasets or list(datasets):
        if ds_name not in datasets:
            msg = f"taggers.{name}: unknown dataset {ds_name!r} (known: {', '.join(datasets)})"
            raise ConfigError(msg)
        ds = datasets[ds_name]
        for f in ds.files:
            try:
                with uproot.open(f.root_path) as fh:
                    tree = fh[f.treename]
                    arrays = tree.arrays(_needed_branches(tree, spec), library="ak")
                batch = fatjet_batch(arrays, jets=spec.jets)
                if batch is None:
                    msg = f"no {spec.jets} constituent link table (looked for {', '.join(lay.links for lay in LAYOUTS.values())})"
                    raise InputError(msg)
                lab = jet_labels(arrays, spec.label, batch, jets=spec.jets)
                assert lab is not None  # checked in _needed_branches
                if not np.isin(lab, (0, 1)).all():
                    msg = f"label branch {spec.label!r} must hold 0/1"
                    raise InputError(msg)
            except InputError as err:
                raise InputError(f"{f.source}: {err}") from None
            batches.append(batch)
            labels.append(lab)
            ids.append(ak.to_numpy(arrays[spec.training.split.id_column])[batch.event_index])
            files.append(
                {
                    "dataset": ds_name,
                    "source": str(f.source),
                    "digest": source_digest(f, ds.format),
                    "jets": len(batch),
                }
            )
    if not batches:
        msg = f"taggers.{name}: no datasets to train on"
        raise ConfigError(msg)
    batch = _concat(batches)
    lab, idv = np.concatenate(labels), np.concatenate(ids).astype(np.int64)
    if spec.max_jets is not None:
        rows = np.arange(min(spec.max_jets, len(batch)))
        batch, lab, idv = batch.take(rows), lab[rows], idv[rows]
    return TrainingJets(batch, lab, idv, files)


def _concat(batches: list[JetBatch]) -> JetBatch:
    if len(batches) == 1:
        return batches[0]
    cat = np.concatenate
    return JetBatch(
        ak.concatenate([b.constituents for b in batches]),
        *(cat([getattr(b, f) for b in batches]) for f in ("pt", "eta", "phi", "mass", "energy")),
        cat([b.event_index for b in batches]),
        cat([b.jet_index for b in batches]),
    )


@dataclass(frozen=True)
class SequenceAugmenter:
    """Applies :class:`~hepnn.jets.taggers.SequenceAugment` to scaled network inputs.

    The network sees standardised features, ``(x - mean) / std`` per feature, so
    Δη and Δφ are taken back to angles, rotated and/or reflected about the jet
    axis (one draw per jet, the same for all its constituents) and scaled again;
    padded slots stay 0. Every other channel (pT, energies, ΔR, the mask) is
    left untouched: those features are invariant under the transformation.

    Attributes
    ----------
    deta, dphi
        ``(channel, mean, std)`` of the scaled Δη / Δφ input, or None when the
        tagger does not use the feature.
    """

    deta: tuple[int, float, float] | None
    dphi: tuple[int, float, float] | None
    rotate: bool
    reflect: bool

    @classmethod
    def build(cls, augment: SequenceAugment, prep: TaggerPrep) -> SequenceAugmenter | None:
        """The augmenter of a fitted sequence preprocessing; None when nothing would change."""
        if not augment.active or prep.kind != "sequence":
            return None
        features = list(prep.settings["features"])

        def channel(name: str) -> tuple[int, float, float] | None:
            if name not in features:
                return None
            i = features.index(name)
            if prep.scaler is None:
                return i, 0.0, 1.0
            return i, prep.scaler.mean[i], prep.scaler.std[i]

        deta, dphi = channel("deta"), channel("dphi")
        if deta is None and dphi is None:
            return None
        # A rotation needs both angles (checked by TaggerSpec); without them only reflect.
        rotate = augment.rotate and deta is not None and dphi is not None
        return cls(deta, dphi, rotate, augment.reflect)

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """An augmented copy of ``x`` ``(N, F + 1, P)``; the draws come from ``generator``."""
        n = x.shape[0]
        mask = x[:, -1, :]
        angles: dict[str, torch.Tensor] = {}
        for key, ch in (("deta", self.deta), ("dphi", self.dphi)):
            if ch is not None:
                angles[key] = x[:, ch[0], :] * ch[2] + ch[1]
        # Draws in a fixed order (angle, then the two signs) whatever is used,
        # so that a run is reproducible from the seed alone.
        theta = torch.rand(n, 1, generator=generator, dtype=x.dtype) * (2 * math.pi)
        signs = torch.where(torch.rand(n, 2, generator=generator) < 0.5, -1.0, 1.0).to(x.dtype)
        if self.rotate:
            c, s = torch.cos(theta), torch.sin(theta)
            eta, phi = angles["deta"], angles["dphi"]
            angles["deta"], angles["dphi"] = c * eta - s * phi, s * eta + c * phi
        if self.reflect:
            for j, key in enumerate(("deta", "dphi")):
                if key in angles:
                    angles[key] = angles[key] * signs[:, j : j + 1]
        out = x.clone()
        for key, ch in (("deta", self.deta), ("dphi", self.dphi)):
            if ch is not None:
                out[:, ch[0], :] = (angles[key] - ch[1]) / ch[2] * mask
        return out


def _data_hash(raw: np.ndarray, labels: np.ndarray, ids: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in (raw.astype("<f4"), labels.astype("<i8"), ids.astype("<i8")):
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


@dataclass
class FittedTagger:
    """A trained network (best epoch, eval mode) with its fitted preprocessing and history."""

    model: nn.Module
    prep: TaggerPrep
    history: list[dict[str, float]]
    best_epoch: int


def fit_tagger(
    name: str,
    spec: TaggerSpec,
    raw: np.ndarray,
    labels: np.ndarray,
    split: np.ndarray,
    usable: np.ndarray,
    *,
    progress: bool = True,
) -> FittedTagger:
    """Train ``spec``'s network on the :data:`TRAIN` jets, early stopping on the :data:`VAL` jets.

    Seeded and bitwise reproducible (one intra-op thread by default): the weights
    from ``(seed, stream 0)``, the batch order from stream 1, the dropout masks
    from stream 2 reseeded per epoch, the augmentation (``training.augment``,
    training batches only) from stream 3. The weights of the best epoch are kept.

    Parameters
    ----------
    name
        For messages and the progress bar.
    spec
        The tagger's settings (architecture, inputs, training).
    raw
        Unnormalised inputs of every jet (:meth:`TaggerPrep.raw`).
    labels
        0/1 label of every jet.
    split
        :data:`TRAIN` / :data:`VAL` / :data:`TEST` code of every jet; test jets are not touched.
    usable
        Jets that may be used (not empty).
    progress
        Show a bar over the epochs.
    """
    from hepnn.train import _seed

    t = spec.training
    tr, va = ((split == c) & usable for c in (TRAIN, VAL))
    for what, m in (("training", tr), ("validation", va)):
        if len(np.unique(labels[m])) < 2:
            msg = f"taggers.{name}: the {what} split needs signal and background jets ({int(m.sum())} jets)"
            raise InputError(msg)
    prep = TaggerPrep.fit(spec.kind, spec.input_settings(), raw[tr])
    x_tr = torch.from_numpy(np.ascontiguousarray(prep.transform(raw[tr])))
    x_va = torch.from_numpy(np.ascontiguousarray(prep.transform(raw[va])))
    y = torch.from_numpy(labels.astype(np.float32))
    y_tr, y_va = y[torch.from_numpy(tr)], y[torch.from_numpy(va)]

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"), TimeElapsedColumn(), disable=not progress,
    )  # fmt: skip
    history: list[dict[str, float]] = []
    # fork_rng: the seeded global RNG (init, dropout) never leaks to the caller.
    with bar, torch_threads(t.threads), torch.random.fork_rng(devices=[]):
        task = bar.add_task(f"train tagger {name}", total=t.epochs, status="")
        torch.manual_seed(_seed(t.seed, 0, 0))
        try:
            model = build(spec.arch, **spec.params, **prep.arch_inputs())
        except (TypeError, ValueError, KeyError) as exc:
            msg = f"taggers.{name}: cannot build {spec.arch!r} with params {spec.params}: {exc}"
            raise ConfigError(msg) from None
        order = torch.Generator().manual_seed(_seed(t.seed, 1, 0))
        augmenter = SequenceAugmenter.build(t.augment, prep)
        augment_rng = torch.Generator().manual_seed(_seed(t.seed, 3, 0))
        opt = torch.optim.Adam(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
        sched = (
            torch.optim.lr_scheduler.ReduceLROnPlateau(
                opt, factor=t.lr_factor, patience=t.lr_patience
            )
            if t.lr_factor < 1
            else None
        )
        loss_fn = nn.BCEWithLogitsLoss()
        best = (math.inf, 0, copy.deepcopy(model.state_dict()))
        since_best = 0
        for epoch in range(1, t.epochs + 1):
            torch.manual_seed(_seed(t.seed, 2, 0, epoch))
            model.train()
            perm = torch.randperm(len(x_tr), generator=order)
            total = 0.0
            for start in range(0, len(perm), t.batch_size):
                idx = perm[start : start + t.batch_size]
                xb = x_tr[idx] if augmenter is None else augmenter(x_tr[idx], augment_rng)
                opt.zero_grad(set_to_none=True)
                loss = loss_fn(model(xb), y_tr[idx])
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(idx)
            model.eval()
            logits = torch.from_numpy(_forward(model, x_va.numpy(), TAGGER_MICRO_BATCH))
            val_loss = float(loss_fn(logits, y_va))
            val_auc = auc(logits.numpy(), y_va.numpy())
            train_loss = total / len(perm)
            if not (math.isfinite(train_loss) and math.isfinite(val_loss)):
                msg = f"taggers.{name}: training diverged in epoch {epoch}; lower lr"
                raise ConfigError(msg)
            history.append(
                {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss,
                 "val_auc": val_auc, "lr": float(opt.param_groups[0]["lr"])}
            )  # fmt: skip
            if sched is not None:
                sched.step(val_loss)
            if val_loss < best[0]:
                best, since_best = (val_loss, epoch, copy.deepcopy(model.state_dict())), 0
            else:
                since_best += 1
            bar.update(
                task,
                advance=1,
                status=f"val loss {val_loss:.4f} auc {val_auc:.4f} (best {best[1]})",
            )
            if since_best >= t.patience:
                break
        bar.update(task, completed=t.epochs)
    model.load_state_dict(best[2])
    model.eval()
    return FittedTagger(model, prep, history, best[1])


def train_tagger(
    name: str,
    spec: TaggerSpec,
    datasets: dict[str, Dataset],
    outdir: Path,
    *,
    progress: bool = True,
) -> Path:
    """Train tagger ``name`` on the datasets' jets (:func:`fit_tagger`) and save it to ``outdir``.

    The jets are split by :func:`~hepnn.jets.taggers.split_codes`; empty jets are
    left out of training. The test AUC is recorded in ``model.json``.
    """
    jets = read_training_jets(name, spec, datasets)
    raw = TaggerPrep(spec.kind, spec.input_settings()).raw(jets.batch)
    split = split_codes(jets.ids, spec.training.split)
    usable = ~jets.batch.empty
    fitted = fit_tagger(name, spec, raw, jets.labels, split, usable, progress=progress)
    model, prep, history = fitted.model, fitted.prep, fitted.history
    tr, va, te = ((split == c) & usable for c in (TRAIN, VAL, TEST))
    x_te = np.ascontiguousarray(prep.transform(raw[te]))
    test_logits = _forward(model, x_te, TAGGER_MICRO_BATCH)
    at_best = history[fitted.best_epoch - 1]
    metrics = {
        "best_epoch": fitted.best_epoch,
        "epochs_run": len(history),
        "val_loss": at_best["val_loss"],
        "val_auc": at_best["val_auc"],
        "test_auc": auc(test_logits, jets.labels[te]),
        "n_train": int(tr.sum()),
        "n_val": int(va.sum()),
        "n_test": int(te.sum()),
        "n_empty": int((~usable).sum()),
    }
    path = save_tagger(
        outdir / name,
        model,
        prep,
        spec,
        metrics,
        _data_hash(raw, jets.labels, jets.ids),
        jets.files,
    )
    # No wall times in the model folder: retraining gives the same bytes, so the
    # checkpoint fingerprint (a hash of the folder) survives --resume.
    lines = ["epoch,train_loss,val_loss,val_auc,lr"]
    lines += [
        ",".join(f"{h[k]:.6g}" for k in ("epoch", "train_loss", "val_loss", "val_auc", "lr"))
        for h in history
    ]
    atomic_bytes(path / "history.csv", ("\n".join(lines) + "\n").encode())
    return path


def find_tagger(name: str, models_dir: Path, spec: TaggerSpec) -> Path:
    """``models_dir/name`` as a tagger folder of ``spec.kind``, with a one-line error otherwise."""
    path = Path(models_dir) / name
    json_path = path / "model.json"
    if not json_path.is_file():
        msg = f"--models {models_dir}: no model.json for tagger {name!r} (expected {json_path})"
        raise ModelError(msg)
    meta = parse_model_json(json_path, json_path.read_bytes())
    kind = meta.get("tagger", {}).get("kind") if meta.get("kind") == TAGGER_KIND else None
    if kind != spec.kind:
        msg = (
            f"{json_path}: expected a {spec.kind} tagger, found {kind or 'a flat-feature network'}"
        )
        raise ModelError(msg)
    return path


def quick_spec(spec: TaggerSpec) -> TaggerSpec:
    """``spec`` capped at two epochs: a smoke run (``test``) that exercises everything."""
    training = spec.training.model_copy(update={"epochs": min(2, spec.training.epochs)})
    return spec.model_copy(update={"training": training})


def prepare_taggers(
    cfg: Config,
    datasets: dict[str, Dataset],
    outdir: Path,
    models_dir: Path | None,
    *,
    test: bool = False,
    progress: bool = True,
) -> dict[str, Path]:
    """Train the config's taggers into ``outdir/models/<name>`` or take them from ``models_dir``.

    Taggers with ``train: false`` are applied only when ``models_dir`` has them
    (otherwise left out). ``test`` caps training at two epochs.

    Returns
    -------
    dict
        Tagger name → model folder, in config order.
    """
    out: dict[str, Path] = {}
    for name, spec in cfg.taggers.items():
        if models_dir is not None:
            out[name] = find_tagger(name, Path(models_dir), spec)
        elif spec.train:
            run_spec = quick_spec(spec) if test else spec
            out[name] = train_tagger(name, run_spec, datasets, outdir / "models", progress=progress)
    return out
