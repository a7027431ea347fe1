"""coffea schemas that travel to workers as class attributes.

Setting ``NanoAODSchema.warn_missing_crossrefs = False`` in the main process does
not reach dask or futures workers; a subclass carrying it as a class attribute
does (see DESIGN.md). Used for NanoAOD-like trees that are not full CMS files
(our converted jet samples, slimmed test files).
"""

from __future__ import annotations

from coffea.nanoevents import BaseSchema, NanoAODSchema, PFNanoAODSchema


class NanoSchema(NanoAODSchema):
    """NanoAOD schema that does not warn about cross-references absent from the file."""

    warn_missing_crossrefs = False


class PFNanoSchema(PFNanoAODSchema):
    """PFNano schema that does not warn about cross-references absent from the file."""

    warn_missing_crossrefs = False


__all__ = ["BaseSchema", "NanoSchema", "PFNanoSchema"]
