"""``hepnn run --resume``: checkpoints, their invalidation, and atomic outputs."""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path
from typing import IO

import pytest
import yaml
from cli_helpers import hepnn_run, manifest
from click.testing import Result

from hepnn.execution import CHECKPOINT_DIR, model_digest, run_fingerprint

REPO = Path(__file__).resolve().parents[1]
PROBE = REPO / "tests" / "data" / "probe_workflow.py"
N_CHUNKS = 9  # 18,000 Higgs events in chunks (= blocks) of 2,000


def write_config(folder: Path, plugin: Path | None = None, **executor: object) -> Path:
    """A config running the probe workflow (copied into ``folder``) on the Higgs CSV."""
    folder.mkdir(parents=True, exist_ok=True)
    if plugin is None:
        plugin = folder / "probe.py"
        shutil.copy(PROBE, plugin)
    cfg = {
        "name": "probe",
        "workflow": f"{plugin}:Probe",
        "samples": str(REPO / "samples" / "higgs.yaml"),
        "executor": {
            "name": "iterative",
            "chunksize": 2000,
            "block_size": 2000,
            "retries": 0,
            **executor,
        },
        "outputs": {"plots": False, "hists_root": False},
    }
    path = folder / "probe.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def checkpoint_files(out: Path) -> list[Path]:
    return sorted((out / CHECKPOINT_DIR).glob("*/*.pkl"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """hists.pkl of an uninterrupted run."""
    folder = tmp_path_factory.mktemp("reference")
    res = hepnn_run(write_config(folder), folder / "out")
    assert res.exit_code == 0, res.output
    assert not (folder / "out" / CHECKPOINT_DIR).exists()  # cleared after a complete run
    return (folder / "out" / "hists.pkl").read_bytes()


def interrupt(
    monkeypatch: pytest.MonkeyPatch, config: Path, out: Path, at: int, *args: str
) -> Result:
    """Run with a Ctrl-C (KeyboardInterrupt) in the ``at``-th chunk."""
    counter = out.parent / f"counter-{at}"
    counter.unlink(missing_ok=True)
    monkeypatch.setenv("HEPNN_PROBE_INTERRUPT", f"{counter}:{at}:raise")
    res = hepnn_run(config, out, *args)
    monkeypatch.delenv("HEPNN_PROBE_INTERRUPT")
    assert res.exit_code == 130, res.output
    assert "interrupted" in res.output
    return res


def test_resume_after_ctrl_c_is_bitwise_identical(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reference: bytes
) -> None:
    config, out = write_config(tmp_path), tmp_path / "out"
    interrupt(monkeypatch, config, out, at=4)
    assert not (out / "manifest.json").exists()
    assert not (out / "hists.pkl").exists()
    assert len(checkpoint_files(out)) == 3

    res = hepnn_run(config, out, "--resume")
    assert res.exit_code == 0, res.output
    m = manifest(out)
    assert m["checkpoints"] == {"resume": True, "chunks_reused": 3, "damaged": 0}
    assert m["datasets"]["higgs_challenge"]["entries_processed"] == 18000
    assert (out / "hists.pkl").read_bytes() == reference
    assert not (out / CHECKPOINT_DIR).exists()


def test_resume_after_killed_process(tmp_path: Path, reference: bytes) -> None:
    """The process dies without any cleanup (os._exit) in the 6th chunk."""
    config, out = write_config(tmp_path), tmp_path / "out"
    env = {**os.environ, "HEPNN_PROBE_INTERRUPT": f"{tmp_path / 'counter'}:6:exit"}
    cmd = [sys.executable, "-m", "hepnn.cli", "run", str(config), "-o", str(out), "--quiet"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 9, proc.stderr
    assert not (out / "manifest.json").exists()
    assert len(checkpoint_files(out)) == 5
    assert not list((out / CHECKPOINT_DIR).rglob("*.tmp"))

    res = hepnn_run(config, out, "--resume")
    assert res.exit_code == 0, res.output
    assert manifest(out)["checkpoints"]["chunks_reused"] == 5
    assert (out / "hists.pkl").read_bytes() == reference


def test_changes_invalidate_checkpoints(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reference: bytes
) -> None:
    config, out = write_config(tmp_path), tmp_path / "out"

    # executor settings other than block_size do not change a histogram: reused
    interrupt(monkeypatch, config, out, at=3)
    res = hepnn_run(config, out, "--resume", "--set", "executor.retries=2")
    assert res.exit_code == 0, res.output
    assert manifest(out)["checkpoints"]["chunks_reused"] == 2

    # a config option the workflow sees
    interrupt(monkeypatch, config, out, at=4)
    res = hepnn_run(config, out, "--resume", "--set", "options.tag=changed")
    assert res.exit_code == 0, res.output
    assert manifest(out)["checkpoints"]["chunks_reused"] == 0

    # the workflow source
    interrupt(monkeypatch, config, out, at=4)
    plugin = tmp_path / "probe.py"
    plugin.write_text(plugin.read_text() + "\n# edited\n")
    res = hepnn_run(config, out, "--resume")
    assert res.exit_code == 0, res.output
    assert manifest(out)["checkpoints"]["chunks_reused"] == 0

    # no --resume: old checkpoints are deleted at the start, never used
    interrupt(monkeypatch, config, out, at=4)
    assert len(checkpoint_files(out)) == 3
    interrupt(monkeypatch, config, out, at=2)
    assert len(checkpoint_files(out)) == 1
    res = hepnn_run(config, out)
    assert res.exit_code == 0, res.output
    assert manifest(out)["checkpoints"] == {"resume": False, "chunks_reused": 0, "damaged": 0}
    assert (out / "hists.pkl").read_bytes() == reference


def test_fingerprint_parts(tmp_path: Path) -> None:
    cfg = {"name": "a", "options": {"x": 1}, "executor": {"workers": 2}, "outputs": {}}
    model = tmp_path / "net" / "model.json"
    model.parent.mkdir()
    model.write_text("{}")
    (model.parent / "model.pt").write_bytes(b"weights")

    def fp(**change: object) -> str:
        args = {
            "config": cfg,
            "workflow_sha256": "w" * 64,
            "models": {"net": model},
            "block_size": 1000,
            "datasets": {"d": {"is_mc": True}},
            **change,
        }
        return run_fingerprint(**args)["fingerprint"]  # type: ignore[arg-type]

    base = fp()
    assert fp(config={**cfg, "executor": {"workers": 8}, "outputs": {"plots": False}}) == base
    assert fp(config={**cfg, "options": {"x": 2}}) != base
    assert fp(workflow_sha256="v" * 64) != base
    assert fp(block_size=2000) != base
    assert fp(datasets={"d": {"is_mc": False}}) != base
    assert fp(models={}) != base
    digest = model_digest(model)
    (model.parent / "model.pt").write_bytes(b"other weights")
    assert model_digest(model) != digest
    assert fp() != base
    # a folder hashes its files' names and contents: the same files elsewhere, same digest
    copy = tmp_path / "copy"
    shutil.copytree(model.parent, copy)
    assert model_digest(copy) == model_digest(model.parent)
    (copy / "extra.txt").write_text("x")
    assert model_digest(copy) != model_digest(model.parent)
    assert model_digest(tmp_path / "nothing") == "missing"


def test_skipped_chunks_keep_checkpoints_and_resume_retries_them(
    tmp_path: Path, reference: bytes
) -> None:
    """A transient read failure: skipped (allowed), then --resume redoes only that chunk."""
    config = write_config(tmp_path, skip_bad_files=True)
    out = tmp_path / "out"
    flaky = ["--set", f"options.flaky_dir={tmp_path}", "--set", "options.flaky_start=[4000]"]
    res = hepnn_run(config, out, *flaky)
    assert res.exit_code == 0, res.output
    m = manifest(out)
    assert not m["complete"]
    (skip,) = m["datasets"]["higgs_challenge"]["chunks_skipped"]
    assert skip["entrystart"] == 4000
    assert "OSError: flaky read, first attempt at entry 4000" in skip["reason"]
    assert len(checkpoint_files(out)) == N_CHUNKS - 1

    res = hepnn_run(config, out, "--resume", *flaky)
    assert res.exit_code == 0, res.output
    m = manifest(out)
    assert m["complete"]
    assert m["checkpoints"]["chunks_reused"] == N_CHUNKS - 1
    assert (out / "hists.pkl").read_bytes() == reference


def test_interrupted_run_leaves_no_manifest_nor_partial_pickle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reference: bytes
) -> None:
    config, out = write_config(tmp_path), tmp_path / "out"
    assert hepnn_run(config, out).exit_code == 0
    assert (out / "manifest.json").exists()

    # interrupted while processing: the old manifest and the old outputs are gone
    # (cleared when the run started, hepnn.lock.clear_previous_run)
    interrupt(monkeypatch, config, out, at=2)
    assert not (out / "manifest.json").exists()
    assert not (out / "hists.pkl").exists()
    assert hepnn_run(config, out, "--resume").exit_code == 0
    assert (out / "hists.pkl").read_bytes() == reference
    interrupt(monkeypatch, config, out, at=2)

    # interrupted while writing hists.pkl: nothing half-written under the final name
    import hepnn.outputs
    from hepnn.files import atomic_write

    def half_write_pickle(path: Path, hists: object) -> None:
        def writer(fh: IO[bytes]) -> None:
            fh.write(pickle.dumps(hists)[:1000])
            raise KeyboardInterrupt

        atomic_write(path, writer)

    # the write_results stage imports write_pickle from hepnn.outputs when it runs
    monkeypatch.setattr(hepnn.outputs, "write_pickle", half_write_pickle)
    res = hepnn_run(config, out, "--resume")
    assert res.exit_code == 130, res.output
    assert not (out / "manifest.json").exists()
    assert not (out / "hists.pkl").exists()  # never half a file under the final name
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
