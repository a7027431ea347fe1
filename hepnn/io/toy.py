"""The lecture's Gaussian toy: two classes from 2D normal distributions, seeded.

Signal ~ N(mu_s, Σ_s), background ~ N(mu_b, Σ_b) with unit variances and
correlations ``rho_s``, ``rho_b``. With the defaults (means ±(0.5, 0.5), no
correlation) the Bayes-optimal classifier is σ(LLR) with a linear LLR; with
correlations of opposite sign the LLR has an x1·x2 term. Used by
``configs/toy_taylor.yaml`` and ``configs/toy_correlation.yaml``.

A dataset of ``format: toy-gauss`` is generated once into a ROOT tree
(``x1``, ``x2``, ``Label`` 1/0, ``EventId``, ``Weight`` = 1), cached under the
hash of its parameters, like an imported CSV.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import uproot
from pydantic import BaseModel, ConfigDict, Field

from hepnn.files import atomic_path, sha256_bytes

TREENAME = "Events"
GENERATOR_VERSION = 1


class ToyGauss(BaseModel):
    """Parameters of the two-Gaussian toy."""

    model_config = ConfigDict(extra="forbid")

    events_per_class: int = Field(100_000, ge=1)
    mean_signal: tuple[float, float] = (0.5, 0.5)
    mean_background: tuple[float, float] = (-0.5, -0.5)
    rho_signal: float = Field(0.0, gt=-1, lt=1)
    rho_background: float = Field(0.0, gt=-1, lt=1)
    seed: int = 1234


@dataclass(frozen=True)
class GeneratedToy:
    root_path: Path
    n_events: int
    treename: str = TREENAME


def sample(spec: ToyGauss) -> dict[str, np.ndarray]:
    """Draw the events (signal first, then background) with ``numpy.random.default_rng(seed)``."""
    rng = np.random.default_rng(spec.seed)
    n = spec.events_per_class
    parts = []
    for mean, rho in (
        (spec.mean_signal, spec.rho_signal),
        (spec.mean_background, spec.rho_background),
    ):
        cov = np.array([[1.0, rho], [rho, 1.0]])
        parts.append(rng.multivariate_normal(mean, cov, size=n))
    x = np.concatenate(parts)
    label = np.concatenate([np.ones(n, np.int8), np.zeros(n, np.int8)])
    # shuffle so that event id parity / folds mix the classes
    order = rng.permutation(2 * n)
    return {
        "EventId": np.arange(2 * n, dtype=np.int64),
        "x1": x[order, 0],
        "x2": x[order, 1],
        "Label": label[order],
        "Weight": np.ones(2 * n),
    }


def log_likelihood_ratio(x1: np.ndarray, x2: np.ndarray, spec: ToyGauss) -> np.ndarray:
    """log p_s(x)/p_b(x): the Bayes-optimal discriminant (σ of it is the optimal score)."""
    x = np.stack([x1, x2], axis=-1)

    def logpdf(mean: tuple[float, float], rho: float) -> np.ndarray:
        cov = np.array([[1.0, rho], [rho, 1.0]])
        d = x - np.asarray(mean)
        inv = np.linalg.inv(cov)
        return -0.5 * np.einsum("...i,ij,...j->...", d, inv, d) - 0.5 * np.log(np.linalg.det(cov))

    return logpdf(spec.mean_signal, spec.rho_signal) - logpdf(
        spec.mean_background, spec.rho_background
    )


def generate_toy(spec: ToyGauss, cache_dir: Path) -> GeneratedToy:
    """Generate (or reuse from ``cache_dir``) the toy as a ROOT file."""
    key = json.dumps({"v": GENERATOR_VERSION, **spec.model_dump()}, sort_keys=True)
    digest = sha256_bytes(key.encode())[:16]
    path = Path(cache_dir) / f"toy-gauss-{digest}.root"
    n = 2 * spec.events_per_class
    if not path.is_file():
        data = sample(spec)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp, uproot.recreate(tmp) as f:
            f.mktree(TREENAME, {k: v.dtype for k, v in data.items()})
            f[TREENAME].extend(data)
    return GeneratedToy(path, n)
