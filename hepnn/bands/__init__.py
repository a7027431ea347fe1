"""MC-dropout / ensemble replica bands: replicas, histograms, summaries, plots.

* :mod:`hepnn.bands.replicas` — :class:`MCDropout` (replica-coherent seeded masks)
  and :class:`Ensemble`, each giving per-replica scores ``(T, N)``;
* :mod:`hepnn.bands.hists` — :func:`replica_hists` (per process, one full score
  histogram per replica, plus the per-event std vs score), :func:`summarise` after
  accumulation and fit templates (:func:`to_root_variations`: the nominal ± the
  leading eigen-variation of the replica shapes, :func:`shape_variation`, with the
  nominal's total, and the replicas themselves, keyed by full ROOT path);
* :mod:`hepnn.bands.outputs` — :func:`band_outputs`, everything a run derives
  from its merged replica histograms;
* :mod:`hepnn.bands.plots` — band figures; import it directly (it is not imported
  here, so filling histograms never imports matplotlib).

The package knows torch, numpy and hist, not the run configuration or model files.
A band measures training reproducibility (epistemic), not a measurement uncertainty
of the deterministic deployed network.
"""

from __future__ import annotations

from hepnn.bands.hists import (
    QUANTILES,
    STATS,
    VARIATION_NAMES,
    replica_hists,
    shape_variation,
    summarise,
    to_root_variations,
)
from hepnn.bands.outputs import BAND_KINDS, band_outputs
from hepnn.bands.replicas import (
    Ensemble,
    MCDropout,
    dropout_modules,
    mask_shape,
    replica_mask,
    replica_seed,
)

__all__ = [
    "BAND_KINDS",
    "QUANTILES",
    "STATS",
    "VARIATION_NAMES",
    "Ensemble",
    "MCDropout",
    "band_outputs",
    "dropout_modules",
    "mask_shape",
    "replica_hists",
    "replica_mask",
    "replica_seed",
    "shape_variation",
    "summarise",
    "to_root_variations",
]
