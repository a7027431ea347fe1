"""Fully connected network for high-level variables, dropout before every weight layer."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import nn

from hepnn.models.layers import ACTIVATIONS, check_activation, check_rate
from hepnn.models.registry import register


@register("mlp")
class MLP(nn.Module):
    """Multilayer perceptron returning one logit per event.

    Every weight layer (``Linear``) is preceded by a ``Dropout`` layer,
    including the first one acting on the inputs, which is the condition for MC
    dropout to approximate a Bayesian network (Gal & Ghahramani,
    arXiv:1506.02142).

    Parameters
    ----------
    n_inputs
        Number of input features.
    hidden
        Width of each hidden layer.
    activation
        Name of an elementwise activation in :data:`ACTIVATIONS`.
    dropout
        Dropout rate before every hidden weight layer.
    input_dropout
        Dropout rate before the first weight layer; defaults to ``dropout``.

    Notes
    -----
    ``forward`` returns logits of shape ``(N,)``; the classifier score is
    ``torch.sigmoid(logit)``. The layers are exposed as ``dropouts``,
    ``linears`` and ``activation`` so that fast paths (Taylor coefficients in
    closed form, MC-dropout masks folded into weights) can walk them.
    """

    def __init__(
        self,
        n_inputs: int,
        hidden: Sequence[int] = (64, 64, 64),
        activation: str = "tanh",
        dropout: float = 0.1,
        input_dropout: float | None = None,
    ) -> None:
        super().__init__()
        check_activation(activation)
        if n_inputs < 1:
            msg = f"n_inputs must be >= 1, got {n_inputs}"
            raise ValueError(msg)
        p_in = dropout if input_dropout is None else input_dropout
        for p in (dropout, p_in):
            check_rate(p)
        widths = [n_inputs, *hidden, 1]
        self.activation = ACTIVATIONS[activation]()
        self.dropouts = nn.ModuleList(
            nn.Dropout(p_in if i == 0 else dropout) for i in range(len(widths) - 1)
        )
        self.linears = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(widths))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        last = len(self.linears) - 1
        for i, (drop, linear) in enumerate(zip(self.dropouts, self.linears, strict=True)):
            h = linear(drop(h))
            if i < last:
                h = self.activation(h)
        return h.squeeze(-1)
