"""The rows a network trains on, read once per run and handed to every later step.

>>> reader = DataReader(datasets)
>>> data = reader.training_data("dnn", spec)   # TrainingData: raw inputs, labels, ids, ...

A network trains on its ``datasets`` (default: every dataset that is not collision
data, i.e. without ``metadata: {is_data: true}``: data is never trained on unless named).
Flat networks read their feature, label, id (and weight) branches; jet networks read
every jet of the FatJet-like collection with its PF constituents
(:func:`hepnn.jets.batch.fatjet_batch`). Only the needed branches are read, with
uproot, from the datasets' ROOT files (CSV and npy inputs are converted before). A
:class:`DataReader` caches what it read: ensemble members, the Taylor ranking, the
baselines and the cross-validation of a run use the same arrays, and two jet
networks on the same jets read them once.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import awkward as ak
import numpy as np
import uproot

from hepnn.errors import ChunkError, ConfigError, InputError, ModelError
from hepnn.files import sha256_bytes, sha256_file
from hepnn.io.remote import is_url, url_digest
from hepnn.jets.batch import JetBatch, concat_batches, fatjet_batch, jet_labels
from hepnn.jets.nanoaod import LAYOUTS
from hepnn.nets.inputs import InputBuilder, make_builder

if TYPE_CHECKING:
    from hepnn.nets.spec import NetworkSpec
    from hepnn.samples import Dataset, FileEntry

#: Entries read at a time for training (a read failure names this range).
READ_STEP = 100_000


def source_digest(entry: FileEntry, fmt: str) -> str:
    """Content hash of a dataset file as the user gave it (npy folder, CSV or ROOT file).

    Training records it in ``model.json`` and the metrics match it against the run's
    datasets: the hash is kept per (path, size, modification time) of every file it
    covers, so a run reads each input once for it.
    """
    if fmt == "part-npy":
        from hepnn.io.part_npy import find_files

        paths = tuple(str(f) for f in find_files(entry.source)[1].values())
    elif is_url(entry.source):  # a URL is identified by what its server says, never read
        return url_digest(str(entry.source))
    else:
        paths = (str(entry.source),)
    stats = tuple((p, Path(p).stat().st_size, Path(p).stat().st_mtime_ns) for p in paths)
    return _digest(str(entry.source), fmt, stats)


@functools.lru_cache(maxsize=256)
def _digest(source: str, fmt: str, stats: tuple[tuple[str, int, int], ...]) -> str:
    if fmt == "part-npy":
        from hepnn.io.part_npy import content_hash, find_files

        return content_hash(find_files(source)[1])
    return sha256_file(source)


@dataclass
class TrainingData:
    """Every row (event or jet) of a network's training datasets.

    Attributes
    ----------
    raw
        Unnormalised inputs (:meth:`hepnn.nets.inputs.InputBuilder.raw`), one row each.
    labels, ids
        0/1 label and integer event id of every row (int64).
    weights
        Event weights as stored (float64), or None when the files have none.
    usable
        Rows that can be trained on and scored (jets with constituents).
    files
        One entry per file: dataset, source path, content digest, rows.
    baseline
        Inputs of the boosted-tree baseline: the flat features, or for jets the
        jet mass, constituent multiplicity and p_T^D.
    """

    raw: np.ndarray
    labels: np.ndarray
    ids: np.ndarray
    weights: np.ndarray | None
    usable: np.ndarray
    files: list[dict[str, Any]]
    baseline: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.labels)

    def digest(self) -> str:
        """sha256 of the training inputs (raw inputs, labels, ids, weights)."""
        parts = [self.raw.astype("<f8" if self.raw.dtype == np.float64 else "<f4")]
        parts += [self.labels.astype("<i8"), self.ids.astype("<i8")]
        if self.weights is not None:
            parts.append(self.weights.astype("<f8"))
        return sha256_bytes(b"".join(np.ascontiguousarray(p).tobytes() for p in parts))


def baseline_columns(batch: JetBatch) -> dict[str, np.ndarray]:
    """Jet mass, constituent multiplicity and p_T^D of every jet: the jet baselines' inputs.

    One definition for the columns the toptag workflow writes and for the
    cross-validation, so both fit the baseline on the same float32 values.
    """
    return {
        "jet_mass": batch.mass.astype(np.float32),
        "n_constituents": batch.n_constituents.astype(np.int32),
        "jet_ptd": batch.ptd.astype(np.float32),
    }


def _check_labels(labels: np.ndarray, where: str, branch: str) -> None:
    if not np.isin(labels, (0, 1)).all():
        msg = f"{where}: label branch {branch!r} must hold 0/1"
        raise InputError(msg)


def check_features(datasets: dict[str, Dataset], names: list[str], features: list[str], model: Path) -> None:
    """Every ``features`` branch is in every file of ``names`` (a model from ``--models``).

    Raises
    ------
    ModelError
        Naming ``model`` (its ``model.json``), the first missing feature and the file.
        Files that cannot be opened are left to the processing (its own errors).
    """
    for ds in names:
        for f in datasets[ds].files:
            try:
                with uproot.open(f.root_path) as fh:
                    keys = set(fh[f.treename].keys())
            except Exception:  # unreadable: reported (or skipped) by the processing
                continue
            missing = [x for x in features if x not in keys]
            if missing:
                msg = (
                    f"{model}: feature {missing[0]!r} is not a branch of {f.source} "
                    f"(dataset {ds}, tree {f.treename!r})"
                )
                raise ModelError(msg)


def _reason(err: BaseException) -> str:
    text = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


class DataReader:
    """Reads and caches the training rows of a run's networks (see the module docstring).

    Files are read in steps of :data:`READ_STEP` entries. A step that cannot be read
    (a truncated or corrupted file) stops the run with
    :class:`~hepnn.errors.ChunkError` (exit status 3) naming the file and entry
    range, or, with ``skip_bad_files``, is left out and recorded in :attr:`skipped`
    (file, entry range, entries, reason) — the manifest lists them under
    ``training_rows_skipped``.
    """

    def __init__(self, datasets: dict[str, Dataset], *, skip_bad_files: bool = False) -> None:
        self.datasets = datasets
        self.skip_bad_files = skip_bad_files
        #: entry ranges left out of the training rows (``skip_bad_files``)
        self.skipped: list[dict[str, Any]] = []
        self._rows: dict[tuple[str, str], int] = {}
        self._sources: dict[tuple[Any, ...], Any] = {}
        self._data: dict[tuple[Any, ...], TrainingData] = {}

    def _failed(self, f: FileEntry, start: int, stop: int, err: BaseException) -> None:
        where = f"{f.source}: entries [{start}, {stop}): {_reason(err)}"
        if not self.skip_bad_files:
            msg = f"{where} (reading training rows; set executor.skip_bad_files: true to skip them)"
            raise ChunkError(msg) from None
        record = {"file": str(f.source), "entrystart": start, "entrystop": stop,
                  "entries": stop - start, "reason": where}  # fmt: skip
        if record not in self.skipped:  # two networks reading the same file count it once
            self.skipped.append(record)

    def read_file(self, f: FileEntry, branches: Callable[[Any], list[str]], library: str) -> list[Any]:
        """The pieces of ``branches(tree)`` read from ``f``, step by step (see the class docstring).

        ``branches`` gets the opened tree and may raise :class:`~hepnn.errors.InputError`
        (a missing branch is bad input, never skipped).
        """
        try:
            fh = uproot.open(f.root_path)
        except Exception as err:  # uproot raises many types for a damaged file
            self._failed(f, 0, f.entries, err)
            return []
        pieces = []
        with fh:
            try:
                tree = fh[f.treename]
            except Exception as err:
                self._failed(f, 0, f.entries, err)
                return []
            names = branches(tree)
            for start in range(0, max(f.entries, 1), READ_STEP):
                stop = min(start + READ_STEP, f.entries)
                try:
                    pieces.append(tree.arrays(names, entry_start=start, entry_stop=stop, library=library))
                except Exception as err:
                    self._failed(f, start, stop, err)
        return pieces

    def _dataset_names(self, name: str, spec: NetworkSpec) -> list[str]:
        # collision data (metadata is_data: true) is never trained on unless named
        names = spec.datasets or [n for n, d in self.datasets.items() if not d.metadata.get("is_data")]
        for ds in names:
            if ds not in self.datasets:
                msg = f"networks.{name}: unknown dataset {ds!r} (known: {', '.join(self.datasets)})"
                raise ConfigError(msg)
        if not names:
            msg = f"networks.{name}: no datasets to train on"
            raise ConfigError(msg)
        return names

    def training_data(self, name: str, spec: NetworkSpec) -> TrainingData:
        """The training rows of network ``name`` (cached: read and built once per run)."""
        key = (spec.inputs.model_dump_json(), spec.label, spec.weight, spec.split.id_column,
               tuple(self._dataset_names(name, spec)), spec.max_events,
               spec.training.use_weights)  # fmt: skip
        if key not in self._data:
            builder = make_builder(spec.inputs)
            if spec.kind == "flat":
                self._data[key] = self._flat(name, spec, builder)
            else:
                self._data[key] = self._jets(name, spec, builder)
        return self._data[key]

    # ------------------------------------------------------------------ flat
    def read_columns(self, names: list[str], branches: list[str], optional: list[str]) -> dict[str, np.ndarray]:
        """``branches`` (and those of ``optional`` present in every file) of the datasets, in file order."""
        key = ("columns", tuple(names), tuple(branches), tuple(optional))
        if key in self._sources:
            return self._sources[key]
        parts: dict[str, list[np.ndarray]] = {}
        n_files = 0
        for ds in names:
            for f in self.datasets[ds].files:

                def wanted(tree: Any, f: FileEntry = f) -> list[str]:
                    missing = [b for b in branches if b not in tree]
                    if missing:
                        msg = f"{f.source}: branch(es) {', '.join(missing)} needed for training not in tree {f.treename!r}"
                        raise InputError(msg)
                    return [*branches, *(b for b in optional if b in tree and b not in branches)]

                pieces = self.read_file(f, wanted, "np")
                self._rows[(ds, str(f.root_path))] = sum(len(next(iter(p.values()))) for p in pieces)
                if not pieces:
                    continue  # unreadable, skipped (recorded)
                n_files += 1
                for b in pieces[0]:
                    parts.setdefault(b, []).append(np.concatenate([p[b] for p in pieces]))
        cols = {b: np.concatenate(v) for b, v in parts.items() if len(v) == n_files}
        missing = [b for b in branches if b not in cols]
        if missing:  # every file skipped
            msg = f"datasets {', '.join(names)}: no readable training rows (every file skipped)"
            raise InputError(msg)
        self._sources[key] = cols
        return cols

    def _files(self, names: list[str], rows: list[int]) -> list[dict[str, Any]]:
        entries = [(ds, f) for ds in names for f in self.datasets[ds].files]
        return [
            {"dataset": ds, "source": str(f.source), "digest": source_digest(f, self.datasets[ds].format), "rows": n}
            for (ds, f), n in zip(entries, rows, strict=True)
        ]  # fmt: skip

    def _flat(self, name: str, spec: NetworkSpec, builder: InputBuilder) -> TrainingData:
        names = self._dataset_names(name, spec)
        id_col = spec.split.id_column
        branches = list(dict.fromkeys([*spec.inputs.features, id_col, spec.label]))
        if spec.training.use_weights:
            branches.append(spec.weight)
        cols = self.read_columns(names, branches, [spec.weight])
        rows = [self._rows[(ds, str(f.root_path))] for ds in names for f in self.datasets[ds].files]
        if spec.max_events is not None:
            cols = {k: v[: spec.max_events] for k, v in cols.items()}
        labels = np.asarray(cols[spec.label])
        _check_labels(labels, f"networks.{name}", spec.label)
        ids = np.asarray(cols[id_col])
        if not np.issubdtype(ids.dtype, np.integer):
            msg = f"networks.{name}: id column {id_col!r} must hold integers, got {ids.dtype}"
            raise InputError(msg)
        weights = cols.get(spec.weight)
        if weights is not None:
            weights = np.asarray(weights, dtype=np.float64)
            if not np.isfinite(weights).all():
                msg = f"networks.{name}: weight branch {spec.weight!r} has non-finite values"
                raise InputError(msg)
        raw = builder.raw(cols)
        return TrainingData(
            raw, labels.astype(np.int64), ids.astype(np.int64), weights,
            np.ones(len(labels), dtype=bool), self._files(names, rows),
            {f: raw[:, j] for j, f in enumerate(spec.inputs.features)},
        )  # fmt: skip

    # ------------------------------------------------------------------ jets
    def _jet_branches(self, tree: Any, spec: NetworkSpec) -> list[str]:
        keys = set(tree.keys())
        jets = spec.inputs.jets
        wanted = {f"{jets}_{f}" for f in ("pt", "eta", "phi", "mass")}
        wanted |= {spec.label, spec.split.id_column}
        for lay in LAYOUTS.values():
            wanted |= {f"{lay.candidates}_{f}" for f in ("pt", "eta", "phi", "mass", "charge", "pdgId")}
            wanted |= {f"{lay.links}_{lay.cand_idx}", f"{lay.links}_{lay.jet_idx}"}
        required = [spec.label, spec.split.id_column]
        required += [f"{jets}_{f}" for f in ("pt", "eta", "phi", "mass")]
        missing = [b for b in required if b not in keys]
        if missing:
            msg = f"branch(es) {', '.join(missing)} needed to train the network not in the tree"
            raise InputError(msg)
        return sorted(wanted & keys)

    def read_jets(self, name: str, spec: NetworkSpec) -> tuple[JetBatch, np.ndarray, np.ndarray, list[dict[str, Any]]]:
        """Every jet (constituents, label, event id) of the network's datasets (cached)."""
        names = self._dataset_names(name, spec)
        jets_name = spec.inputs.jets
        key = ("jets", tuple(names), jets_name, spec.label, spec.split.id_column, spec.max_events)
        if key in self._sources:
            return self._sources[key]
        batches, labels, ids, rows = [], [], [], []
        for ds_name in names:
            for f in self.datasets[ds_name].files:
                try:
                    pieces = self.read_file(f, lambda tree: self._jet_branches(tree, spec), "ak")
                    if not pieces:
                        rows.append(0)
                        continue  # unreadable, skipped (recorded)
                    arrays = pieces[0] if len(pieces) == 1 else ak.concatenate(pieces)
                    batch = fatjet_batch(arrays, jets=jets_name)
                    if batch is None:
                        msg = f"no {jets_name} constituent link table (looked for {', '.join(lay.links for lay in LAYOUTS.values())})"
                        raise InputError(msg)
                    lab = jet_labels(arrays, spec.label, batch, jets=jets_name)
                    assert lab is not None  # checked in _jet_branches
                    _check_labels(lab, f"networks.{name}", spec.label)
                except ChunkError:
                    raise
                except InputError as err:
                    raise InputError(f"{f.source}: {err}") from None
                batches.append(batch)
                labels.append(lab)
                ids.append(ak.to_numpy(arrays[spec.split.id_column])[batch.event_index])
                rows.append(len(batch))
        if not batches:
            msg = f"datasets {', '.join(names)}: no readable training rows (every file skipped)"
            raise InputError(msg)
        batch = concat_batches(batches)
        lab, idv = np.concatenate(labels), np.concatenate(ids).astype(np.int64)
        if spec.max_events is not None:
            keep = np.arange(min(spec.max_events, len(batch)))
            batch, lab, idv = batch.take(keep), lab[keep], idv[keep]
        out = (batch, lab, idv, self._files(names, rows))
        self._sources[key] = out
        return out

    def _jets(self, name: str, spec: NetworkSpec, builder: InputBuilder) -> TrainingData:
        batch, labels, ids, files = self.read_jets(name, spec)
        bad = builder.unusable(batch)
        usable = np.ones(len(labels), dtype=bool) if bad is None else ~bad
        return TrainingData(
            builder.raw(batch), labels, ids, None, usable, files,
            {k: np.asarray(v) for k, v in baseline_columns(batch).items()},
        )  # fmt: skip
