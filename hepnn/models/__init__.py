"""Network architectures, found by name through a small registry.

>>> from hepnn.models import build
>>> net = build("mlp", n_inputs=30, hidden=[128, 128, 128], activation="tanh", dropout=0.1)
"""

from __future__ import annotations

from hepnn.models import cnn1d, cnn2d, mlp
from hepnn.models.cnn1d import CNN1D
from hepnn.models.cnn2d import CNN2D
from hepnn.models.mlp import MLP
from hepnn.models.registry import available, build, register

__all__ = ["CNN1D", "CNN2D", "MLP", "available", "build", "cnn1d", "cnn2d", "mlp", "register"]
