"""``hepnn inspect``: a short text summary of a sample, histogram or output file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import uproot

from hepnn.errors import InputError


def inspect_path(path: Path) -> str:
    """Describe ``path``: a ROOT file, a CSV, a ParT npy folder, hists.pkl or a run folder."""
    if path.is_dir():
        if (path / "manifest.json").is_file() or (path / "hists.pkl").is_file():
            return _inspect_run(path)
        if list(path.glob("*_pf_vectors.npy")):
            return _inspect_npy(path)
        msg = f"{path}: not a hepnn output folder or ParT npy folder"
        raise InputError(msg)
    suffix = path.suffix.lower()
    if suffix == ".root":
        return _inspect_root(path)
    if suffix == ".csv":
        return _inspect_csv(path)
    if suffix == ".pkl":
        return _inspect_hists(path)
    msg = f"{path}: unknown file type (expected .root, .csv, .pkl, or a folder)"
    raise InputError(msg)


#: Longest CSV header line read before a file is judged not to be a Higgs CSV.
MAX_HEADER = 64 * 1024
#: Bytes read at a time when counting CSV rows (memory stays bounded).
_BLOCK = 1 << 20


def _check_magic(path: Path) -> None:
    """A ROOT file starts with ``root``: judge from the first four bytes, before uproot reads more."""
    try:
        with path.open("rb") as fh:
            head = fh.read(4)
    except OSError as err:
        msg = f"{path}: cannot read ({err.strerror})"
        raise InputError(msg) from None
    if head != b"root":
        msg = f"{path}: not a ROOT file (the first bytes are {head!r}, expected b'root')"
        raise InputError(msg)


def _inspect_root(path: Path) -> str:
    _check_magic(path)
    try:
        f = uproot.open(path)
    except Exception as err:
        msg = f"{path}: cannot read ROOT file ({type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''})"
        raise InputError(msg) from None
    lines = [f"{path} (ROOT)"]
    with f:
        for key, cls in sorted(f.classnames().items()):
            obj = f[key]
            if hasattr(obj, "num_entries"):
                keys = obj.keys()
                collections = sorted({k.split("_")[0] for k in keys if not k.startswith("n")})
                lines.append(f"  {key}: {cls}, {obj.num_entries} entries, {len(keys)} branches")
                lines.append(
                    f"    collections: {', '.join(collections[:40])}{' ...' if len(collections) > 40 else ''}"
                )
            else:
                lines.append(f"  {key}: {cls}")
    return "\n".join(lines)


def _inspect_csv(path: Path) -> str:
    from hepnn.io.higgs_layout import LAYOUTS

    with path.open("rb") as fh:
        raw = fh.readline(MAX_HEADER + 1)  # never more than the header needs
        if not raw.endswith(b"\n") and len(raw) > MAX_HEADER:
            msg = f"{path}: line 1 (header) is longer than {MAX_HEADER} bytes: not a Higgs-challenge CSV"
            raise InputError(msg)
        header = raw.decode("utf-8-sig", errors="replace").strip().split(",")
        layout = next((name for name, cols in LAYOUTS.items() if set(cols) == set(header)), None)
        if layout is None:
            msg = f"{path}: line 1 (header) matches no Higgs-challenge layout ({', '.join(LAYOUTS)})"
            raise InputError(msg)
        rows, open_line = 0, False  # open_line: the current line has non-blank content
        for block in iter(lambda: fh.read(_BLOCK), b""):  # non-blank lines, bounded memory
            *ended, rest = block.split(b"\n")
            for piece in ended:
                rows += open_line or bool(piece.strip())
                open_line = False
            open_line = open_line or bool(rest.strip())
        rows += open_line
    return f"{path} (Higgs-challenge CSV, layout {layout}): {rows} data rows, {len(header)} columns"


def _inspect_hists(path: Path) -> str:
    from hepnn.outputs import load_hists

    hists = load_hists(path)
    lines = [f"{path}: {len(hists)} histograms"]
    for name, h in hists.items():
        axes = ", ".join(f"{ax.name}[{len(ax)}]" for ax in h.axes)
        lines.append(f"  {name:<36} {axes}  sum={float(np.sum(h.values())):.6g}")
    return "\n".join(lines)


def _inspect_run(path: Path) -> str:
    lines = [f"{path}: hepnn output"]
    man = path / "manifest.json"
    if man.is_file():
        try:
            m = json.loads(man.read_text(encoding="utf-8"))
            lines.append(
                f"  config {m['config']} (hash {m['config_hash'][:16]}), workflow {m['workflow']['name']}, {m['wall_time_s']} s"
            )
            for name, d in m["datasets"].items():
                lines.append(
                    f"  {name}: {d['entries_processed']}/{d['entries_expected']} entries processed, "
                    f"{len(d['chunks_skipped'])} chunks skipped"
                )
        except (UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as err:
            msg = f"{man}: not a hepnn manifest ({type(err).__name__}: {str(err)[:120]})"
            raise InputError(msg) from None
    else:
        lines.append("  no manifest.json: the run did not finish")
    if (path / "hists.pkl").is_file():
        lines.append(_inspect_hists(path / "hists.pkl"))
    return "\n".join(lines)


def _inspect_npy(path: Path) -> str:
    lines = [f"{path} (ParT npy folder)"]
    for p in sorted(path.glob("*.npy")):
        try:
            arr = np.load(p, mmap_mode="r")  # reads the header only
        except (OSError, ValueError) as err:
            msg = f"{p}: not a readable .npy file ({str(err)[:120]})"
            raise InputError(msg) from None
        lines.append(f"  {p.name}: {arr.dtype} {arr.shape}")
    return "\n".join(lines)
