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


def start_outdir(outdir: Path, manifest: str) -> None:
    """Create ``outdir`` and remove an old ``manifest`` so a failed run never looks complete."""
    outdir.mkdir(parents=True, exist_ok=True)
    (outdir / manifest).unlink(missing_ok=True)


def write_other_outputs(outdir: Path, output: Any) -> list[Path]:
    """Keep what a processor returned besides histograms: ``outputs.pkl`` and ``cutflow.json``.

    ``outputs.pkl`` is the whole postprocessed output (histograms included), pickled
    (with cloudpickle when plain pickle cannot, e.g. for a ``defaultdict(lambda: ...)``),
    loadable with ``pickle`` and the packages of its objects (``coffea``, ``hist``,
    ``cloudpickle`` in that case); ``cutflow.json`` holds its numbers (cutflow dicts,
    counters, ``value_accumulator`` values) in the output's own nesting
    (:func:`hepnn.processors.numbers_of`), written only when there are any.
    Returns the files written.
    """
    from hepnn.files import write_json
    from hepnn.processors import numbers_of

    try:
        blob = pickle.dumps(output, protocol=pickle.HIGHEST_PROTOCOL)
    except (pickle.PicklingError, AttributeError, TypeError):
        import cloudpickle  # e.g. a defaultdict(lambda: ...): the function is pickled by value

        blob = cloudpickle.dumps(output, protocol=pickle.HIGHEST_PROTOCOL)
    written = [outdir / "outputs.pkl"]
    atomic_write(written[0], lambda fh: fh.write(blob))
    numbers = numbers_of(output)
    if numbers is not None:
        write_json(outdir / "cutflow.json", numbers)
        written.append(outdir / "cutflow.json")
    return written
