"""Data import: file formats that coffea cannot read directly, turned into ROOT trees.

- :mod:`hepnn.io.higgs_csv` — the ATLAS Higgs ML challenge CSV (CERN Open Data v2 and the
  Kaggle ``training.csv`` / ``test.csv`` layouts), converted once into a cached ROOT TTree,
  plus the schema that turns ``-999.0`` into missing values.
"""

from __future__ import annotations
