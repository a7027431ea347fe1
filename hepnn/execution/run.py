"""Running a workflow over datasets: submit, retry, skip, account, checkpoint, merge.

What coffea's ``Runner`` does not do for us, and how :func:`run_workflow` does it:

* **Every failure captured with its reason.** The main loop resubmits a chunk that
  failed reading (or whose worker died) up to ``retries`` times, possibly on another
  worker; an exception of the workflow's own code is not retried, it would fail
  again. Then the chunk is either recorded as skipped (``skip_bad_files``) or the
  run stops with :class:`~hepnn.errors.ChunkError` (exit status 3) — the chunks
  finished so far are checkpointed. coffea's executors retry *every* exception in
  place (iterative/futures: same process, at once; dask: the task's ``retries``)
  and, with ``skipbadfiles``, swallow ``OSError`` after the last one with a
  warning raised on the worker.
* **Accounting.** Every chunk we expect is either processed (its entry count is
  checked) or recorded as skipped with its reason; a run whose counts do not add
  up raises :class:`~hepnn.errors.AccountingError`.
* **Checkpoints.** Finished chunks are written by the main process to a
  :class:`~hepnn.execution.checkpoints.ChunkCheckpoints` store as they arrive;
  ``--resume`` loads them instead of resubmitting.
* **A merge that does not depend on chunking** (:mod:`hepnn.execution.merge`).

See docs/architecture.md.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from coffea import processor

from hepnn.config import ExecutorConfig
from hepnn.errors import AccountingError, ChunkError
from hepnn.execution.chunks import Chunk, make_chunks
from hepnn.execution.executors import make_executor
from hepnn.execution.merge import TreeMerger
from hepnn.execution.task import make_payload
from hepnn.samples import Dataset

if TYPE_CHECKING:
    from hepnn.columns import ColumnSpill


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


def run_workflow(
    workflow: processor.ProcessorABC,
    schema: type,
    datasets: dict[str, Dataset],
    executor: ExecutorConfig,
    *,
    maxchunks: int | None = None,
    status: bool = True,
    checkpoints: Any = None,
    spill: ColumnSpill | None = None,
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
        A :class:`hepnn.execution.checkpoints.ChunkCheckpoints`: finished chunks are loaded
        from it (``--resume``) and saved to it as they arrive.
    spill
        A :class:`hepnn.columns.ColumnSpill`: the per-event columns of each arriving chunk
        are written to part files and only their paths are merged, so memory does not grow
        with the number of events (default: kept in memory).

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
        nodes = item["nodes"]
        if spill is not None:  # a new dict: ``item`` is checkpointed as it came
            nodes = {k: spill.spill(v) for k, v in nodes.items()}
        merger.add(c.dataset, c.filename, nodes, n_blocks[(c.dataset, c.filename)])

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
            ex.start(make_payload(workflow, schema, datasets, block))
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
