"""Streaming a Higgs challenge CSV into a ROOT tree, checked row by row.

The CSV is parsed by pyarrow in chunks (memory bounded by the chunk size, not the file
size) from a stream that re-hashes the bytes and counts line breaks on the way; every
chunk is checked and appended to the tree. Any violation of the input rules (see
:mod:`hepnn.io.higgs_csv`) becomes an :class:`~hepnn.errors.InputError` whose one-line
message names the file, the line and the column, and what was expected.
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import uproot

from hepnn.errors import InputError
from hepnn.io.higgs_layout import (
    ARROW_TYPES,
    BRANCH_TYPES,
    CODE_TABLES,
    EXPECTED,
    FEATURES,
    LAYOUTS,
    TREENAME,
)

_BOM = b"\xef\xbb\xbf"
# pyarrow needs whole lines in a block (the header alone is ~800 bytes): smaller chunks are
# raised to this.
_MIN_CHUNK_BYTES = 16 << 10
_MAX_HEADER_BYTES = 1 << 20
_HASH_BLOCK = 1 << 20


def _content_end(f: io.BufferedReader, size: int) -> int:
    """Offset just past the last byte that is not a line break (trailing blank lines dropped)."""
    end = size
    while end > 0:
        start = max(0, end - 4096)
        f.seek(start)
        stripped = f.read(end - start).rstrip(b"\r\n")
        if stripped:
            return start + len(stripped)
        end = start
    return 0


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _short(names: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    more = f", ... ({len(names) - limit} more)" if len(names) > limit else ""
    return f"[{shown}{more}]"


def read_header(path: Path, name: str) -> tuple[list[str], str, int]:
    """Header fields, layout and content end; raise on a bad header or a header-only file."""
    with path.open("rb") as f:
        content_end = _content_end(f, path.stat().st_size)
        f.seek(0)
        head = f.read(min(content_end, _MAX_HEADER_BYTES))
    head = head.removeprefix(_BOM)
    brk = re.search(rb"[\r\n]", head)
    if brk is None and content_end > _MAX_HEADER_BYTES:
        raise InputError(
            f"{name}: line 1 is longer than {_MAX_HEADER_BYTES} bytes; not a CSV header"
        )
    line = head if brk is None else head[: brk.start()]
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as err:
        raise InputError(
            f"{name}: line 1 (header) is not UTF-8 text (byte {err.start + 1})"
        ) from err
    if not text.strip():
        raise InputError(f"{name}: line 1 is blank; expected the header line 'EventId,...'")
    header = next(csv.reader([text]))

    dups = sorted({c for c in header if header.count(c) > 1})
    if dups:
        raise InputError(f"{name}: line 1 (header): duplicate column(s) {_short(dups)}")
    got = set(header)
    layout = next((lay for lay, cols in LAYOUTS.items() if set(cols) == got), None)
    if layout is None:
        if _looks_numeric(header[0]):
            raise InputError(
                f"{name}: line 1 looks like data, not a header; the file must start with "
                f"the column names 'EventId,{FEATURES[0]},...'"
            )
        best = min(LAYOUTS, key=lambda lay: len(got.symmetric_difference(LAYOUTS[lay])))
        missing = [c for c in LAYOUTS[best] if c not in got]
        unexpected = [c for c in header if c not in LAYOUTS[best]]
        raise InputError(
            f"{name}: line 1 (header) matches no known layout (known: {', '.join(LAYOUTS)}); "
            f"closest is {best!r}: missing columns {_short(missing)}, "
            f"unexpected columns {_short(unexpected)}"
        )
    if brk is None:
        raise InputError(f"{name}: header only, no data rows (0 events)")
    return header, layout, content_end


class _ContentStream(io.RawIOBase):
    """Read a file up to ``end`` (so trailing blank lines never reach the CSV parser).

    On the way it re-hashes the bytes (to detect a file changed since it was hashed) and
    counts line breaks (an independent count of data rows: a quote that swallows line
    breaks into one field would otherwise silently lose events).
    """

    def __init__(
        self, path: Path, end: int, size: int, progress: Callable[[int, int], None] | None
    ) -> None:
        super().__init__()
        self._f = path.open("rb")
        self._end = end
        self._size = size
        self._pos = 0
        self._progress = progress
        self._prev_cr = False
        self.sha = hashlib.sha256()
        self.line_breaks = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        # pyarrow calls read(n); overriding it (instead of readinto) avoids two extra copies.
        left = self._end - self._pos
        data = self._f.read(left if size is None or size < 0 else min(size, left))
        if not data:
            return b""
        self.sha.update(data)
        # \n, \r\n and a lone \r all end a line (as for the CSV parser).
        crlf = data.count(b"\r\n") + (self._prev_cr and data[:1] == b"\n")
        self.line_breaks += data.count(b"\n") + data.count(b"\r") - crlf
        self._prev_cr = data[-1:] == b"\r"
        self._pos += len(data)
        if self._progress is not None:
            self._progress(self._pos, self._size)
        return data

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        memoryview(buffer)[: len(data)] = data
        return len(data)

    def finish_digest(self) -> str:
        """SHA-256 of the whole file: the bytes parsed plus the trailing ones skipped."""
        self._f.seek(self._pos)
        while block := self._f.read(_HASH_BLOCK):
            self.sha.update(block)
        return self.sha.hexdigest()

    def close(self) -> None:
        self._f.close()
        super().close()


@dataclass(frozen=True)
class CsvSource:
    """The CSV being converted: what error messages need."""

    path: Path
    name: str  # the path as the user gave it, for messages
    header: list[str]  # columns in file order
    columns: tuple[str, ...]  # branches, in tree order


def convert_rows(
    src: CsvSource,
    *,
    content_end: int,
    size: int,
    digest: str,
    out_path: Path,
    chunk_bytes: int,
    progress: Callable[[int, int], None] | None,
) -> int:
    """Parse, check and write every row; return the number of events."""
    name, columns = src.name, src.columns
    bad_rows: list[Any] = []

    def on_invalid_row(row: Any) -> str:
        # Keep pyarrow's exact line number and text for our own message, then stop.
        bad_rows.append(row)
        return "error"

    read_options = pa_csv.ReadOptions(
        use_threads=False, block_size=max(chunk_bytes, _MIN_CHUNK_BYTES)
    )
    # Threads off: pyarrow then knows the line number of a bad row. Empty lines are not
    # ignored, so pyarrow's row numbers are physical line numbers (blank lines inside the
    # data become errors; trailing ones were cut off by _ContentStream).
    parse_options = pa_csv.ParseOptions(
        delimiter=",", ignore_empty_lines=False, invalid_row_handler=on_invalid_row
    )
    # No null values: an empty field or "NA" is an error, never a silent NaN.
    convert_options = pa_csv.ConvertOptions(
        column_types={c: ARROW_TYPES[c] for c in columns},
        null_values=[],
        true_values=[],
        false_values=[],
        strings_can_be_null=False,
        quoted_strings_can_be_null=False,
    )
    n_events = 0
    with (
        _ContentStream(src.path, content_end, size, progress) as stream,
        # LZ4: 4x faster to write and 2x faster to read than zlib for ~40% more bytes
        # (measured on this data); lz4 is a dependency of coffea.
        uproot.recreate(out_path, compression=uproot.LZ4(1)) as out,
    ):
        tree = out.mktree(TREENAME, {c: BRANCH_TYPES[c] for c in columns})
        try:
            reader = pa_csv.open_csv(
                stream,
                read_options=read_options,
                parse_options=parse_options,
                convert_options=convert_options,
            )
            if reader.schema.names != src.header:
                raise InputError(
                    f"{name}: line 1 (header): pyarrow read the columns as "
                    f"{_short(reader.schema.names)}, expected {_short(src.header)}"
                )
            for batch in reader:
                if batch.num_rows == 0:
                    continue
                tree.extend(_check_batch(src, batch, rows_before=n_events))
                n_events += batch.num_rows
        except pa.ArrowInvalid as err:
            raise _arrow_error(src, err, bad_rows, rows_done=n_events) from err
        if stream.finish_digest() != digest:
            raise InputError(f"{name}: file changed while it was being converted; run again")
        if progress is not None:
            progress(size, size)
        if n_events != stream.line_breaks:
            raise InputError(
                f"{name}: {stream.line_breaks} data lines but {n_events} rows parsed; "
                "a quoted field probably spans several lines (unbalanced '\"')"
            )
    return n_events


def _check_batch(
    src: CsvSource, batch: pa.RecordBatch, *, rows_before: int
) -> dict[str, np.ndarray]:
    """Validate one parsed chunk and return its branches; raise at the first bad value."""
    out: dict[str, np.ndarray] = {}
    problems: list[tuple[int, int, str]] = []  # (row index in batch, column index in file, column)

    def flag(bad: np.ndarray, column: str) -> None:
        if bad.any():
            problems.append((int(np.argmax(bad)), src.header.index(column), column))

    for column in src.columns:
        values = batch.column(column)
        if column == "EventId":
            out[column] = values.to_numpy()
        elif column in CODE_TABLES:
            # Position in the code table = code (LABEL_CODES / KAGGLE_SET_CODES); -1 = bad.
            codes = pc.index_in(values, value_set=CODE_TABLES[column]).fill_null(-1).to_numpy()
            flag(codes < 0, column)
            out[column] = codes.astype(np.int8)
        else:
            floats = values.to_numpy()
            finite = np.isfinite(floats)
            if column == "PRI_jet_num":
                ok = finite & (floats >= 0) & (floats < 2**31) & (np.floor(floats) == floats)
                flag(~ok, column)
                out[column] = np.where(ok, floats, 0).astype(np.int32)
            else:
                flag(~finite, column)
                out[column] = floats
    if problems:
        row, _, column = min(problems)
        raise _row_error(src, rows_before + row + 2, column)
    return out


_ROW_RE = re.compile(r"Row #(\d+)")
_COLUMN_RE = re.compile(r"column #(\d+)")


def _arrow_error(
    src: CsvSource, err: pa.ArrowInvalid, bad_rows: list[Any], *, rows_done: int
) -> InputError:
    """Turn a pyarrow parse/conversion error into a one-line message with line and column."""
    if bad_rows and bad_rows[0].number is not None:
        row = bad_rows[0]
        where = f"{src.name}: line {row.number} (data row {row.number - 1})"
        if not row.text.strip():
            return InputError(f"{where}: blank line inside the data")
        return InputError(
            f"{where}: expected {row.expected_columns} comma-separated fields like the header, "
            f"got {row.actual_columns}"
        )
    text = str(err)
    m_row, m_col = _ROW_RE.search(text), _COLUMN_RE.search(text)
    if m_row and m_col and int(m_col.group(1)) < len(src.header):
        return _row_error(src, int(m_row.group(1)), src.header[int(m_col.group(1))])
    # pyarrow's message format changed or it gave no position: say what we know.
    return InputError(f"{src.name}: cannot parse the rows after data row {rows_done}: {text}")


def _read_line(path: Path, lineno: int) -> str | None:
    # Universal newlines, as the CSV parser splits lines; only used to word an error.
    with path.open(encoding="utf-8-sig", errors="replace", newline=None) as f:
        for i, line in enumerate(f, start=1):
            if i == lineno:
                return line.rstrip("\n")
    return None


def _row_error(src: CsvSource, line: int, column: str) -> InputError:
    where = f"{src.name}: line {line} (data row {line - 1})"
    text = _read_line(src.path, line)
    if text is not None and not text.strip():
        return InputError(f"{where}: blank line inside the data")
    got = ""
    if text is not None:
        fields = next(csv.reader([text]), [])
        index = src.header.index(column)
        if index < len(fields):
            got = f", got {fields[index]!r}"
    return InputError(f"{where}, column {column!r}: expected {EXPECTED[column]}{got}")
