"""Per-event columns (event id, label, weight, network scores) carried through a run.

A workflow returns ``{"columns": {dataset: Columns({...})}}`` beside its
histograms. ``Columns`` add by concatenation, left then right, so hepnn's
fixed-order merge (see :mod:`hepnn.execution.merge`) yields the events of each file
in entry order. The run writes them to ``columns/<dataset>.parquet``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from hepnn.files import atomic_path


class Columns:
    """Equal-length numpy arrays by name; ``a + b`` concatenates every column."""

    def __init__(self, data: dict[str, np.ndarray]) -> None:
        lengths = {len(v) for v in data.values()}
        if len(lengths) > 1:
            msg = f"columns of different lengths: { {k: len(v) for k, v in data.items()} }"
            raise ValueError(msg)
        self.data = {k: np.asarray(v) for k, v in data.items()}

    def __len__(self) -> int:
        return len(next(iter(self.data.values()))) if self.data else 0

    def __add__(self, other: Columns) -> Columns:
        if self.data.keys() != other.data.keys():
            msg = f"cannot concatenate columns {sorted(self.data)} and {sorted(other.data)}"
            raise ValueError(msg)
        return Columns({k: np.concatenate([v, other.data[k]]) for k, v in self.data.items()})

    def write_parquet(self, path: Path) -> None:
        """Write atomically as a parquet table."""
        table = pa.table(self.data)
        with atomic_path(path) as tmp:
            pq.write_table(table, tmp)
