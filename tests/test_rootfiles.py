"""Entry counts from a TTree's header (no full parse), checked against uproot's own count."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import uproot

from hepnn.io.rootfiles import count_entries

REPO = Path(__file__).resolve().parents[1]
SHIPPED = sorted((REPO / "samples").rglob("*.root"))


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_header_count_is_uproots_count(path: Path) -> None:
    with uproot.open(path) as f:
        trees = [k.split(";")[0] for k, c in f.classnames().items() if c == "TTree"]
        assert trees
        for name in trees:
            assert count_entries(f, name) == f[name].num_entries


def test_header_count_of_written_trees(tmp_path: Path, higgs_converted) -> None:
    """Trees written by uproot (every hepnn conversion) and an empty one; not-a-tree is None."""
    with uproot.open(higgs_converted.root_path) as f:
        assert count_entries(f, higgs_converted.treename) == 18_000
    path = tmp_path / "t.root"
    with uproot.recreate(path) as out:
        tree = out.mktree("big", {"x": np.float64, "n": np.int32})
        for _ in range(3):  # several baskets
            tree.extend({"x": np.arange(41_152, dtype=np.float64), "n": np.ones(41_152, np.int32)})
        out.mktree("empty", {"x": np.float64})
        out["h"] = np.histogram(np.arange(10), bins=3)
        out["ntuple"] = {"x": np.arange(5.0)}  # uproot writes an RNTuple here
    with uproot.open(path) as f:
        assert count_entries(f, "big") == 123_456 == f["big"].num_entries
        assert count_entries(f, "empty") == 0
        # not a TTree: None, and the caller parses (and accepts or rejects) the object
        assert count_entries(f, "h") is None
        assert count_entries(f, "ntuple") is None
        assert count_entries(f, "nothing") is None
