"""The dask executor: a LocalCluster from the CLI, an existing scheduler, a worker killed."""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cli_helpers import hepnn_run, manifest
from click.testing import CliRunner

from hepnn.cli import main

pytestmark = pytest.mark.dask

REPO = Path(__file__).resolve().parents[1]
PROBE = REPO / "tests" / "data" / "probe_workflow.py"


def write_config(folder: Path, options: dict | None = None, **executor: object) -> Path:
    """The probe workflow (a plugin file only this test knows) on the Higgs CSV, 9 chunks."""
    folder.mkdir(parents=True, exist_ok=True)
    plugin = folder / "probe.py"
    shutil.copy(PROBE, plugin)
    cfg = {
        "name": "probe",
        "workflow": f"{plugin}:Probe",
        "samples": str(REPO / "samples" / "higgs.yaml"),
        "executor": {"chunksize": 2000, "block_size": 2000, "retries": 0, **executor},
        "outputs": {"plots": False, "hists_root": False},
        "options": options or {},
    }
    path = folder / "probe.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """hists.pkl of the iterative executor."""
    folder = tmp_path_factory.mktemp("reference")
    res = hepnn_run(write_config(folder), folder / "out")
    assert res.exit_code == 0, res.output
    return (folder / "out" / "hists.pkl").read_bytes()


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    """An 'existing' cluster: two single-threaded worker processes, and a client to it."""
    from distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
        ) as lc,
        Client(lc) as client,
    ):
        yield client


def test_local_cluster_from_cli(tmp_path: Path, reference: bytes) -> None:
    """``--executor dask --workers 2 --threads 2`` starts a LocalCluster; same bits."""
    out = tmp_path / "out"
    args = ("--executor", "dask", "--workers", "2", "--threads", "2")
    res = hepnn_run(write_config(tmp_path), out, *args)
    assert res.exit_code == 0, res.output
    used = manifest(out)["executor_used"]
    assert used["name"] == "dask"
    assert used["workers"] == 2
    assert used["threads"] == 4
    assert (out / "hists.pkl").read_bytes() == reference


def test_existing_scheduler(tmp_path: Path, cluster: Any, reference: bytes) -> None:
    """``--scheduler ADDRESS`` runs on that cluster; the plugin reaches its workers by value."""
    address = cluster.scheduler.address
    out = tmp_path / "out"
    res = hepnn_run(write_config(tmp_path), out, "--scheduler", address)
    assert res.exit_code == 0, res.output
    m = manifest(out)
    assert m["executor_used"]["scheduler"] == address
    assert m["executor"]["name"] == "dask"  # --scheduler implies the dask executor
    assert m["datasets"]["higgs_challenge"]["entries_processed"] == 18000
    assert (out / "hists.pkl").read_bytes() == reference

    def payloads() -> int:
        from hepnn.execution.task import cached_payloads

        return cached_payloads()

    assert sum(cluster.run(payloads).values()) >= 1  # the chunks ran on these workers


def test_unreachable_scheduler_is_one_line(tmp_path: Path) -> None:
    import dask
    import distributed  # noqa: F401  # its config defaults first: set() restores what it saw

    # (set() on a key whose parent is absent deletes the parent on exit: without the import
    # above, the whole "distributed" section, defaults included, would vanish for later tests)
    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
        res = hepnn_run(
            write_config(tmp_path), tmp_path / "out", "--scheduler", "tcp://127.0.0.1:9"
        )
    assert res.exit_code == 2, res.output
    assert "error: executor.scheduler tcp://127.0.0.1:9: cannot connect" in res.output


def test_worker_killed_mid_run(tmp_path: Path, cluster: Any, reference: bytes) -> None:
    """SIGKILL a worker while it processes a chunk: the chunk is redone, same bits."""
    marks = tmp_path / "marks"
    marks.mkdir()
    worker_pids = set(cluster.run(os.getpid).values())
    killed: list[tuple[int, int]] = []

    def killer() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            for p in marks.glob("start-*"):
                _, pid, start = p.name.split("-")
                if int(pid) in worker_pids and not (marks / f"end-{pid}-{start}").exists():
                    os.kill(int(pid), signal.SIGKILL)
                    killed.append((int(pid), int(start)))
                    return
            time.sleep(0.02)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    config = write_config(tmp_path, options={"sleep": 0.4, "marks": str(marks)}, name="dask")
    out = tmp_path / "out"
    res = hepnn_run(config, out, "--scheduler", cluster.scheduler.address)
    thread.join(timeout=5)
    assert res.exit_code == 0, res.output
    assert killed, "no worker was caught processing a chunk"
    pid, start = killed[0]
    assert not (marks / f"end-{pid}-{start}").exists()  # it died in the chunk...
    redone = [p for p in marks.glob(f"end-*-{start}") if int(p.name.split("-")[1]) != pid]
    assert redone  # ...which another worker process finished
    m = manifest(out)
    assert m["datasets"]["higgs_challenge"]["entries_processed"] == 18000
    assert m["complete"]
    assert (out / "hists.pkl").read_bytes() == reference


def test_network_column_under_dask_is_the_iterative_one(tmp_path: Path, cluster: Any) -> None:
    """The Higgs DNN applied by dask workers: the same score bits, the same histograms."""
    import pyarrow.parquet as pq

    config = str(REPO / "configs" / "higgs.yaml")
    quick = [
        "--set", "networks.dnn.training.epochs=1", "--set", "uncertainty={}",
        "--set", "taylor=null", "--set", "outputs.plots=false",
        "--set", "outputs.hists_root=false", "--set", "executor.chunksize=4000",
        "--set", "executor.block_size=2000",
    ]  # fmt: skip
    runner = CliRunner()
    res = runner.invoke(main, ["run", config, "-o", str(tmp_path / "it"), "--quiet", *quick])
    assert res.exit_code == 0, res.output
    models = str(tmp_path / "it" / "models")
    res = runner.invoke(
        main,
        ["run", config, "-o", str(tmp_path / "dask"), "--quiet", "--models", models, *quick,
         "--scheduler", cluster.scheduler.address],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert manifest(tmp_path / "dask")["executor_used"]["name"] == "dask"
    it = pq.read_table(tmp_path / "it" / "columns" / "higgs_challenge.parquet")
    dk = pq.read_table(tmp_path / "dask" / "columns" / "higgs_challenge.parquet")
    assert (
        it.column("score_dnn").to_numpy().tobytes() == dk.column("score_dnn").to_numpy().tobytes()
    )
    assert (tmp_path / "it" / "hists.pkl").read_bytes() == (
        tmp_path / "dask" / "hists.pkl"
    ).read_bytes()
