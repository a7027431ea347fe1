"""Data import: file formats that coffea cannot read directly, turned into ROOT trees.

- :mod:`hepnn.io.higgs_csv` — the ATLAS Higgs ML challenge CSV (CERN Open Data v2 and the
  Kaggle ``training.csv`` / ``test.csv`` layouts), converted once into a cached ROOT TTree;
  its layouts in :mod:`hepnn.io.higgs_layout`, the streaming parser in
  :mod:`hepnn.io.csv_stream`, and :mod:`hepnn.io.missing`, which turns ``-999.0`` into
  missing values.
- :mod:`hepnn.io.part_npy` — the ParT/weaver NumPy jet-constituent layout (``*_pf_vectors.npy``,
  ``*_pf_points.npy``, ``*_pf_mask.npy``, ``*_labels.npy``), converted once into a cached
  NanoAOD-like ROOT tree (one FatJet per event with its ``PFCand`` constituents).
"""

from __future__ import annotations
