"""The small jobs every module needs once: atomic writes, file hashes, plain JSON.

Every file hepnn writes goes through :func:`atomic_path` (a temporary name in the
same folder, renamed into place), so an interrupted run never leaves a
half-written file under its final name. Every sha256 is taken by
:func:`sha256_file` / :func:`sha256_bytes`, every JSON document is made plain by
:func:`jsonable` (NaN and inf become ``null``, numpy scalars and arrays Python
values, paths strings).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import secrets
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np

from hepnn.paths import check_write

#: Bytes read at a time when hashing a file.
_BLOCK = 1 << 20


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield an unused temporary path beside ``path``; rename it onto ``path`` on success.

    The caller creates the file (so it gets the normal umask permissions, unlike
    :func:`tempfile.mkstemp`'s 0600). On any error the temporary file is removed
    and ``path`` is left as it was. This is the one way hepnn writes files.
    """
    path = Path(path)
    check_write(path)  # inside the run's folders (hepnn.paths.write_fence)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def atomic_write(path: Path, writer: Callable[[IO[bytes]], Any]) -> None:
    """Write ``path`` atomically with ``writer(fileobj)`` (fsynced before the rename)."""
    with atomic_path(path) as tmp, tmp.open("xb") as fh:
        writer(fh)
        fh.flush()
        os.fsync(fh.fileno())


def atomic_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    atomic_write(path, lambda fh: fh.write(data))


def atomic_text(path: Path, text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    atomic_bytes(path, text.encode("utf-8"))


def jsonable(obj: Any) -> Any:
    """``obj`` as plain JSON data: numpy to Python, NaN/inf to ``None``, paths to strings."""
    if isinstance(obj, np.ndarray):
        obj = obj.tolist()
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def json_text(data: Any, *, indent: int | None = 2) -> str:
    """Strict JSON text of :func:`jsonable` ``(data)``, newline-terminated."""
    return json.dumps(jsonable(data), indent=indent, allow_nan=False) + "\n"


def write_json(path: Path, data: Any, *, indent: int | None = 2) -> None:
    """Write :func:`json_text` of ``data`` to ``path`` atomically."""
    atomic_text(path, json_text(data, indent=indent))


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sha256_json(data: Any) -> str:
    """Hex sha256 of the canonical JSON of ``data`` (sorted keys, no spaces; ``str`` of anything else)."""
    return sha256_bytes(json.dumps(data, sort_keys=True, separators=(",", ":"), default=str).encode())


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's content, read in blocks (bounded memory)."""
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(_BLOCK), b""):
            h.update(block)
    return h.hexdigest()
