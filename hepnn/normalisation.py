"""Luminosity normalisation: each simulated dataset scaled by xsec × lumi / Σw.

With ``lumi`` (pb⁻¹) in the config, every simulated dataset of the samples file
needs a cross-section ``xsec`` (pb) in its metadata; datasets with
``is_data: true`` (or ``is_mc: false``) are never scaled. The scale of a
simulated dataset is

.. math:: s = \\sigma \\, L / \\Sigma w,

where Σw is the sum of the generator weights of *all* events the dataset was
produced with, before any selection, taken from (first that applies):

1. ``sumw: <number>`` in the metadata (e.g. from the production's bookkeeping);
2. ``sumw: runs`` or, by default, the NanoAOD ``Runs`` tree of every file:
   Σ ``genEventSumw`` (``genEventSumw_`` in NanoAOD ≤ v6) over the files;
3. a ``sumw`` accumulator ``{dataset: Σw}`` in the workflow's output (any
   workflow can provide it; summed over the processed events before any cut);
4. ``sumw: events`` or, by default, the per-event weight branch
   ``weight_branch`` (default ``genWeight``) summed over every entry of the
   dataset's files (the converted tree for non-ROOT inputs, e.g. ``Weight`` of
   the Higgs CSV).

The histograms must then be filled with the same per-event weight (for NanoAOD:
``genWeight``), so that a histogram's integral is xsec × lumi × (selected Σw /
total Σw). Scaling happens after the merge (:func:`normalise_hists`): ``hists.pkl``
keeps the raw sums of weights, ``hists_normalised.pkl`` holds the scaled copies
(Weight storage: values × s, variances × s²) and ``normalisation.json`` the scale
of every dataset and where its Σw came from.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import hist
import numpy as np
import uproot

from hepnn.errors import ConfigError, InputError

if TYPE_CHECKING:
    from hepnn.samples import Dataset

__all__ = [
    "DatasetRole",
    "Normalisation",
    "check_metadata",
    "dataset_role",
    "normalisation",
    "normalisation_record",
    "normalise_hists",
    "roles",
    "sum_weights_events",
    "sum_weights_runs",
]

#: Branches of the NanoAOD ``Runs`` tree holding Σ genWeight (new name first).
RUNS_BRANCHES = ("genEventSumw", "genEventSumw_")
#: Metadata keys read here (all optional unless ``lumi`` is set).
METADATA_KEYS = ("xsec", "is_data", "is_mc", "process", "sumw", "weight_branch")
SUMW_SOURCES = ("runs", "events")
DEFAULT_WEIGHT_BRANCH = "genWeight"


@dataclass(frozen=True)
class DatasetRole:
    """What a dataset is in the plots: data or simulation, and its process (stack entry)."""

    is_data: bool
    process: str
    xsec: float | None = None


@dataclass(frozen=True)
class Normalisation:
    """The scale of one dataset: ``xsec_pb × lumi_pb / sumw`` (1 for data)."""

    is_data: bool
    process: str
    xsec_pb: float | None
    sumw: float | None
    sumw_source: str
    scale: float


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def dataset_role(name: str, metadata: Mapping[str, Any], source: str = "samples") -> DatasetRole:
    """Validate the normalisation keys of one dataset's metadata.

    Raises
    ------
    ConfigError
        ``is_data``/``is_mc`` not booleans or contradicting each other, ``xsec`` not
        a positive finite number, ``process`` not a string, ``sumw`` not a positive
        number / ``runs`` / ``events``, ``weight_branch`` not a string.
    """
    where = f"{source}: datasets.{name}.metadata"
    for key in ("is_data", "is_mc"):
        if key in metadata and not isinstance(metadata[key], bool):
            msg = f"{where}.{key}: expected true or false (got {metadata[key]!r})"
            raise ConfigError(msg)
    is_data = bool(metadata.get("is_data", False))
    if "is_mc" in metadata and "is_data" in metadata and metadata["is_mc"] == is_data:
        msg = f"{where}: is_data: {is_data} contradicts is_mc: {metadata['is_mc']}"
        raise ConfigError(msg)
    if "is_mc" in metadata and "is_data" not in metadata:
        is_data = not metadata["is_mc"]
    xsec = metadata.get("xsec")
    if xsec is not None and not (_number(xsec) and math.isfinite(xsec) and xsec > 0):
        msg = f"{where}.xsec: expected a positive cross-section in pb (got {xsec!r})"
        raise ConfigError(msg)
    if is_data and xsec is not None:
        msg = f"{where}.xsec: a data dataset (is_data) takes no cross-section"
        raise ConfigError(msg)
    process = metadata.get("process", name)
    if not isinstance(process, str) or not process:
        msg = f"{where}.process: expected a non-empty string (got {process!r})"
        raise ConfigError(msg)
    sumw = metadata.get("sumw")
    if sumw is not None and not (
        sumw in SUMW_SOURCES or (_number(sumw) and math.isfinite(sumw) and sumw > 0)
    ):
        msg = f"{where}.sumw: expected a positive number, 'runs' or 'events' (got {sumw!r})"
        raise ConfigError(msg)
    branch = metadata.get("weight_branch", DEFAULT_WEIGHT_BRANCH)
    if not isinstance(branch, str) or not branch:
        msg = f"{where}.weight_branch: expected a branch name (got {branch!r})"
        raise ConfigError(msg)
    return DatasetRole(is_data, process, None if xsec is None else float(xsec))


def check_metadata(
    metadata: Mapping[str, Mapping[str, Any]], lumi: float | None, source: str = "samples"
) -> dict[str, DatasetRole]:
    """Validate every dataset's normalisation keys before processing (``hepnn run``/``validate``).

    Raises
    ------
    ConfigError
        Bad metadata (:func:`dataset_role`), or ``lumi`` set and a simulated dataset
        without ``xsec``.
    """
    out = {}
    for name, meta in metadata.items():
        role = out[name] = dataset_role(name, meta, source)
        if lumi is not None and not role.is_data and role.xsec is None:
            msg = (
                f"{source}: datasets.{name}.metadata: missing 'xsec' (pb): lumi is set, "
                "so every simulated dataset needs one"
            )
            raise ConfigError(msg)
    return out


def sum_weights_runs(dataset: Dataset) -> float | None:
    """Σ ``Runs.genEventSumw`` over the dataset's files; None when a file has no such branch."""
    total = 0.0
    for entry in dataset.files:
        try:
            with uproot.open(entry.root_path) as f:
                runs = f.get("Runs")
                branch = next((b for b in RUNS_BRANCHES if runs is not None and b in runs), None)
                if runs is None or branch is None:
                    return None
                total += float(np.sum(runs[branch].array(library="np"), dtype=np.float64))
        except (OSError, ValueError) as err:
            msg = f"{entry.source}: cannot read Runs.genEventSumw ({type(err).__name__}: {err})"
            raise InputError(msg) from None
    return total


