"""Pseudo-data from simulation: a closure test of the input-space comparison.

The shipped samples hold no collision data, so ``review.pseudo_data`` makes some:

1. every simulated event goes, by a seeded hash of its event id
   (:func:`hepnn.nets.split.hash_uniform`), either to the **pseudo-data pool**
   (a fraction ``fraction`` of the events) or to the **simulation** that is
   compared with it (the rest): two independent halves, so the test is fair;
2. the pool is **unweighted** by accept–reject: event *i* is kept with probability
   w_i / max(w) (one seeded uniform per event). Thinning a Poisson process keeps it
   Poisson, so the kept events are distributed as the weighted simulation and their
   bin counts are Poisson, as real data would be (resampling with Poisson(w_i · c)
   multiplicities would add the pool's own sampling variance instead);
3. optionally one input is **deliberately mismodelled** in the pseudo-data:
   ``x → scale · x + shift`` on its defined values (only that column: features
   derived from it are left alone, so the test knows exactly which terms must move).

Simulation weights must be positive here (a negative weight has no acceptance
probability).
"""

from __future__ import annotations

import numpy as np

from hepnn.errors import ConfigError, InputError
from hepnn.nets.split import hash_uniform
from hepnn.review.gof import Sample


def pseudo_data(
    sim: Sample, ids: np.ndarray, *, fraction: float, seed: int,
    feature: str | None = None, scale: float = 1.0, shift: float = 0.0,
) -> tuple[Sample, Sample]:  # fmt: skip
    """Split ``sim`` into (simulation, pseudo-data) as in the module docstring.

    Parameters
    ----------
    sim
        Every simulated event (features with NaN for missing, weights).
    ids
        Integer event id of every row (the split is a function of the id alone).
    fraction
        Share of the events in the pseudo-data pool (0 < fraction < 1).
    seed
        Seeds the id hash and the accept–reject draws.
    feature, scale, shift
        The mismodelled input of the pseudo-data (``None``: no mismodelling).

    Returns
    -------
    simulation, data
        The simulation that is compared (weights as given) and the pseudo-data
        (weight 1 per event).
    """
    ids = np.asarray(ids).astype(np.int64)
    if ids.shape != (len(sim),):
        msg = f"pseudo-data: {ids.shape[0]} event ids for {len(sim)} events"
        raise InputError(msg)
    if np.any(sim.weights <= 0):
        msg = "review.pseudo_data: the simulation has non-positive weights; accept-reject unweighting needs w > 0"
        raise InputError(msg)
    pool = hash_uniform(ids, seed) < fraction
    w_pool = sim.weights[pool]
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5E7D]))
    u = rng.random(w_pool.size)
    keep = u < w_pool / w_pool.max()
    raw = sim.raw[pool][keep].copy()
    if feature is not None:
        if feature not in sim.features:
            msg = f"review.pseudo_data.mismodel.feature: {feature!r} is not an input (inputs: {', '.join(sim.features)})"
            raise ConfigError(msg)
        j = sim.features.index(feature)
        raw[:, j] = raw[:, j] * scale + shift  # NaN (missing) stays NaN
    data = Sample(raw, list(sim.features), np.ones(len(raw)))
    rest = Sample(sim.raw[~pool], list(sim.features), sim.weights[~pool])
    return rest, data
