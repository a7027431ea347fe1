"""A small workflow for fault, resume and dask tests (copied into tmp_path by the tests).

It fills weighted histograms of the Higgs-challenge CSV, so float sums show any
change of merge order, and misbehaves on request:

options
    ``sleep`` seconds per block; ``marks`` folder for ``start-<pid>-<entry>`` and
    ``end-<pid>-<entry>`` files; ``fail_start`` entry starts whose chunk always
    raises ``OSError``; ``flaky_dir`` fails the first attempt of every chunk (or of
    the starts in ``flaky_start``); ``crash_dir`` kills the worker process on the
    first attempt of entry 0.
environment
    ``HEPNN_PROBE_INTERRUPT=<counter file>:<n>:raise|exit`` interrupts the n-th
    block processed (``KeyboardInterrupt`` or ``os._exit(9)``).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import awkward as ak
import hist
import numpy as np

from hepnn.schemas import BaseSchema
from hepnn.workflow import Workflow


def _interrupt_if_asked() -> None:
    spec = os.environ.get("HEPNN_PROBE_INTERRUPT")
    if not spec:
        return
    counter, n, mode = spec.rsplit(":", 2)
    path = Path(counter)
    count = int(path.read_text()) + 1 if path.exists() else 1
    path.write_text(str(count))
    if count == int(n):
        if mode == "exit":
            os._exit(9)
        raise KeyboardInterrupt


def _first_attempt(folder: str, start: int) -> bool:
    marker = Path(folder, f"attempted-{start}")
    if marker.exists():
        return False
    marker.touch()
    return True


class Probe(Workflow):
    """Weighted DER_mass_MMC and PRI_met histograms per dataset."""

    name = "probe"
    schema = BaseSchema

    def process(self, events: Any) -> dict[str, hist.Hist]:
        md = events.metadata
        start = int(md["entrystart"])
        opts = self.options
        if opts.get("marks"):
            Path(opts["marks"], f"start-{os.getpid()}-{start}").touch()
        _interrupt_if_asked()
        if start in opts.get("fail_start", []):
            msg = f"simulated unreadable basket at entry {start}"
            raise OSError(msg)
        flaky = opts.get("flaky_start")
        if (
            opts.get("flaky_dir")
            and (flaky is None or start in flaky)
            and _first_attempt(opts["flaky_dir"], start)
        ):
            msg = f"flaky read, first attempt at entry {start}"
            raise OSError(msg)
        if opts.get("crash_dir") and start == 0 and _first_attempt(opts["crash_dir"], start):
            os._exit(17)
        time.sleep(float(opts.get("sleep", 0.0)))
        weight = ak.to_numpy(events.Weight).astype(np.float64)
        out = {}
        for var, hi in (("DER_mass_MMC", 400.0), ("PRI_met", 300.0)):
            h = hist.Hist(
                hist.axis.StrCategory(list(self.context.datasets), name="dataset"),
                hist.axis.Regular(40, 0.0, hi, name="x"),
                storage=hist.storage.Weight(),
            )
            h.fill(dataset=md["dataset"], x=ak.to_numpy(events[var]), weight=weight)
            out[var] = h
        if opts.get("marks"):
            Path(opts["marks"], f"end-{os.getpid()}-{start}").touch()
        return out
