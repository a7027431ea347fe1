"""Generic autograd path of :mod:`hepnn.taylor`: logit derivatives of any model.

Works for any differentiable model whose events are independent (eval mode):
one graph per chunk, derivatives of the *sum over events* of each lower-order
derivative (valid because event k's output depends on event k's input only),
so the number of backward passes is the number of features (second order) or
feature pairs (third order), not the number of events.

:func:`autograd_logit_derivatives` is used by :mod:`hepnn.taylor.coefficients`
and :mod:`hepnn.taylor.gradients`; :func:`grad` by the closed-form path
(:mod:`hepnn.taylor.mlp`). The user-facing API is :mod:`hepnn.taylor`.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["autograd_logit_derivatives", "grad"]


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


def grad(
    out: torch.Tensor, x: torch.Tensor, *, create_graph: bool, seed: torch.Tensor | None = None
) -> torch.Tensor:
    """Vector-Jacobian product ``seed . d out / d x``; zeros where ``out`` does not depend on ``x``.

    Parameters
    ----------
    out
        Tensor to differentiate (a scalar if ``seed`` is ``None``).
    x
        Input tensor with ``requires_grad``.
    create_graph
        Keep the graph of the derivative (for a higher order).
    seed
        ``grad_outputs`` of the same shape as ``out``.

    Returns
    -------
    torch.Tensor
        Shape of ``x``; the graph of ``out`` is retained.
    """
    if not out.requires_grad:
        return torch.zeros_like(x)
    (g,) = torch.autograd.grad(
        out,
        x,
        grad_outputs=seed,
        create_graph=create_graph,
        retain_graph=True,
        allow_unused=True,
        materialize_grads=True,
    )
    return g


def autograd_logit_derivatives(
    model: nn.Module, x: torch.Tensor, feats: list[int], top: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Logit derivatives by nested autograd on one graph per chunk.

    Events are independent, so ``d/dx sum_k f(x_k)`` is the per-event gradient
    of ``f`` for every event at once: the backward pass of ``ds/dx_a`` with a
    one-hot ``grad_outputs`` is row ``a`` of every event's Hessian. Second
    order: one backward pass per selected feature through the retained
    first-order graph (``create_graph=True``); third order: one more per pair
    ``a <= b`` through the retained second-order graph. The logit, not the
    sigmoid, is differentiated; the output function is applied in closed form
    by :func:`hepnn.taylor.mlp.output_chain` (shorter graphs, ~15% faster).

    Returns
    -------
    s, g, H, T
        Logit (N,), gradient (N, n), Hessian (N, n, n) or None, raw third
        derivatives for ``a <= b <= c`` (N, n_triples) or None.
    """
    n_ev = x.shape[0]
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        s = _logits(model, xg)
        g_full = grad(s.sum(), xg, create_graph=top > 1).reshape(n_ev, -1)
        g = g_full[:, feats].detach()
        if top == 1:
            return s.detach(), g, None, None
        # one-hot seeds as broadcast views of an identity (never modified in place:
        # with create_graph=True a seed can be saved in the graph)
        eye = torch.eye(g_full.shape[1], dtype=g_full.dtype, device=g_full.device)
        rows, cols = [], []
        for pa, a in enumerate(feats):
            row = grad(g_full, xg, create_graph=top > 2, seed=eye[a].expand_as(g_full))
            row = row.reshape(n_ev, -1)
            rows.append(row[:, feats].detach())
            # third order from this row's graph, then let it go (one graph alive at a time)
            for pb in range(pa, len(feats)) if top > 2 else ():
                seed = eye[feats[pb]].expand_as(g_full)
                tab = grad(row, xg, create_graph=False, seed=seed).reshape(n_ev, -1)
                cols.append(tab[:, feats[pb:]].detach())
        hess = torch.stack(rows, dim=1)
        return s.detach(), g, hess, torch.cat(cols, dim=1) if cols else None
