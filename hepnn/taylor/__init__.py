"""Taylor-coefficient ranking of network inputs (Wunsch et al., arXiv:1803.08782).

Pure maths and writers: knows torch, numpy and matplotlib, not the run
configuration or the network lifecycle (see docs/architecture.md).

>>> from hepnn.taylor import mean_abs_taylor, write_ranking
>>> result = mean_abs_taylor(model, x_val, orders=(1, 2), input_names=names)
>>> write_ranking(result, "outputs/higgs", "mlp")

Modules
-------
coefficients
    :func:`taylor_terms`, :func:`taylor_coefficients`, :func:`mean_abs_taylor`.
gradients
    First-order maps: :func:`mean_abs_gradient`, :func:`gradient_sums`,
    :func:`aggregate_constituents`.
inputs
    Model and input handling, :class:`TaylorWarning`, :func:`prepared_inputs`.
result
    :class:`TaylorResult`, :class:`TaylorRecord`, :func:`output_description`.
accumulate, uncertainty
    Streaming sums (defined masks, unscaled inputs, bootstrap replicas);
    :func:`bootstrap_counts`, :func:`replica_std`, :func:`neighbour_separation`.
mlp, autograd
    The closed-form MLP path and the generic autograd path.
tables, monitor
    :func:`write_ranking`, :func:`write_helpers`, :func:`write_history`;
    :class:`TaylorMonitor`.
maps
    Tagger map figures and their first-order ranking record.
"""

from __future__ import annotations

from hepnn.taylor.coefficients import mean_abs_taylor, taylor_coefficients, taylor_terms
from hepnn.taylor.gradients import (
    GradientSums,
    aggregate_constituents,
    gradient_sums,
    mean_abs_gradient,
)
from hepnn.taylor.inputs import TaylorWarning, prepared_inputs
from hepnn.taylor.maps import first_order_result, image_map_figure, sequence_map_figure
from hepnn.taylor.monitor import TaylorMonitor
from hepnn.taylor.result import (
    ERROR_COLUMNS,
    INPUTS,
    TaylorRecord,
    TaylorResult,
    input_description,
    output_description,
)
from hepnn.taylor.tables import write_helpers, write_history, write_ranking
from hepnn.taylor.uncertainty import bootstrap_counts, neighbour_separation, replica_std

__all__ = [
    "ERROR_COLUMNS",
    "INPUTS",
    "GradientSums",
    "TaylorMonitor",
    "TaylorRecord",
    "TaylorResult",
    "TaylorWarning",
    "aggregate_constituents",
    "bootstrap_counts",
    "first_order_result",
    "gradient_sums",
    "image_map_figure",
    "input_description",
    "mean_abs_gradient",
    "mean_abs_taylor",
    "neighbour_separation",
    "output_description",
    "prepared_inputs",
    "replica_std",
    "sequence_map_figure",
    "taylor_coefficients",
    "taylor_terms",
    "write_helpers",
    "write_history",
    "write_ranking",
]
