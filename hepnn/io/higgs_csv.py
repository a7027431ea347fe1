"""ATLAS Higgs ML challenge CSV → cached ROOT TTree.

coffea has no CSV reader (and its parquet path mishandles nulls and string columns), so
the CSV is converted once, streaming (:mod:`hepnn.io.csv_stream`), into a flat ROOT TTree
that ``coffea.processor.Runner`` reads with ``BaseSchema``. The converted file mirrors the
CSV value for value (``-999.0`` stays ``-999.0``);
:func:`~hepnn.io.missing.with_missing` / :func:`~hepnn.io.missing.mask_missing` turn
``-999.0`` into missing values when the events are read. See docs/architecture.md.

Example
-------
>>> conv = convert_csv("atlas-higgs-challenge-2014-v2.csv", "cache/")  # doctest: +SKIP
>>> fileset = {"higgs": {"files": {str(conv.root_path): conv.treename}}}  # doctest: +SKIP
>>> # in a processor:
>>> ev = hepnn.io.missing.with_missing(events)  # doctest: +SKIP
>>> ak.is_none(ev.DER_mass_MMC)  # True where the CSV said -999.0  # doctest: +SKIP

Accepted layouts (columns matched by name, in any order) and the branches they become:
see :mod:`hepnn.io.higgs_layout` (``"cern-v2"``, ``"kaggle-training"``, ``"kaggle-test"``).

Input rules (every violation is an :class:`~hepnn.errors.InputError` whose one-line message
names the file, the line and the column, and what was expected). Positions are given as
``line N (data row N-1)``: ``N`` is the 1-based physical line in the file (the header is line
1), so it is what an editor shows; the data row is the 1-based event count.

- UTF-8, optionally with a byte-order mark; ``\\n``, ``\\r\\n`` or ``\\r`` line endings.
- Line 1 is the header. At least one data row.
- Blank lines *inside* the data are an error (a blank line there usually means a damaged or
  hand-edited file, and rejecting it keeps ``data row = line - 1`` exact). Blank lines at the
  very end of the file are ignored.
- Every row has as many fields as the header. Numbers may be any decimal/scientific text
  pyarrow parses (surrounding spaces are tolerated); NaN and infinities are rejected in every
  float column; ``-999.0`` marks an undefined feature. ``PRI_jet_num`` must be a non-negative
  integer (``2`` or ``2.0``). ``Label`` is ``s`` or ``b``; ``KaggleSet`` one of ``t b v u``.
- The first problem found is reported. Within one chunk a wrong field count is found before
  a bad value, so with several bad rows the one named is not always the earliest.
- Nothing is written to the cache unless the whole file converted.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hepnn.errors import InputError
from hepnn.files import atomic_path, sha256_file, write_json
from hepnn.io.csv_stream import CsvSource, convert_rows, read_header
from hepnn.io.higgs_layout import LAYOUTS, TREENAME

__all__ = [
    "CONVERTER_VERSION",
    "DEFAULT_CHUNK_BYTES",
    "ConvertedCSV",
    "convert_csv",
]

#: Bump when the converted file's content or the sidecar changes: old cache entries are then
#: converted again.
CONVERTER_VERSION = 1

#: CSV bytes parsed per chunk (one ROOT basket per branch per chunk). 1 MiB is ~4k events,
#: baskets of ~32 kB per float branch (ROOT's default basket size). Measured on a 165 MB
#: file: peak RSS flat at ~190 MB (with the imports) and the fastest setting; with 4 MiB
#: chunks the RSS kept creeping up (allocator fragmentation) to ~290 MB.
DEFAULT_CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class ConvertedCSV:
    """A Higgs-ML CSV converted into a ROOT file (see :func:`convert_csv`).

    Attributes
    ----------
    root_path
        The converted ROOT file (in the cache directory).
    treename
        Name of the TTree in ``root_path``.
    n_events
        Number of data rows in the CSV = entries in the tree.
    layout
        ``"cern-v2"``, ``"kaggle-training"`` or ``"kaggle-test"``.
    csv_sha256
        SHA-256 of the CSV file's bytes (the cache key).
    columns
        Branch names in the tree, in order.
    """

    root_path: Path
    n_events: int
    layout: str
    csv_sha256: str
    columns: tuple[str, ...]
    treename: str = TREENAME


def convert_csv(
    csv_path: str | os.PathLike[str],
    cache_dir: str | os.PathLike[str],
    *,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    progress: Callable[[int, int], None] | None = None,
) -> ConvertedCSV:
    """Convert a Higgs-ML challenge CSV into a ROOT TTree, once per file content.

    The CSV is hashed (SHA-256); if ``cache_dir`` already holds a conversion of these bytes by
    this converter version it is returned without parsing. Otherwise the CSV is parsed in
    chunks of ``chunk_bytes`` (memory bounded by the chunk size, not the file size), checked,
    and written to ``cache_dir/<sha256[:16]>.root`` through a temporary file that is renamed
    into place only when the whole file converted; a JSON sidecar beside it records the
    version, hash, layout and event count.

    Parameters
    ----------
    csv_path
        The CSV file (layouts and rules in the module docstring).
    cache_dir
        Directory for converted files; created if needed.
    chunk_bytes
        CSV bytes parsed at a time (at least 16 KiB). Does not change the converted values.
    progress
        Called as ``progress(bytes_read, total_bytes)`` while the CSV is parsed.

    Returns
    -------
    ConvertedCSV
        Where the tree is and what it holds; ``n_events`` is the number of data rows.

    Raises
    ------
    InputError
        The file is missing, empty, has an unknown header, no data rows, or a bad row; the
        message names the file, line (data row = line - 1) and column.
    """
    if chunk_bytes < 1:
        msg = f"chunk_bytes must be >= 1, got {chunk_bytes}"
        raise ValueError(msg)
    path = Path(csv_path)
    name = os.fspath(csv_path)
    try:
        size = path.stat().st_size
    except OSError as err:
        raise InputError(f"{name}: cannot read CSV file ({err.strerror})") from err
    if not path.is_file():
        raise InputError(f"{name}: not a regular file")
    if size == 0:
        raise InputError(f"{name}: empty file (0 bytes); expected a header line and data rows")

    digest = sha256_file(path)
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    root_path = cache / f"{digest[:16]}.root"
    meta_path = cache / f"{digest[:16]}.json"
    cached = _load_cached(meta_path, root_path, digest)
    if cached is not None:
        return cached

    header, layout, content_end = read_header(path, name)
    columns = LAYOUTS[layout]
    # Never leave a partial file behind, whatever went wrong.
    with atomic_path(root_path) as tmp:
        n_events = convert_rows(
            CsvSource(path, name, header, columns),
            content_end=content_end,
            size=size,
            digest=digest,
            out_path=tmp,
            chunk_bytes=chunk_bytes,
            progress=progress,
        )

    result = ConvertedCSV(
        root_path=root_path,
        n_events=n_events,
        layout=layout,
        csv_sha256=digest,
        columns=columns,
    )
    meta = {
        "converter_version": CONVERTER_VERSION,
        "csv_sha256": digest,
        "csv_name": path.name,
        "csv_size": size,
        "layout": layout,
        "n_events": n_events,
        "treename": TREENAME,
        "columns": list(columns),
        "root_size": root_path.stat().st_size,
    }
    write_json(meta_path, meta)
    return result


def _load_cached(meta_path: Path, root_path: Path, digest: str) -> ConvertedCSV | None:
    """The cached conversion if its sidecar matches this content and converter version."""
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if (
            meta["converter_version"] != CONVERTER_VERSION
            or meta["csv_sha256"] != digest
            or meta["treename"] != TREENAME
            or meta["layout"] not in LAYOUTS
            or root_path.stat().st_size != meta["root_size"]
        ):
            return None
        return ConvertedCSV(
            root_path=root_path,
            n_events=int(meta["n_events"]),
            layout=meta["layout"],
            csv_sha256=digest,
            columns=LAYOUTS[meta["layout"]],
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None
