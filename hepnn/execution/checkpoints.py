"""Per-chunk checkpoints: ``hepnn run --resume`` reuses the chunks a killed run finished.

coffea's ``SimpleCheckpointer`` keys only on dataset/file/entry range, so a rerun
with a changed workflow or model silently reuses old results.
Here every checkpoint is keyed on a *run fingerprint* — the sha256 of

* the resolved config without the settings that cannot change a histogram
  (``executor`` except ``block_size``, ``outputs``),
* the sha256 of the workflow source file,
* the sha256 of every model file the workflow applies (``WorkflowContext.models``),
* the datasets' metadata the workflow is built with,
* ``block_size`` and the versions of hepnn, coffea, uproot, awkward, hist, numpy, torch,

plus the chunk itself: dataset, file path, tree, entry range, and the file's
size and modification time. Changing any of these gives another key, so an old
checkpoint is never used for it.

Layout: ``OUTDIR/.checkpoints/<fingerprint[:20]>/<sha256(chunk key)[:32]>.pkl``
and a ``fingerprint.json`` that records what the fingerprint was made of. Each
pickle holds the chunk's merge-tree nodes (:mod:`hepnn.execution.merge`); it is written
to a temporary name and renamed, so a killed run never leaves half a checkpoint.
The main process writes them as chunks come back, so workers on a cluster need
no shared file system for checkpoints.

Every checkpoint file starts with a header line, ``hepnn-checkpoint 1 <sha256>``,
the sha256 of the pickle that follows. :meth:`ChunkCheckpoints.load` reads the
file, checks the header and the sha256 **before** unpickling, and then the stored
chunk key: a damaged checkpoint (a flipped bit, a truncated file, another file put
in its place) is never unpickled nor trusted — the chunk is recomputed, and the
file is counted in :attr:`ChunkCheckpoints.damaged` (``manifest.json`` →
``checkpoints.damaged``, and a line at the end of the run).

The pickles are **our own output**, loaded with :mod:`pickle`: never point
``--resume`` at an output folder you did not write yourself (the checksum finds
damage, not a forgery).
"""

from __future__ import annotations

import json
import pickle
import shutil
from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from hepnn.files import atomic_bytes, sha256_bytes, sha256_file, sha256_json
from hepnn.io.remote import file_identity

CHECKPOINT_DIR = ".checkpoints"
FINGERPRINT_FILE = "fingerprint.json"
#: First bytes of every checkpoint file, followed by the payload's sha256 and a newline.
MAGIC = b"hepnn-checkpoint 1 "
_VERSIONED = ("hepnn", "coffea", "uproot", "awkward", "hist", "numpy", "torch")


def model_digest(path: str | Path) -> str:
    """sha256 over a model's files.

    A folder hashes every file in it (sorted relative names and contents); a file
    hashes itself and, for ``model.json``, the ``*.pt`` weight files beside it.
    A path that does not exist hashes to ``"missing"`` (so creating it later
    invalidates the checkpoints).
    """
    p = Path(path)
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file())
        base = p
    elif p.is_file():
        files = [p]
        if p.suffix == ".json":
            files += sorted(p.parent.glob("*.pt"))
        base = p.parent
    else:
        return "missing"
    return sha256_bytes(
        b"".join(
            str(f.relative_to(base)).encode() + b"\0" + sha256_file(f).encode() + b"\0"
            for f in files
        )
    )


def _versions() -> dict[str, str]:
    out = {}
    for name in _VERSIONED:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = ""
    return out


