"""Input variations (systematics) propagated through the networks: pure array code.

Knows numpy, awkward and hist; not the config, the network lifecycle, torch or
coffea (the workflows re-evaluate the networks with :mod:`hepnn.nets.apply` and
:mod:`hepnn.nets.linear`).

>>> from hepnn.systematics import variations_from_mapping, vary_higgs_columns
>>> tes, = variations_from_mapping({"tes": {"feature": "PRI_tau_pt", "kind": "scale",
...                                         "up": 1.03, "down": 0.97}})
>>> changed = vary_higgs_columns(columns, tes, "Up")  # doctest: +SKIP

Modules
-------
variations
    :class:`Variation` (scale / shift, Up / Down, datasets / processes, never data),
    :func:`syst_labels` (the ``syst`` axis).
higgs
    The Higgs-challenge ``DER_`` formulas (:func:`derived_features`), their propagation
    (:func:`propagate`), the tau energy scale with MET correction
    (:func:`tau_energy_scale`); ``DER_mass_MMC`` cannot be recomputed.
jets
    Jet-energy scale of NanoAOD jets and their constituents (:func:`scale_jet_batch`).
table
    The variations table ``systematics/<net>.{csv,md}`` (:func:`write_variation_tables`).
"""

from __future__ import annotations

from hepnn.systematics.higgs import (
    DEPENDS_ON,
    NOT_RECOMPUTABLE,
    RECOMPUTABLE,
    derived_features,
    jet_energy_scale,
    propagate,
    tau_energy_scale,
    vary_higgs_columns,
)
from hepnn.systematics.jets import JET_SCALED_FIELDS, scale_jet_batch
from hepnn.systematics.table import (
    nominal_hists,
    shift_hists,
    variation_rows,
    write_variation_tables,
)
from hepnn.systematics.variations import (
    DIRECTIONS,
    NOMINAL,
    Variation,
    is_data,
    syst_labels,
    variations_from_mapping,
    varied_labels,
)

__all__ = [
    "DEPENDS_ON",
    "DIRECTIONS",
    "JET_SCALED_FIELDS",
    "NOMINAL",
    "NOT_RECOMPUTABLE",
    "RECOMPUTABLE",
    "Variation",
    "derived_features",
    "is_data",
    "jet_energy_scale",
    "nominal_hists",
    "propagate",
    "scale_jet_batch",
    "shift_hists",
    "syst_labels",
    "tau_energy_scale",
    "variation_rows",
    "variations_from_mapping",
    "varied_labels",
    "vary_higgs_columns",
    "write_variation_tables",
]
