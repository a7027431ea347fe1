"""Names that become paths, and the fence that keeps a run's writes inside its folders.

Two layers, so one missed check is not enough to write outside the output folder:

* **At load time** every name taken from a file that later becomes part of a path
  (dataset names of a samples YAML, the config ``name``, network names, weight files
  of a ``model.json``) must be a *safe name*: :data:`SAFE_NAME` — letters, digits and
  ``_ . + -``, not starting with ``.`` (so never ``..``, a hidden file or an empty
  name), at most 200 characters. :func:`check_name` raises a one-line
  :class:`~hepnn.errors.PathError` (exit 2) naming the file and key.
* **At write time** :func:`hepnn.files.atomic_path`, the one way hepnn writes files,
  calls :func:`check_write`. While a run holds :func:`write_fence` (the pipeline holds
  it for the whole run with the output folder and the conversion cache), a path that
  does not resolve inside one of the fenced roots raises
  :class:`~hepnn.errors.PathError` before anything is written. Outside a fence
  (library use, tests) nothing is checked.

:func:`inside` is the containment test itself (symbolic links resolved).
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path

from hepnn.errors import PathError

#: A name that may become one path component.
SAFE_NAME = re.compile(r"[A-Za-z0-9_+-][A-Za-z0-9_.+-]{0,199}")
#: What :func:`check_name` tells the user is allowed.
SAFE_NAME_HELP = "letters, digits and _ . + - only, not starting with '.', at most 200 characters"

_FENCE: list[tuple[Path, ...]] = []


def is_safe_name(name: object) -> bool:
    """True when ``name`` is a string matching :data:`SAFE_NAME` in full."""
    return isinstance(name, str) and SAFE_NAME.fullmatch(name) is not None


def check_name(name: object, where: str) -> str:
    """Return ``name`` if it is a safe name, else raise :class:`PathError` naming ``where``.

    Parameters
    ----------
    name
        The value read from a file.
    where
        ``<file>: <key>`` of the value, for the message.
    """
    if not is_safe_name(name):
        msg = f"{where}: name {name!r} cannot become a file name ({SAFE_NAME_HELP})"
        raise PathError(msg)
    return str(name)


def _resolved(path: str | os.PathLike[str]) -> Path:
    return Path(path).expanduser().resolve()


def inside(root: str | os.PathLike[str], path: str | os.PathLike[str]) -> bool:
    """True when ``path`` (symbolic links resolved) is ``root`` or lies below it."""
    r, p = _resolved(root), _resolved(path)
    return p == r or r in p.parents


def check_inside(root: str | os.PathLike[str], path: str | os.PathLike[str], what: str) -> Path:
    """``path`` if it lies inside ``root``; otherwise a one-line :class:`PathError`."""
    if not inside(root, path):
        msg = f"{what}: {path} is outside {root}; refusing to use it"
        raise PathError(msg)
    return Path(path)


@contextlib.contextmanager
def write_fence(*roots: str | os.PathLike[str]) -> Iterator[None]:
    """While active, :func:`check_write` allows writes only below ``roots``."""
    _FENCE.append(tuple(_resolved(r) for r in roots))
    try:
        yield
    finally:
        _FENCE.pop()


def check_write(path: str | os.PathLike[str]) -> None:
    """Raise :class:`PathError` if a fence is active and ``path`` is outside all its roots."""
    if not _FENCE:
        return
    roots = _FENCE[-1]
    if not any(inside(r, path) for r in roots):
        msg = (
            f"{path}: refusing to write outside the run's folders ({', '.join(map(str, roots))}); "
            "a name from a config, samples or model file must not contain a path"
        )
        raise PathError(msg)
