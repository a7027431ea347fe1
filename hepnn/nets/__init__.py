"""One lifecycle for every network a config names, whatever its inputs.

A network is one entry of ``networks:`` in a config (:class:`hepnn.nets.spec.NetworkSpec`):
its inputs (``flat`` event features, a jet ``image`` or a constituent ``sequence``),
architecture, training and split. Every kind goes through the same stages::

    spec ─► data (read once) ─► inputs (fit, transform) ─► split ─► train ─► store
                                                                                │
    apply (cache, padded micro-batches, k-fold routing) ◄───────────────────────┘
      ├─► report (held-out metrics, baselines)      ├─► cv (k-fold evaluation)
      ├─► rank (Taylor ranking, hepnn.taylor)        └─► bands (MC dropout, ensembles)

Adding a kind of input means one new :class:`hepnn.nets.inputs.InputBuilder`;
nothing else changes. See docs/architecture.md.

This package's ``__init__`` imports nothing: ``hepnn.nets.spec`` is read by the
config schema, which must not import torch.
"""
