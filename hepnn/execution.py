"""Running a workflow over datasets with coffea's Runner, deterministically.

Three things coffea does not do for us (see DESIGN.md):

* **A merge that does not depend on chunking.** Executors merge chunk outputs in
  completion order, and float sums of weights depend on how events were grouped.
  Here every file is cut into fixed *blocks* of ``block_size`` entries; chunks are
  whole numbers of blocks. The workflow is called once per block and block
  outputs are summed along a fixed binary tree over the block index (a chunk
  returns the complete tree nodes it covers, merged left + right). The final sum
  per file walks the same tree, files and datasets in sorted order. So every
  histogram is bitwise identical for any chunk size (a multiple of the block),
  any executor, any worker count and any completion order.
* **Accounting.** Every chunk we expect is either processed (its entry count is
  checked) or recorded as skipped with its reason; a run whose counts do not add
  up raises :class:`~hepnn.errors.AccountingError`.
* **Chunking we own.** Chunks are made here from the pre-counted entries, so the
  same chunk list is known before, during and after the run (resume, retries).
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from coffea import processor
from coffea.processor import accumulate

from hepnn.config import ExecutorConfig
from hepnn.errors import AccountingError, InputError
from hepnn.samples import Dataset

ChunkKey = tuple[str, str, int, int]


@dataclass(frozen=True)
class Chunk:
    """One range of entries of one file."""

    dataset: str
    filename: str
    treename: str
    entrystart: int
    entrystop: int

    @property
    def key(self) -> ChunkKey:
        return (self.dataset, self.filename, self.entrystart, self.entrystop)


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
        for f in ds.files:
            for start in range(0, f.entries, size):
                if maxchunks is not None and n_ds >= maxchunks:
                    break
                stop = min(start + size, f.entries)
                chunks.append(Chunk(name, str(f.root_path), f.treename, start, stop))
                n_ds += 1
    return chunks


NodeKey = tuple[int, int]  # (level, index) in the binary tree over a file's blocks


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
    """Wrap a workflow: call it per block, return the chunk's tree nodes under its key."""

    def __init__(self, inner: processor.ProcessorABC, block_size: int) -> None:
        self.inner = inner
        self.block_size = block_size

    def process(self, events: Any) -> dict[ChunkKey, dict[str, Any]]:
        md = events.metadata
        start, stop = int(md["entrystart"]), int(md["entrystop"])
        key = (md["dataset"], md["filename"], start, stop)
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
        return {key: {"nodes": nodes, "entries": len(events)}}

    def postprocess(self, accumulator: Any) -> Any:
        return accumulator


@dataclass
class RunResult:
    """What a run produced: the merged output and the accounting."""

    output: dict[str, Any]
    entries_expected: dict[str, int]
    entries_processed: dict[str, int]
    chunks_skipped: dict[str, list[dict[str, Any]]]
    n_chunks: int
    wall_time: float

    def accounting(self) -> dict[str, dict[str, Any]]:
        return {
            ds: {
                "entries_expected": self.entries_expected[ds],
                "entries_processed": self.entries_processed.get(ds, 0),
                "entries_skipped": sum(c["entries"] for c in self.chunks_skipped.get(ds, [])),
                "chunks_skipped": self.chunks_skipped.get(ds, []),
            }
            for ds in self.entries_expected
        }


@contextlib.contextmanager
def make_executor(cfg: ExecutorConfig, *, status: bool = True) -> Iterator[Any]:
    """A coffea executor for the config; a dask LocalCluster is started and closed here."""
    if cfg.name == "iterative":
        yield processor.IterativeExecutor(status=status, retries=cfg.retries)
    elif cfg.name == "futures":
        yield processor.FuturesExecutor(workers=cfg.workers, status=status, retries=cfg.retries)
    else:
        try:
            from distributed import Client, LocalCluster
        except ImportError:  # pragma: no cover - depends on the install
            msg = "executor 'dask' needs the dask extra: pip install 'hepnn[dask]'"
            raise InputError(msg) from None
        if cfg.scheduler:
            with Client(cfg.scheduler) as client:
                yield processor.DaskExecutor(client=client, status=status, retries=cfg.retries)
        else:
            with (
                LocalCluster(
                    n_workers=cfg.workers,
                    threads_per_worker=cfg.threads_per_worker,
                    processes=True,
                    dashboard_address=None,
                ) as cluster,
                Client(cluster) as client,
            ):
                yield processor.DaskExecutor(client=client, status=status, retries=cfg.retries)


def _short(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:300] if text else ''}"


