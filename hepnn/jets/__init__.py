"""Jet physics as pure array code: images, constituent sequences, NanoAOD FatJet batches.

>>> from hepnn.jets.batch import fatjet_batch
>>> from hepnn.jets.images import jet_images
>>> batch = fatjet_batch(events)                       # jets with their PF constituents
>>> c = batch.constituents
>>> images = jet_images(c.pt, c.eta, c.phi, jet_eta=batch.eta, jet_phi=batch.phi)

- :mod:`hepnn.jets.batch` -- :class:`~hepnn.jets.batch.JetBatch` (jets and constituents,
  flat over events), read from NanoEvents or flat uproot arrays, and per-jet labels.
- :mod:`hepnn.jets.images` -- centre / rotate / flip / pixelate / normalise, vectorised.
- :mod:`hepnn.jets.constituents` -- pT-ordered padded sequences and their scaler.
- :mod:`hepnn.jets.nanoaod` -- FatJet constituents linked by index (NanoAOD v15, PFNano).

Nothing here knows torch or training: :mod:`hepnn.nets.inputs` turns these arrays into
network inputs. Everything is written with numpy/awkward rather than taken from
``energyflow``: it is not installable beside numpy 2 (its ``wasserstein``
dependency), and its ``pixelate`` only centres (no rotation, flip or φ wrap).
This ``__init__`` imports nothing, so that the config schema can read the names of
channels and features without importing awkward or uproot.
"""
