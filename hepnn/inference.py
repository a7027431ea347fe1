"""Deterministic forward passes: fixed-size, zero-padded micro-batches.

CPU kernels in torch pick different blocking (and so different float summation
orders) for different batch sizes, so ``model(x)[i]`` depends in the last bit on
how many other rows are in ``x``. Feeding every micro-batch at the same fixed
size, zero-padding the last one, makes each event's output independent of how
the events were chunked: the property a network needs to be a *deterministic*
high-level variable (see DESIGN.md).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

#: Default micro-batch size: large enough to amortise per-call overhead,
#: small enough to stay in cache.
MICRO_BATCH = 1024


def padded_apply(
    fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor | np.ndarray,
    batch_size: int = MICRO_BATCH,
) -> torch.Tensor:
    """Apply ``fn`` to ``x`` in zero-padded micro-batches of exactly ``batch_size`` rows.

    Parameters
    ----------
    fn
        A function of a ``(batch_size, ...)`` tensor returning a tensor whose first
        dimension is the batch (e.g. a model in eval mode).
    x
        Inputs, first dimension the events.
    batch_size
        Rows per call; every call sees exactly this many rows.

    Returns
    -------
    torch.Tensor
        ``fn`` applied to every row of ``x``, concatenated, with the padding removed.
        Row ``i`` is bitwise the same however ``x`` was split into chunks.
    """
    if batch_size < 1:
        msg = f"batch_size must be >= 1, got {batch_size}"
        raise ValueError(msg)
    xt = torch.as_tensor(x)
    n = xt.shape[0]
    if n == 0:
        with torch.inference_mode():
            return fn(torch.zeros((batch_size, *xt.shape[1:]), dtype=xt.dtype))[:0].clone()
    n_batches = -(-n // batch_size)
    padded = torch.zeros((n_batches * batch_size, *xt.shape[1:]), dtype=xt.dtype)
    padded[:n] = xt
    out = []
    with torch.inference_mode():
        for b in range(n_batches):
            out.append(fn(padded[b * batch_size : (b + 1) * batch_size]))
    return torch.cat(out)[:n].clone()
