"""First-order (linearised) prediction of a flat network's score change under an input variation.

For every event, ``Δy_lin = Σ_i ∂y/∂z_i · (z_i' − z_i)``: the gradient of the score
``y`` in the network's inputs ``z`` (the standardised features and missing flags the
network sees), from :func:`hepnn.taylor.taylor_coefficients` at order 1, times the
change of those inputs between the nominal and the varied events. This is the
first-order Taylor term of the score, i.e. what the ranking's first-order
coefficients predict; it is a *linearised* prediction, exact only for small
variations. The actual shift is :func:`hepnn.nets.apply.network_score` of the
varied events minus that of the nominal ones.

Deterministic like the scores: gradients are computed in zero-padded micro-batches
of the builder's ``micro_batch`` rows, on one intra-op thread; a k-fold network
routes each event to its fold's model (:func:`hepnn.nets.split.route`).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from hepnn.errors import ModelError
from hepnn.models.forward import INFERENCE_THREADS, inference_lock, torch_threads
from hepnn.nets.apply import EventColumns, get_network
from hepnn.nets.split import route
from hepnn.taylor import TaylorWarning, taylor_coefficients

__all__ = ["input_gradients", "linear_shift"]


def _gradients(model: torch.nn.Module, x: np.ndarray, micro_batch: int, output: str) -> np.ndarray:
    n = x.shape[0]
    out = np.empty(x.shape, dtype=np.float64)
    n_blocks = -(-n // micro_batch)
    for b in range(n_blocks):
        rows = slice(b * micro_batch, min((b + 1) * micro_batch, n))
        block = np.zeros((micro_batch, x.shape[1]), dtype=x.dtype)
        block[: rows.stop - rows.start] = x[rows]
        with warnings.catch_warnings():
            warnings.simplefilter(
                "ignore", TaylorWarning
            )  # the zero padding is not "unstandardised"
            grad = taylor_coefficients(model, block, orders=(1,), output=output)[1]
        out[rows] = grad.detach().cpu().numpy()[: rows.stop - rows.start]
    return out


def input_gradients(
    model_path: str | os.PathLike[str],
    columns: Any,
    *,
    event_ids: Any = None,
    output: str = "sigmoid",
) -> tuple[np.ndarray, np.ndarray]:
    """``∂y/∂z`` of every event in the network's inputs, and those inputs.

    Parameters
    ----------
    model_path
        A flat network's model folder.
    columns
        Event columns (mapping or awkward record array), as for
        :func:`hepnn.nets.apply.network_score`.
    event_ids
        Event ids for a k-fold network (default: its id column).
    output
        ``sigmoid`` (the score) or ``logit``.

    Returns
    -------
    (gradients, inputs)
        Both ``(N, n_inputs)``: float64 gradients, float32 inputs.
    """
    loaded = get_network(model_path)
    if loaded.kind != "flat":
        msg = f"{loaded.path}: the linearised shift needs a flat network"
        raise ModelError(msg)
    source = columns if isinstance(columns, EventColumns) else EventColumns(columns)
    raw = loaded.builder.raw(source)
    n = raw.shape[0]
    n_inputs = len(loaded.builder.input_names)
    grads = np.zeros((n, n_inputs), dtype=np.float64)
    inputs = np.zeros((n, n_inputs), dtype=np.float32)
    if len(loaded.models) == 1:
        which = np.zeros(n, dtype=np.int64)
    else:
        ids = event_ids if event_ids is not None else source[loaded.split.id_column]
        which = route(np.asarray(np.ma.getdata(ids)).astype(np.int64), loaded.split)
    mb = loaded.builder.micro_batch
    with inference_lock, torch_threads(INFERENCE_THREADS):
        for m, model in enumerate(loaded.models):
            rows = np.flatnonzero(which == m)
            if rows.size:
                x = loaded.builders[m].transform(raw[rows])
                inputs[rows] = x
                grads[rows] = _gradients(model, x, mb, output)
    return grads, inputs


def linear_shift(
    model_path: str | os.PathLike[str],
    nominal: Any,
    varied: Mapping[str, Any],
    *,
    event_ids: Any = None,
    output: str = "sigmoid",
    gradients: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """Per-event first-order prediction ``Σ_i ∂y/∂z_i (z_i' − z_i)`` of the score change.

    Parameters
    ----------
    model_path
        A flat network's model folder.
    nominal, varied
        The nominal and the varied event columns (same events, same order).
    event_ids, output
        As for :func:`input_gradients`.
    gradients
        :func:`input_gradients` of ``nominal``, when computed already (several
        variations of the same events).

    Returns
    -------
    numpy.ndarray
        float64, one value per event.
    """
    grads, z_nom = gradients or input_gradients(
        model_path, nominal, event_ids=event_ids, output=output
    )
    loaded = get_network(model_path)
    source = varied if isinstance(varied, EventColumns) else EventColumns(varied)
    raw = loaded.builder.raw(source)
    z_var = np.zeros_like(z_nom)
    if len(loaded.models) == 1:
        z_var[:] = loaded.builders[0].transform(raw)
    else:
        ids = event_ids if event_ids is not None else source[loaded.split.id_column]
        which = route(np.asarray(np.ma.getdata(ids)).astype(np.int64), loaded.split)
        for m in range(len(loaded.models)):
            rows = np.flatnonzero(which == m)
            if rows.size:
                z_var[rows] = loaded.builders[m].transform(raw[rows])
    dz = z_var.astype(np.float64) - z_nom.astype(np.float64)
    return np.einsum("ij,ij->i", grads, dz)
