"""Input variations: a feature scaled or shifted Up and Down, as pure array code.

A :class:`Variation` is what one entry of the config's ``systematics`` section
says (``hepnn.config.SystematicConfig``), turned into plain data so that the
workflows (and worker processes) need no config import:

>>> tes = Variation("tes", "PRI_tau_pt", "scale", up=1.03, down=0.97)
>>> tes.labels
('tesUp', 'tesDown')
>>> tes.vary(np.array([20.0, -999.0]), "Up")
array([  20.6, -999. ])

Conventions
-----------
* ``scale``: ``x → size · x``; ``shift``: ``x → x + size`` (in the feature's unit).
* Missing values (``-999.0``, NaN, masked entries) are never varied.
* A variation applies to simulation only: never to a dataset whose metadata says
  ``is_data: true`` (or ``is_mc: false``), and only to the ``datasets`` /
  ``processes`` it names (all simulated ones when it names none). Where it does not
  apply, the varied value *is* the nominal one, so a template of an unaffected
  process is its nominal histogram.
* Histogram labels: ``nominal``, then ``<name>Up``, ``<name>Down`` per variation, in
  config order (:func:`syst_labels`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

__all__ = [
    "DIRECTIONS",
    "NOMINAL",
    "Variation",
    "is_data",
    "syst_labels",
    "variations_from_mapping",
    "varied_labels",
]

#: Label of the unvaried histograms on the ``syst`` axis.
NOMINAL = "nominal"
#: The two directions of every variation, in the order written.
DIRECTIONS: tuple[Literal["Up"], Literal["Down"]] = ("Up", "Down")
MISSING = -999.0


def is_data(metadata: Mapping[str, Any] | None) -> bool:
    """Whether a dataset is (real) data: ``is_data: true`` or ``is_mc: false`` in its metadata."""
    meta = metadata or {}
    return bool(meta.get("is_data", False)) or meta.get("is_mc", True) is False


@dataclass(frozen=True)
class Variation:
    """One input variation (see the module docstring for the conventions).

    Attributes
    ----------
    name
        Name in histogram labels and ROOT paths (``<name>Up``, ``<name>Down``).
    feature
        The column varied (``PRI_tau_pt``; ``FatJet_pt`` for NanoAOD FatJets).
    kind
        ``scale`` (multiply) or ``shift`` (add).
    up, down
        Size of each direction: factors for ``scale``, offsets for ``shift``.
    datasets
        Datasets it applies to (None: every simulated dataset).
    processes
        Processes it applies to (None: all); matched against the workflow's
        per-event process labels, or the dataset's ``metadata.process``.
    """

    name: str
    feature: str
    kind: Literal["scale", "shift"]
    up: float
    down: float
    datasets: tuple[str, ...] | None = None
    processes: tuple[str, ...] | None = None

    @property
    def labels(self) -> tuple[str, str]:
        """``(<name>Up, <name>Down)``."""
        return f"{self.name}Up", f"{self.name}Down"

    def size(self, direction: str) -> float:
        """The factor (``scale``) or offset (``shift``) of ``direction`` (``Up`` / ``Down``)."""
        if direction not in DIRECTIONS:
            msg = f"direction must be 'Up' or 'Down', got {direction!r}"
            raise ValueError(msg)
        return self.up if direction == "Up" else self.down

    def vary(self, values: Any, direction: str) -> np.ndarray:
        """``values`` (a numpy array, any shape) varied in ``direction``; missing values kept.

        Returns a new float64 array; ``-999.0`` and NaN entries are returned unchanged.
        """
        size = self.size(direction)
        arr = np.asarray(values, dtype=np.float64)
        varied = arr * size if self.kind == "scale" else arr + size
        return np.where((arr == MISSING) | np.isnan(arr), arr, varied)

    def applies_to(self, dataset: str, metadata: Mapping[str, Any] | None) -> bool:
        """Whether the variation touches ``dataset`` at all: never data, and the ``datasets`` filter."""
        if is_data(metadata):
            return False
        return self.datasets is None or dataset in self.datasets

    def event_mask(self, processes: Any, n: int) -> np.ndarray:
        """Which of ``n`` events it applies to, given their process labels (None: unknown = all).

        ``processes`` is one label per event (the Higgs workflow's signal/background)
        or one label for the whole dataset (its ``metadata.process``).
        """
        if self.processes is None or processes is None:
            return np.ones(n, dtype=bool)
        labels = np.broadcast_to(np.asarray(processes).astype(str), (n,))
        return np.isin(labels, list(self.processes))


def variations_from_mapping(mapping: Mapping[str, Mapping[str, Any]] | None) -> list[Variation]:
    """The variations of ``WorkflowContext.systematics`` (``{name: {feature, kind, up, down, ...}}``)."""
    out = []
    for name, spec in (mapping or {}).items():
        datasets = spec.get("datasets")
        processes = spec.get("processes")
        out.append(
            Variation(
                name=str(name), feature=str(spec["feature"]), kind=spec.get("kind", "scale"),
                up=float(spec["up"]), down=float(spec["down"]),
                datasets=None if datasets is None else tuple(str(d) for d in datasets),
                processes=None if processes is None else tuple(str(p) for p in processes),
            )
        )  # fmt: skip
    return out


def syst_labels(variations: Iterable[Variation]) -> list[str]:
    """``["nominal", "<a>Up", "<a>Down", "<b>Up", ...]``: the ``syst`` axis categories."""
    labels = [NOMINAL]
    for v in variations:
        labels += list(v.labels)
    return labels


def varied_labels(variations: Sequence[Variation]) -> list[tuple[Variation, str, str]]:
    """``(variation, direction, label)`` for every varied histogram, in axis order."""
    return [(v, d, f"{v.name}{d}") for v in variations for d in DIRECTIONS]