def run_workflow(
    workflow: processor.ProcessorABC,
    schema: type,
    datasets: dict[str, Dataset],
    executor: ExecutorConfig,
    *,
    maxchunks: int | None = None,
    status: bool = True,
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
        Executor settings.
    maxchunks
        Process only this many chunks per dataset (``--test``).
    status
        Show progress bars.

    Raises
    ------
    AccountingError
        When processed plus skipped entries differ from the expected entries.
    InputError
        When a chunk fails and ``skip_bad_files`` is off (names the file).
    """
    t0 = time.perf_counter()
    chunks = make_chunks(datasets, executor.chunksize, executor.block_size, maxchunks)
    expected = dict.fromkeys(datasets, 0)
    for c in chunks:
        expected[c.dataset] += c.entrystop - c.entrystart

    # The Runner only needs the metadata; we hand it premade work items so that the
    # chunk list is ours (see module docstring).
    runner_items = _work_items(chunks, datasets)
    with make_executor(executor, status=status) as ex:
        runner = processor.Runner(
            executor=ex,
            schema=schema,
            chunksize=executor.chunksize,
            skipbadfiles=executor.skip_bad_files,
            savemetrics=False,
        )
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                raw = (
                    runner.run(runner_items, _ChunkKeyed(workflow, executor.block_size))
                    if runner_items
                    else {}
                )
            except Exception as err:
                raise InputError(_describe_failure(err)) from err
    # coffea 2026 returns {"out": accumulator, "processed": ..., "exception": ...}
    done: dict[ChunkKey, Any] = (raw or {}).get("out", {}) if "out" in (raw or {}) else (raw or {})

    processed = dict.fromkeys(datasets, 0)
    skipped: dict[str, list[dict[str, Any]]] = {}
    reasons = [str(w.message) for w in caught if "skip" in str(w.message).lower()]
    for c in chunks:
        item = done.get(c.key)
        if item is None:
            skipped.setdefault(c.dataset, []).append(
                {
                    "file": c.filename,
                    "entrystart": c.entrystart,
                    "entrystop": c.entrystop,
                    "entries": c.entrystop - c.entrystart,
                    "reason": _match_reason(c, reasons),
                }
            )
            continue
        if item["entries"] != c.entrystop - c.entrystart:
            msg = f"{c.filename}: chunk [{c.entrystart}, {c.entrystop}) returned {item['entries']} events"
            raise AccountingError(msg)
        processed[c.dataset] += item["entries"]
    for name in datasets:
        n_skip = sum(s["entries"] for s in skipped.get(name, []))
        if processed[name] + n_skip != expected[name]:
            msg = (
                f"dataset {name}: processed {processed[name]} + skipped {n_skip} "
                f"!= expected {expected[name]} entries"
            )
            raise AccountingError(msg)

    output = merge_tree(done, executor.block_size)
    return RunResult(
        output=output,
        entries_expected=expected,
        entries_processed=processed,
        chunks_skipped=skipped,
        n_chunks=len(chunks),
        wall_time=time.perf_counter() - t0,
    )


def merge_tree(done: dict[ChunkKey, dict[str, Any]], block_size: int) -> dict[str, Any]:
    """Sum the chunks' tree nodes per file along the fixed tree, then files in sorted order.

    The result depends only on the blocks processed, not on chunking or run order.
    Nodes of skipped chunks are absent and left out of the sum.
    """
    per_file: dict[tuple[str, str], dict[NodeKey, Any]] = {}
    n_blocks: dict[tuple[str, str], int] = {}
    for (dataset, filename, _start, stop), item in done.items():
        fkey = (dataset, filename)
        per_file.setdefault(fkey, {}).update(item["nodes"])
        n_blocks[fkey] = max(n_blocks.get(fkey, 0), -(-stop // block_size))

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
    for fkey in sorted(per_file):
        n = n_blocks[fkey]
        top = max(0, (n - 1).bit_length())
        file_sum = value(per_file[fkey], top, 0, n)
        if file_sum is not None:
            total = file_sum if total is None else _add(total, file_sum)
    return total if total is not None else {}


def _work_items(chunks: list[Chunk], datasets: dict[str, Dataset]) -> list[Any]:
    from coffea.processor.executor import WorkItem

    meta = {name: {**ds.metadata, "format": ds.format} for name, ds in datasets.items()}
    return [
        WorkItem(
            dataset=c.dataset,
            filename=c.filename,
            treename=c.treename,
            entrystart=c.entrystart,
            entrystop=c.entrystop,
            fileuuid=b"",
            usermeta=meta[c.dataset],
        )
        for c in chunks
    ]


def _describe_failure(err: BaseException) -> str:
    """One line naming the file and chunk from coffea's wrapped exception."""
    text = " ".join(str(err).split())
    return f"processing failed: {text[:500]}"


def _match_reason(chunk: Chunk, reasons: list[str]) -> str:
    for r in reasons:
        if chunk.filename in r:
            return " ".join(r.split())[:300]
    return "chunk not returned by the executor (skip_bad_files)"
