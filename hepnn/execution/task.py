"""One chunk as a task: open the file, build the events, call the workflow, report.

coffea's ``skipbadfiles`` drops a chunk with only a warning (emitted on the worker,
so the main process never sees it) and wraps exceptions two or three times. Here
each chunk is one task (:func:`run_chunk`) submitted to the executor's pool; the task
opens the file with uproot and builds the events with coffea's
``NanoEventsFactory`` (virtual mode, like the ``Runner``), calls the workflow, and
returns either the chunk's tree nodes or the failure as text (``file: entries
[a, b): Type: message (branch ...)``, :func:`describe_failure`) with whether
another attempt could succeed. What a task needs besides its chunk (the wrapped
workflow, the schema, the datasets' metadata) travels once per worker process as a
cloudpickled :class:`Payload` (a workflow loaded from a file is registered *by
value*, see :mod:`hepnn.workflow`), so workers need hepnn installed but not the
workflow file.
"""

from __future__ import annotations

import gc
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cloudpickle

from hepnn.execution.chunks import Chunk
from hepnn.execution.merge import ChunkKeyed
from hepnn.files import sha256_bytes
from hepnn.io.remote import is_url
from hepnn.io.rootfiles import forget, open_root
from hepnn.samples import Dataset


@dataclass(frozen=True)
class Payload:
    """What every chunk task needs besides the chunk: sent once per worker process."""

    digest: str
    blob: bytes  # cloudpickle of (wrapped processor, schema, dataset metadata)


_PAYLOADS: dict[str, tuple[Any, type, dict[str, dict[str, Any]]]] = {}


def _unpack(payload: Payload) -> tuple[Any, type, dict[str, dict[str, Any]]]:
    """The payload's objects, unpickled once per process (cached by digest)."""
    if payload.digest not in _PAYLOADS:
        while len(_PAYLOADS) >= 4:  # a worker shared by a few runs keeps each one's
            del _PAYLOADS[next(iter(_PAYLOADS))]
        _PAYLOADS[payload.digest] = cloudpickle.loads(payload.blob)
    return _PAYLOADS[payload.digest]


#: A full collection runs when the resident memory has grown by this much since the last.
GC_GROWTH_BYTES = 128 * 2**20

_GC: dict[str, int | None] = {"rss": None}


def _rss_bytes() -> int:
    """Resident memory of this process now (Linux), else its peak (``ru_maxrss``)."""
    try:
        pages = Path("/proc/self/statm").read_bytes().split()[1]
        return int(pages) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource
        import sys

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


def collect_garbage(rss: int | None = None) -> bool:
    """Run the cycle collector when memory has grown by :data:`GC_GROWTH_BYTES`.

    Called after every chunk (:func:`run_chunk`).

    NanoEvents arrays hold reference cycles that keep a chunk's columns alive, and
    CPython's collector counts objects, not bytes, so without an explicit collection
    memory grows by a chunk's columns per chunk. A full collection costs 0.07 s with
    ``hepnn.pipeline`` imported and 0.15-0.17 s with torch and scikit-learn too, so it runs
    only when it pays: when the resident memory (``/proc/self/statm``, ~10 us to read)
    is ``GC_GROWTH_BYTES`` above what it was after the last collection. Peak memory is
    then bounded by that level plus the margin, whatever the number of events.

    Measured on 1,008,000 Higgs events (iterative, 100k-event chunks, every collection
    timed with ``gc.callbacks``): a collection after every chunk spent 2.20 s in gc (peak
    RSS 487 MB); pacing to ~10 % of chunk time 1.03-1.09 s (530 MB); never collecting
    0.45 s but +28 MB per chunk; this rule 0.66-0.71 s with a flat 603 MB.

    Parameters
    ----------
    rss
        Resident memory in bytes; default: this process's, read now.

    Returns
    -------
    bool
        Whether a collection ran.
    """
    now = _rss_bytes() if rss is None else rss
    if _GC["rss"] is None or now < _GC["rss"]:
        _GC["rss"] = now
        return False
    if now - _GC["rss"] < GC_GROWTH_BYTES:
        return False
    gc.collect()
    _GC["rss"] = _rss_bytes() if rss is None else rss
    return True


def run_chunk(payload: Payload, chunk: Chunk) -> dict[str, Any]:
    """Process one chunk (in a worker): its tree nodes, or its failure as one line.

    Never raises for a failure of the input or the workflow (only for
    ``KeyboardInterrupt``/``SystemExit``): the returned dict has ``"error"`` instead,
    and ``"retry"``: whether another attempt could succeed (reading errors — a
    network file system, an xrootd hiccup — yes; an exception of the workflow's
    own code, such as a missing field, no).
    """
    t0 = time.perf_counter()
    accessed: list[Any] = []
    try:
        wrapped, schema, meta = _unpack(payload)
        out = _events_and_process(wrapped, schema, meta, chunk, accessed)
    except Exception as err:
        read_error = _is_read_error(err)
        if read_error:
            forget(chunk.filename)  # a retry opens the file again
        branch = _last_branch(accessed) if read_error else None
        out = {
            "error": describe_failure(err, chunk, branch),
            "retry": read_error,  # an error of the workflow itself would fail again
        }
    del accessed
    out["seconds"] = time.perf_counter() - t0
    out["pid"] = os.getpid()
    collect_garbage()
    return out


