"""Hardening (issue #14): names that become paths, one run per folder, clearing, checkpoints.

Every case runs ``hepnn run`` on the shipped Higgs sample with the probe workflow
(tests/data/probe_workflow.py) and checks the exit status, the one-line message and
what is (not) left on disk.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from cli_helpers import error_line, hepnn_run, manifest
from click.testing import CliRunner, Result
from test_resume import checkpoint_files, interrupt, write_config

from hepnn.cli import main
from hepnn.errors import OutputError, PathError
from hepnn.execution import CHECKPOINT_DIR
from hepnn.execution.checkpoints import MAGIC
from hepnn.files import atomic_text
from hepnn.lock import LOCK_FILE, OutputLock, clear_previous_run
from hepnn.paths import check_name, inside, is_safe_name, write_fence

REPO = Path(__file__).resolve().parents[1]


def hepnn(*argv: str) -> Result:
    return CliRunner().invoke(main, list(argv))


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """hists.pkl of a clean run of the probe workflow."""
    folder = tmp_path_factory.mktemp("reference")
    res = hepnn_run(write_config(folder), folder / "out")
    assert res.exit_code == 0, res.output
    return (folder / "out" / "hists.pkl").read_bytes()


# --------------------------------------------------------------------------- names and paths


def test_safe_names() -> None:
    for ok in ("higgs_challenge", "ttbar-v15", "Z+jets", "a.b", "x" * 200):
        assert is_safe_name(ok), ok
    for bad in ("", ".", "..", ".hidden", "../x", "a/b", "/abs", "a\\b", "a b", "é", "x" * 201, 3, None):
        assert not is_safe_name(bad), bad
    with pytest.raises(PathError, match=r"^s.yaml: datasets: name '\.\./x' cannot become a file name"):
        check_name("../x", "s.yaml: datasets")


def test_inside_resolves_links(tmp_path: Path) -> None:
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "link").symlink_to(tmp_path)
    assert inside(tmp_path / "root", tmp_path / "root" / "a" / "b")
    assert not inside(tmp_path / "root", tmp_path / "root" / ".." / "x")
    assert not inside(tmp_path / "root", tmp_path / "root" / "link" / "x")  # escapes by the link
    assert not inside(tmp_path / "root", tmp_path / "rootx")


def test_write_fence_blocks_every_atomic_write_outside(tmp_path: Path) -> None:
    out, other = tmp_path / "out", tmp_path / "other"
    with write_fence(out):
        atomic_text(out / "columns" / "ok.txt", "fine")
        with pytest.raises(PathError, match="refusing to write outside"):
            atomic_text(out / ".." / "other" / "victim.parquet", "overwritten")
    assert (out / "columns" / "ok.txt").read_text() == "fine"
    assert not other.exists()
    atomic_text(other / "free.txt", "no fence, no check")  # library use outside a run
    assert (other / "free.txt").exists()


def test_dataset_name_with_a_path_is_refused(tmp_path: Path) -> None:
    """The attack of issue #14: columns/<dataset>.parquet must not escape the output folder."""
    victim = tmp_path / "victim" / "important.parquet"
    victim.parent.mkdir()
    victim.write_bytes(b"precious")
    samples = tmp_path / "evil.yaml"
    csv = REPO / "samples" / "higgs_challenge_18k.csv"
    evil = "../../victim/important"
    samples.write_text(yaml.safe_dump({"datasets": {evil: {"format": "higgs-csv", "files": [str(csv)]}}}))
    config = write_config(tmp_path / "cfg")
    out = tmp_path / "a" / "out"
    line = error_line(hepnn_run(config, out, "--samples", str(samples)))
    assert f"{samples}: datasets: name '{evil}' cannot become a file name" in line
    assert victim.read_bytes() == b"precious"
    assert not (out / "manifest.json").exists()
    # validate refuses it the same way
    assert f"{samples}: datasets: name" in error_line(hepnn("validate", str(config), "--set", f"samples={samples}"))


