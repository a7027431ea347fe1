"""Per-event columns (event id, label, weight, network scores) carried through a run.

A workflow returns ``{"columns": {dataset: Columns({...})}}`` beside its
histograms. ``Columns`` add by concatenation, left then right, so hepnn's
fixed-order merge (see :mod:`hepnn.execution.merge`) yields the events of each file
in entry order. The run writes them to ``columns/<dataset>.parquet``.

Held in memory until the end of a run, the columns would grow with the number of
events (17 bytes per Higgs event without networks, and a copy while concatenating). A
run therefore spills them as chunks arrive (:class:`ColumnSpill`): each chunk's columns
go to a parquet part file under ``OUTDIR/.column_parts/`` and only a
:class:`ColumnParts` (the part paths in order) is merged. ``columns/<dataset>.parquet`` is
then written part by part, one row group each, and the parts are deleted: memory holds
one part at a time, and every value is the same as with the columns in memory.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from hepnn.files import atomic_path

__all__ = ["PARTS_DIR", "ColumnParts", "ColumnSpill", "Columns"]

#: Folder of the spilled parts inside the output folder (hidden: never a run output).
PARTS_DIR = ".column_parts"


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

    @property
    def names(self) -> tuple[str, ...]:
        """The column names, in order."""
        return tuple(self.data)

    def read(self) -> Columns:
        """The columns in memory (themselves; :meth:`ColumnParts.read` reads its parts)."""
        return self

    def write_parquet(self, path: Path) -> None:
        """Write atomically as a parquet table."""
        table = pa.table(self.data)
        with atomic_path(path) as tmp:
            pq.write_table(table, tmp)


class ColumnParts:
    """Columns spilled to parquet part files; ``a + b`` concatenates the lists of parts.

    Parameters
    ----------
    paths
        The part files, in event order.
    names
        The column names (every part has them, in this order).
    rows
        The number of rows of all parts together.
    """

    def __init__(self, paths: list[Path], names: tuple[str, ...], rows: int) -> None:
        self.paths = list(paths)
        self.names = tuple(names)
        self.rows = rows

    def __len__(self) -> int:
        return self.rows

    def __add__(self, other: ColumnParts) -> ColumnParts:
        if set(self.names) != set(other.names):
            msg = f"cannot concatenate columns {sorted(self.names)} and {sorted(other.names)}"
            raise ValueError(msg)
        return ColumnParts(self.paths + other.paths, self.names, self.rows + other.rows)

    def _schema(self) -> pa.Schema:
        """One schema for every part: a column's numpy type promoted over the parts.

        The same type that ``numpy.concatenate`` of the in-memory columns would give.
        """
        schemas = [pq.read_schema(p) for p in self.paths]
        fields = []
        for name in self.names:
            types = [s.field(name).type for s in schemas]
            if all(t == types[0] for t in types):
                fields.append(pa.field(name, types[0]))
            else:
                dtype = np.result_type(*(t.to_pandas_dtype() for t in types))
                fields.append(pa.field(name, pa.from_numpy_dtype(dtype)))
        return pa.schema(fields)

    def _tables(self) -> Iterator[pa.Table]:
        """Each part in order, cast to :meth:`_schema`."""
        schema = self._schema()
        for p in self.paths:
            yield pq.read_table(p).select(list(self.names)).cast(schema)

    def read(self) -> Columns:
        """Every part concatenated in memory, as :class:`Columns`."""
        table = pa.concat_tables(list(self._tables()))
        return Columns({n: table.column(n).to_numpy() for n in self.names})

    def write_parquet(self, path: Path) -> None:
        """Write atomically as one parquet table, part by part (one row group per part)."""
        with atomic_path(path) as tmp:
            writer: pq.ParquetWriter | None = None
            try:
                for table in self._tables():
                    if writer is None:
                        writer = pq.ParquetWriter(tmp, table.schema)
                    writer.write_table(table)
            finally:
                if writer is not None:
                    writer.close()


class ColumnSpill:
    """Write the :class:`Columns` of chunk outputs to part files as the chunks arrive.

    Parameters
    ----------
    folder
        Where the parts go (emptied first; :data:`PARTS_DIR` of the output folder).
    """

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        shutil.rmtree(self.folder, ignore_errors=True)
        self._count = 0

    def spill(self, output: Any) -> Any:
        """``output`` with every ``Columns`` under its ``columns`` key replaced by parts.

        ``output`` itself is not changed (it may still be checkpointed as it is).
        """
        if not isinstance(output, Mapping):
            return output
        cols = output.get("columns")
        if not isinstance(cols, Mapping) or not any(isinstance(c, Columns) for c in cols.values()):
            return output
        spilled = {k: self._write(c) if isinstance(c, Columns) else c for k, c in cols.items()}
        return {**output, "columns": spilled}

    def _write(self, cols: Columns) -> ColumnParts:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"part_{self._count:08d}.parquet"
        self._count += 1
        cols.write_parquet(path)
        return ColumnParts([path], cols.names, len(cols))

    def clear(self) -> None:
        """Delete the parts (after the columns were written)."""
        shutil.rmtree(self.folder, ignore_errors=True)
