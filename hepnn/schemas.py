"""coffea schemas that travel to workers as class attributes.

Setting ``NanoAODSchema.warn_missing_crossrefs = False`` in the main process does
not reach dask or futures workers; a subclass carrying it as a class attribute
does. Used for NanoAOD-like trees that are not full CMS files
(our converted jet samples, slimmed test files).
"""

from __future__ import annotations

import warnings

from coffea.nanoevents import BaseSchema, NanoAODSchema, PFNanoAODSchema

# Older NanoAOD files (e.g. the 2018 DY sample) store Photon_mass/charge that the schema
# replaces by constants; coffea warns per chunk. Expected, harmless: keep the run log clean.
# Set here so that it also applies in worker processes, which import this module.
warnings.filterwarnings(
    "ignore",
    message="Branch .* already exists but its values will be replaced",
    category=RuntimeWarning,
)


class NanoSchema(NanoAODSchema):
    """NanoAOD schema that does not warn about cross-references absent from the file."""

    warn_missing_crossrefs = False


class PFNanoSchema(PFNanoAODSchema):
    """PFNano schema that does not warn about cross-references absent from the file."""

    warn_missing_crossrefs = False


__all__ = ["BaseSchema", "NanoSchema", "PFNanoSchema"]
