"""Remote inputs: http:// (a range-serving server started here), root:// (an XRootD
server where one is installed), file:// URLs, read like local files."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uproot
import yaml
from click.testing import CliRunner
from count_jets import assert_same_hists, resolve, run_count
from range_server import RangeServer, serve

from hepnn.cli import main
from hepnn.config import load_config
from hepnn.errors import ConfigError
from hepnn.io.remote import file_identity, remote_info
from hepnn.pipeline import run_config
from hepnn.samples import load_samples

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "samples"
#: one chunk per file: building NanoAOD events costs seconds per chunk on a busy machine
FAST = ["networks={}", "outputs.plots=false", "options.fatjet_pt_min=0", "executor.chunksize=1000"]


@pytest.fixture(scope="module")
def http() -> Iterator[RangeServer]:
    with serve(SAMPLES) as server:
        yield server


def _write(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


NANO_FILES = {"ttbar_v15": "nano_tt_v15.root", "dy": "nano_dy.root"}


def _nano_samples(base: str, names: list[str]) -> dict[str, Any]:
    return {
        "datasets": {
            n: {"files": [f"{base}/nanoaod/{NANO_FILES[n]}"], "metadata": {"is_mc": True}}
            for n in names
        }
    }


@pytest.mark.parametrize(
    "names",
    [
        pytest.param(["dy"], id="dy"),
        # ttbar: 200 events with PF candidates, so the constituent histograms are filled too
        pytest.param(["ttbar_v15", "dy"], id="ttbar+dy", marks=pytest.mark.slow),
    ],
)
def test_http_samples_yaml_processes_every_event_with_local_hists(
    http: RangeServer, tmp_path: Path, names: list[str]
) -> None:
    """The acceptance run: fatjets over http:// gives the local run's histograms, bitwise."""
    local = _write(tmp_path / "local.yaml", _nano_samples(str(SAMPLES), names))
    remote = _write(tmp_path / "remote.yaml", _nano_samples(http.url, names))
    runs = {}
    for name, samples in (("local", local), ("remote", remote)):
        cfg = load_config(REPO / "configs" / "fatjets.yaml", [*FAST, f"samples={samples}"])
        runs[name] = run_config(cfg, tmp_path / name, progress=False)
    for ds in names:
        with uproot.open(SAMPLES / "nanoaod" / NANO_FILES[ds]) as f:
            n = f["Events"].num_entries
        acc = runs["remote"].manifest["datasets"][ds]
        assert acc["entries_expected"] == acc["entries_processed"] == n
        assert acc["complete"]
    assert_same_hists(runs["local"].hists, runs["remote"].hists)
    ranges = [r for m, p, r in http.log if p.endswith(NANO_FILES[names[0]]) and r]
    assert ranges, "the remote file was read with range requests"
    files = runs["remote"].manifest["datasets"]["dy"]["files"]
    assert files == [{"path": f"{http.url}/nanoaod/nano_dy.root",
                      "root_file": f"{http.url}/nanoaod/nano_dy.root", "entries": 40}]  # fmt: skip


@pytest.mark.parametrize(
    ("path", "expect"),
    [("nanoaod/no_such_file.root", "not found on the server"), (None, "cannot open")],
)
def test_unreachable_or_missing_url_exits_2_with_one_line(
    http: RangeServer, tmp_path: Path, path: str | None, expect: str
) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/nano_dy.root"
    url = f"{http.url}/{path}" if path else dead
    samples = _write(tmp_path / "s.yaml", {"datasets": {"dy": {"files": [url]}}})
    res = CliRunner().invoke(
        main,
        ["run", str(REPO / "configs" / "fatjets.yaml"), "--samples", str(samples),
         "-o", str(tmp_path / "out"), "--quiet", "--set", "networks={}"],
    )  # fmt: skip
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1, res.output
    assert lines[0].startswith(f"error: {url}: ")
    assert expect in lines[0]


