"""MC-dropout / ensemble replica bands: replicas, histograms, summaries, plots.

* :mod:`hepnn.bands.replicas` — :class:`MCDropout` (replica-coherent seeded masks)
  and :class:`Ensemble`, each giving per-replica scores ``(T, N)``;
* :mod:`hepnn.bands.hists` — replica histograms (one full histogram per replica),
  :func:`replica_hists` for workflows, :func:`summarise` after accumulation and
  ROOT up/down templates;
* :mod:`hepnn.bands.outputs` — :func:`band_outputs`, everything a run derives
  from its merged replica histograms;
* :mod:`hepnn.bands.plots` — band figures; import it directly (it is not imported
  here, so filling histograms never imports matplotlib).

The package knows torch, numpy and hist, not the run configuration or model files.
"""

from __future__ import annotations

from hepnn.bands.hists import (
    QUANTILES,
    REPLICA_LABELS,
    STATS,
    VARIATION_NAMES,
    fill_replicas,
    fill_std_vs_score,
    nominal_hist,
    replica_hist,
    replica_hists,
    score_axis,
    std_vs_score_hist,
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
    "REPLICA_LABELS",
    "STATS",
    "VARIATION_NAMES",
    "Ensemble",
    "MCDropout",
    "band_outputs",
    "dropout_modules",
    "fill_replicas",
    "fill_std_vs_score",
    "mask_shape",
    "nominal_hist",
    "replica_hist",
    "replica_hists",
    "replica_mask",
    "replica_seed",
    "score_axis",
    "std_vs_score_hist",
    "summarise",
    "to_root_variations",
]
