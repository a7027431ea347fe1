"""Deterministic forward passes: fixed-size, zero-padded micro-batches on pinned threads.

CPU kernels in torch pick different blocking (and so different float summation
orders) for different batch sizes, so ``model(x)[i]`` depends in the last bit on
how many other rows are in ``x``. Feeding every micro-batch at the same fixed
size, zero-padding the last one, makes each event's output independent of how
the events were chunked: the property a network needs to be a *deterministic*
high-level variable (see docs/architecture.md).

Torch is also pinned to :data:`INFERENCE_THREADS` intra-op threads while scoring
(:func:`torch_threads`), under :data:`inference_lock`. Measured with torch 2.13
(MKL/oneDNN, AVX-512): for micro-batches of 1,024 rows, 1, 2 and 4 threads give the
same bits but 3 threads differ in ~10 of 5,000 events (the row partition then does
not fall on kernel block boundaries). The caller's thread count is restored
afterwards; the lock serialises scoring between Python threads of one process so
that they do not undo each other's pinning.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import torch

#: Default micro-batch size: large enough to amortise per-call overhead,
#: small enough to stay in cache.
MICRO_BATCH = 1024

#: Intra-op threads used while scoring (see the module docstring).
INFERENCE_THREADS = 1

#: Held while a process scores with pinned threads (re-entrant).
inference_lock = threading.RLock()


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` torch intra-op threads, restoring the old count.

    Parameters
    ----------
    n
        Thread count to pin.
    """
    old = torch.get_num_threads()
    if old != n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != old:
            torch.set_num_threads(old)


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