def sum_weights_events(dataset: Dataset, branch: str) -> float | None:
    """Σ ``branch`` over every entry of the dataset's files; None when a file lacks it."""
    total = 0.0
    for entry in dataset.files:
        with uproot.open(entry.root_path) as f:
            tree = f[entry.treename]
            if branch not in tree:
                return None
            for arr in tree.iterate([branch], library="np", step_size="100 MB"):
                total += float(np.sum(arr[branch], dtype=np.float64))
    return total


def _sumw(
    name: str, dataset: Dataset, workflow_sumw: Mapping[str, Any], where: str
) -> tuple[float, str]:
    meta = dataset.metadata
    given = meta.get("sumw")
    branch = meta.get("weight_branch", DEFAULT_WEIGHT_BRANCH)
    if _number(given):
        return float(given), "metadata"
    if given in (None, "runs"):
        runs = sum_weights_runs(dataset)
        if runs is not None:
            return runs, "Runs.genEventSumw"
        if given == "runs":
            msg = f"{where}.sumw: runs: a file of {name} has no Runs tree with genEventSumw"
            raise InputError(msg)
    if given is None and name in workflow_sumw:
        return float(workflow_sumw[name]), "workflow sumw accumulator"
    events = sum_weights_events(dataset, branch)
    if events is None:
        msg = (
            f"{where}: no sum of generator weights for {name}: no Runs.genEventSumw, no workflow "
            f"'sumw' and no {branch!r} branch (set metadata sumw: <number> or weight_branch)"
        )
        raise ConfigError(msg)
    return events, f"sum of {branch} over all events"


