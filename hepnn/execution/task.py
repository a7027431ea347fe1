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
from typing import Any

import cloudpickle

from hepnn.execution.chunks import Chunk
from hepnn.execution.merge import ChunkKeyed
from hepnn.files import sha256_bytes
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


_GC = {"since": 0.0, "cost": 0.01}


def _collect_garbage(seconds: float) -> None:
    """Run the cycle collector once chunk time reaches 10x its last cost.

    NanoEvents arrays hold reference cycles that keep a chunk's columns alive;
    CPython's collector counts objects, not bytes, so it rarely runs and memory
    grows by a chunk's columns per chunk (measured: +50 MB per 100k Higgs events).
    A full collection costs ~0.3 s in a process with torch loaded, so it is paced
    to cost at most ~10% of the processing time.
    """
    _GC["since"] += seconds
    if _GC["since"] >= 10 * _GC["cost"]:
        t0 = time.perf_counter()
        gc.collect()
        _GC["cost"] = time.perf_counter() - t0
        _GC["since"] = 0.0


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
        branch = _last_branch(accessed) if read_error else None
        out = {
            "error": describe_failure(err, chunk, branch),
            "retry": read_error,  # an error of the workflow itself would fail again
        }
    del accessed
    out["seconds"] = time.perf_counter() - t0
    out["pid"] = os.getpid()
    _collect_garbage(out["seconds"])
    return out


def _events_and_process(
    wrapped: Any,
    schema: type,
    meta: dict[str, dict[str, Any]],
    chunk: Chunk,
    accessed: list[Any],
) -> dict[str, Any]:
    import uproot
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
    with uproot.open({chunk.filename: None}, timeout=60) as file:
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
        return wrapped.process(events)


def _exception_chain(err: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    cur: BaseException | None = err
    while cur is not None and cur not in chain:
        chain.append(cur)
        cur = cur.__cause__ or cur.__context__
    return chain


def _is_read_error(err: BaseException) -> bool:
    for e in _exception_chain(err):
        mod = type(e).__module__
        if isinstance(e, OSError) or mod.startswith(("uproot", "zlib", "lz4", "zstandard")):
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
