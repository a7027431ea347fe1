"""The ATLAS Higgs ML challenge CSV layouts and the ROOT branches they become.

Accepted layouts (columns matched by name, in any order):

- ``"cern-v2"``: CERN Open Data ``atlas-higgs-challenge-2014-v2.csv`` — ``EventId``, the 30
  :data:`FEATURES`, ``Weight``, ``Label``, ``KaggleSet``, ``KaggleWeight``;
- ``"kaggle-training"``: Kaggle ``training.csv`` — ``EventId``, :data:`FEATURES`, ``Weight``
  (the Kaggle-normalised weight), ``Label``;
- ``"kaggle-test"``: Kaggle ``test.csv`` — ``EventId``, :data:`FEATURES`.

Branches of the ``Events`` tree, in this order: ``EventId`` (int64), the features (float64,
``PRI_jet_num`` int32), then whichever of ``Weight`` (float64), ``Label`` (int8, see
:data:`LABEL_CODES`), ``KaggleSet`` (int8, see :data:`KAGGLE_SET_CODES`) and ``KaggleWeight``
(float64) the layout has.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

#: The value the challenge uses for "undefined" (e.g. jet variables in 0-jet events).
MISSING_VALUE = -999.0

#: The 30 input features, in the order of the challenge files.
FEATURES: tuple[str, ...] = (
    "DER_mass_MMC",
    "DER_mass_transverse_met_lep",
    "DER_mass_vis",
    "DER_pt_h",
    "DER_deltaeta_jet_jet",
    "DER_mass_jet_jet",
    "DER_prodeta_jet_jet",
    "DER_deltar_tau_lep",
    "DER_pt_tot",
    "DER_sum_pt",
    "DER_pt_ratio_lep_tau",
    "DER_met_phi_centrality",
    "DER_lep_eta_centrality",
    "PRI_tau_pt",
    "PRI_tau_eta",
    "PRI_tau_phi",
    "PRI_lep_pt",
    "PRI_lep_eta",
    "PRI_lep_phi",
    "PRI_met",
    "PRI_met_phi",
    "PRI_met_sumet",
    "PRI_jet_num",
    "PRI_jet_leading_pt",
    "PRI_jet_leading_eta",
    "PRI_jet_leading_phi",
    "PRI_jet_subleading_pt",
    "PRI_jet_subleading_eta",
    "PRI_jet_subleading_phi",
    "PRI_jet_all_pt",
)

#: Known column layouts; the ROOT tree has the branches in this order.
LAYOUTS: dict[str, tuple[str, ...]] = {
    "cern-v2": ("EventId", *FEATURES, "Weight", "Label", "KaggleSet", "KaggleWeight"),
    "kaggle-training": ("EventId", *FEATURES, "Weight", "Label"),
    "kaggle-test": ("EventId", *FEATURES),
}

#: ``Label`` branch: signal ``s`` → 1, background ``b`` → 0.
LABEL_CODES: dict[str, int] = {"b": 0, "s": 1}

#: ``KaggleSet`` branch: ``t`` Kaggle training set → 0, ``b`` public leaderboard → 1,
#: ``v`` private leaderboard → 2, ``u`` unused → 3.
KAGGLE_SET_CODES: dict[str, int] = {"t": 0, "b": 1, "v": 2, "u": 3}

#: Name of the tree written into the converted file.
TREENAME = "Events"

#: numpy type of each branch in the converted tree.
BRANCH_TYPES: dict[str, np.dtype[Any]] = {
    "EventId": np.dtype(np.int64),
    **{f: np.dtype(np.float64) for f in FEATURES},
    "PRI_jet_num": np.dtype(np.int32),
    "Weight": np.dtype(np.float64),
    "Label": np.dtype(np.int8),
    "KaggleSet": np.dtype(np.int8),
    "KaggleWeight": np.dtype(np.float64),
}
#: What pyarrow parses each column as. PRI_jet_num is parsed as a float and checked to be
#: integral, so "2.0" (as pandas may write it) is accepted without loss.
ARROW_TYPES: dict[str, pa.DataType] = {
    **{name: pa.float64() for name in BRANCH_TYPES},
    "EventId": pa.int64(),
    "Label": pa.string(),
    "KaggleSet": pa.string(),
}
#: What each column must hold, as error messages word it.
EXPECTED: dict[str, str] = {
    "EventId": "an integer event number",
    **dict.fromkeys(FEATURES, "a finite number (-999.0 for undefined)"),
    "PRI_jet_num": "a non-negative integer jet count",
    "Weight": "a finite number",
    "KaggleWeight": "a finite number",
    "Label": "'s' or 'b'",
    "KaggleSet": "one of 't', 'b', 'v', 'u'",
}
#: ``Label`` / ``KaggleSet`` text values; position in the table = code in the tree.
CODE_TABLES: dict[str, pa.Array] = {
    "Label": pa.array(sorted(LABEL_CODES, key=LABEL_CODES.__getitem__)),
    "KaggleSet": pa.array(sorted(KAGGLE_SET_CODES, key=KAGGLE_SET_CODES.__getitem__)),
}
