"""Training callback recording the Taylor ranking of a network every few epochs.

>>> from hepnn.taylor import TaylorMonitor

The history is written by :func:`hepnn.taylor.tables.write_history`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hepnn.taylor.coefficients import mean_abs_taylor
from hepnn.taylor.result import TaylorResult
from hepnn.taylor.tables import write_history

__all__ = ["TaylorMonitor"]


class TaylorMonitor:
    """Training callback recording the Taylor ranking on a fixed validation subsample.

    >>> monitor = TaylorMonitor("outputs/run", "mlp", every=1, input_names=names)
    >>> for epoch in range(1, n_epochs + 1):
    ...     train_one_epoch(model)
    ...     monitor(epoch, model, x_val)

    Parameters
    ----------
    outdir
        Run folder; the history is (re)written to ``OUTDIR/ranking/`` after
        every recorded epoch. ``None`` keeps it in memory only.
    model_name
        File stem.
    every
        Record every ``every``-th epoch (epochs divisible by ``every``; the
        first call is always recorded).
    n_events
        Size of the fixed validation subsample (drawn once, with ``seed``, on
        the first call; all events if there are fewer).
    seed
        Seed of the subsample choice.
    orders, output, method, chunk_size, input_names, features
        Passed to :func:`hepnn.taylor.mean_abs_taylor` (``features``: the input
        indices whose terms are ranked, e.g. without helper inputs; default all).
    top
        Terms drawn in the history plot.
    formats
        Plot formats (empty: CSV only, faster during training).
    """

    def __init__(
        self,
        outdir: str | os.PathLike[str] | None,
        model_name: str = "model",
        *,
        every: int = 1,
        n_events: int = 5000,
        seed: int = 0,
        orders: Sequence[int] = (1, 2),
        output: str = "sigmoid",
        method: str = "auto",
        chunk_size: int = 2000,
        input_names: Sequence[str] | None = None,
        features: Sequence[int] | None = None,
        top: int = 10,
        formats: Sequence[str] = ("png",),
    ) -> None:
        if every < 1:
            msg = f"every must be >= 1, got {every}"
            raise ValueError(msg)
        self.outdir = None if outdir is None else Path(outdir)
        self.model_name = model_name
        self.every = every
        self.n_events = n_events
        self.seed = seed
        self.orders = tuple(orders)
        self.output = output
        self.method = method
        self.chunk_size = chunk_size
        self.input_names = None if input_names is None else list(input_names)
        self.features = None if features is None else list(features)
        self.top = top
        self.formats = tuple(formats)
        self.history: list[tuple[int, TaylorResult]] = []
        self._index: np.ndarray | None = None
        self._n_total: int | None = None

    def _subsample(self, x_val: Any) -> Any:
        n = int(x_val.shape[0])
        if self._index is None:
            rng = np.random.default_rng(self.seed)
            k = min(self.n_events, n)
            self._index = np.sort(rng.choice(n, size=k, replace=False))
            self._n_total = n
        elif n != self._n_total:
            msg = f"validation set changed size ({self._n_total} -> {n}); the subsample must stay fixed"
            raise ValueError(msg)
        return x_val[self._index]

    def __call__(
        self, epoch: int, model: Any, x_val: Any, weights: Any = None
    ) -> TaylorResult | None:
        """Record the ranking at ``epoch`` if due; returns it, else ``None``.

        The model is evaluated in eval mode and left in the mode it came in.
        """
        if self.history and epoch % self.every != 0:
            return None
        xs = self._subsample(x_val)
        ws = None if weights is None else np.asarray(weights)[self._index]
        was_training = model.training
        model.eval()  # the monitor is called mid-training: no BatchNorm train-mode warning
        try:
            result = mean_abs_taylor(
                model,
                xs,
                weights=ws,
                orders=self.orders,
                output=self.output,
                method=self.method,
                chunk_size=self.chunk_size,
                input_names=self.input_names,
                features=self.features,
            )
        finally:
            model.train(was_training)
        self.history.append((int(epoch), result))
        if self.outdir is not None:
            self.write()
        return result

    def write(self) -> dict[str, Path]:
        """Write the history recorded so far (CSV and plot)."""
        if self.outdir is None:
            msg = "TaylorMonitor was created without an output folder"
            raise ValueError(msg)
        return write_history(
            self.history, self.outdir, self.model_name, top=self.top, formats=self.formats
        )
