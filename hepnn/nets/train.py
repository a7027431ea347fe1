"""The one training loop of every network: seeded, early-stopped, bitwise reproducible.

>>> result = train_network("dnn", spec, data)          # one model per model of the split
>>> result.models[0].model, result.models[0].builder   # network (eval mode) and its inputs

For each model of the split (:func:`hepnn.nets.split.split_codes`) the inputs are
fitted on its training rows, the network is built from the registry and trained
with Adam on the binary cross-entropy of its logit, early stopping on the
validation loss (the weights of the best epoch are kept) and an optional
``ReduceLROnPlateau`` schedule. Hooks: the input builder's augmentation
(``training.augment``, training batches only) and an ``on_epoch(epoch, model,
builder)`` callback (the per-epoch Taylor monitor), called for the first model
after every epoch with the model in eval mode.

Reproducibility: every random draw comes from one seed, expanded into named
streams (:class:`hepnn.nets.split.Stream`): initialisation, batch order, dropout
masks (reseeded every epoch, so nothing a hook does changes them) and
augmentation. The CPU backward pass is *not* bitwise independent of the intra-op
thread count (1 vs 2 threads differ for 128-wide layers), so training pins torch to
``training.threads`` threads and restores the caller's count afterwards.
Validation scores use the same fixed-size padded micro-batches as applied scores.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from hepnn.errors import ConfigError, InputError
from hepnn.metrics import auc
from hepnn.models import available, build
from hepnn.models.forward import torch_threads
from hepnn.nets.apply import forward
from hepnn.nets.data import TrainingData
from hepnn.nets.inputs import InputBuilder, make_builder
from hepnn.nets.spec import NetworkSpec
from hepnn.nets.split import TEST, TRAIN, VAL, Stream, held_out, route, split_codes, stream_seed
from hepnn.progress import step_progress

#: ``on_epoch(epoch, model, builder)``: called after an epoch, model in eval mode.
EpochHook = Callable[[int, nn.Module, InputBuilder], Any]


@dataclass
class FittedModel:
    """One trained model of a split: network at its best epoch (eval mode) and fitted inputs."""

    model: nn.Module
    builder: InputBuilder
    history: list[dict[str, float]]
    best_epoch: int
    metrics: dict[str, Any]


@dataclass
class TrainResult:
    """All models of a network's split, with held-out metrics over the training rows."""

    spec: NetworkSpec
    models: list[FittedModel]
    metrics: dict[str, Any]
    history: list[dict[str, float]] = field(default_factory=list)


