"""One run per output folder: the lock, and what a new run clears of an old one.

**The lock.** A run holds ``OUT/.hepnn.lock`` with :func:`fcntl.flock` (exclusive,
non-blocking) from before it touches anything in ``OUT`` until it exits; the file
holds the pid, host and start time of the holder. A second run into the same folder
fails at once with exit status 2, naming that process. The kernel releases a flock
when its process dies, however it dies (``kill -9``, out of memory, a lost node
with a local file system), so a lock left by a killed run is *stale by
construction*: the next run simply takes it over — no pid guessing, no timeouts.
The lock file itself stays (hidden, never listed in the manifest): deleting it
could let two runs hold locks on two different files. On network file systems
``flock`` is as good as the file system's lock manager (NFSv4 and Lustre with
``flock`` mounted: fine; some older NFS setups: only per host).

**Clearing.** A new run must not leave files of an earlier run beside its own
manifest. :func:`clear_previous_run` removes, before anything is written:

* every file the previous ``manifest.json`` lists under ``outputs`` (only plain
  relative paths inside ``OUT``),
* hepnn's own output names (:data:`KNOWN_OUTPUTS`: ``manifest.json``,
  ``metrics.json``, ``config.resolved.yaml``, ``hists.*``, ``models/``,
  ``columns/``, ``plots/``, ``ranking/``, ``cross_validation/``, ``review/``,
  ``systematics/``, ``normalisation.json``, ``outputs.pkl``, ``cutflow.json``) and temporary ``.*.tmp`` files of a killed run,
* ``.checkpoints/`` unless the run resumes (then the checkpoint store itself keeps
  only those of the same fingerprint).

``models/`` is kept when ``--models`` points into it. It never deletes anything
else: other files are left alone and reported (and not listed in the new manifest).
A folder with no trace of hepnn (no lock file, manifest, checkpoints or resolved
config) that holds one of hepnn's names — a project's own ``models/`` or ``plots/``
under ``-o .`` — is refused with exit status 2 and nothing is deleted.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import json
import os
import shutil
import socket
from collections.abc import Iterable
from pathlib import Path

from hepnn.errors import OutputError
from hepnn.paths import inside

LOCK_FILE = ".hepnn.lock"
#: Top-level names a hepnn run writes (files or folders; ``hists.*`` by prefix).
KNOWN_OUTPUTS = frozenset(
    {
        "manifest.json", "metrics.json", "config.resolved.yaml", "hists.pkl", "hists.root",
        "models", "columns", "plots", "ranking", "cross_validation", "review", "systematics",
        "hists_normalised.pkl", "normalisation.json", "outputs.pkl", "cutflow.json",
        ".column_parts",
    }
)  # fmt: skip
#: Names whose presence shows that a folder is a hepnn output folder.
#: (The lock file counts too, when it was there before this run took it: OutputLock.found.)
MARKERS = ("manifest.json", ".checkpoints", "config.resolved.yaml")
CHECKPOINTS = ".checkpoints"


def _os_error(outdir: Path, err: OSError) -> OutputError:
    where = err.filename or outdir
    return OutputError(f"{where}: cannot use as the output folder ({err.strerror or err})")


class OutputLock:
    """An exclusive lock on an output folder for the lifetime of a run.

    >>> with OutputLock(outdir):
    ...     run_stages()

    Raises
    ------
    OutputError
        Another process holds the lock (named), or the folder cannot be created
        or written (read-only, not a folder).
    """

    def __init__(self, outdir: Path) -> None:
        self.outdir = Path(outdir)
        self.path = self.outdir / LOCK_FILE
        #: the lock file was there before we took it: an earlier hepnn run used the folder
        self.found = False
        self._fd: int | None = None

    def holder(self) -> str:
        """What the lock file says about its holder (``pid … on host … since …``)."""
        try:
            info = json.loads(self.path.read_text(encoding="utf-8") or "{}")
            return f"pid {info['pid']} on {info['host']} since {info['started']}"
        except (OSError, ValueError, KeyError, TypeError):
            return "another process"

    def acquire(self) -> OutputLock:
        """Take the lock (non-blocking); write our pid, host and start time into it."""
        try:
            self.outdir.mkdir(parents=True, exist_ok=True)
            self.found = self.path.is_file()
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise _os_error(self.outdir, err) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                msg = (
                    f"{self.outdir}: in use by another hepnn run ({self.holder()}); "
                    "wait for it to finish or choose another -o"
                )
                raise OutputError(msg) from None
            raise _os_error(self.outdir, err) from None
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        }
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        except OSError as err:
            os.close(fd)
            raise _os_error(self.outdir, err) from None
        self._fd = fd
        return self

    def release(self) -> None:
        """Release the lock (closing the descriptor releases the flock)."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _listed_outputs(outdir: Path) -> list[Path]:
    """Files the previous manifest says its run wrote (relative, inside ``outdir`` only)."""
    try:
        doc = json.loads((outdir / "manifest.json").read_text(encoding="utf-8"))
        outputs = doc.get("outputs", {}) if isinstance(doc, dict) else {}
    except (OSError, ValueError):
        return []
    if not isinstance(outputs, dict):
        return []
    files = []
    for rel in outputs:
        p = outdir / str(rel)
        if not Path(str(rel)).is_absolute() and inside(outdir, p) and p != outdir:
            files.append(p)
    return files