def test_config_name_cannot_escape_outputs(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    for bad in ("..", ".hidden"):
        line = error_line(hepnn("validate", str(config), "--set", f"name={bad}"))
        assert f"{config}: name: Value error, must be a safe file name" in line


# --------------------------------------------------------------------------- the lock


def test_second_run_into_a_locked_folder_refuses(tmp_path: Path) -> None:
    config, out = write_config(tmp_path), tmp_path / "out"
    with OutputLock(out):
        line = error_line(hepnn_run(config, out))
    assert f"{out}: in use by another hepnn run (pid {os.getpid()} on " in line
    assert not (out / "manifest.json").exists()
    assert hepnn_run(config, out).exit_code == 0  # released


def test_lock_of_a_killed_run_is_taken_over(tmp_path: Path) -> None:
    """flock dies with its process: a SIGKILLed holder leaves a stale file, not a lock."""
    out = tmp_path / "out"
    code = "import os, sys; from hepnn.lock import OutputLock; OutputLock(sys.argv[1]).acquire(); os._exit(9)"
    proc = subprocess.run([sys.executable, "-c", code, str(out)], cwd=REPO, check=False, timeout=120)
    assert proc.returncode == 9
    assert json.loads((out / LOCK_FILE).read_text())["pid"] != os.getpid()  # the dead holder's
    res = hepnn_run(write_config(tmp_path), out)
    assert res.exit_code == 0, res.output
    assert LOCK_FILE not in manifest(out)["outputs"]


@pytest.mark.slow  # ~35 s on two shared cores: a second interpreter and a slowed-down run
def test_two_concurrent_runs_one_refuses(tmp_path: Path, reference: bytes) -> None:
    """Run A (slowed down, its own process) holds the folder; run B (another seed) is refused."""
    config, out, marks = write_config(tmp_path), tmp_path / "out", tmp_path / "marks"
    marks.mkdir()
    cmd = [sys.executable, "-m", "hepnn.cli", "run", str(config), "-o", str(out), "--quiet",
           "--set", "options.sleep=0.4", "--set", f"options.marks={marks}"]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not list(marks.glob("start-*")):  # A holds the lock once it processes
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.1)
        line = error_line(hepnn_run(config, out, "--set", "seed=7"))
        assert f"in use by another hepnn run (pid {proc.pid} on " in line
    finally:
        _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    assert (out / "hists.pkl").read_bytes() == reference
    assert yaml.safe_load((out / "config.resolved.yaml").read_text())["seed"] == 1234  # A's
    assert manifest(out)["complete"]


