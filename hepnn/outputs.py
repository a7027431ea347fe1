"""Writing a run's outputs atomically.

Every file is written to a temporary name in the same folder and renamed into
place, so an interrupted run never leaves a half-written file under the final
name. ``manifest.json`` is removed when a run starts and written last: an output
folder without it is not complete.

``hists.pkl`` is a plain pickle of ``dict[str, hist.Hist]`` — our own output,
loadable with ``pickle`` and ``hist`` alone. Unpickle only files you trust.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import hist
import numpy as np
import uproot

MANIFEST = "manifest.json"


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield an unused temporary path beside ``path``; rename it onto ``path`` on success.

    The caller creates the file (so it gets the normal umask permissions, unlike
    :func:`tempfile.mkstemp`'s 0600). On any error the temporary file is removed
    and ``path`` is left as it was. This is the one way hepnn writes files.
    """
    path = Path(path)
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


def write_json(path: Path, data: Any) -> None:
    blob = json.dumps(data, indent=2, sort_keys=False, default=_json_default).encode()
    atomic_write(path, lambda fh: fh.write(blob + b"\n"))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.integer | np.floating):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    msg = f"not JSON serialisable: {type(obj).__name__}"
    raise TypeError(msg)


def write_pickle(path: Path, hists: dict[str, hist.Hist]) -> None:
    """Write ``hists`` atomically; equal histograms always give the same bytes.

    The pickler runs without its memo (``fast`` mode): a normal pickle records
    which objects are *shared* (an axis label string reused by two histograms),
    and that differs between histograms made in this process and ones that came
    back from a worker or a checkpoint. Without the memo the bytes, and so the
    sha256 in the manifest, depend only on the content.
    """

    def writer(fh: IO[bytes]) -> None:
        pickler = pickle.Pickler(fh, protocol=pickle.HIGHEST_PROTOCOL)
        pickler.fast = True  # no memo: content-only bytes (histograms are not recursive)
        pickler.dump(hists)

    atomic_write(path, writer)


def load_hists(path: Path) -> dict[str, hist.Hist]:
    """Load ``hists.pkl`` (our own output; never unpickle untrusted files)."""
    with Path(path).open("rb") as fh:
        return pickle.load(fh)


def _clean(part: str) -> str:
    return part.replace("/", "_").replace(" ", "_")


def root_objects(hists: dict[str, hist.Hist]) -> dict[str, hist.Hist]:
    """Split categorical axes into separate 1D/2D histograms ROOT/cabinetry can read.

    ``name`` with a ``StrCategory`` axis ``process`` becomes ``name/<process>``;
    histograms left with more than two numeric axes are not written.
    """
    out: dict[str, hist.Hist] = {}
    for name, h in hists.items():
        if all(_is_category(ax) for ax in h.axes):
            continue  # a pure yield table has no binned axis to write as a TH1
        for sub, hh in _split_categories([_clean(name)], h):
            if 1 <= hh.ndim <= 2:
                out[sub] = hh
    return out


def _is_category(ax: Any) -> bool:
    return isinstance(ax, hist.axis.StrCategory | hist.axis.IntCategory)


def _split_categories(parts: list[str], h: hist.Hist) -> Iterator[tuple[str, hist.Hist]]:
    cat_axes = [ax for ax in h.axes if _is_category(ax)]
    if not cat_axes:
        yield "/".join(parts), h
        return
    ax = cat_axes[0]
    for value in ax:
        yield from _split_categories([*parts, _clean(str(value))], h[{ax.name: hist.loc(value)}])


def write_root(
    path: Path, hists: dict[str, hist.Hist], extra: dict[str, hist.Hist] | None = None
) -> list[str]:
    """Write the 1D/2D histograms (and ``extra`` ones, by name) to a ROOT file with uproot.

    Returns the names written.
    """
    objs = {**root_objects(hists), **(extra or {})}
    with atomic_path(path) as tmp, uproot.recreate(tmp) as f:
        for name, h in objs.items():
            f[name] = h
    return list(objs)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def start_outdir(outdir: Path) -> None:
    """Create ``outdir`` and remove an old manifest so a failed run never looks complete."""
    outdir.mkdir(parents=True, exist_ok=True)
    (outdir / MANIFEST).unlink(missing_ok=True)
