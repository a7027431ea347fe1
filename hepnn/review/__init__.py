"""Defending a network in a review: input space against data, overtraining, one document.

* :mod:`hepnn.review.gof` — binning and the saturated-model χ² of simulation vs data
  for one ranked Taylor term (1D, or a 2D pair unrolled);
* :mod:`hepnn.review.pseudo` — pseudo-data drawn from the simulation, optionally
  with one input deliberately mismodelled (closure tests);
* :mod:`hepnn.review.overtraining` — KS test of training vs held-out scores per model;
* :mod:`hepnn.review.plots`, :mod:`hepnn.review.document` — plots, ``review/README.md``;
* :mod:`hepnn.review.build` — :func:`write_review`, what ``hepnn review`` and the
  ``review`` stage of ``hepnn run`` call.
"""

from __future__ import annotations

from hepnn.review.build import GOF_COLUMNS, NetworkReview, is_data, write_review
from hepnn.review.gof import (
    GofResult,
    Sample,
    Term,
    make_binning,
    read_ranking,
    saturated_chi2,
    term_gof,
)
from hepnn.review.overtraining import overtraining_test
from hepnn.review.pseudo import pseudo_data

__all__ = [
    "GOF_COLUMNS",
    "GofResult",
    "NetworkReview",
    "Sample",
    "Term",
    "is_data",
    "make_binning",
    "overtraining_test",
    "pseudo_data",
    "read_ranking",
    "saturated_chi2",
    "term_gof",
    "write_review",
]