def test_unwritable_output_folder_is_one_line(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    line = error_line(hepnn_run(config, blocker / "out"))
    assert line.startswith(f"error: {blocker / 'out'}: cannot use as the output folder (")
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        line = error_line(hepnn_run(config, ro))
        assert "Permission denied" in line


def test_permission_error_while_writing_is_exit_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A read-only file system or a full disk mid-run: the machine, not a hepnn bug."""
    import hepnn.outputs

    def refuse(path: Path, hists: object) -> None:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(hepnn.outputs, "write_pickle", refuse)
    out = tmp_path / "out"
    line = error_line(hepnn_run(write_config(tmp_path), out))
    assert line == f"error: {out / 'hists.pkl'}: Permission denied"


def test_unexpected_exception_says_it_is_a_bug(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import hepnn.outputs

    def broken(path: Path, hists: object) -> None:
        raise RuntimeError("something hepnn did not expect")

    monkeypatch.setattr(hepnn.outputs, "write_pickle", broken)
    line = error_line(hepnn_run(write_config(tmp_path), tmp_path / "out"), status=1)
    assert "error: bug in hepnn " in line
    assert "RuntimeError at test_hardening.py:" in line
    assert "please report it" in line
    assert "--debug" in line


# --------------------------------------------------------------------------- clearing


def test_outputs_of_another_run_are_cleared(tmp_path: Path, reference: bytes) -> None:
    config, out = write_config(tmp_path), tmp_path / "out"
    out.mkdir()
    stale = {
        "metrics.json": "{}", "models/dnn/model.json": "{}", "columns/old.parquet": "x",
        "plots/old.png": "x", "ranking/dnn.csv": "x", "hists.root": "x",
        "cross_validation/scores.parquet": "x", ".hists.pkl.123.abcd.tmp": "x",
        "listed/by/old/run.txt": "x",
    }  # fmt: skip
    for rel, text in stale.items():
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_text(text)
    (out / "config.resolved.yaml").write_text("x")
    (out / "notes.txt").write_text("mine")  # not hepnn's: kept
    (out / "manifest.json").write_text(json.dumps({"outputs": {"listed/by/old/run.txt": "0" * 64, "../escape": ""}}))
    (tmp_path / "escape").write_text("outside")

    res = hepnn("run", str(config), "-o", str(out))  # not quiet: the warning is printed
    assert res.exit_code == 0, res.output
    printed = " ".join(res.output.split())
    assert f"left in {out} (not written by hepnn): notes.txt" in printed
    for rel in stale:
        assert not (out / rel).exists(), rel
    assert (out / "config.resolved.yaml").read_text() != "x"  # rewritten by this run
    assert (out / "notes.txt").read_text() == "mine"
    assert (tmp_path / "escape").read_text() == "outside"  # a manifest cannot point outside
    # every visible file but notes.txt is this run's, listed with its sha256
    visible = {
        str(p.relative_to(out)) for p in out.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(out).parts)
    }  # fmt: skip
    assert visible - {"manifest.json", "notes.txt"} == set(manifest(out)["outputs"])
    assert (out / "hists.pkl").read_bytes() == reference


def test_foreign_non_empty_folder_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "project"
    (out / "src").mkdir(parents=True)
    (out / "src" / "analysis.py").write_text("precious")
    (out / "plots").mkdir()
    (out / "plots" / "figure1.pdf").write_text("precious too")
    line = error_line(hepnn_run(write_config(tmp_path), out))
    assert f"{out}: holds 'plots' but is not a hepnn output folder" in line
    assert (out / "src" / "analysis.py").read_text() == "precious"
    assert (out / "plots" / "figure1.pdf").read_text() == "precious too"
    assert not (out / "manifest.json").exists()
    shutil.rmtree(out / "plots")  # only foreign files: the run goes ahead and leaves them
    res = hepnn_run(write_config(tmp_path), out)
    assert res.exit_code == 0, res.output
    assert (out / "src" / "analysis.py").read_text() == "precious"
    assert "src/analysis.py" not in manifest(out)["outputs"]


def test_clearing_keeps_checkpoints_on_resume_and_the_models_given(tmp_path: Path) -> None:
    out = tmp_path / "out"
    for rel in ("manifest.json", "models/dnn/model.pt", "columns/a.parquet", f"{CHECKPOINT_DIR}/x/y.pkl"):
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_text("x")
    left = clear_previous_run(out, resume=True, keep=(out / "models",))
    assert left == []
    assert (out / "models" / "dnn" / "model.pt").exists()
    assert (out / CHECKPOINT_DIR / "x" / "y.pkl").exists()
    assert not (out / "columns").exists()
    assert not (out / "manifest.json").exists()
    clear_previous_run(out)
    assert sorted(p.name for p in out.iterdir()) == []
    (out / "thesis.tex").write_text("x")
    assert clear_previous_run(out) == ["thesis.tex"]  # never deleted, only reported
    (out / "models").mkdir()  # a project's own models/ without a trace of hepnn
    with pytest.raises(OutputError, match="holds 'models' but is not a hepnn output folder"):
        clear_previous_run(out)
    assert (out / "models").is_dir()
    # ... unless an earlier run's lock file was found (e.g. Ctrl-C while training)
    assert clear_previous_run(out, hepnn_folder=True) == ["thesis.tex"]
    assert not (out / "models").exists()


# --------------------------------------------------------------------------- checkpoints


def test_damaged_checkpoint_is_recomputed_and_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reference: bytes
) -> None:
    config, out = write_config(tmp_path), tmp_path / "out"
    interrupt(monkeypatch, config, out, at=4)
    files = checkpoint_files(out)
    assert len(files) == 3
    assert all(f.read_bytes().startswith(MAGIC) for f in files)
    data = bytearray(files[1].read_bytes())
    data[len(data) // 2] ^= 0x01  # one flipped bit in the pickled histograms
    files[1].write_bytes(bytes(data))

    res = hepnn("run", str(config), "-o", str(out), "--resume")
    assert res.exit_code == 0, res.output
    assert "1 damaged checkpoint(s) recomputed" in res.output
    m = manifest(out)
    assert m["checkpoints"] == {"resume": True, "chunks_reused": 2, "damaged": 1}
    assert m["datasets"]["higgs_challenge"]["entries_processed"] == 18000
    assert (out / "hists.pkl").read_bytes() == reference


def test_checkpoint_of_another_chunk_is_not_trusted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reference: bytes
) -> None:
    """A valid checkpoint copied over another one: its sha256 holds, its key does not."""
    config, out = write_config(tmp_path), tmp_path / "out"
    interrupt(monkeypatch, config, out, at=3)
    a, b = checkpoint_files(out)
    b.write_bytes(a.read_bytes())
    res = hepnn_run(config, out, "--resume")
    assert res.exit_code == 0, res.output
    assert manifest(out)["checkpoints"]["damaged"] == 1
    assert (out / "hists.pkl").read_bytes() == reference


# --------------------------------------------------------------------------- config values


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        ("seed=-1", "seed: Input should be greater than or equal to 0 (got -1)"),
        ("seed=4294967296", "seed: Input should be less than or equal to 4294967295"),
        ("executor.retries=11", "executor.retries: Input should be less than or equal to 10 (got 11)"),
        ("executor.retries=1e9", "executor.retries:"),
        ("uncertainty.mc_dropout.seed=-5", "uncertainty.mc_dropout.seed: Input should be greater than or equal to 0"),
    ],
)
def test_validate_is_as_strict_as_run(tmp_path: Path, setting: str, expected: str) -> None:
    config = write_config(tmp_path)
    for argv in (["validate", str(config)], ["run", str(config), "-o", str(tmp_path / "out"), "--quiet"]):
        line = error_line(hepnn(*argv, "--set", setting))
        assert f"{config}: {expected}" in line, (argv[0], line)
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_validate_resolves_samples_and_networks(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    res = hepnn("validate", str(config))
    assert res.exit_code == 0, res.output
    assert "1 dataset(s)" in res.output
    assert "18000 entries" in res.output
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"datasets": {"d": {"format": "root", "files": [str(REPO / "README.md")]}}}))
    line = error_line(hepnn("validate", str(config), "--set", f"samples={bad}"))
    assert "README.md: cannot read ROOT file" in line
    nets = {"dnn": {"inputs": {"kind": "flat", "features": ["DER_mass_MMC"]}, "label": "Label",
                    "datasets": ["nope"], "split": {"method": "parity", "id_column": "EventId"}}}  # fmt: skip
    data = yaml.safe_load(config.read_text()) | {"networks": nets}
    config.write_text(yaml.safe_dump(data))
    line = error_line(hepnn("validate", str(config)))
    assert "networks.dnn.datasets: unknown dataset 'nope' (known: higgs_challenge)" in line