def _is_known(name: str) -> bool:
    return name in KNOWN_OUTPUTS or name.startswith("hists.") or (
        name.startswith(".") and name.endswith(".tmp")
    )


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _prune_empty(folder: Path, outdir: Path) -> None:
    """Remove ``folder`` and its parents up to ``outdir`` while they are empty."""
    while folder != outdir and inside(outdir, folder):
        try:
            folder.rmdir()
        except OSError:
            return
        folder = folder.parent


def clear_previous_run(
    outdir: Path, *, resume: bool = False, keep: Iterable[Path] = (), hepnn_folder: bool = False
) -> list[str]:
    """Remove what an earlier run wrote into ``outdir`` (see the module docstring).

    Parameters
    ----------
    outdir
        The output folder (the caller holds its :class:`OutputLock`).
    resume
        Keep ``.checkpoints/`` (``--resume``).
    keep
        Paths never removed, nor anything containing them (e.g. ``--models`` inside ``OUT``).
    hepnn_folder
        An earlier hepnn run is known to have used ``outdir`` (:attr:`OutputLock.found`);
        otherwise a manifest, checkpoints or a resolved config must show it.

    Returns
    -------
    list of str
        Names in ``outdir`` left alone because hepnn did not write them.

    Raises
    ------
    OutputError
        ``outdir`` holds one of hepnn's names but no trace of a hepnn run.
    """
    outdir = Path(outdir)
    keep = [Path(k) for k in keep]
    try:
        entries = sorted(p.name for p in outdir.iterdir())
    except OSError as err:
        raise _os_error(outdir, err) from None
    unknown = [n for n in entries if not _is_known(n) and n not in (*MARKERS, LOCK_FILE)]
    ours = [n for n in entries if _is_known(n)]
    if ours and not hepnn_folder and not any(m in entries for m in MARKERS):
        msg = (
            f"{outdir}: holds {ours[0]!r} but is not a hepnn output folder (no lock, manifest or "
            "checkpoints): not deleting it; choose an empty or new folder with -o"
        )
        raise OutputError(msg)

    def kept(p: Path) -> bool:
        return any(inside(p, k) or inside(k, p) for k in keep)

    try:
        listed = _listed_outputs(outdir)
        (outdir / "manifest.json").unlink(missing_ok=True)  # first: never a manifest without its files
        for p in listed:
            if p.is_file() and not kept(p):
                p.unlink(missing_ok=True)
                _prune_empty(p.parent, outdir)
        entries = sorted(p.name for p in outdir.iterdir())
        unknown = [n for n in entries if not _is_known(n) and n not in (*MARKERS, LOCK_FILE)]
        for name in entries:
            p = outdir / name
            if (_is_known(name) or (name == CHECKPOINTS and not resume)) and not kept(p):
                _remove(p)
    except OSError as err:
        raise _os_error(outdir, err) from None
    return unknown
