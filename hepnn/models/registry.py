"""A small registry so configs can name an architecture and its parameters."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register a model factory under ``name``.

    Registering the same factory twice (a notebook re-import, a Dask worker
    unpickling the module) is allowed; a *different* factory under a taken name
    is an error.
    """

    def decorator(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        old = _REGISTRY.get(name)
        if old is not None and old.__qualname__ != factory.__qualname__:
            msg = f"model architecture {name!r} is already registered by {old.__module__}.{old.__qualname__}"
            raise ValueError(msg)
        _REGISTRY[name] = factory
        return factory

    return decorator


def available() -> list[str]:
    """Names of all registered architectures, sorted."""
    return sorted(_REGISTRY)


def build(name: str, **params: Any) -> nn.Module:
    """Build the architecture ``name`` with ``params``.

    Raises
    ------
    KeyError
        With a one-line message listing the known names, for an unknown name.
    """
    try:
        factory = _REGISTRY[name]
    except KeyError:
        msg = f"unknown model architecture {name!r}; known: {', '.join(available())}"
        raise KeyError(msg) from None
    return factory(**params)
