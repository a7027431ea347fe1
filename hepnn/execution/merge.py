"""The fixed-block binary-tree merge that makes histograms independent of chunking.

Executors merge chunk outputs in completion order, and float sums of weights depend
on how events were grouped. Here the workflow is called once per block
(:class:`ChunkKeyed`) and block outputs are summed along a fixed binary tree over the
block index (a chunk returns the complete tree nodes it covers, merged left + right).
The final sum per file walks the same tree, files and datasets in sorted order. So
every histogram is bitwise identical for any chunk size (a multiple of the block),
any executor, any worker count and any completion order. Sibling nodes are merged as
soon as both have arrived (:class:`TreeMerger`), so memory stays flat however many
chunks a run has. See docs/architecture.md.

Two block outputs are added with coffea's own :func:`coffea.processor.accumulate`
(left + right, never in place on an input), so anything coffea can add merges here:
nested dicts, ``hist.Hist``, cutflow ``defaultdict(int)`` s, ``column_accumulator``
(concatenated in block order, i.e. the file's event order), ``value_accumulator``,
sets, numbers, numpy arrays, lists (concatenated).
"""

from __future__ import annotations

from typing import Any

from coffea import processor
from coffea.processor import accumulate

from hepnn.errors import AccountingError
from hepnn.execution.chunks import ChunkKey, NodeKey, dyadic_cover


def _add(left: Any, right: Any) -> Any:
    """left + right, always in this order (float addition is not associative)."""
    return accumulate([left, right])


class ChunkKeyed(processor.ProcessorABC):
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
