"""hepnn: neural networks as deterministic high-level variables in coffea analyses."""

from __future__ import annotations

__version__ = "0.2.0"
