"""Fault tolerance: retries, skipping with reasons, dead worker processes, the merge tree."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest
import yaml
from cli_helpers import hepnn_run, manifest
from click.testing import Result
from hypothesis import given, settings
from hypothesis import strategies as st

from hepnn.execution import Chunk, TreeMerger, describe_failure, dyadic_cover, merge_tree

REPO = Path(__file__).resolve().parents[1]
PROBE = REPO / "tests" / "data" / "probe_workflow.py"


def write_config(
    folder: Path, samples: Path | None = None, options: dict | None = None, **executor: object
) -> Path:
    """A config running the probe workflow (copied into ``folder``)."""
    folder.mkdir(parents=True, exist_ok=True)
    plugin = folder / "probe.py"
    shutil.copy(PROBE, plugin)
    cfg = {
        "name": "probe",
        "workflow": f"{plugin}:Probe",
        "samples": str(samples or REPO / "samples" / "higgs.yaml"),
        "executor": {
            "name": "iterative",
            "chunksize": 2000,
            "block_size": 2000,
            "retries": 0,
            **executor,
        },
        "outputs": {"plots": False, "hists_root": False},
        "options": options or {},
    }
    path = folder / "probe.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def error_line(res: Result) -> str:
    lines = [ln for ln in res.output.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1, res.output
    return lines[0]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    folder = tmp_path_factory.mktemp("reference")
    res = hepnn_run(write_config(folder), folder / "out")
    assert res.exit_code == 0, res.output
    return (folder / "out" / "hists.pkl").read_bytes()


def test_retries_recover_transient_failures(tmp_path: Path, reference: bytes) -> None:
    config = write_config(tmp_path, options={"flaky_dir": str(tmp_path)}, retries=1)
    res = hepnn_run(config, tmp_path / "out")
    assert res.exit_code == 0, res.output
    m = manifest(tmp_path / "out")
    assert len(m["retries"]) == 9  # every chunk failed once, then worked
    assert "entries [2000, 4000): OSError: flaky read, first attempt at entry 2000" in "".join(
        m["retries"]
    )
    assert m["complete"]
    assert (tmp_path / "out" / "hists.pkl").read_bytes() == reference


def test_failed_chunk_without_skipping_exits_3(tmp_path: Path) -> None:
    config = write_config(tmp_path, options={"fail_start": [4000]}, retries=2)
    res = hepnn_run(config, tmp_path / "out")
    assert res.exit_code == 3, res.output
    line = error_line(res)
    assert "higgs_challenge_18k.csv: entries [4000, 6000): OSError:" in line
    assert "simulated unreadable basket at entry 4000" in line
    assert "failed 3 time(s)" in line
    assert "8 finished chunks are checkpointed" in line  # retries go to the back
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_skipped_chunks_recorded_with_reasons(tmp_path: Path) -> None:
    config = write_config(tmp_path, options={"fail_start": [4000, 10000]}, skip_bad_files=True)
    res = hepnn_run(config, tmp_path / "out", quiet=False)
    assert res.exit_code == 0, res.output
    acc = manifest(tmp_path / "out")["datasets"]["higgs_challenge"]
    assert acc["entries_processed"] == 14000
    assert acc["entries_skipped"] == 4000
    assert not acc["complete"]
    reasons = [c["reason"] for c in acc["chunks_skipped"]]
    assert [c["entrystart"] for c in acc["chunks_skipped"]] == [4000, 10000]
    assert reasons[1].endswith(
        "entries [10000, 12000): OSError: simulated unreadable basket at entry 10000"
    )
    summary = " ".join(res.output.split())
    assert "skipped chunk higgs_challenge:" in summary
    assert "OSError: simulated unreadable basket at entry 4000" in summary


def truncated_copy(src: Path, dst: Path) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: len(data) // 2])
    return dst


def samples_yaml(folder: Path, **datasets: Path) -> Path:
    spec = {"datasets": {n: {"format": "root", "files": [str(f)]} for n, f in datasets.items()}}
    path = folder / "samples.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture
def truncated_samples(tmp_path: Path, higgs_converted: object) -> Path:
    """The converted Higgs ROOT file, and a NanoAOD file truncated before its TTree header."""
    good = Path(higgs_converted.root_path)  # type: ignore[attr-defined]
    bad = truncated_copy(REPO / "samples" / "nanoaod" / "nano_dy.root", tmp_path / "truncated.root")
    return samples_yaml(tmp_path, good=good, broken=bad)


def test_truncated_data_skipped_per_chunk(tmp_path: Path, higgs_converted: object) -> None:
    """The tree header survives the cut: the pre-scan passes, chunks past the cut fail."""
    bad = truncated_copy(Path(higgs_converted.root_path), tmp_path / "cut.root")  # type: ignore[attr-defined]
    config = write_config(tmp_path, samples=samples_yaml(tmp_path, cut=bad), skip_bad_files=True)
    res = hepnn_run(config, tmp_path / "out")
    assert res.exit_code == 0, res.output
    acc = manifest(tmp_path / "out")["datasets"]["cut"]
    assert acc["entries_processed"] + acc["entries_skipped"] == acc["entries_expected"] == 18000
    assert 0 < acc["entries_processed"] < 18000
    first = acc["chunks_skipped"][0]
    assert first["reason"].startswith(f"{bad}: entries [{first['entrystart']}, ")
    assert "OSError: expected Chunk of length" in first["reason"]
    assert first["reason"].endswith("(branch Weight)")


def test_prescan_failure_is_a_skipped_file(tmp_path: Path, truncated_samples: Path) -> None:
    config = write_config(tmp_path, samples=truncated_samples, skip_bad_files=True)
    res = hepnn_run(config, tmp_path / "out", quiet=False)
    assert res.exit_code == 0, res.output
    m = manifest(tmp_path / "out")
    assert m["datasets"]["good"]["entries_processed"] == 18000
    broken = m["datasets"]["broken"]
    assert broken["entries_expected"] == 0
    assert not broken["complete"]
    (skip,) = broken["files_skipped"]
    assert skip["entries"] is None
    assert skip["file"].endswith("truncated.root")
    assert "truncated.root: cannot read ROOT file (OSError:" in skip["reason"]
    assert "skipped file broken:" in res.output
    assert not m["complete"]


def test_prescan_failure_without_skipping_is_one_line(
    tmp_path: Path, truncated_samples: Path
) -> None:
    config = write_config(tmp_path, samples=truncated_samples)
    res = hepnn_run(config, tmp_path / "out")
    assert res.exit_code == 2, res.output
    assert "truncated.root: cannot read ROOT file (OSError:" in error_line(res)
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_futures_worker_process_killed(tmp_path: Path, reference: bytes) -> None:
    """A worker dies (os._exit) in the first chunk: the pool is replaced, the chunk redone."""
    config = write_config(
        tmp_path, options={"crash_dir": str(tmp_path)}, name="futures", workers=2, retries=2
    )
    res = hepnn_run(config, tmp_path / "out")
    assert res.exit_code == 0, res.output
    m = manifest(tmp_path / "out")
    assert m["retries"]
    assert all("TerminatedWorkerError" in r for r in m["retries"])
    assert "{EXIT(17)}" in m["retries"][0]
    assert m["datasets"]["higgs_challenge"]["entries_processed"] == 18000
    assert (tmp_path / "out" / "hists.pkl").read_bytes() == reference


# --------------------------------------------------------------------------- unit level


def testdescribe_failure_unwraps_and_names_the_place() -> None:
    chunk = Chunk("d", "/data/conv.root", "Events", 100, 200, source="/data/in.csv")
    inner = ValueError("unrecognized compression algorithm: b'\\x00\\x00'\nin file /data/conv.root")
    try:
        try:
            raise inner
        except ValueError as e:
            msg = f"Failed processing file: WorkItem(...). The error was: {e!r}."
            raise Exception(msg) from e
    except Exception as wrapped:
        text = describe_failure(wrapped, chunk, branch="Jet_pt")
    assert text == (
        "/data/in.csv: entries [100, 200): ValueError: "
        "unrecognized compression algorithm: b'\\x00\\x00' (branch Jet_pt)"
    )
    multi = OSError("expected Chunk of length 146,\nreceived 0 bytes\nfor file path /x.root")
    assert describe_failure(multi) == "OSError: expected Chunk of length 146, received 0 bytes"


def _reference_sum(values: dict[int, float], n: int) -> float | None:
    """The fixed tree over blocks written out directly (None for an empty subtree)."""

    def node(level: int, index: int) -> float | None:
        if index << level >= n:
            return None
        if level == 0:
            return values.get(index)
        left, right = node(level - 1, 2 * index), node(level - 1, 2 * index + 1)
        if left is None or right is None:
            return left if right is None else right
        return left + right

    return node(max(0, (n - 1).bit_length()), 0)


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 40),
    chunk_blocks=st.integers(1, 9),
    seed=st.integers(0, 2**32 - 1),
    skip_fraction=st.sampled_from([0.0, 0.3]),
)
def test_tree_merger_is_order_and_chunking_independent(
    n: int, chunk_blocks: int, seed: int, skip_fraction: float
) -> None:
    rng = random.Random(seed)
    values = {i: rng.uniform(-1, 1) * 10 ** rng.randint(-8, 8) for i in range(n)}
    chunks = [(a, min(a + chunk_blocks, n)) for a in range(0, n, chunk_blocks)]
    kept = [c for c in chunks if rng.random() >= skip_fraction]
    rng.shuffle(kept)

    def chunk_nodes(a: int, b: int) -> dict[tuple[int, int], float]:
        return {
            (lv, i): _reference_sum({k - (i << lv): values[k] for k in range(a, b)}, 1 << lv)
            for lv, i in dyadic_cover(a, b)
        }

    merger = TreeMerger()
    for a, b in kept:
        merger.add("d", "f", chunk_nodes(a, b), n)
    present = {k: v for a, b in kept for k, v in values.items() if a <= k < b}
    expected = _reference_sum(present, n)
    assert merger.result() == ({} if expected is None else expected)
    done = {("d", "f", a, b): {"nodes": chunk_nodes(a, b)} for a, b in kept}
    assert merge_tree(done, 1) == merger.result()


def test_garbage_collected_only_when_memory_grew() -> None:
    """A full collection runs after a chunk only once RSS grew by GC_GROWTH_BYTES."""
    from hepnn.execution.task import GC_GROWTH_BYTES, collect_garbage

    base = 1  # below any real RSS: becomes the reference level
    assert not collect_garbage(rss=base)
    assert not collect_garbage(rss=base + GC_GROWTH_BYTES - 1)
    assert collect_garbage(rss=base + GC_GROWTH_BYTES)
    assert not collect_garbage(rss=base + GC_GROWTH_BYTES)  # the level after the collection
    assert collect_garbage(rss=base + 2 * GC_GROWTH_BYTES)
