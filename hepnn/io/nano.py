"""Writing NanoAOD-like trees: ``nFatJet`` counters and ``FatJet_pt`` branches.

uproot >= 5.7 writes an RNTuple for ``f["Events"] = ...``; NanoAOD readers (coffea's
``NanoAODSchema``) want a TTree with one counter branch per collection, which
``mktree`` with these name rules gives.
"""

from __future__ import annotations

from typing import Any

import awkward as ak

TREENAME = "Events"


def nano_tree(f: Any, cols: dict[str, Any]) -> Any:
    """A new TTree :data:`TREENAME` in the open uproot file ``f`` for the columns ``cols``.

    ``cols`` maps a branch name to a flat numpy array or to an awkward record array
    of one collection (jagged): ``{"FatJet": ak.zip({"pt": ...})}`` becomes
    ``nFatJet`` and ``FatJet_pt``. Fill it with ``tree.extend(cols)``.
    """
    return f.mktree(
        TREENAME,
        {k: c.type if isinstance(c, ak.Array) else c.dtype for k, c in cols.items()},
        counter_name=lambda c: "n" + c,
        field_name=lambda outer, inner: outer + "_" + inner,
    )
