"""Jet inputs for taggers: images, constituent sequences, NanoAOD constituents.

>>> from hepnn.jets import jet_images, constituent_sequences, read_fatjet_constituents
>>> cons = ak.flatten(read_fatjet_constituents("nano_tt_v15.root"), axis=1)  # jets x constituents
>>> images = jet_images(cons.pt, cons.eta, cons.phi, charge=cons.charge)     # (N, 1, 33, 33)

- :mod:`hepnn.jets.images` -- centre / rotate / flip / pixelate / normalise, vectorised.
- :mod:`hepnn.jets.constituents` -- pT-ordered padded sequences and their scaler.
- :mod:`hepnn.jets.nanoaod` -- FatJet constituents linked by index (NanoAOD v15, PFNano).

Everything is written with numpy/awkward here rather than taken from
``energyflow``: it is not installable beside numpy 2 (its ``wasserstein``
dependency), and its ``pixelate`` only centres (no rotation, flip or φ wrap).
"""

from __future__ import annotations

from hepnn.jets.constituents import SequenceScaler, constituent_sequences, flatten_constituents
from hepnn.jets.images import ImageInfo, jet_images, transform_constituents
from hepnn.jets.nanoaod import fatjet_constituents, read_fatjet_constituents

__all__ = [
    "ImageInfo",
    "SequenceScaler",
    "constituent_sequences",
    "fatjet_constituents",
    "flatten_constituents",
    "jet_images",
    "read_fatjet_constituents",
    "transform_constituents",
]
