"""Shared pytest fixtures."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

# --- ATLAS Higgs ML challenge CSV (real sample, 18,000 events, CERN Open Data v2 layout) ---

REPO = Path(__file__).resolve().parents[1]
_HIGGS_CSV_CANDIDATES = (REPO / "samples" / "higgs_challenge_18k.csv",)


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Converted inputs go to a per-session cache, never the user's ~/.cache."""
    if "HEPNN_CACHE_DIR" not in os.environ:
        os.environ["HEPNN_CACHE_DIR"] = str(tmp_path_factory.mktemp("hepnn_cache"))


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """Every test starts on one intra-op thread (two shared cores); the count is restored."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def higgs_csv_path() -> Path:
    """The real 18,000-event Higgs-ML CSV (``$HEPNN_HIGGS_CSV`` overrides the location)."""
    override = os.environ.get("HEPNN_HIGGS_CSV")
    candidates = (Path(override),) if override else _HIGGS_CSV_CANDIDATES
    for path in candidates:
        if path.is_file():
            return path
    pytest.fail(f"real Higgs-ML sample not found (looked at {[str(p) for p in candidates]})")


@pytest.fixture(scope="session")
def higgs_csv_lines(higgs_csv_path: Path) -> list[str]:
    """The real sample's lines without line endings: ``[header, row1, row2, ...]``."""
    return higgs_csv_path.read_text(encoding="utf-8").splitlines()


@pytest.fixture(scope="session")
def higgs_converted(higgs_csv_path: Path, tmp_path_factory: pytest.TempPathFactory):
    """The real sample converted once per session (a :class:`~hepnn.io.higgs_csv.ConvertedCSV`)."""
    from hepnn.io.higgs_csv import convert_csv

    return convert_csv(higgs_csv_path, tmp_path_factory.mktemp("higgs_cache"))


@pytest.fixture(scope="session")
def higgs(higgs_csv_path: Path) -> dict[str, np.ndarray]:
    """The real 18k-event CSV as numpy columns (read with numpy only, not hepnn)."""
    data = np.genfromtxt(higgs_csv_path, delimiter=",", names=True, dtype=None, encoding="utf-8")
    return {name: data[name] for name in data.dtype.names}


@pytest.fixture(scope="session")
def features(higgs: dict[str, np.ndarray]) -> list[str]:
    """The 30 DER_/PRI_ feature names, in file order."""
    return [n for n in higgs if n.startswith(("DER_", "PRI_"))]