def normalisation(
    datasets: Mapping[str, Dataset],
    lumi: float,
    *,
    workflow_sumw: Mapping[str, Any] | None = None,
    source: str = "samples",
) -> dict[str, Normalisation]:
    """The scale of every dataset for integrated luminosity ``lumi`` (pb⁻¹).

    Raises
    ------
    ConfigError
        A simulated dataset without ``xsec``, bad metadata, or no Σw source.
    """
    out: dict[str, Normalisation] = {}
    for name, ds in datasets.items():
        role = dataset_role(name, ds.metadata, source)
        where = f"{source}: datasets.{name}.metadata"
        if role.is_data:
            out[name] = Normalisation(True, role.process, None, None, "data (not scaled)", 1.0)
            continue
        if role.xsec is None:
            msg = f"{where}: missing 'xsec' (pb): lumi is set, so every simulated dataset needs one"
            raise ConfigError(msg)
        sumw, how = _sumw(name, ds, workflow_sumw or {}, where)
        if not (math.isfinite(sumw) and sumw > 0):
            msg = f"{where}: sum of generator weights from {how} is {sumw!r}; expected > 0"
            raise InputError(msg)
        scale = role.xsec * lumi / sumw
        out[name] = Normalisation(False, role.process, role.xsec, sumw, how, scale)
    return out


def _scaled(h: hist.Hist, factors: np.ndarray | float, axis: int | None) -> hist.Hist:
    """A Weight-storage copy of ``h`` with values × f and variances × f² (f per ``axis`` bin)."""
    values = np.asarray(h.values(flow=True), dtype=np.float64)
    var = h.variances(flow=True)
    variances = values.copy() if var is None else np.asarray(var, dtype=np.float64)
    f = np.asarray(factors, dtype=np.float64)
    if axis is not None:
        shape = [1] * values.ndim
        shape[axis] = -1
        f = f.reshape(shape)
    out = hist.Hist(*h.axes, storage=hist.storage.Weight(), label=h.label, name=h.name)
    out.metadata = vars(h).get("metadata")
    view = out.view(flow=True)
    view["value"] = values * f
    view["variance"] = variances * (f * f)
    return out


def normalise_hists(
    hists: Mapping[str, Any], scales: Mapping[str, Normalisation]
) -> tuple[dict[str, hist.Hist], list[str]]:
    """Scaled copies of the histograms; the names left out.

    A histogram with a ``dataset`` category axis is scaled bin by bin along it; one
    without is scaled by the only dataset's factor when the run has one dataset.
    Left out: non-histograms, profiles (mean storages), histograms without a
    ``dataset`` axis in a run of several datasets.
    """
    out: dict[str, hist.Hist] = {}
    skipped: list[str] = []
    only = next(iter(scales.values())).scale if len(scales) == 1 else None
    for name, h in hists.items():
        if not isinstance(h, hist.Hist) or h.kind.name != "COUNT":
            skipped.append(name)
            continue
        names = [ax.name for ax in h.axes]
        if "dataset" in names:
            i = names.index("dataset")
            ax = h.axes[i]
            labels = list(ax)
            factors = [scales[d].scale if d in scales else 1.0 for d in labels]
            n_flow = h.view(flow=True).shape[i] - len(labels)
            out[name] = _scaled(h, np.array(factors + [1.0] * n_flow), i)
        elif only is not None:
            out[name] = _scaled(h, only, None)
        else:
            skipped.append(name)
    return out, skipped


def roles(datasets: Mapping[str, Dataset], source: str = "samples") -> dict[str, DatasetRole]:
    """:func:`dataset_role` of every dataset."""
    return {n: dataset_role(n, d.metadata, source) for n, d in datasets.items()}


def normalisation_record(
    scales: Mapping[str, Normalisation], lumi: float, sqrt_s: float | None, skipped: list[str]
) -> dict[str, Any]:
    """The content of ``normalisation.json``."""
    return {
        "lumi_pb": lumi,
        "sqrt_s_tev": sqrt_s,
        "convention": "simulation scaled by xsec_pb * lumi_pb / sumw; data not scaled; "
        "hists.pkl raw, hists_normalised.pkl scaled (values * scale, variances * scale**2)",
        "datasets": {n: asdict(s) for n, s in scales.items()},
        "not_normalised": skipped,
    }