def run_fingerprint(
    config: Mapping[str, Any],
    workflow_sha256: str,
    models: Mapping[str, str | Path],
    block_size: int,
    datasets: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """What a run's checkpoints are keyed on (see the module docstring).

    Parameters
    ----------
    config
        The resolved config as plain data (:func:`hepnn.config.resolved_dict`).
    workflow_sha256
        sha256 of the workflow source file.
    models
        Network name → model path, as passed in ``WorkflowContext.models``.
    block_size
        Entries per accumulation block.
    datasets
        Dataset name → metadata the workflow is constructed with.

    Returns
    -------
    dict
        The parts, JSON-able, with their sha256 under ``"fingerprint"``.
    """
    relevant = {k: v for k, v in config.items() if k not in {"executor", "outputs"}}
    relevant_hash = sha256_json(relevant)
    parts: dict[str, Any] = {
        "config_sha256": relevant_hash,
        "workflow_sha256": workflow_sha256,
        "models": {name: model_digest(p) for name, p in sorted(models.items())},
        "block_size": int(block_size),
        "datasets": json.loads(json.dumps(datasets or {}, sort_keys=True, default=str)),
        "versions": _versions(),
    }
    parts["fingerprint"] = sha256_json(parts)
    return parts


class ChunkCheckpoints:
    """A store of finished chunk outputs under ``OUTDIR/.checkpoints``.

    Parameters
    ----------
    outdir
        The run's output folder.
    fingerprint
        The parts from :func:`run_fingerprint`.
    resume
        Reuse matching checkpoints. Without it, every old checkpoint of ``outdir``
        is deleted first. With it, checkpoints of other fingerprints (a changed
        config, workflow or model) are deleted, matching ones are kept.
    """

    def __init__(self, outdir: Path, fingerprint: Mapping[str, Any], *, resume: bool) -> None:
        self.root = Path(outdir) / CHECKPOINT_DIR
        self.fingerprint = str(fingerprint["fingerprint"])
        self.folder = self.root / self.fingerprint[:20]
        self.resume = resume
        self.reused = 0
        self.saved = 0
        #: checkpoint files found damaged (bad header or sha256, or another chunk's key)
        self.damaged: list[str] = []
        self._stat: dict[str, tuple[int, int | str]] = {}
        if not resume:
            shutil.rmtree(self.root, ignore_errors=True)
        elif self.root.is_dir():
            for old in self.root.iterdir():
                if old != self.folder:
                    if old.is_dir():
                        shutil.rmtree(old, ignore_errors=True)
                    else:
                        old.unlink(missing_ok=True)
        self.folder.mkdir(parents=True, exist_ok=True)
        blob = json.dumps(dict(fingerprint), indent=2, sort_keys=True).encode()
        atomic_bytes(self.folder / FINGERPRINT_FILE, blob + b"\n")

    def _file_id(self, filename: str) -> tuple[int, int | str]:
        if filename not in self._stat:  # a URL: size and the server's ETag / Last-Modified
            self._stat[filename] = file_identity(filename)
        return self._stat[filename]

    def chunk_key(self, dataset: str, filename: str, treename: str, start: int, stop: int) -> str:
        """sha256 of the fingerprint and the chunk (file identity included)."""
        size, mtime = self._file_id(filename)
        blob = json.dumps(
            [self.fingerprint, dataset, filename, treename, start, stop, size, mtime],
            separators=(",", ":"),
        )
        return sha256_bytes(blob.encode())

    def _path(self, key: str) -> Path:
        return self.folder / f"{key[:32]}.pkl"

    def load(self, key: str) -> dict[str, Any] | None:
        """The stored chunk output for ``key``, or None (absent, unreadable or not ours)."""
        if not self.resume:
            return None
        path = self._path(key)
        if not path.is_file():
            return None
        data = self._verified(path)
        if data is None or not isinstance(data, dict) or data.get("key") != key:
            self.damaged.append(path.name)  # recomputed, never trusted
            return None
        self.reused += 1
        return {"nodes": data["nodes"], "entries": data["entries"]}

    @staticmethod
    def _verified(path: Path) -> Any:
        """The unpickled content of ``path`` if its header and sha256 hold, else None."""
        try:
            blob = path.read_bytes()
        except OSError:
            return None
        head, sep, payload = blob.partition(b"\n")
        if not sep or not head.startswith(MAGIC) or head[len(MAGIC) :].decode("ascii", "replace") != sha256_bytes(payload):
            return None
        try:
            return pickle.loads(payload)  # our own file, checksum verified (module docstring)
        except Exception:
            return None

    def save(self, key: str, item: Mapping[str, Any]) -> None:
        """Store a finished chunk's output atomically, behind its sha256 header."""
        data = {"key": key, "nodes": item["nodes"], "entries": item["entries"]}
        payload = pickle.dumps(data, protocol=pickle.HIGHEST_PROTOCOL)
        atomic_bytes(self._path(key), MAGIC + sha256_bytes(payload).encode() + b"\n" + payload)
        self.saved += 1

    def clear(self) -> None:
        """Delete every checkpoint of the output folder (after a complete run)."""
        shutil.rmtree(self.root, ignore_errors=True)
