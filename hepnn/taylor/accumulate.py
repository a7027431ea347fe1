"""Streaming float64 sums of ``|t_a|`` per term: masks, input scales, bootstrap replicas.

Used by :func:`hepnn.taylor.mean_abs_taylor`, one chunk of events at a time:

* the plain sums ``sum_k w_k |t_a(x_k)|`` and ``sum_k w_k`` (bit for bit the
  arithmetic of the unmasked ranking);
* with a ``defined`` mask ``(N, inputs)``: ``m_ak`` = every feature of term ``a``
  is defined in event ``k``; numerator and denominator per term;
* with ``scale`` (one sigma per input): every coefficient times
  ``prod_i 1/sigma_i`` over its derivative's features (the chain rule from
  standardised to original inputs, ``x_std = (x - mu) / sigma``);
* with bootstrap ``counts`` ``(B, N)``: the same sums per replica, by one
  ``(B, chunk) @ (chunk, terms)`` product per order (no derivative recomputed).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["TermSums"]


class TermSums:
    """Accumulator of one ranking's sums (see the module docstring).

    Parameters
    ----------
    feats
        Selected input indices (the terms are built from them).
    orders
        Orders, ascending.
    weights
        Float64 event weights ``(N,)`` or None (unweighted).
    defined
        Bool ``(N, inputs)`` "value defined" mask, or None (everything defined).
    scale
        Per-input sigma ``(inputs,)`` for unscaled derivatives, or None.
    counts
        Float64 bootstrap counts ``(B, N)``, or None.
    """

    def __init__(
        self,
        feats: Sequence[int],
        orders: Sequence[int],
        weights: np.ndarray | None = None,
        defined: np.ndarray | None = None,
        scale: np.ndarray | None = None,
        counts: np.ndarray | None = None,
    ) -> None:
        self.feats = list(feats)
        self.orders = tuple(orders)
        self.weights = weights
        self.defined = None if defined is None else np.asarray(defined, dtype=bool)[:, self.feats]
        self.counts = counts
        pos = {
            o: np.array(list(itertools.combinations_with_replacement(range(len(self.feats)), o)))
            for o in self.orders
        }
        self.pos = pos
        self.acc = {o: torch.zeros(len(pos[o]), dtype=torch.float64) for o in self.orders}
        self.sum_w = 0.0
        self.den = (
            None
            if self.defined is None
            else {o: torch.zeros(len(pos[o]), dtype=torch.float64) for o in self.orders}
        )
        self.factor = None
        if scale is not None:
            inv = 1.0 / np.asarray(scale, dtype=np.float64)[self.feats]
            self.factor = {o: torch.from_numpy(inv[pos[o]].prod(axis=1)) for o in self.orders}
        self.boot_num: dict[int, torch.Tensor] = {}
        self.boot_den: dict[int, torch.Tensor] = {}
        if counts is not None:
            n_b = counts.shape[0]
            for o in self.orders:
                self.boot_num[o] = torch.zeros((n_b, len(pos[o])), dtype=torch.float64)
                width = len(pos[o]) if self.defined is not None else 1
                self.boot_den[o] = torch.zeros((n_b, width), dtype=torch.float64)

    def add(self, start: int, stop: int, coeffs: dict[int, torch.Tensor]) -> None:
        """Add the coefficients of events ``start:stop`` (``{order: (chunk, terms)}``)."""
        w = self.weights
        wc = None if w is None else torch.from_numpy(w[start:stop])
        cw = None
        if self.counts is not None:
            cw = torch.from_numpy(self.counts[:, start:stop])
            if wc is not None:
                cw = cw * wc
        for o, t in coeffs.items():
            at = t.abs().cpu()
            if self.factor is not None:
                at = at.double() * self.factor[o]
            mask = None
            if self.defined is not None:
                mask = torch.from_numpy(self.defined[start:stop][:, self.pos[o]].all(axis=2))
            if mask is None:
                # float64 sums: the result does not depend on the chunking
                self.acc[o] += at.sum(0, dtype=torch.float64) if wc is None else wc @ at.double()
                num = at.double()
            else:
                num = at.double() * mask
                md = mask.double()
                self.acc[o] += num.sum(0) if wc is None else wc @ num
                assert self.den is not None
                self.den[o] += md.sum(0) if wc is None else wc @ md
            if cw is not None:
                self.boot_num[o] += cw @ num
                if mask is None:
                    self.boot_den[o] += cw.sum(1, keepdim=True)
                else:
                    self.boot_den[o] += cw @ mask.double()
        self.sum_w += float(stop - start) if w is None else float(w[start:stop].sum())

    def values(self) -> np.ndarray:
        """``<|t_a|>`` per term (NaN for a term defined in no event)."""
        num = torch.cat([self.acc[o] for o in self.orders]).numpy()
        if self.den is None:
            return num / self.sum_w
        den = self.defined_weights()
        assert den is not None
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)

    def defined_weights(self) -> np.ndarray | None:
        """``sum_k w_k m_ak`` per term; None without a mask."""
        if self.den is None:
            return None
        return torch.cat([self.den[o] for o in self.orders]).numpy()

    def bootstrap(self) -> tuple[np.ndarray, np.ndarray] | tuple[None, None]:
        """``(B, T)`` numerators and denominators of the replicas, or ``(None, None)``."""
        if self.counts is None:
            return None, None
        num = torch.cat([self.boot_num[o] for o in self.orders], dim=1).numpy()
        den = torch.cat(
            [self.boot_den[o].expand(-1, len(self.pos[o])) for o in self.orders], dim=1
        ).numpy()
        return num, np.ascontiguousarray(den)
