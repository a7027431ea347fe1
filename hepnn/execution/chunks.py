"""Chunks: the ranges of entries a run is cut into, aligned to accumulation blocks.

Every file is cut into fixed *blocks* of ``block_size`` entries; a chunk is a whole
number of blocks (the last one of a file may be shorter). :func:`dyadic_cover` names
the complete nodes of the binary tree over a file's blocks that a chunk covers; the
merge (:mod:`hepnn.execution.merge`) sums along that tree, so the result does not
depend on the chunk size. See docs/architecture.md.
"""

from __future__ import annotations

from dataclasses import dataclass

from hepnn.errors import InputError
from hepnn.samples import Dataset

ChunkKey = tuple[str, str, int, int]
NodeKey = tuple[int, int]  # (level, index) in the binary tree over a file's blocks


@dataclass(frozen=True)
class Chunk:
    """One range of entries of one file (``source`` is the file the user named)."""

    dataset: str
    filename: str
    treename: str
    entrystart: int
    entrystop: int
    source: str = ""

    @property
    def key(self) -> ChunkKey:
        return (self.dataset, self.filename, self.entrystart, self.entrystop)

    @property
    def where(self) -> str:
        """``file: entries [a, b)`` for messages, naming the user's file."""
        return f"{self.source or self.filename}: entries [{self.entrystart}, {self.entrystop})"


def effective_chunksize(chunksize: int, block_size: int) -> int:
    """``chunksize`` rounded up to a whole number of accumulation blocks."""
    return max(1, -(-chunksize // block_size)) * block_size


def make_chunks(
    datasets: dict[str, Dataset],
    chunksize: int,
    block_size: int,
    maxchunks: int | None = None,
) -> list[Chunk]:
    """Split every file into ranges of ``chunksize`` entries aligned to blocks.

    ``chunksize`` is rounded up to a multiple of ``block_size``. With
    ``maxchunks`` (``--test``), only the first ``maxchunks`` chunks of each
    dataset are kept and the expected counts shrink to match.
    """
    size = effective_chunksize(chunksize, block_size)
    chunks: list[Chunk] = []
    for name, ds in datasets.items():
        n_ds = 0
        seen: set[str] = set()
        for f in ds.files:
            if str(f.root_path) in seen:
                msg = f"dataset {name}: file listed twice: {f.source}"
                raise InputError(msg)
            seen.add(str(f.root_path))
            for start in range(0, f.entries, size):
                if maxchunks is not None and n_ds >= maxchunks:
                    break
                stop = min(start + size, f.entries)
                chunks.append(Chunk(name, str(f.root_path), f.treename, start, stop, str(f.source)))
                n_ds += 1
    return chunks


def dyadic_cover(first: int, stop: int) -> list[NodeKey]:
    """The complete tree nodes ``(level, index)`` that tile blocks ``[first, stop)``.

    Node ``(L, i)`` covers blocks ``[i * 2**L, (i + 1) * 2**L)``. The cover is the
    canonical one: greedy largest aligned node from the left.
    """
    nodes = []
    a = first
    while a < stop:
        level = 0
        while a % (2 << level) == 0 and a + (2 << level) <= stop:
            level += 1
        nodes.append((level, a >> level))
        a += 1 << level
    return nodes