def test_url_failing_mid_read_is_retried_then_skipped(http: RangeServer, tmp_path: Path) -> None:
    """A 503 on a basket read is a read error: retried, then skipped and accounted."""
    url = f"{http.url}/nanoaod/nano_dy.root"
    samples = _write(tmp_path / "s.yaml", {"datasets": {"dy": {"files": [url]}}})
    local = _write(
        tmp_path / "l.yaml",
        {"datasets": {"dy": {"files": [str(SAMPLES / "nanoaod" / "nano_dy.root")]}}},
    )
    datasets = resolve(samples, tmp_path / "cache")
    assert datasets["dy"].entries == 40
    truth = run_count(resolve(local, tmp_path / "cache"), chunksize=40)

    # the last range request of a clean chunk reads baskets: fail it once -> one retry
    http.log.clear()
    clean = run_count(datasets, chunksize=40)
    assert_same_hists(clean.output, truth.output)
    per_chunk = len([r for m, p, r in http.log if r])
    assert per_chunk >= 3, http.log
    http.fail_ranges["nano_dy.root"] = (per_chunk - 1, 1)
    retried = run_count(datasets, retries=2, chunksize=40)
    assert len(retried.retries) == 1
    assert url in retried.retries[0]
    assert "ClientResponseError" in retried.retries[0]
    assert retried.accounting()["dy"]["complete"]
    assert_same_hists(retried.output, truth.output)

    # every read fails: after the retries, each chunk is skipped with its reason
    http.fail_ranges["nano_dy.root"] = (0, 10**6)
    try:
        skipped = run_count(datasets, retries=1, skip_bad_files=True)
    finally:
        http.fail_ranges.clear()
    acc = skipped.accounting()["dy"]
    assert acc["entries_processed"] == 0
    assert acc["entries_skipped"] == acc["entries_expected"] == 40
    assert all(c["attempts"] == 2 and c["file"] == url for c in acc["chunks_skipped"])
    assert not acc["complete"]


def test_url_identity_follows_the_server(http: RangeServer, tmp_path: Path) -> None:
    """Checkpoint keys of a URL use the server's size and ETag, never os.stat."""
    served = tmp_path / "served"
    served.mkdir()
    shutil.copy(SAMPLES / "nanoaod" / "nano_dy.root", served / "a.root")
    with serve(served) as server:
        url = f"{server.url}/a.root"
        size, tag = file_identity(url)
        assert size == (served / "a.root").stat().st_size
        assert "ETag=" in tag
        assert "Last-Modified=" in tag
        # the training-input digest of a URL: from the server's answer, no download
        from hepnn.nets.data import source_digest
        from hepnn.samples import FileEntry

        digest = source_digest(FileEntry(url, url, "Events", 40), "root")
        assert len(digest) == 64
        assert all(m == "HEAD" or r for m, _, r in server.log)  # never a whole-file GET
        os.utime(served / "a.root", ns=(0, 10**18))
        remote_info.cache_clear()
        assert file_identity(url)[1] != tag
        assert source_digest(FileEntry(url, url, "Events", 40), "root") != digest


def test_csv_over_http_is_downloaded_once_and_converted(http: RangeServer, tmp_path: Path) -> None:
    url = f"{http.url}/higgs_challenge_18k.csv"
    samples = _write(
        tmp_path / "s.yaml", {"datasets": {"h": {"format": "higgs-csv", "files": [url]}}}
    )
    local = _write(
        tmp_path / "l.yaml",
        {
            "datasets": {
                "h": {"format": "higgs-csv", "files": [str(SAMPLES / "higgs_challenge_18k.csv")]}
            }
        },
    )
    cache = tmp_path / "cache"
    ds = resolve(samples, cache)["h"]
    ref = resolve(local, cache)["h"]
    assert ds.entries == ref.entries == 18000
    assert ds.files[0].source == url
    assert ds.files[0].root_path == ref.files[0].root_path  # same content hash, same tree
    gets = [p for m, p, r in http.log if m == "GET" and p.endswith(".csv")]
    resolve(samples, cache)
    assert [p for m, p, r in http.log if m == "GET" and p.endswith(".csv")] == gets


