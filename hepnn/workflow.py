"""The base of workflow plugins and how they are found.

A workflow is a coffea :class:`~coffea.processor.ProcessorABC` that keeps no
state but its configuration. It is found by name, in order:

1. ``path/to/file.py:ClassName`` — a file anywhere;
2. an installed entry point in the group ``hepnn.workflows``;
3. ``<name>.py`` in the workflow folders: ``$HEPNN_WORKFLOWS`` (``:``-separated),
   the ``workflows/`` folder beside the config's folder, ``./workflows``, and the
   workflows shipped with hepnn (:mod:`hepnn.shipped`: package data of a wheel, or the
   checkout's ``workflows/``).

A file is imported under a stable module name and registered with cloudpickle
*by value*, so processes of the futures and dask executors receive the class
without being able to import the file; importing it again (a notebook re-run,
a dask worker) returns the same module instead of failing.
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import sys
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar

import cloudpickle
from coffea import processor
from coffea.nanoevents import BaseSchema

from hepnn.errors import ConfigError
from hepnn.files import sha256_bytes, sha256_file
from hepnn.shipped import shipped_dir

ENTRY_POINT_GROUP = "hepnn.workflows"


@dataclass
class WorkflowContext:
    """What a workflow knows at construction: everything it needs, nothing mutable.

    Attributes
    ----------
    options
        The config's ``options`` mapping.
    datasets
        Dataset name → metadata, in the samples YAML's order; use it to declare
        categorical axes up front (growth axes depend on merge order).
    models
        Network name → model folder, for every network of the config.
    kinds
        Network name → kind of input (``flat``, ``image``, ``sequence``).
    seed
        The config seed.
    mc_dropout
        ``{"samples": T, "seed": S}`` when MC-dropout bands are asked for, else empty.
    ensembles
        Network name → model folders of its ensemble members (member 0 = the network).
    systematics
        Input variations, ``{name: {feature, kind, up, down, datasets, processes}}``
        (the config's ``systematics``; :func:`hepnn.systematics.variations_from_mapping`);
        empty: no variation, no ``syst`` axis.
    """

    options: dict[str, Any] = field(default_factory=dict)
    datasets: dict[str, dict[str, Any]] = field(default_factory=dict)
    models: dict[str, str] = field(default_factory=dict)
    kinds: dict[str, str] = field(default_factory=dict)
    seed: int = 1234
    mc_dropout: dict[str, int] = field(default_factory=dict)
    ensembles: dict[str, list[str]] = field(default_factory=dict)
    systematics: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def flat_networks(self) -> dict[str, str]:
        """Networks on event columns (:func:`hepnn.nets.apply.network_score`)."""
        return {n: p for n, p in self.models.items() if self.kinds.get(n, "flat") == "flat"}

    @property
    def jet_networks(self) -> dict[str, str]:
        """Networks on jets (:func:`hepnn.nets.apply.jet_scores`)."""
        return {n: p for n, p in self.models.items() if self.kinds.get(n, "flat") != "flat"}


class Workflow(processor.ProcessorABC):
    """Base class of hepnn workflows: a coffea processor built from a context.

    Subclasses set :attr:`schema` (a coffea schema class) and implement
    ``process(events) -> dict[str, hist.Hist]``. hepnn merges the per-chunk
    outputs in a fixed order, so subclasses need no ``postprocess``.
    """

    name: ClassVar[str] = ""
    schema: ClassVar[type] = BaseSchema

    def __init__(self, context: WorkflowContext | None = None) -> None:
        self.context = context or WorkflowContext()

    @property
    def options(self) -> dict[str, Any]:
        return self.context.options

    def postprocess(self, accumulator: Any) -> Any:
        return accumulator


@dataclass(frozen=True)
class FoundWorkflow:
    cls: type[processor.ProcessorABC]
    origin: str
    source_sha256: str


def _module_name(path: Path) -> str:
    digest = sha256_bytes(str(path).encode())[:10]
    return f"hepnn_workflow_{path.stem}_{digest}"


def _import_file(path: Path) -> ModuleType:
    path = path.resolve()
    name = _module_name(path)
    if name in sys.modules:  # idempotent: a re-import returns the module we made
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        msg = f"{path}: cannot import as a Python module"
        raise ConfigError(msg)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as err:
        del sys.modules[name]
        msg = f"{path}: error while importing workflow: {type(err).__name__}: {err}"
        raise ConfigError(msg) from err
    # Workers cannot import this file by name: ship its code with the pickle.
    cloudpickle.register_pickle_by_value(module)
    return module


def _pick_class(module: ModuleType, path: Path, class_name: str | None) -> type:
    if class_name:
        cls = getattr(module, class_name, None)
        if cls is None:
            msg = f"{path}: no class {class_name!r}"
            raise ConfigError(msg)
        return cls
    found = [
        obj
        for obj in vars(module).values()
        if inspect.isclass(obj)
        and issubclass(obj, processor.ProcessorABC)
        and obj.__module__ == module.__name__
        and not inspect.isabstract(obj)
    ]
    if len(found) != 1:
        names = ", ".join(c.__name__ for c in found) or "none"
        msg = f"{path}: expected exactly one processor class, found {names}; use {path}:ClassName"
        raise ConfigError(msg)
    return found[0]


def search_paths(config_dir: Path | None = None) -> list[Path]:
    """Folders searched for ``<name>.py`` workflows, in order."""
    paths = [Path(p) for p in os.environ.get("HEPNN_WORKFLOWS", "").split(os.pathsep) if p]
    if config_dir is not None:
        paths.append(config_dir.parent / "workflows")
    paths.append(Path.cwd() / "workflows")
    shipped = shipped_dir()
    if shipped is not None:
        paths.append(shipped / "workflows")
    unique: list[Path] = []
    for p in paths:
        rp = p.resolve()
        if rp not in unique:
            unique.append(rp)
    return unique


def find_workflow(spec: str, config_dir: Path | None = None) -> FoundWorkflow:
    """Find a workflow class by ``path.py:Class``, entry point, or name.

    Raises
    ------
    ConfigError
        Naming what was searched, when nothing matches.
    """
    if ".py" in spec:
        file_part, _, class_name = spec.partition(":")
        path = Path(file_part).expanduser()
        if not path.is_absolute() and config_dir is not None and not path.exists():
            path = config_dir / path
        if not path.is_file():
            msg = f"workflow file not found: {file_part}"
            raise ConfigError(msg)
        module = _import_file(path)
        cls = _pick_class(module, path, class_name or None)
        return FoundWorkflow(cls, str(path.resolve()), sha256_file(path))
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == spec:
            cls = ep.load()
            src = inspect.getsourcefile(cls)
            digest = sha256_file(Path(src)) if src else ""
            return FoundWorkflow(cls, f"entry point {ep.value}", digest)
    for folder in search_paths(config_dir):
        path = folder / f"{spec}.py"
        if path.is_file():
            module = _import_file(path)
            return FoundWorkflow(_pick_class(module, path, None), str(path), sha256_file(path))
    where = ", ".join(str(p) for p in search_paths(config_dir))
    msg = f"unknown workflow {spec!r}: not an entry point in {ENTRY_POINT_GROUP!r} and no {spec}.py in {where}"
    raise ConfigError(msg)


def list_workflows(config_dir: Path | None = None) -> dict[str, str]:
    """Workflow name → origin, for ``hepnn list``."""
    out: dict[str, str] = {}
    for folder in reversed(search_paths(config_dir)):
        if folder.is_dir():
            for p in sorted(folder.glob("*.py")):
                if not p.name.startswith("_"):
                    out[p.stem] = str(p)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        out[ep.name] = f"entry point {ep.value}"
    return dict(sorted(out.items()))
