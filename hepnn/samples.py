"""Datasets: a samples YAML maps dataset names to files, format and metadata.

.. code-block:: yaml

    datasets:
      higgs_challenge:
        format: higgs-csv            # root | higgs-csv | part-npy
        files: [higgs_challenge_18k.csv]   # relative to this YAML
        metadata: {is_mc: true}
      ttbar:
        format: root
        treename: Events
        files: [nanoaod/nano_tt_v15.root]
        metadata: {is_signal: true, xsec: 831.76}

Non-ROOT formats are converted once into a ROOT ``Events`` tree cached by the
content hash of the input, so coffea's ``Runner`` reads every format the same
way. :func:`resolve_samples` opens every file before the run and counts its
entries: that count is what "every event processed" is checked against.

Files may also be URLs (``root://``, ``http(s)://``, ``file://``;
:mod:`hepnn.io.remote`), and ``--samples`` also takes a coffea fileset (JSON or
YAML, :mod:`hepnn.io.fileset`): a file without a top-level ``datasets:`` mapping is
read as one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError

from hepnn.config import format_validation_error, read_yaml
from hepnn.errors import ConfigError, InputError
from hepnn.io.remote import check_scheme, file_url_path, is_url
from hepnn.io.rootfiles import count_entries, open_root
from hepnn.paths import check_name

Format = Literal["root", "higgs-csv", "part-npy", "toy-gauss"]


class DatasetSpec(BaseModel):
    """One dataset of a samples YAML."""

    model_config = ConfigDict(extra="forbid")

    format: Format = "root"
    files: list[str] = Field(default_factory=list)
    treename: str = "Events"
    metadata: dict[str, Any] = Field(default_factory=dict)
    generator: dict[str, Any] | None = Field(
        None, description="parameters of a generated sample (format toy-gauss)"
    )
    #: per-file tree names and known entry counts (from a coffea fileset), by file
    _trees: dict[str, str] = PrivateAttr(default_factory=dict)
    _entries: dict[str, int] = PrivateAttr(default_factory=dict)

    def tree_of(self, file: str) -> str:
        """The tree name of one of :attr:`files` (a fileset may name one per file)."""
        return self._trees.get(file, self.treename)

    def entries_of(self, file: str) -> int | None:
        """The entry count a coffea fileset gives for a file (``num_entries``), else None."""
        return self._entries.get(file)


class SamplesSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    datasets: dict[str, DatasetSpec] = Field(..., min_length=1)


@dataclass(frozen=True)
class FileEntry:
    """One ROOT file as coffea will read it, with the file the user named.

    A URL stays a ``str`` (``Path`` would fold ``root://host//path``); local files are
    :class:`~pathlib.Path`.
    """

    source: Path | str
    root_path: Path | str
    treename: str
    entries: int


@dataclass
class Dataset:
    """A dataset resolved to readable ROOT files with known entry counts."""

    name: str
    format: str
    files: list[FileEntry]
    metadata: dict[str, Any] = field(default_factory=dict)
    #: files that could not be converted or opened, skipped (``skip_bad_files``):
    #: ``{"file", "entries": None, "reason"}``; their entries are unknown
    skipped_files: list[dict[str, Any]] = field(default_factory=list)

    @property
    def entries(self) -> int:
        return sum(f.entries for f in self.files)


def read_samples_file(path: Path) -> dict[str, Any]:
    """Parse a samples YAML or a coffea fileset (``.json`` with :mod:`json`, else YAML)."""
    if path.suffix.lower() != ".json":
        return read_yaml(path)
    import json

    if not path.is_file():
        msg = f"{path}: file not found"
        raise ConfigError(msg)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        msg = f"{path}: invalid JSON: {err}"
        raise ConfigError(msg) from None
    if not isinstance(data, dict):
        msg = f"{path}: expected a mapping at the top level, got {type(data).__name__}"
        raise ConfigError(msg)
    return data


def resolve_input_path(f: str, base: Path, where: str) -> str:
    """A file of a samples file as it will be read: URL kept, local path made absolute.

    ``file://`` URLs become local paths; relative paths are relative to ``base`` (the
    samples file's folder). A local file must exist; a remote one is checked when it
    is opened (:func:`resolve_dataset`).

    Raises
    ------
    ConfigError
        A local file that does not exist, an unsupported URL scheme (named).
    """
    if is_url(f):
        try:
            if f.lower().startswith("file://"):
                p = file_url_path(f)
            else:
                check_scheme(f)
                return f
        except InputError as err:
            raise ConfigError(f"{where}: {err}") from None
    else:
        p = Path(f).expanduser()
    p = p if p.is_absolute() else base / p
    if not p.exists():
        msg = f"{where}: file not found: {p}"
        raise ConfigError(msg)
    return str(p.resolve())


def load_samples(path: str | Path) -> dict[str, DatasetSpec]:
    """Read and validate a samples YAML or a coffea fileset; local paths become absolute.

    A file whose top level has a ``datasets:`` mapping is hepnn's samples YAML;
    anything else is read as a coffea fileset (:func:`hepnn.io.fileset.fileset_datasets`).

    Raises
    ------
    ConfigError
        Unknown key, wrong type, or a listed file that does not exist (named).
    """
    from hepnn.io.fileset import fileset_datasets, is_samples_yaml

    path = Path(path)
    data = read_samples_file(path)
    base = path.resolve().parent
    if not is_samples_yaml(data):
        out: dict[str, DatasetSpec] = {}
        for name, ds in fileset_datasets(data, str(path)).items():
            spec = DatasetSpec(format="root", metadata=ds["metadata"])
            for entry in ds["files"]:
                f = resolve_input_path(entry["path"], base, f"{path}: {name}.files")
                spec.files.append(f)
                spec._trees[f] = entry["tree"]
                if entry["entries"] is not None:
                    spec._entries[f] = entry["entries"]
            out[name] = spec
        return out
    try:
        spec = SamplesSpec.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, str(path))) from None
    for name, ds in spec.datasets.items():
        check_name(name, f"{path}: datasets")  # it names columns/<dataset>.parquet
        if ds.format == "toy-gauss":
            if ds.files:
                msg = (
                    f"{path}: datasets.{name}: a toy-gauss dataset is generated; it takes no files"
                )
                raise ConfigError(msg)
            from hepnn.io.toy import ToyGauss

            try:
                ToyGauss.model_validate(ds.generator or {})
            except ValidationError as err:
                raise ConfigError(
                    format_validation_error(err, f"{path}: datasets.{name}.generator")
                ) from None
            continue
        if not ds.files:
            msg = f"{path}: datasets.{name}: missing required key 'files'"
            raise ConfigError(msg)
        ds.files = [resolve_input_path(f, base, f"{path}: datasets.{name}.files") for f in ds.files]
    return spec.datasets


def _count_root(path: Path | str, treename: str, source: Path | str) -> int:
    """Open a ROOT file and count the entries of its tree, with one-line errors."""
    if is_url(path):
        from hepnn.io.remote import remote_info

        remote_info(str(path))  # one line naming the URL when it cannot be opened
    try:
        f = open_root(path)  # kept open: the chunks of an in-process run reuse the file
        try:
            if treename not in f:  # reads keys only, parses nothing
                msg = f"{source}: no tree {treename!r} (found: {', '.join(sorted({k.split(';')[0] for k in f.keys(recursive=False)})) or 'nothing'})"
                raise InputError(msg)
            quick = count_entries(f, treename)  # the header only: no parse of every branch
            if quick is not None:
                return quick
            tree = f[treename]
            if not hasattr(tree, "num_entries"):
                msg = f"{source}: {treename!r} is a {type(tree).__name__}, not a TTree"
                raise InputError(msg)
            return int(tree.num_entries)
        finally:
            if is_url(path):
                f.close()
    except InputError:
        raise
    except Exception as err:  # uproot raises many types for a damaged file
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        msg = f"{source}: cannot read ROOT file ({type(err).__name__}: {reason[:200]})"
        raise InputError(msg) from None


def resolve_dataset(
    name: str,
    spec: DatasetSpec,
    cache_dir: Path,
    *,
    progress: bool = False,
    skip_bad_files: bool = False,
) -> Dataset:
    """Convert non-ROOT inputs (cached) and count the entries of every file.

    With ``skip_bad_files``, a file that cannot be converted or opened is left out
    and recorded in :attr:`Dataset.skipped_files` with the error; otherwise its
    :class:`~hepnn.errors.InputError` propagates.
    """
    files = []
    skipped: list[dict[str, Any]] = []
    if spec.format == "toy-gauss":
        from hepnn.io.toy import ToyGauss, generate_toy

        toy = generate_toy(ToyGauss.model_validate(spec.generator or {}), cache_dir)
        files.append(FileEntry(toy.root_path, toy.root_path, toy.treename, toy.n_events))
    for f in spec.files:
        src: Path | str = f if is_url(f) else Path(f)
        try:
            files.append(_resolve_file(name, spec, src, cache_dir, progress))
        except InputError as err:
            if not skip_bad_files:
                raise
            skipped.append({"file": str(src), "entries": None, "reason": str(err)})
    return Dataset(name, spec.format, files, dict(spec.metadata), skipped)


def _resolve_file(
    name: str, spec: DatasetSpec, src: Path | str, cache_dir: Path, progress: bool
) -> FileEntry:
    """One file of :func:`resolve_dataset`: converted if needed, entries counted."""
    root_path: Path | str
    if spec.format == "root":
        root_path, tree = src, spec.tree_of(str(src))
        known = spec.entries_of(str(src))
        if known is not None:  # a preprocessed coffea fileset: not counted again here
            if isinstance(src, str):
                from hepnn.io.remote import remote_info

                remote_info(src)  # still reachable: one line naming the URL if not
            return FileEntry(src, root_path, tree, known)
    elif spec.format == "higgs-csv":
        from hepnn.io.higgs_csv import convert_csv
        from hepnn.progress import byte_progress

        local = src
        if isinstance(src, str):  # a URL: downloaded once into the cache, size-checked
            from hepnn.io.remote import fetch_to_cache

            local = fetch_to_cache(src, cache_dir)
        with byte_progress(f"converting {Path(local).name}", progress) as callback:
            conv = convert_csv(local, cache_dir, progress=callback)
        root_path, tree = conv.root_path, conv.treename
    elif spec.format == "part-npy":
        from hepnn.io.part_npy import convert_part_npy

        if isinstance(src, str):
            msg = f"{src}: format part-npy reads a local folder of .npy files, not a URL"
            raise InputError(msg)

        conv = convert_part_npy(src, cache_dir)
        root_path, tree = conv.root_path, conv.treename
    else:  # pragma: no cover - pydantic restricts the values
        msg = f"dataset {name}: unknown format {spec.format!r}"
        raise ConfigError(msg)
    return FileEntry(src, root_path, tree, _count_root(root_path, tree, src))


def resolve_samples(
    specs: dict[str, DatasetSpec],
    cache_dir: Path,
    *,
    progress: bool = False,
    skip_bad_files: bool = False,
) -> dict[str, Dataset]:
    """Resolve every dataset of a samples YAML (see :func:`resolve_dataset`)."""
    return {
        n: resolve_dataset(n, s, cache_dir, progress=progress, skip_bad_files=skip_bad_files)
        for n, s in specs.items()
    }