def _events_and_process(
    wrapped: Any,
    schema: type,
    meta: dict[str, dict[str, Any]],
    chunk: Chunk,
    accessed: list[Any],
) -> dict[str, Any]:
    from coffea.nanoevents import NanoEventsFactory

    metadata = {
        "dataset": chunk.dataset,
        "filename": chunk.filename,
        "treename": chunk.treename,
        "entrystart": chunk.entrystart,
        "entrystop": chunk.entrystop,
        "fileuuid": "",
        **meta.get(chunk.dataset, {}),
    }
    file = open_root(chunk.filename)  # one open file per process: the parsed tree is reused
    try:
        try:
            events = NanoEventsFactory.from_root(
                file=file,
                treepath=chunk.treename,
                schemaclass=schema,
                metadata=metadata,
                access_log=accessed,
                mode="virtual",
                entry_start=chunk.entrystart,
                entry_stop=chunk.entrystop,
            ).events()
        except Exception as err:
            if _is_read_error(err):
                raise
            raise SchemaError(schema_failure(schema, chunk.treename, err)) from err
        return wrapped.process(events)
    finally:
        if is_url(chunk.filename):
            file.close()


class SchemaError(Exception):
    """The events of a chunk cannot be built with the chosen coffea schema (not retried)."""


def schema_failure(schema: type, treename: str, err: BaseException) -> str:
    """One line: the tree cannot be read with ``schema``, why, and how to choose another."""
    first = next((ln.strip() for ln in str(err).splitlines() if ln.strip()), "")
    return (
        f"tree {treename!r} cannot be read with {getattr(schema, '__name__', schema)} "
        f"({type(err).__name__}: {first[:160]}); give the processor a schema attribute or set "
        "schema: in the config (nanoaod, pfnano, base, physlite, delphes, treemaker, ...)"
    )


def _exception_chain(err: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    cur: BaseException | None = err
    while cur is not None and cur not in chain:
        chain.append(cur)
        cur = cur.__cause__ or cur.__context__
    return chain


#: Exceptions from these modules are reading errors (a retry may succeed): decompression,
#: and the remote sources (aiohttp for http(s)://, fsspec, XRootD for root://).
_READ_MODULES = (
    "uproot", "zlib", "lz4", "zstandard", "aiohttp", "fsspec", "fsspec_xrootd", "XRootD",
)  # fmt: skip


#: Code in these folders reads bytes: any exception raised there is a reading error (uproot's
#: fsspec source turns a failed http range request into a TypeError on the error object).
_READ_CODE = ("/uproot/source/", "/fsspec/", "/fsspec_xrootd/", "/aiohttp/")


def _raised_in_reading_code(err: BaseException) -> bool:
    tb = err.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    filename = tb.tb_frame.f_code.co_filename.replace("\\", "/") if tb is not None else ""
    return any(part in filename for part in _READ_CODE)


def _is_read_error(err: BaseException) -> bool:
    for e in _exception_chain(err):
        mod = type(e).__module__
        if isinstance(e, OSError) or mod.startswith(_READ_MODULES) or _raised_in_reading_code(e):
            return True
        if "in file" in str(e) or "decompress" in str(e).lower() or "compression" in str(e):
            return True
    return False


def _last_branch(accessed: list[Any]) -> str | None:
    if not accessed:
        return None
    return getattr(accessed[-1], "branch", None)


_WRAPPER_PREFIXES = ("Failed processing", "Failed creating", "Failed to open")


def describe_failure(
    err: BaseException, chunk: Chunk | None = None, branch: str | None = None
) -> str:
    """``file: entries [a, b): Type: message (branch X)`` on one line.

    Generic wrappers (coffea's ``Exception("Failed processing file: ... The error
    was ...")``) are unwrapped to the exception that caused them; lines that only
    repeat the file name (uproot's ``in file ...``) are dropped.
    """
    while type(err) is Exception and err.__cause__ is not None:
        err = err.__cause__
    text = str(err)
    if type(err) is Exception and text.startswith(_WRAPPER_PREFIXES) and "error was:" in text:
        text = text.split("error was:", 1)[1]
    lines = [
        ln.strip()
        for ln in text.splitlines()
        if ln.strip() and not ln.strip().startswith(("in file ", "for file path "))
    ]
    message = " ".join(" ".join(lines).split())[:300]
    where = f"{chunk.where}: " if chunk is not None else ""
    tail = f" (branch {branch})" if branch and branch not in message else ""
    return f"{where}{type(err).__name__}: {message}{tail}"


def make_payload(
    workflow: Any, schema: type, datasets: dict[str, Dataset], block_size: int
) -> Payload:
    """The payload of a run: the workflow wrapped per block, its schema and dataset metadata."""
    meta = {name: {**ds.metadata, "format": ds.format} for name, ds in datasets.items()}
    blob = cloudpickle.dumps((ChunkKeyed(workflow, block_size), schema, meta))
    return Payload(sha256_bytes(blob), blob)


def cached_payloads() -> int:
    """How many payloads this process holds unpickled (at most 4)."""
    return len(_PAYLOADS)
