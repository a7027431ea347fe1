"""Writing a run's histograms: ``hists.pkl`` and ``hists.root``.

Every file is written atomically (:mod:`hepnn.files`). The run's manifest is
removed when a run starts (:func:`start_outdir`) and written last
(:mod:`hepnn.manifest`): an output folder without it is not complete.

``hists.pkl`` is a plain pickle of ``dict[str, hist.Hist]`` — our own output,
loadable with ``pickle`` and ``hist`` alone. Unpickle only files you trust.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import hist
import uproot

from hepnn.files import atomic_path, atomic_write


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
    """Load ``hists.pkl`` (our own output; never unpickle untrusted files).

    Raises
    ------
    InputError
        One line when the file is not a pickle of ``dict[str, hist.Hist]``.
    """
    from hepnn.errors import InputError

    try:
        with Path(path).open("rb") as fh:
            hists = pickle.load(fh)
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
            ImportError, IndexError, KeyError, MemoryError) as err:  # fmt: skip
        msg = f"{path}: not a readable hists.pkl ({type(err).__name__}: {str(err)[:120]})"
        raise InputError(msg) from None
    if not isinstance(hists, dict):
        msg = f"{path}: expected a pickled dict[str, hist.Hist], got {type(hists).__name__}"
        raise InputError(msg)
    for name, h in hists.items():
        if not isinstance(name, str) or not isinstance(h, hist.Hist):
            msg = f"{path}: entry {name!r}: expected a hist.Hist, got {type(h).__name__}"
            raise InputError(msg)
    return hists


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


def start_outdir(
    outdir: Path, manifest: str, *, resume: bool = False, keep: tuple[Path, ...] = (),
    hepnn_folder: bool = False,
) -> list[str]:
    """Create ``outdir``, remove an old ``manifest`` and every output of an earlier run.

    So a failed run never looks complete and no file of another run survives beside
    the new manifest (:func:`hepnn.lock.clear_previous_run`: ``resume`` keeps the
    checkpoints, ``keep`` the ``--models`` folder, ``hepnn_folder`` says an earlier run's
    lock file was found). Returns the names left alone because hepnn did not write them.
    """
    from hepnn.lock import clear_previous_run

    outdir.mkdir(parents=True, exist_ok=True)
    left = clear_previous_run(outdir, resume=resume, keep=keep, hepnn_folder=hepnn_folder)  # reads the old manifest first
    (outdir / manifest).unlink(missing_ok=True)
    return left
