"""First-order Taylor maps ``<|dy/dx|>`` per input element (pixel, constituent feature).

:func:`mean_abs_gradient` works for any input shape (images, constituent
sequences) with one backward pass per chunk; :func:`aggregate_constituents`
collapses a constituent map to one value per feature.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from hepnn.taylor.autograd import autograd_logit_derivatives
from hepnn.taylor.inputs import (
    OUTPUTS,
    as_chunk,
    check_choice,
    evaluation,
    event_weights,
    model_device,
    model_dtype,
    track_progress,
    warn_unstandardised,
)
from hepnn.taylor.mlp import output_chain

__all__ = ["GradientSums", "aggregate_constituents", "gradient_sums", "mean_abs_gradient"]


@dataclass
class GradientSums:
    """Float64 sums of a first-order map, per input element.

    Attributes
    ----------
    num, den
        ``sum_k w_k m_k |dy/dx|`` and ``sum_k w_k m_k`` (shape ``x.shape[1:]``).
    boot_num, boot_den
        The same per bootstrap replica ``(B, *x.shape[1:])``, or None.
    """

    num: np.ndarray
    den: np.ndarray
    boot_num: np.ndarray | None = None
    boot_den: np.ndarray | None = None

    def mean(self) -> np.ndarray:
        """``num / den`` (NaN where ``den`` is 0)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(
                self.den != 0, self.num / np.where(self.den != 0, self.den, 1.0), np.nan
            )

    def replica_means(self) -> np.ndarray | None:
        """``(B, ...)`` maps of the bootstrap replicas, or None."""
        if self.boot_num is None or self.boot_den is None:
            return None
        with np.errstate(invalid="ignore", divide="ignore"):
            ok = self.boot_den != 0
            return np.where(ok, self.boot_num / np.where(ok, self.boot_den, 1.0), np.nan)


def _broadcast_mask(mask: Any, x_shape: tuple[int, ...]) -> np.ndarray:
    """Mask ``(N, *S)`` with ``S`` a suffix of the per-event shape, as ``(N, 1.., *S)``."""
    m = np.asarray(mask.detach().cpu() if isinstance(mask, torch.Tensor) else mask)
    if m.shape[0] != x_shape[0] or tuple(m.shape[1:]) != x_shape[len(x_shape) - m.ndim + 1 :]:
        msg = (
            f"mask shape {m.shape} does not match inputs {x_shape} (expected (N, ..trailing dims))"
        )
        raise ValueError(msg)
    return m.reshape(m.shape[0], *([1] * (len(x_shape) - m.ndim)), *m.shape[1:])


def gradient_sums(
    model: nn.Module,
    x: torch.Tensor | np.ndarray,
    *,
    weights: torch.Tensor | np.ndarray | None = None,
    mask: torch.Tensor | np.ndarray | None = None,
    output: str = "sigmoid",
    chunk_size: int = 2000,
    progress: bool = False,
    check_inputs: bool = True,
    bootstrap: np.ndarray | None = None,
) -> GradientSums:
    """The sums behind :func:`mean_abs_gradient`, optionally per bootstrap replica.

    Works for any input shape: images ``(N, C, H, W)`` give a ``(C, H, W)`` map,
    constituent sequences ``(N, C, P)`` a ``(C, P)`` map. One backward pass per
    chunk of ``sum_k y_k`` (events independent in eval mode).

    Parameters
    ----------
    model
        Network returning one logit per event.
    x
        Prepared network inputs ``(N, ...)``.
    weights
        Optional event weights ``(N,)``.
    mask
        Optional validity mask ``(N, *S)`` with ``S`` the trailing per-event
        dimensions, e.g. ``(N, P)`` for ``(N, C, P)`` constituents (True = real
        constituent, False = padding). Masked elements are left out of both sums.
    output
        ``"sigmoid"`` (default) or ``"logit"``.
    chunk_size
        Events per backward pass.
    progress
        Show a progress bar.
    check_inputs
        Warn if the first chunk looks unstandardised.
    bootstrap
        Optional float ``(B, N)`` resampling counts
        (:func:`hepnn.taylor.uncertainty.bootstrap_counts`): the same sums per
        replica, from the same per-event gradients (none recomputed).

    Returns
    -------
    GradientSums
    """
    check_choice("output", output, OUTPUTS)
    n_ev = int(x.shape[0])
    if n_ev == 0:
        msg = "no events"
        raise ValueError(msg)
    shape = tuple(x.shape)
    w = event_weights(weights, n_ev)
    m = None if mask is None else _broadcast_mask(mask, shape)
    dtype, device = model_dtype(model, x), model_device(model)
    num = torch.zeros(shape[1:], dtype=torch.float64)
    g_size = math.prod(shape[1:])
    den = torch.zeros(shape[1:], dtype=torch.float64)
    counts = None if bootstrap is None else np.asarray(bootstrap, dtype=np.float64)
    if counts is not None and (counts.ndim != 2 or counts.shape[1] != n_ev):
        msg = f"bootstrap must have shape (B, {n_ev}), got {counts.shape}"
        raise ValueError(msg)
    b_num = None if counts is None else torch.zeros((counts.shape[0], g_size), dtype=torch.float64)
    b_den = None if counts is None else torch.zeros((counts.shape[0], g_size), dtype=torch.float64)
    with evaluation(model):
        for start in track_progress(range(0, n_ev, chunk_size), progress, "gradient map"):
            stop = min(start + chunk_size, n_ev)
            xc = as_chunk(x, start, stop, dtype, device)
            if start == 0 and check_inputs:
                warn_unstandardised(xc, stacklevel=3)
            s, g_s, _, _ = autograd_logit_derivatives(model, xc, list(range(g_size)), 1)
            g = output_chain(s, g_s, None, (1,), output)[1]
            wk = (
                torch.ones(stop - start, dtype=torch.float64)
                if w is None
                else torch.from_numpy(w[start:stop])
            )
            wk = wk.reshape(-1, *([1] * (len(shape) - 1)))
            if m is not None:
                wk = wk * torch.from_numpy(m[start:stop]).to(torch.float64)
            wk = wk.expand(stop - start, *shape[1:])
            per_event = wk * g.reshape(stop - start, *shape[1:]).abs().to(torch.float64).cpu()
            num += per_event.sum(0)
            den += wk.sum(0)
            if counts is not None and b_num is not None and b_den is not None:
                cc = torch.from_numpy(counts[:, start:stop])
                b_num += cc @ per_event.reshape(stop - start, g_size)
                b_den += cc @ wk.reshape(stop - start, g_size)
    return GradientSums(
        num.numpy(),
        den.numpy(),
        None if b_num is None else b_num.reshape(-1, *shape[1:]).numpy(),
        None if b_den is None else b_den.reshape(-1, *shape[1:]).numpy(),
    )


