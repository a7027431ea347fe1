"""Executors: where chunk tasks run, behind one small interface.

``iterative`` runs chunks in this process; ``futures`` in a loky process pool
(coffea's default pool); ``dask`` on a ``distributed.LocalCluster`` started here, or
on an existing cluster (``executor.scheduler``). Each executor has ``start(payload)``,
``submit(chunk, attempt)``, ``pending()``, ``next_done()`` (a finished chunk, its
attempt and :func:`~hepnn.execution.task.run_chunk`'s result), ``cancel_all()`` and
``describe()``; :func:`make_executor` starts and closes one.

A dask worker that dies is handled by the scheduler (its tasks are rerun
elsewhere); if the scheduler gives up (``KilledWorker``) the result is a failed
attempt like any other. A dying loky worker fails its futures; the pool is
replaced.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import uuid
from collections.abc import Iterator
from typing import Any

from hepnn.config import ExecutorConfig
from hepnn.errors import InputError
from hepnn.execution.chunks import Chunk
from hepnn.execution.task import Payload, describe_failure, run_chunk


class _Iterative:
    """Runs each chunk in this process when it is collected."""

    name = "iterative"

    def __init__(self) -> None:
        self._queue: list[tuple[Chunk, int]] = []
        self._payload: Payload | None = None

    def start(self, payload: Payload) -> None:
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
        self._payload: Payload | None = None

    def _new_pool(self) -> Any:
        import loky

        return loky.ProcessPoolExecutor(max_workers=self.workers)

    def start(self, payload: Payload) -> None:
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
            return chunk, attempt, {"error": describe_failure(err, chunk)}

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

    def start(self, payload: Payload) -> None:
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
            out = {"error": describe_failure(err, chunk)}
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
                    f"executor.scheduler {cfg.scheduler}: cannot connect ({describe_failure(err)})"
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
