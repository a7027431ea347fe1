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
    First-order maps: :func:`mean_abs_gradient`, :func:`aggregate_constituents`.
inputs
    Model and input handling, :class:`TaylorWarning`, :func:`prepared_inputs`.
result
    :class:`TaylorResult`, :class:`TaylorRecord`, :func:`output_description`.
mlp, autograd
    The closed-form MLP path and the generic autograd path.
tables, monitor
    :func:`write_ranking`, :func:`write_history`; :class:`TaylorMonitor`.
maps
    Tagger map figures and their first-order ranking record.
"""

from __future__ import annotations

from hepnn.taylor.coefficients import mean_abs_taylor, taylor_coefficients, taylor_terms
from hepnn.taylor.gradients import aggregate_constituents, mean_abs_gradient
from hepnn.taylor.inputs import TaylorWarning, prepared_inputs
from hepnn.taylor.maps import first_order_result, image_map_figure, sequence_map_figure
from hepnn.taylor.monitor import TaylorMonitor
from hepnn.taylor.result import TaylorRecord, TaylorResult, output_description
from hepnn.taylor.tables import write_history, write_ranking

__all__ = [
    "TaylorMonitor",
    "TaylorRecord",
    "TaylorResult",
    "TaylorWarning",
    "aggregate_constituents",
    "first_order_result",
    "image_map_figure",
    "mean_abs_gradient",
    "mean_abs_taylor",
    "output_description",
    "prepared_inputs",
    "sequence_map_figure",
    "taylor_coefficients",
    "taylor_terms",
    "write_history",
    "write_ranking",
]