def mean_abs_gradient(
    model: nn.Module,
    x: torch.Tensor | np.ndarray,
    *,
    weights: torch.Tensor | np.ndarray | None = None,
    mask: torch.Tensor | np.ndarray | None = None,
    output: str = "sigmoid",
    chunk_size: int = 2000,
    progress: bool = False,
    check_inputs: bool = True,
    return_norm: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """First-order Taylor map ``<|dy/dx|>`` per input element (pixel, constituent feature).

    Works for any input shape: images ``(N, C, H, W)`` give a ``(C, H, W)`` map,
    constituent sequences ``(N, C, P)`` a ``(C, P)`` map. One backward pass per
    chunk of ``sum_k y_k`` (events independent in eval mode). Parameters as in
    :func:`gradient_sums`; ``return_norm`` also returns the denominator
    ``sum_k w_k mask_k`` per element (for :func:`aggregate_constituents`).

    Returns
    -------
    numpy.ndarray or (numpy.ndarray, numpy.ndarray)
        float64 map of shape ``x.shape[1:]`` (NaN where the mask is never set),
        and the per-element norm if ``return_norm``.
    """
    sums = gradient_sums(
        model, x, weights=weights, mask=mask, output=output, chunk_size=chunk_size,
        progress=progress, check_inputs=check_inputs,
    )  # fmt: skip
    num, den = torch.from_numpy(sums.num), torch.from_numpy(sums.den)
    out = torch.where(den != 0, num / den.where(den != 0, torch.ones_like(den)), torch.nan).numpy()
    return (out, sums.den) if return_norm else out


def aggregate_constituents(
    grad_map: np.ndarray, norm: np.ndarray | None = None, axis: int = -1
) -> np.ndarray:
    """Collapse a constituent map ``(C, P)`` to one value per constituent feature ``(C,)``.

    Parameters
    ----------
    grad_map
        Output of :func:`mean_abs_gradient` for ``(N, C, P)`` inputs.
    norm
        The ``return_norm`` denominators (``sum w mask`` per element). If given,
        the result is the masked mean over all real constituents,
        ``sum_p norm_p map_p / sum_p norm_p`` (each real constituent counts
        once); if omitted, the plain mean over ``axis`` ignoring NaN.
    axis
        Constituent axis.
    """
    grad_map = np.asarray(grad_map, dtype=np.float64)
    if norm is None:
        return np.nanmean(grad_map, axis=axis)
    norm = np.broadcast_to(np.asarray(norm, dtype=np.float64), grad_map.shape)
    filled = np.where(norm != 0, grad_map, 0.0)
    total = norm.sum(axis=axis)
    return np.divide(
        (filled * norm).sum(axis=axis), total, out=np.full(total.shape, np.nan), where=total != 0
    )
