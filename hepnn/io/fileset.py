"""coffea filesets read as they are: the forms coffea users already have on disk.

Accepted (JSON or YAML), per dataset:

* ``{"files": {path: treename}, "metadata": {...}}`` — the input of
  ``coffea.dataset_tools.preprocess`` and of ``apply_to_fileset``;
* ``{"files": {path: {"object_path": treename, "steps": [[a, b], ...],
  "num_entries": n, "uuid": ...}}, "metadata": {...}, "form": ...}`` — the output
  of ``preprocess`` (extra keys such as ``format``, ``compressed_form``, ``did``,
  ``lfn``, ``pfn``, ``num_selected_entries`` are ignored);
* ``{"files": [path, ...], "treename": "Events"}`` and ``[path, ...]`` — the
  fileset of coffea's ``Runner``.

``num_entries`` (or the end of the last step) is used as the file's entry count,
so a preprocessed fileset is not opened again before the run. hepnn always reads
whole files, cut into its own fixed blocks: ``steps`` that skip part of a file
(``max_chunks``) are refused rather than silently extended.

:func:`fileset_datasets` returns plain dicts; :func:`hepnn.samples.load_samples`
turns them into datasets.
"""

from __future__ import annotations

import itertools
from typing import Any

from hepnn.errors import ConfigError
from hepnn.paths import check_name

DEFAULT_TREE = "Events"
#: Dataset keys of coffea filesets that hepnn does not need.
IGNORED_DATASET_KEYS = frozenset({"form", "compressed_form", "did", "format", "treename"})


def is_samples_yaml(data: dict[str, Any]) -> bool:
    """Whether a parsed file is hepnn's own samples YAML (top-level ``datasets:`` mapping).

    A coffea fileset with a dataset *named* ``datasets`` has ``files`` under it.
    """
    inner = data.get("datasets")
    return isinstance(inner, dict) and "files" not in inner


def _file_entry(source: str, ds: str, path: Any, value: Any, tree: str) -> dict[str, Any]:
    where = f"{source}: {ds}.files.{path}"
    if value is None or isinstance(value, str):
        return {"path": str(path), "tree": value or tree, "entries": None}
    if not isinstance(value, dict):
        msg = f"{where}: expected a tree name or a mapping with object_path, got {type(value).__name__}"
        raise ConfigError(msg)
    tree = value.get("object_path") or value.get("treename") or tree
    entries = value.get("num_entries")
    steps = value.get("steps")
    if steps:
        try:
            bounds = [(int(a), int(b)) for a, b in steps]
        except (TypeError, ValueError):
            msg = f"{where}: steps: expected [[start, stop], ...], got {steps!r:.80}"
            raise ConfigError(msg) from None
        contiguous = all(b0 == a1 for (_, b0), (a1, _) in itertools.pairwise(bounds))
        end = bounds[-1][1]
        if bounds[0][0] != 0 or not contiguous or (entries is not None and end != int(entries)):
            msg = (
                f"{where}: steps cover only part of the file (entries {bounds[0][0]}..{end} "
                f"of {entries}); hepnn processes whole files (use --test for a quick run)"
            )
            raise ConfigError(msg)
        entries = end if entries is None else entries
    if entries is not None and (not isinstance(entries, int) or entries < 0):
        msg = f"{where}: num_entries: expected a non-negative integer, got {entries!r}"
        raise ConfigError(msg)
    return {"path": str(path), "tree": str(tree), "entries": entries}


def fileset_datasets(data: dict[str, Any], source: str) -> dict[str, dict[str, Any]]:
    """Datasets of a coffea fileset: ``{name: {"files": [{"path", "tree", "entries"}], "metadata"}}``.

    ``entries`` is None where the fileset does not give the count.

    Raises
    ------
    ConfigError
        One line naming the file, the dataset and what was expected.
    """
    out: dict[str, dict[str, Any]] = {}
    if not data:
        msg = f"{source}: no datasets (expected hepnn's 'datasets:' or a coffea fileset)"
        raise ConfigError(msg)
    for name, value in data.items():
        ds = str(name)
        check_name(ds, f"{source}: fileset")  # it names columns/<dataset>.parquet
        entry = {"files": value} if isinstance(value, list) else value
        if not isinstance(entry, dict) or "files" not in entry:
            msg = (
                f"{source}: {ds}: expected a coffea fileset entry {{files: {{path: treename}}, "
                f"metadata: {{...}}}} (or hepnn's samples YAML with a top-level 'datasets:')"
            )
            raise ConfigError(msg)
        unknown = set(entry) - {"files", "metadata"} - IGNORED_DATASET_KEYS
        if unknown:
            msg = f"{source}: {ds}: unknown key(s) {', '.join(sorted(map(str, unknown)))} in a coffea fileset entry"
            raise ConfigError(msg)
        fmt = entry.get("format") or "root"
        if fmt != "root":
            msg = f"{source}: {ds}: format {fmt!r}: hepnn reads ROOT filesets only"
            raise ConfigError(msg)
        tree = str(entry.get("treename") or DEFAULT_TREE)
        files = entry["files"]
        if isinstance(files, list):
            items = [(f, None) for f in files]
        elif isinstance(files, dict):
            items = list(files.items())
        else:
            msg = f"{source}: {ds}.files: expected a mapping {{path: treename}} or a list of paths"
            raise ConfigError(msg)
        if not items:
            msg = f"{source}: {ds}.files: no files"
            raise ConfigError(msg)
        metadata = entry.get("metadata") or {}
        if not isinstance(metadata, dict):
            msg = f"{source}: {ds}.metadata: expected a mapping, got {type(metadata).__name__}"
            raise ConfigError(msg)
        out[ds] = {
            "files": [_file_entry(source, ds, p, v, tree) for p, v in items],
            "metadata": dict(metadata),
        }
    return out
