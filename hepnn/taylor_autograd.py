"""Generic autograd path of :mod:`hepnn.taylor`: logit derivatives of any model.

Works for any differentiable model whose events are independent (eval mode):
derivatives are taken of the *sum over events* of each lower-order derivative
(valid because event k's output depends on event k's input only), so the
number of backward passes is the number of features (second order) or feature
pairs (third order), not the number of events.

The Hessian-vector products use :mod:`torch.func`: ``vjp`` of the gradient
function keeps one forward + first-backward graph per batch, and ``vmap`` over
the one-hot seeds runs all of a batch's Hessian rows as one batched backward
pass (large matrix products instead of one small backward per feature).
``torch.autograd.grad(..., is_grads_batched=True)`` would do the same but uses
the legacy vmap, which falls back to a Python-level loop for ``tanh_backward``
and is ~15% slower; one ``autograd.grad`` per feature is ~30% slower.

Private helpers; the public API is :mod:`hepnn.taylor`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.func import grad, vjp, vmap

# Rows (events x seeds) per batched backward pass: ~4k rows keep a 128-wide
# layer's activations (~2 MB) in cache; 2k-8k were within 10% on 30 inputs.
ROWS_PER_BATCH = 4096


def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = model(x)
    if out.ndim == 2 and out.shape[1] == 1:
        out = out[:, 0]
    if out.ndim != 1 or out.shape[0] != x.shape[0]:
        msg = (
            f"model must return one logit per event, shape ({x.shape[0]},); got {tuple(out.shape)}"
        )
        raise ValueError(msg)
    return out


def _seeds(eye: torch.Tensor, idx: list[int], x: torch.Tensor) -> torch.Tensor:
    """One-hot cotangents ``(len(idx), *x.shape)``: seed ``i`` is ``e_idx[i]`` for every event."""
    return eye[idx].reshape(len(idx), 1, *x.shape[1:]).expand(len(idx), *x.shape)


def _derivatives(
    model: nn.Module, x: torch.Tensor, feats: list[int], top: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Derivatives up to order ``top`` for one batch (see :func:`_autograd_logit_derivatives`)."""
    n_ev = x.shape[0]

    def total(xx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = _logits(model, xx)
        return s.sum(), s

    grad_fn: Callable = grad(total, has_aux=True)
    if top == 1:
        g_full, s = grad_fn(x)
        return s, g_full.reshape(n_ev, -1)[:, feats], None, None

    n_in = x[0].numel()
    eye = torch.eye(n_in, dtype=x.dtype, device=x.device)
    g_full, hvp, s = vjp(grad_fn, x, has_aux=True)
    g = g_full.reshape(n_ev, -1)[:, feats]
    if top == 2:
        # all Hessian rows a in feats at once: (F, N, ...) -> (N, F, F)
        (rows,) = vmap(hvp)(_seeds(eye, feats, x))
        hess = rows.reshape(len(feats), n_ev, n_in)[:, :, feats].transpose(0, 1)
        return s, g, hess, None

    # third order: for each a, the graph of Hessian row a; its vjp with e_b
    # (b >= a, batched) is d/dx of H_ab, from which c >= b is kept
    rows, cols = [], []
    for pa, a in enumerate(feats):
        seed_a = _seeds(eye, [a], x)[0]

        def row(xx: torch.Tensor, seed_a: torch.Tensor = seed_a) -> torch.Tensor:
            return vjp(grad_fn, xx, has_aux=True)[1](seed_a)[0]

        row_a, row_vjp = vjp(row, x)
        rows.append(row_a.reshape(n_ev, n_in)[:, feats])
        (tab,) = vmap(row_vjp)(_seeds(eye, feats[pa:], x))
        tab = tab.reshape(len(feats) - pa, n_ev, n_in)
        cols.extend(tab[pb - pa][:, feats[pb:]] for pb in range(pa, len(feats)))
    return s, g, torch.stack(rows, dim=1), torch.cat(cols, dim=1)


def _autograd_logit_derivatives(
    model: nn.Module, x: torch.Tensor, feats: list[int], top: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Logit derivatives by nested :mod:`torch.func` transforms, in cache-sized batches.

    Events are independent, so the vector-Jacobian product of ``d/dx sum_k
    f(x_k)`` with a one-hot seed ``e_a`` is row ``a`` of every event's Hessian.
    Second order: one batched backward pass over all seeds ``a`` in ``feats``;
    third order: per ``a``, the graph of Hessian row ``a`` and one batched pass
    over the seeds ``b >= a``. The chunk is cut into batches of
    ``ROWS_PER_BATCH // n_seeds`` events (4x that for third order). The logit, not the sigmoid, is
    differentiated; the output function is applied in closed form by
    :func:`hepnn.taylor_mlp._output_chain` (shorter graphs, ~15% faster).

    Returns
    -------
    s, g, H, T
        Logit (N,), gradient (N, n), Hessian (N, n, n) or None, raw third
        derivatives for ``a <= b <= c`` (N, n_triples) or None.
    """
    # third order: the seeds per pass shrink from F to 1 over the rows a, and each
    # a rebuilds its row graph, so batches hold 4x the events (measured ~15% faster)
    rows = ROWS_PER_BATCH * (4 if top == 3 else 1)
    step = x.shape[0] if top == 1 else max(1, rows // max(1, len(feats)))
    # outer no_grad: the transforms track x only, no graph for the parameters
    with torch.no_grad():
        parts = [_derivatives(model, x[i : i + step], feats, top) for i in range(0, len(x), step)]
    if len(parts) == 1:
        return parts[0]
    s, g, hess, t3 = zip(*parts, strict=True)
    return (
        torch.cat(s),
        torch.cat(g),
        None if hess[0] is None else torch.cat(hess),
        None if t3[0] is None else torch.cat(t3),
    )
