"""Running a workflow over datasets, deterministically, on one core or a dask cluster.

What coffea's ``Runner`` does not do for us (see DESIGN.md), and how it is done here:

* **A merge that does not depend on chunking.** Executors merge chunk outputs in
  completion order, and float sums of weights depend on how events were grouped.
  Here every file is cut into fixed *blocks* of ``block_size`` entries; chunks are
  whole numbers of blocks. The workflow is called once per block and block
  outputs are summed along a fixed binary tree over the block index (a chunk
  returns the complete tree nodes it covers, merged left + right). The final sum
  per file walks the same tree, files and datasets in sorted order. So every
  histogram is bitwise identical for any chunk size (a multiple of the block),
  any executor, any worker count and any completion order. Sibling nodes are
  merged as soon as both have arrived (:class:`TreeMerger`), so memory stays
  flat however many chunks a run has.
* **Every failure captured with its reason.** coffea's ``skipbadfiles`` drops a
  chunk with only a warning (emitted on the worker, so the main process never
  sees it) and wraps exceptions two or three times. Here each chunk is one task
  submitted by :func:`run_workflow` to the executor's pool; the task opens the
  file with uproot and builds the events with coffea's ``NanoEventsFactory``
  (virtual mode, like the ``Runner``), calls the workflow, and returns either the
  chunk's tree nodes or the failure as text (``file: entries [a, b): Type:
  message (branch ...)``). The main loop resubmits a chunk that failed reading
  (or whose worker died) up to ``retries`` times, possibly on another worker; an
  exception of the workflow's own code is not retried, it would fail again. Then
  the chunk is either recorded as skipped (``skip_bad_files``) or the run stops
  with :class:`~hepnn.errors.ChunkError` (exit status 3) — the chunks finished
  so far are checkpointed. A dask worker that dies is handled by the scheduler
  (its tasks are rerun elsewhere); if the scheduler gives up (``KilledWorker``)
  that counts as a failed attempt too. coffea's executors retry *every*
  exception in place (iterative/futures: same process, at once; dask: the
  task's ``retries``) and, with ``skipbadfiles``, swallow ``OSError`` after the
  last one with a warning raised on the worker.
* **Accounting.** Every chunk we expect is either processed (its entry count is
  checked) or recorded as skipped with its reason; a run whose counts do not add
  up raises :class:`~hepnn.errors.AccountingError`.
* **Checkpoints.** Finished chunks are written by the main process to a
  :class:`~hepnn.checkpoints.ChunkCheckpoints` store as they arrive; ``--resume``
  loads them instead of resubmitting.

Executors: ``iterative`` runs chunks in this process; ``futures`` in a loky
process pool (coffea's default pool); ``dask`` on a ``distributed.LocalCluster``
started here, or on an existing cluster (``executor.scheduler``). The workflow
travels to worker processes with cloudpickle (a workflow loaded from a file is
registered *by value*, see :mod:`hepnn.workflow`), so workers need hepnn
installed but not the workflow file.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import gc
import hashlib
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import cloudpickle
from coffea import processor
from coffea.processor import accumulate

from hepnn.config import ExecutorConfig
from hepnn.errors import AccountingError, ChunkError, InputError
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


def _add(left: Any, right: Any) -> Any:
    """left + right, always in this order (float addition is not associative)."""
    return accumulate([left, right])


class _ChunkKeyed(processor.ProcessorABC):
    """Wrap a workflow: call it per block, return the chunk's tree nodes and entry count."""

    def __init__(self, inner: processor.ProcessorABC, block_size: int) -> None:
        self.inner = inner
        self.block_size = block_size

    def process(self, events: Any) -> dict[str, Any]:
        md = events.metadata
        start, stop = int(md["entrystart"]), int(md["entrystop"])
        b = self.block_size
        if start % b:
            msg = f"chunk [{start}, {stop}) of {md['filename']} is not aligned to blocks of {b}"
            raise AccountingError(msg)

        def node(level: int, index: int) -> Any:
            if level == 0:
                lo = index * b - start
                return self.inner.process(events[lo : min(lo + b, stop - start)])
            return _add(node(level - 1, 2 * index), node(level - 1, 2 * index + 1))

        nodes = {nk: node(*nk) for nk in dyadic_cover(start // b, -(-stop // b))}
        return {"nodes": nodes, "entries": len(events)}

    def postprocess(self, accumulator: Any) -> Any:
        return accumulator


class TreeMerger:
    """Collect chunk tree nodes per file, merging siblings as soon as both are there.

    The stored value of a node is exactly what :func:`merge_tree`'s walk would
    compute for it, so merging early changes memory use, never a bit of the result.
    """

    def __init__(self) -> None:
        self.nodes: dict[tuple[str, str], dict[NodeKey, Any]] = {}
        self.n_blocks: dict[tuple[str, str], int] = {}

    def add(self, dataset: str, filename: str, nodes: dict[NodeKey, Any], n_blocks: int) -> None:
        """Add a chunk's nodes of a file with ``n_blocks`` blocks in total."""
        fkey = (dataset, filename)
        n = self.n_blocks[fkey] = max(self.n_blocks.get(fkey, 0), n_blocks)
        store = self.nodes.setdefault(fkey, {})
        top = max(0, (n - 1).bit_length())
        for node_key, value in nodes.items():
            store[node_key] = value
            level, index = node_key
            while level < top:
                sibling = index ^ 1
                parent = (level + 1, index >> 1)
                if sibling << level >= n:  # right sibling lies past the file's end
                    store[parent] = store.pop((level, index))
                elif (level, sibling) in store:
                    lo, hi = sorted((index, sibling))
                    store[parent] = _add(store.pop((level, lo)), store.pop((level, hi)))
                else:
                    break
                level, index = parent

    def result(self) -> dict[str, Any]:
        """Per file the fixed tree's sum, then files in sorted order; ``{}`` if empty."""

        def value(nodes: dict[NodeKey, Any], level: int, index: int, n: int) -> Any:
            if (level, index) in nodes:
                return nodes[(level, index)]
            if level == 0 or index << level >= n:
                return None
            left = value(nodes, level - 1, 2 * index, n)
            right = value(nodes, level - 1, 2 * index + 1, n)
            if left is None or right is None:
                return left if right is None else right
            return _add(left, right)

        total: Any = None
        for fkey in sorted(self.nodes):
            n = self.n_blocks[fkey]
            file_sum = value(self.nodes[fkey], max(0, (n - 1).bit_length()), 0, n)
            if file_sum is not None:
                total = file_sum if total is None else _add(total, file_sum)
        return total if total is not None else {}


def merge_tree(done: dict[ChunkKey, dict[str, Any]], block_size: int) -> dict[str, Any]:
    """Sum the chunks' tree nodes per file along the fixed tree, then files in sorted order.

    The result depends only on the blocks processed, not on chunking or run order.
    Nodes of skipped chunks are absent and left out of the sum.
    """
    n_blocks: dict[tuple[str, str], int] = {}
    for dataset, filename, _start, stop in done:
        fkey = (dataset, filename)
        n_blocks[fkey] = max(n_blocks.get(fkey, 0), -(-stop // block_size))
    merger = TreeMerger()
    for (dataset, filename, _start, _stop), item in sorted(done.items()):
        merger.add(dataset, filename, item["nodes"], n_blocks[(dataset, filename)])
    return merger.result()


# --------------------------------------------------------------------------- chunk task


@dataclass(frozen=True)
class _Payload:
    """What every chunk task needs besides the chunk: sent once per worker process."""

    digest: str
    blob: bytes  # cloudpickle of (wrapped processor, schema, dataset metadata)


_PAYLOADS: dict[str, tuple[Any, type, dict[str, dict[str, Any]]]] = {}


def _unpack(payload: _Payload) -> tuple[Any, type, dict[str, dict[str, Any]]]:
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


def run_chunk(payload: _Payload, chunk: Chunk) -> dict[str, Any]:
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
            "error": _describe_failure(err, chunk, branch),
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


def _describe_failure(
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


# --------------------------------------------------------------------------- executors


class _Iterative:
    """Runs each chunk in this process when it is collected."""

    name = "iterative"

    def __init__(self) -> None:
        self._queue: list[tuple[Chunk, int]] = []
        self._payload: _Payload | None = None

    def start(self, payload: _Payload) -> None:
        self._payload = payload

    def submit(self, chunk: Chunk, attempt: int) -> None:
        self._queue.append((chunk, attempt))

    def pending(self) -> int:
        return len(self._queue)

    def next_done(self) -> tuple[Chunk, int, dict[str, Any]]:
        chunk, attempt = self._queue.pop(0)
        assert self._payload is not None
        return chunk, attempt, run_chunk(self._payload, chunk)

    def cancel_all(self) -> None:
        self._queue.clear()

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "workers": 1}


class _Futures:
    """A loky process pool (coffea's futures pool); a broken pool is replaced.

    At most two chunks per worker are in the pool at a time, so a dying worker
    (which fails every future of a loky pool) costs few retries.
    """

    name = "futures"

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._pool: Any = None
        self._futures: dict[concurrent.futures.Future[Any], tuple[Chunk, int]] = {}
        self._backlog: list[tuple[Chunk, int]] = []
        self._payload: _Payload | None = None

    def _new_pool(self) -> Any:
        import loky

        return loky.ProcessPoolExecutor(max_workers=self.workers)

    def start(self, payload: _Payload) -> None:
        self._payload = payload
        self._pool = self._new_pool()

    def submit(self, chunk: Chunk, attempt: int) -> None:
        self._backlog.append((chunk, attempt))

    def _top_up(self) -> None:
        while self._backlog and len(self._futures) < 2 * self.workers:
            chunk, attempt = self._backlog.pop(0)
            try:
                fut = self._pool.submit(run_chunk, self._payload, chunk)
            except RuntimeError:  # BrokenProcessPool / ShutdownExecutorError: a worker died
                self._pool.shutdown(wait=False, kill_workers=True)
                self._pool = self._new_pool()
                fut = self._pool.submit(run_chunk, self._payload, chunk)
            self._futures[fut] = (chunk, attempt)

    def pending(self) -> int:
        return len(self._futures) + len(self._backlog)

    def next_done(self) -> tuple[Chunk, int, dict[str, Any]]:
        self._top_up()
        done, _ = concurrent.futures.wait(
            list(self._futures), return_when=concurrent.futures.FIRST_COMPLETED
        )
        fut = next(iter(done))
        chunk, attempt = self._futures.pop(fut)
        try:
            return chunk, attempt, fut.result()
        except Exception as err:  # the worker process died (TerminatedWorkerError...)
            return chunk, attempt, {"error": _describe_failure(err, chunk)}

    def cancel_all(self) -> None:
        for fut in self._futures:
            fut.cancel()
        self._futures.clear()
        self._backlog.clear()

    def close(self, *, failed: bool) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=not failed, kill_workers=failed)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "workers": self.workers}


class _Dask:
    """Chunks as tasks on a dask cluster; the payload is one task all chunks depend on."""

    name = "dask"

    def __init__(self, client: Any) -> None:
        from distributed import as_completed

        self.client = client
        self._ac = as_completed([], with_results=False)
        self._futures: dict[str, tuple[Chunk, int]] = {}
        self._payload_future: Any = None
        self._run = uuid.uuid4().hex[:8]

    def start(self, payload: _Payload) -> None:
        # a task, not client.scatter: if the worker holding it dies it is recomputed
        self._payload_future = self.client.submit(
            _identity, payload, key=f"hepnn-payload-{payload.digest[:12]}-{self._run}"
        )

    def submit(self, chunk: Chunk, attempt: int) -> None:
        key = f"hepnn-chunk-{self._run}-{uuid.uuid4().hex[:8]}-a{attempt}"
        fut = self.client.submit(run_chunk, self._payload_future, chunk, key=key, retries=0)
        self._futures[fut.key] = (chunk, attempt)
        self._ac.add(fut)

    def pending(self) -> int:
        return len(self._futures)

    def next_done(self) -> tuple[Chunk, int, dict[str, Any]]:
        fut = next(self._ac)
        chunk, attempt = self._futures.pop(fut.key)
        try:
            out = fut.result()
        except Exception as err:  # KilledWorker after the scheduler's allowed failures
            out = {"error": _describe_failure(err, chunk)}
        fut.release()
        return chunk, attempt, out

    def cancel_all(self) -> None:
        futures = list(self._ac.futures)
        self._ac.clear()
        if futures:
            self.client.cancel(futures)
        self._futures.clear()

    def describe(self) -> dict[str, Any]:
        info = self.client.scheduler_info()
        workers = info.get("workers", {})
        return {
            "name": self.name,
            "scheduler": info.get("address", ""),
            "workers": len(workers),
            "threads": sum(int(w.get("nthreads", 0)) for w in workers.values()),
            "dashboard": self.client.dashboard_link or "",
        }


def _identity(x: Any) -> Any:
    return x


@contextlib.contextmanager
def make_executor(cfg: ExecutorConfig) -> Iterator[Any]:
    """The executor for the config; a dask LocalCluster or pool is started and closed here.

    Raises
    ------
    InputError
        dask is not installed, or the scheduler at ``cfg.scheduler`` cannot be reached.
    """
    if cfg.name == "iterative":
        yield _Iterative()
    elif cfg.name == "futures":
        ex = _Futures(cfg.workers)
        failed = True
        try:
            yield ex
            failed = False
        finally:
            ex.close(failed=failed)
    else:
        try:
            from distributed import Client, LocalCluster
        except ImportError:  # pragma: no cover - depends on the install
            msg = "executor 'dask' needs the dask extra: pip install 'hepnn[dask]'"
            raise InputError(msg) from None
        if cfg.scheduler:
            try:
                client = Client(cfg.scheduler)  # distributed.comm.timeouts.connect applies
            except OSError as err:
                msg = (
                    f"executor.scheduler {cfg.scheduler}: cannot connect ({_describe_failure(err)})"
                )
                raise InputError(msg) from None
            with client:
                yield _Dask(client)
        else:
            with (
                LocalCluster(
                    n_workers=cfg.workers,
                    threads_per_worker=cfg.threads_per_worker,
                    processes=True,
                    # a free port: None still binds 8787 and fails when another cluster has it
                    dashboard_address=":0",
                ) as cluster,
                Client(cluster) as client,
            ):
                yield _Dask(client)


# --------------------------------------------------------------------------- the run


@dataclass
class RunResult:
    """What a run produced: the merged output and the accounting."""

    output: dict[str, Any]
    entries_expected: dict[str, int]
    entries_processed: dict[str, int]
    chunks_skipped: dict[str, list[dict[str, Any]]]
    n_chunks: int
    wall_time: float
    files_skipped: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    chunks_reused: int = 0
    retries: list[str] = field(default_factory=list)
    executor_info: dict[str, Any] = field(default_factory=dict)

    def accounting(self) -> dict[str, dict[str, Any]]:
        """Per dataset: expected, processed, skipped entries; skipped chunks and files.

        ``entries_expected`` counts the files whose entries could be counted; a file
        that could not even be opened (``skip_bad_files``) is listed under
        ``files_skipped`` with ``entries: null`` and makes ``complete`` false.
        """
        return {
            ds: {
                "entries_expected": self.entries_expected[ds],
                "entries_processed": self.entries_processed.get(ds, 0),
                "entries_skipped": sum(c["entries"] for c in self.chunks_skipped.get(ds, [])),
                "chunks_skipped": self.chunks_skipped.get(ds, []),
                "files_skipped": self.files_skipped.get(ds, []),
                "complete": not self.chunks_skipped.get(ds) and not self.files_skipped.get(ds),
            }
            for ds in self.entries_expected
        }


def _payload(workflow: Any, schema: type, datasets: dict[str, Dataset], block_size: int) -> Any:
    meta = {name: {**ds.metadata, "format": ds.format} for name, ds in datasets.items()}
    blob = cloudpickle.dumps((_ChunkKeyed(workflow, block_size), schema, meta))
    return _Payload(hashlib.sha256(blob).hexdigest(), blob)


def run_workflow(
    workflow: processor.ProcessorABC,
    schema: type,
    datasets: dict[str, Dataset],
    executor: ExecutorConfig,
    *,
    maxchunks: int | None = None,
    status: bool = True,
    checkpoints: Any = None,
) -> RunResult:
    """Process every chunk of every dataset and merge outputs in a fixed order.

    Parameters
    ----------
    workflow
        The processor (a :class:`hepnn.workflow.Workflow`).
    schema
        The coffea schema class the workflow reads events with.
    datasets
        Resolved datasets with entry counts (:func:`hepnn.samples.resolve_samples`).
    executor
        Executor settings (name, workers, retries, skip_bad_files, block_size...).
    maxchunks
        Process only this many chunks per dataset (``--test``).
    status
        Show a progress bar.
    checkpoints
        A :class:`hepnn.checkpoints.ChunkCheckpoints`: finished chunks are loaded
        from it (``--resume``) and saved to it as they arrive.

    Raises
    ------
    ChunkError
        A chunk failed ``retries + 1`` times and ``skip_bad_files`` is off (names
        the file, entry range, exception and branch). Chunks finished before are
        in ``checkpoints``.
    AccountingError
        When processed plus skipped entries differ from the expected entries.
    """
    from hepnn.progress import step_progress

    t0 = time.perf_counter()
    block = executor.block_size
    chunks = make_chunks(datasets, executor.chunksize, block, maxchunks)
    expected = dict.fromkeys(datasets, 0)
    for c in chunks:
        expected[c.dataset] += c.entrystop - c.entrystart
    n_blocks = {
        (name, str(f.root_path)): -(-f.entries // block)
        for name, ds in datasets.items()
        for f in ds.files
    }
    processed = dict.fromkeys(datasets, 0)
    skipped: dict[str, list[dict[str, Any]]] = {}
    retry_log: list[str] = []
    merger = TreeMerger()

    def accept(c: Chunk, item: dict[str, Any]) -> None:
        if item["entries"] != c.entrystop - c.entrystart:
            msg = f"{c.where}: returned {item['entries']} events"
            raise AccountingError(msg)
        processed[c.dataset] += item["entries"]
        merger.add(c.dataset, c.filename, item["nodes"], n_blocks[(c.dataset, c.filename)])

    keys: dict[Chunk, str] = {}
    todo: list[Chunk] = []
    for c in chunks:
        if checkpoints is not None:
            keys[c] = checkpoints.chunk_key(
                c.dataset, c.filename, c.treename, c.entrystart, c.entrystop
            )
            item = checkpoints.load(keys[c])
            if item is not None:
                accept(c, item)
                continue
        todo.append(c)
    reused = len(chunks) - len(todo)
    executor_info: dict[str, Any] = {}

    if todo:
        with (
            make_executor(executor) as ex,
            step_progress("Processing", len(todo), enabled=status) as advance,
        ):
            ex.start(_payload(workflow, schema, datasets, block))
            executor_info = ex.describe()
            for c in todo:
                ex.submit(c, 0)
            while ex.pending():
                c, attempt, out = ex.next_done()
                if "error" in out:
                    if attempt < executor.retries and out.get("retry", True):
                        retry_log.append(f"attempt {attempt + 1}: {out['error']}")
                        ex.submit(c, attempt + 1)
                        continue
                    if not executor.skip_bad_files:
                        ex.cancel_all()
                        n_done = (
                            0 if checkpoints is None else checkpoints.saved + checkpoints.reused
                        )
                        done_note = (
                            f"; {n_done} finished chunks are checkpointed "
                            "(rerun with --resume after fixing it)"
                            if n_done
                            else ""
                        )
                        how = (
                            f"failed {attempt + 1} time(s); set executor.skip_bad_files: true "
                            "to skip such chunks"
                            if out.get("retry", True)
                            else "raised by the workflow, not retried"
                        )
                        raise ChunkError(f"{out['error']} [{how}{done_note}]")
                    skipped.setdefault(c.dataset, []).append(
                        {
                            "file": c.source or c.filename,
                            "entrystart": c.entrystart,
                            "entrystop": c.entrystop,
                            "entries": c.entrystop - c.entrystart,
                            "attempts": attempt + 1,
                            "reason": out["error"],
                        }
                    )
                    advance(info=f"{sum(map(len, skipped.values()))} skipped")
                    continue
                accept(c, out)
                if checkpoints is not None:
                    checkpoints.save(keys[c], out)
                advance()

    for name in datasets:
        n_skip = sum(s["entries"] for s in skipped.get(name, []))
        if processed[name] + n_skip != expected[name]:
            msg = (
                f"dataset {name}: processed {processed[name]} + skipped {n_skip} "
                f"!= expected {expected[name]} entries"
            )
            raise AccountingError(msg)

    files_skipped = {n: list(ds.skipped_files) for n, ds in datasets.items() if ds.skipped_files}
    return RunResult(
        output=merger.result(),
        entries_expected=expected,
        entries_processed=processed,
        chunks_skipped=skipped,
        n_chunks=len(chunks),
        wall_time=time.perf_counter() - t0,
        files_skipped=files_skipped,
        chunks_reused=reused,
        retries=retry_log,
        executor_info=executor_info,
    )