def test_file_urls_and_bad_schemes(tmp_path: Path) -> None:
    f = SAMPLES / "nanoaod" / "nano_dy.root"
    samples = _write(tmp_path / "s.yaml", {"datasets": {"dy": {"files": [f.as_uri()]}}})
    assert load_samples(samples)["dy"].files == [str(f.resolve())]
    bad = _write(tmp_path / "b.yaml", {"datasets": {"dy": {"files": ["ftp://host/x.root"]}}})
    with pytest.raises(ConfigError, match=r"ftp://host/x.root: unsupported URL scheme 'ftp'"):
        load_samples(bad)
    gone = _write(tmp_path / "g.yaml", {"datasets": {"dy": {"files": ["file:///no/such.root"]}}})
    with pytest.raises(ConfigError, match=r"file not found: /no/such\.root"):
        load_samples(gone)


# --- XRootD -------------------------------------------------------------------------------


def _xrootd_reason() -> str | None:
    if shutil.which("xrootd") is None:
        return "no xrootd server binary (Debian: apt-get install xrootd-server)"
    try:
        import fsspec_xrootd  # noqa: F401
    except ImportError:
        return "fsspec-xrootd not installed (pip install 'hepnn[xrootd]')"
    return None


@pytest.fixture(scope="module")
def xrootd_server() -> Iterator[tuple[str, Path]]:
    reason = _xrootd_reason()
    if reason:
        pytest.skip(reason)
    # xrootd refuses to run as root: it drops to 'nobody', which must read and write here
    folder = Path(tempfile.mkdtemp(prefix="hepnn-xrd-"))
    folder.chmod(0o777)
    data = folder / "data"
    data.mkdir()
    shutil.copy(SAMPLES / "nanoaod" / "nano_dy.root", data / "nano_dy.root")
    for p in (data, data / "nano_dy.root"):
        p.chmod(0o755)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (folder / "xrd.cfg").write_text(f"all.export {data}\nxrd.port {port}\n")
    cmd = ["xrootd", "-c", str(folder / "xrd.cfg"), "-l", str(folder / "log"), "-n", "hepnn"]
    if os.geteuid() == 0:
        cmd[1:1] = ["-R", "nobody"]
    out = folder / "stdout"
    with out.open("wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT)
    try:
        for _ in range(100):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if proc.poll() is not None:
                pytest.skip(f"xrootd did not start: {out.read_text()[:200]}")
            time.sleep(0.05)
        yield f"root://127.0.0.1:{port}/", data
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(folder, ignore_errors=True)


def test_root_url_served_by_xrootd_reads_like_local(
    xrootd_server: tuple[str, Path], tmp_path: Path
) -> None:
    base, data = xrootd_server
    url = f"{base}{data}/nano_dy.root"
    samples = _write(tmp_path / "s.yaml", {"datasets": {"dy": {"files": [url]}}})
    local = _write(
        tmp_path / "l.yaml",
        {"datasets": {"dy": {"files": [str(SAMPLES / "nanoaod" / "nano_dy.root")]}}},
    )
    remote = run_count(resolve(samples, tmp_path / "cache"), chunksize=40)
    truth = run_count(resolve(local, tmp_path / "cache"), chunksize=40)
    assert remote.accounting()["dy"]["entries_processed"] == 40
    assert_same_hists(remote.output, truth.output)
    size, tag = file_identity(url)
    assert size == (data / "nano_dy.root").stat().st_size
    assert "mtime=" in tag
    missing = _write(
        tmp_path / "m.yaml", {"datasets": {"dy": {"files": [f"{base}{data}/none.root"]}}}
    )
    with pytest.raises(Exception, match=r"root://.*none.root: cannot open") as err:
        resolve(missing, tmp_path / "cache")
    assert "\n" not in str(err.value)


def test_unreachable_url_is_a_skipped_file_when_skipping(http: RangeServer, tmp_path: Path) -> None:
    """With ``skip_bad_files`` a URL that cannot be opened is listed, like a local bad file."""
    url = f"{http.url}/nanoaod/gone.root"
    samples = _write(tmp_path / "s.yaml", {"datasets": {"dy": {"files": [url]}}})
    ds = resolve(samples, tmp_path / "cache", skip_bad_files=True)["dy"]
    assert ds.files == []
    assert ds.skipped_files == [
        {"file": url, "entries": None, "reason": f"{url}: cannot open: not found on the server"}
    ]
