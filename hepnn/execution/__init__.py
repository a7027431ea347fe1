"""Running a workflow over datasets, deterministically, on one core or a dask cluster.

- :mod:`~hepnn.execution.chunks` — files cut into chunks of whole accumulation blocks;
- :mod:`~hepnn.execution.merge` — the fixed binary-tree merge over blocks, so every
  histogram is bitwise identical for any chunk size, executor, worker count and
  completion order;
- :mod:`~hepnn.execution.task` — one chunk as a task, its failure as one line;
- :mod:`~hepnn.execution.executors` — iterative, futures (loky) and dask executors;
- :mod:`~hepnn.execution.run` — :func:`run_workflow`: retries, skips, accounting;
- :mod:`~hepnn.execution.checkpoints` — per-chunk checkpoints for ``--resume``.

See docs/architecture.md.
"""

from __future__ import annotations

from hepnn.execution.checkpoints import (
    CHECKPOINT_DIR,
    FINGERPRINT_FILE,
    ChunkCheckpoints,
    model_digest,
    run_fingerprint,
)
from hepnn.execution.chunks import Chunk, dyadic_cover, effective_chunksize, make_chunks
from hepnn.execution.executors import make_executor
from hepnn.execution.merge import TreeMerger, merge_tree
from hepnn.execution.run import RunResult, run_workflow
from hepnn.execution.task import describe_failure, run_chunk

__all__ = [
    "CHECKPOINT_DIR",
    "FINGERPRINT_FILE",
    "Chunk",
    "ChunkCheckpoints",
    "RunResult",
    "TreeMerger",
    "describe_failure",
    "dyadic_cover",
    "effective_chunksize",
    "make_chunks",
    "make_executor",
    "merge_tree",
    "model_digest",
    "run_chunk",
    "run_fingerprint",
    "run_workflow",
]