def balanced_weights(labels: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weights rescaled so that signal and background each sum to N/2 (mean 1).

    Negative weights (NLO simulation) keep their sign: each class's *signed* sum,
    its physical yield, is scaled to N/2 and must be positive.
    """
    w = np.asarray(weights, dtype=np.float64)
    out = np.empty_like(w)
    for cls in (0, 1):
        sel = labels == cls
        total = w[sel].sum()
        if not total > 0:
            name = "signal" if cls else "background"
            msg = f"{name} weights sum to {total} (must be > 0) in a training or validation set"
            raise InputError(msg)
        out[sel] = w[sel] * (labels.size / 2.0) / total
    return out


def _loss_weights(spec: NetworkSpec, data: TrainingData, rows: np.ndarray) -> torch.Tensor | None:
    """Per-row loss weights, or None for the plain mean.

    Flat networks take a weighted mean (balanced event weights with
    ``use_weights``; with ``class_balance`` weights 1 rescaled so that each class
    carries half of the total; else weights 1); jet networks the plain mean. The
    two agree up to the last bit, and each kind keeps its form so that a config
    trains to the same bits in every hepnn version.
    """
    if spec.kind != "flat":
        return None
    if spec.training.use_weights:
        if data.weights is None:
            msg = f"training.use_weights is true but the data has no {spec.weight!r} branch"
            raise ConfigError(msg)
        return torch.from_numpy(balanced_weights(data.labels[rows], data.weights[rows])).float()
    if spec.training.class_balance:
        ones = np.ones(int(rows.sum()))
        return torch.from_numpy(balanced_weights(data.labels[rows], ones)).float()
    return torch.from_numpy(np.ones(int(rows.sum()))).float()


def batch_loss(logits: torch.Tensor, y: torch.Tensor, w: torch.Tensor | None) -> torch.Tensor:
    """Binary cross-entropy of the logits: plain mean, or ``Σ w_i l_i / Σ |w_i|``.

    Negative event weights are kept with their sign in the numerator (the weighted
    sum is then an unbiased estimate of the loss on the physical distribution) and
    the normaliser is ``Σ |w_i|``, which is positive and never cancels to ~0 in a
    batch where positive and negative weights nearly balance. For non-negative
    weights ``Σ |w_i| = Σ w_i`` exactly, so such trainings keep their bits.
    """
    if w is None:
        return nn.functional.binary_cross_entropy_with_logits(logits, y)
    per_row = nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="none")
    return (per_row * w).sum() / w.abs().sum()


def fit_model(
    name: str,
    spec: NetworkSpec,
    data: TrainingData,
    codes: np.ndarray,
    *,
    model_index: int = 0,
    progress: bool = True,
    on_epoch: EpochHook | None = None,
) -> FittedModel:
    """Train one model on the ``TRAIN`` rows of ``codes``, early stopping on the ``VAL`` rows.

    Parameters
    ----------
    name
        For messages and the progress bar.
    spec
        Architecture, inputs and training settings.
    data
        The training rows (:class:`hepnn.nets.data.TrainingData`); ``TEST`` rows and
        unusable rows are never touched.
    codes
        :data:`TRAIN` / :data:`VAL` / :data:`TEST` of every row.
    model_index
        The model's index in the split (its seed streams).
    progress
        Show a bar over the epochs.
    on_epoch
        Hook after every epoch (see the module docstring).
    """
    t = spec.training
    if spec.arch not in available():
        msg = f"networks.{name}: unknown architecture {spec.arch!r}; known: {', '.join(available())}"
        raise ConfigError(msg)
    if not np.isin(data.labels, (0, 1)).all():
        msg = f"networks.{name}: labels must hold 0/1"
        raise InputError(msg)
    tr, va = ((codes == c) & data.usable for c in (TRAIN, VAL))
    for what, m in (("training", tr), ("validation", va)):
        if len(np.unique(data.labels[m])) < 2:
            msg = f"networks.{name}: the {what} rows of model {model_index} need signal and background ({int(m.sum())} rows)"
            raise InputError(msg)
    builder = make_builder(spec.inputs).fit(data.raw[tr])
    x_tr = torch.from_numpy(np.ascontiguousarray(builder.transform(data.raw[tr])))
    x_va = np.ascontiguousarray(builder.transform(data.raw[va]))
    y_tr = torch.from_numpy(data.labels[tr].astype(np.float32))
    y_va_np = data.labels[va]
    y_va = torch.from_numpy(y_va_np.astype(np.float32))
    w_tr, w_va = _loss_weights(spec, data, tr), _loss_weights(spec, data, va)
    raw_w_va = None if data.weights is None else data.weights[va]

    history: list[dict[str, float]] = []
    label = name if spec.split.n_models == 1 else f"{name} model {model_index}"
    # fork_rng: the seeded global RNG (layer init, dropout) never leaks to the caller.
    with (
        step_progress(f"train {label}", t.epochs, progress) as advance,
        torch_threads(t.threads),
        torch.random.fork_rng(devices=[]),
    ):
        torch.manual_seed(stream_seed(t.seed, Stream.INIT, model_index))
        try:
            model = build(spec.arch, **spec.params, **builder.arch_inputs())
        except (TypeError, ValueError, KeyError) as exc:
            msg = f"networks.{name}: cannot build {spec.arch!r} with params {spec.params}: {exc}"
            raise ConfigError(msg) from None
        order = torch.Generator().manual_seed(stream_seed(t.seed, Stream.ORDER, model_index))
        augment = builder.augmenter(t.augment)
        augment_rng = torch.Generator().manual_seed(stream_seed(t.seed, Stream.AUGMENT, model_index))
        opt = torch.optim.Adam(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
        sched = (
            torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=t.lr_factor, patience=t.lr_patience)
            if t.lr_factor < 1
            else None
        )
        best = (math.inf, 0, copy.deepcopy(model.state_dict()))
        since_best = 0
        n_tr = x_tr.shape[0]
        for epoch in range(1, t.epochs + 1):
            # Dropout masks come from the global generator: reseed it per epoch
            # so that nothing done between epochs (hooks) changes them.
            torch.manual_seed(stream_seed(t.seed, Stream.DROPOUT, model_index, epoch))
            model.train()
            perm = torch.randperm(n_tr, generator=order)
            total, total_w = 0.0, 0.0
            for start in range(0, n_tr, t.batch_size):
                idx = perm[start : start + t.batch_size]
                xb = x_tr[idx] if augment is None else augment(x_tr[idx], augment_rng)
                wb = None if w_tr is None else w_tr[idx]
                opt.zero_grad(set_to_none=True)
                loss = batch_loss(model(xb), y_tr[idx], wb)
                loss.backward()
                opt.step()
                size = float(len(idx)) if wb is None else float(wb.abs().sum())
                total += float(loss.detach()) * size
                total_w += size
            train_loss = total / total_w

            model.eval()
            logits = forward(model, x_va, builder.micro_batch, "logit")
            val_loss = float(batch_loss(torch.from_numpy(logits), y_va, w_va))
            scores = logits.astype(np.float64)
            val_auc = auc(scores, y_va_np)
            val_auc_w = auc(scores, y_va_np, raw_w_va) if raw_w_va is not None else math.nan
            history.append(
                {"model": model_index, "epoch": epoch, "train_loss": train_loss, "val_loss": val_loss,
                 "val_auc": val_auc, "val_auc_weighted": val_auc_w, "lr": float(opt.param_groups[0]["lr"])}
            )  # fmt: skip
            if not (math.isfinite(train_loss) and math.isfinite(val_loss)):
                msg = (
                    f"networks.{name}: training diverged in epoch {epoch} of model {model_index}"
                    f" (train loss {train_loss}, validation loss {val_loss}); lower lr"
                )
                raise ConfigError(msg)
            if sched is not None:
                sched.step(val_loss)
            if val_loss < best[0]:
                best, since_best = (val_loss, epoch, copy.deepcopy(model.state_dict())), 0
            else:
                since_best += 1
            advance(1, info=f"val loss {val_loss:.4f} auc {val_auc:.4f} (best epoch {best[1]})")
            if on_epoch is not None and model_index == 0:
                on_epoch(epoch, model, builder)
            if since_best >= t.patience:
                break
    model.load_state_dict(best[2])
    model.eval()
    at_best = history[best[1] - 1]
    metrics = {
        "best_epoch": best[1],
        "epochs_run": len(history),
        "val_loss": at_best["val_loss"],
        "val_auc": at_best["val_auc"],
        "val_auc_weighted": at_best["val_auc_weighted"],
        "n_train": int(tr.sum()),
        "n_val": int(va.sum()),
    }
    return FittedModel(model, builder, history, best[1], metrics)


def train_network(
    name: str,
    spec: NetworkSpec,
    data: TrainingData,
    *,
    progress: bool = True,
    on_epoch: EpochHook | None = None,
) -> TrainResult:
    """Train every model of the network's split (see :func:`fit_model`) and score the held-out rows.

    The returned metrics hold, per model, the validation figures at the best epoch
    and, over all models, the AUC of the held-out rows (:func:`hepnn.nets.split.held_out`):
    every row of a kfold split, the odd ids of a parity split, the test rows of a
    random split.
    """
    models = [
        fit_model(name, spec, data, split_codes(data.ids, spec.split, m), model_index=m,
                  progress=progress, on_epoch=on_epoch)
        for m in range(spec.split.n_models)
    ]  # fmt: skip
    keep = held_out(data.ids, spec.split) & data.usable
    which = route(data.ids, spec.split)
    scores = np.full(len(data), np.nan)
    for m, fitted in enumerate(models):
        rows = keep & (which == m)
        if rows.any():
            x = fitted.builder.transform(data.raw[rows])
            scores[rows] = forward(fitted.model, x, fitted.builder.micro_batch, "logit")
    labels = data.labels[keep]
    metrics: dict[str, Any] = {
        "held_out": {
            "rows": int(keep.sum()),
            "auc": auc(scores[keep], labels),
            "auc_weighted": (
                auc(scores[keep], labels, data.weights[keep]) if data.weights is not None else None
            ),
            "test_rows": int((split_codes(data.ids, spec.split) == TEST).sum()),
        },
        "n_unusable": int((~data.usable).sum()),
        "models": [f.metrics for f in models],
    }
    history = [h for f in models for h in f.history]
    return TrainResult(spec, models, metrics, history)
