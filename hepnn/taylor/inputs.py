"""Model and input handling shared by the Taylor coefficients and gradient maps.

Input checks, the model's dtype and device, evaluation mode with frozen
parameters, chunking, event weights, and the :class:`TaylorWarning` heuristics
(BatchNorm in train mode, inputs that look unstandardised).
:func:`prepared_inputs` silences the unstandardised-inputs heuristic for
inputs that are standardised by construction.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = [
    "OUTPUTS",
    "TaylorWarning",
    "as_chunk",
    "check_choice",
    "evaluation",
    "event_weights",
    "model_device",
    "model_dtype",
    "prepared_inputs",
    "track_progress",
    "warn_unstandardised",
]

#: Differentiated outputs: the sigmoid score or the logit.
OUTPUTS = ("sigmoid", "logit")

_BATCHNORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


class TaylorWarning(UserWarning):
    """The Taylor ranking is computable but probably not what was meant."""


@contextlib.contextmanager
def prepared_inputs() -> Iterator[None]:
    """Silence the 'inputs look unstandardised' :class:`TaylorWarning` inside the block.

    For inputs standardised by construction (e.g. a feature preparation fitted
    on the training events): heavy-tailed features still have a large std on a
    subsample, which the heuristic (meant to catch raw physics values) would flag.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="inputs look unstandardised", category=TaylorWarning
        )
        yield


def check_choice(name: str, value: str, allowed: Sequence[str]) -> None:
    """Raise ``ValueError`` unless ``value`` (the parameter ``name``) is one of ``allowed``."""
    if value not in allowed:
        msg = f"{name} must be one of {', '.join(map(repr, allowed))}, got {value!r}"
        raise ValueError(msg)


def model_dtype(model: nn.Module, x: Any) -> torch.dtype:
    """Dtype to evaluate in: the model's first floating parameter, else the inputs' (float32 default)."""
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    if isinstance(x, torch.Tensor) and x.is_floating_point():
        return x.dtype
    if isinstance(x, np.ndarray) and x.dtype == np.float64:
        return torch.float64
    return torch.float32


def model_device(model: nn.Module) -> torch.device:
    """Device of the model's first parameter (CPU for a parameterless model)."""
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


@contextlib.contextmanager
def evaluation(model: nn.Module) -> Iterator[None]:
    """Evaluate ``model`` in eval mode with frozen parameters; restore both afterwards.

    Eval mode matters for correctness, not only for noise: a train-mode
    BatchNorm couples the events of a chunk, which breaks the
    sum-over-events derivative trick (and updates running statistics).
    """
    bn_train = [m for m in model.modules() if isinstance(m, _BATCHNORM) and m.training]
    if bn_train:
        warnings.warn(
            f"model has {len(bn_train)} BatchNorm layer(s) in train mode; Taylor coefficients "
            "are evaluated in eval mode (running statistics). Call model.eval() before ranking.",
            TaylorWarning,
            stacklevel=4,
        )
    modes = [(m, m.training) for m in model.modules()]
    grads = [(p, p.requires_grad) for p in model.parameters()]
    try:
        model.eval()
        for p, _ in grads:
            p.requires_grad_(False)
        yield
    finally:
        for m, mode in modes:
            m.training = mode
        for p, flag in grads:
            p.requires_grad_(flag)


def warn_unstandardised(x: torch.Tensor, stacklevel: int) -> None:
    """Warn if the chunk looks like raw physics values rather than standardised inputs.

    Flat inputs ``(N, F)``: per feature ``|mean| > 3`` or ``std > 5`` or
    ``0 < std < 0.1``. Inputs ``(N, C, ...)`` (images, constituents): per channel
    ``|mean| > 3`` or ``std > 5`` only (pixel intensities are legitimately small).
    """
    if x.shape[0] < 2:
        return
    xd = x.detach().to(torch.float64)
    flat = xd.ndim == 2
    cols = xd if flat else xd.transpose(0, 1).reshape(xd.shape[1], -1).T
    mean = cols.mean(0)
    std = cols.std(0)
    bad = (mean.abs() > 3) | (std > 5)
    if flat:
        bad |= (std > 0) & (std < 0.1)
    if bool(bad.any()):
        idx = torch.nonzero(bad).flatten()[:5].tolist()
        desc = ", ".join(f"{i} (mean {mean[i]:.3g}, std {std[i]:.3g})" for i in idx)
        kind = "feature" if flat else "channel"
        warnings.warn(
            f"inputs look unstandardised ({kind} {desc}); Taylor coefficients are derivatives in "
            "the inputs as given, so rank on the network's prepared, standardised inputs.",
            TaylorWarning,
            stacklevel=stacklevel,
        )


def as_chunk(
    x: Any, start: int, stop: int, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """Events ``start:stop`` of ``x`` (numpy or torch) as a tensor of ``dtype`` on ``device``."""
    return torch.as_tensor(x[start:stop]).to(device=device, dtype=dtype)


def track_progress(iterable: range, enabled: bool, description: str) -> Any:
    """``iterable`` wrapped in a rich progress bar if ``enabled``."""
    if not enabled:
        return iterable
    from rich.progress import track

    return track(iterable, description=description)


def event_weights(weights: Any, n: int) -> np.ndarray | None:
    """Event weights as a float64 ``(n,)`` array (``None`` stays ``None``); checks the length."""
    if weights is None:
        return None
    w = np.asarray(weights.detach().cpu() if isinstance(weights, torch.Tensor) else weights)
    w = w.astype(np.float64).reshape(-1)
    if w.shape[0] != n:
        msg = f"weights has {w.shape[0]} entries for {n} events"
        raise ValueError(msg)
    return w
