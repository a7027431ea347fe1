"""Writing a run's histograms: ``hists.pkl`` and ``hists.root``.

Every file is written atomically (:mod:`hepnn.files`). The run's manifest is
removed when a run starts (:func:`start_outdir`) and written last
(:mod:`hepnn.manifest`): an output folder without it is not complete.

``hists.pkl`` is a plain pickle of ``dict[str, hist.Hist]`` — our own output,
loadable with ``pickle`` and ``hist`` alone. Unpickle only files you trust.
"""

from __future__ import annotations

import pickle
import re
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
    histograms left with more than two numeric axes are not written. Replica sets
    (an ``mc`` or ``member`` axis) and their descriptive summaries (a ``stat`` axis:
    mean, std, q16, q84) stay in ``hists.pkl``: ``hists.root`` gets the replicas and
    the valid templates in the band's own layout (:func:`hepnn.bands.to_root_variations`),
    never per-bin quantiles that a fit could mistake for Up/Down templates.
    """
    out: dict[str, hist.Hist] = {}
    for name, h in hists.items():
        if all(_is_category(ax) for ax in h.axes):
            continue  # a pure yield table has no binned axis to write as a TH1
        if {"mc", "member", "stat"} & set(h.axes.name):
            continue
        if SYST_AXIS in h.axes.name:
            out.update(syst_templates(name, h))
            continue
        for sub, hh in _split_categories([_clean(name)], h):
            if 1 <= hh.ndim <= 2:
                out[sub] = hh
    return out


#: Name of the categorical axis of input variations (``nominal``, ``<name>Up``, ``<name>Down``).
SYST_AXIS = "syst"


def syst_templates(name: str, h: hist.Hist) -> dict[str, hist.Hist]:
    """Fit templates of a histogram with a ``syst`` axis, in the names combine and cabinetry read.

    The *sample* axis is ``process`` (else ``dataset``); every other categorical axis
    (``dataset``, ``njet``, ...) is summed over for ``<name>/<sample>/<syst>`` and
    kept, one region per combination of its values, as ``<name>_<v1>_<v2>/<sample>/<syst>``
    (values with ``/`` and spaces made ``_``). ``<syst>`` is ``nominal``,
    ``<variation>Up`` or ``<variation>Down``. Only 1D/2D results are written.
    """
    cats = [ax for ax in h.axes if _is_category(ax)]
    names = [ax.name for ax in cats]
    sample = "process" if "process" in names else ("dataset" if "dataset" in names else None)
    regions = [ax for ax in cats if ax.name not in (sample, SYST_AXIS)]
    out: dict[str, hist.Hist] = {}

    def emit(region: str, hh: hist.Hist) -> None:
        samples = list(hh.axes[sample]) if sample is not None else [None]
        for smp in samples:
            hs = hh if smp is None else hh[{sample: hist.loc(smp)}]
            for syst in hs.axes[SYST_AXIS]:
                t = hs[{SYST_AXIS: hist.loc(syst)}]
                if 1 <= t.ndim <= 2:
                    path = (
                        [region] + ([] if smp is None else [_clean(str(smp))]) + [_clean(str(syst))]
                    )
                    out["/".join(path)] = t

    summed = h[{ax.name: sum for ax in regions}] if regions else h
    emit(_clean(name), summed)
    if regions:
        for values in _combinations(regions):
            picked = h[{ax.name: hist.loc(v) for ax, v in zip(regions, values, strict=True)}]
            emit("_".join([_clean(name), *(_clean(str(v)) for v in values)]), picked)
    return out


def _combinations(axes: list[Any]) -> list[tuple[Any, ...]]:
    import itertools

    return list(itertools.product(*(list(ax) for ax in axes)))


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


#: LaTeX commands with another name in ROOT's TLatex (the rest keep theirs: ``\\eta`` -> ``#eta``).
_TLATEX_NAMES = {
    "langle": "LT", "rangle": "GT", "to": "rightarrow", "cdot": "upoint", "le": "leq",
    "ge": "geq", "ne": "neq", "lvert": "|", "rvert": "|", "vert": "|",
}  # fmt: skip
_TEXT_COMMANDS = re.compile(r"\\(?:mathrm|text|textrm|rm|mathit|mathbf|operatorname)\{([^{}]*)\}")
_SPACES = re.compile(r"\\[,;:! ]|\\quad|\\qquad")
_LEFT_RIGHT = re.compile(r"\\(?:left|right)(?=[()\[\]|.])")
_COMMAND = re.compile(r"\\([A-Za-z]+)")
_SCRIPT = re.compile(r"([_^])(\\[A-Za-z]+|[^{\\\s])")


def tlatex(label: str) -> str:
    """A matplotlib label (``$...$`` mathtext) in ROOT's TLatex: ``r"$\\Delta R$"`` -> ``#Delta R``.

    Inside ``$...$``: ``\\name`` becomes ``#name`` (``\\langle`` -> ``#LT``, ``\\to`` ->
    ``#rightarrow``...), ``\\mathrm{X}``/``\\text{X}`` become ``X`` (TLatex is upright),
    spacing commands and ``\\left``/``\\right`` are dropped, single-character
    scripts get braces (``p_T`` -> ``p_{T}``). Text outside ``$...$`` is kept.
    """

    def math(m: re.Match[str]) -> str:
        t = _TEXT_COMMANDS.sub(r"\1", m.group(1))
        t = _LEFT_RIGHT.sub("", _SPACES.sub(" ", t))
        t = _SCRIPT.sub(r"\1{\2}", t)
        t = _COMMAND.sub(lambda c: "#" + _TLATEX_NAMES.get(c.group(1), c.group(1)), t)
        return t.replace("#|", "|")

    return re.sub(r"\$([^$]*)\$", math, label)


def _root_ready(h: hist.Hist) -> hist.Hist:
    """A copy of ``h`` with TLatex title and axis titles (``h`` itself is not changed)."""
    if not any("$" in (ax.label or "") for ax in h.axes) and "$" not in str(h.label or ""):
        return h
    out = h.copy()
    for ax in out.axes:
        ax.label = tlatex(ax.label or ax.name)
    if isinstance(out.label, str):
        out.label = tlatex(out.label)
    return out


def write_root(
    path: Path, hists: dict[str, hist.Hist], extra: dict[str, hist.Hist] | None = None
) -> list[str]:
    """Write the 1D/2D histograms (and ``extra`` ones, by name) to a ROOT file with uproot.

    Titles and axis titles are written in ROOT's TLatex (:func:`tlatex`). Histograms
    with a ``syst`` axis are written as fit templates (:func:`syst_templates`).
    ``extra`` maps full ROOT paths (``"<hist>/<process>/<variation>"``) to histograms and
    is written verbatim, after (and over) the split ones. Returns the names written.
    """
    extra = extra or {}
    # a template folder (score/<process>/nominal, ...) replaces the plain split histogram of
    # the same path (score/<process>): ROOT cannot hold a histogram and a folder of one name
    folders = {name.rsplit("/", 1)[0] for name in extra}
    split = {n: h for n, h in root_objects(hists).items() if n not in folders}
    objs = {n: _root_ready(h) for n, h in {**split, **extra}.items()}
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
