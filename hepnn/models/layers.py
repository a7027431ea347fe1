"""What every architecture checks and builds the same way: activations, rates, widths.

Kept apart from the architectures so that each of them validates its parameters
with one set of messages.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

#: Elementwise activations a config may name. Kept elementwise on purpose: the
#: closed-form Taylor path and the MC-dropout weight folding rely on it.
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "elu": nn.ELU,
    "selu": nn.SELU,
    "sigmoid": nn.Sigmoid,
    "silu": nn.SiLU,
    "gelu": nn.GELU,
    "softplus": nn.Softplus,
}


def check_activation(name: str) -> str:
    """``name`` if it is in :data:`ACTIVATIONS`, else a ValueError listing them."""
    if name not in ACTIVATIONS:
        msg = f"unknown activation {name!r}; known: {', '.join(sorted(ACTIVATIONS))}"
        raise ValueError(msg)
    return name


def check_rate(p: float) -> float:
    """``p`` as a dropout rate in [0, 1), or a ValueError."""
    if not 0.0 <= p < 1.0:
        msg = f"dropout rate must be in [0, 1), got {p}"
        raise ValueError(msg)
    return float(p)


def check_widths(name: str, widths: Sequence[int], allow_empty: bool) -> list[int]:
    """Positive layer widths (an empty list only with ``allow_empty``), or a ValueError."""
    w = [int(x) for x in widths]
    if (not w and not allow_empty) or any(x < 1 for x in w):
        msg = f"{name} must be {'' if allow_empty else 'a non-empty list of '}positive integers, got {list(widths)}"
        raise ValueError(msg)
    return w


def check_kernel(kernel_size: int) -> int:
    """A positive odd kernel size, or a ValueError."""
    if kernel_size < 1 or kernel_size % 2 == 0:
        msg = f"kernel_size must be a positive odd integer, got {kernel_size}"
        raise ValueError(msg)
    return kernel_size
