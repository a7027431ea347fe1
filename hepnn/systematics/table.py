"""The variations table: each input variation's effect on a network's score, and its linear prediction.

Written by the run (stage ``summarise_systematics``) from three histograms a workflow
fills per network ``<net>`` (:func:`shift_hists` builds the two new ones):

* ``score_fine_syst_<net>`` — the score (1000 bins) with a ``syst`` axis (``nominal``, ``<v>Up``, ``<v>Down``):
  the *actual* score of the varied events, the network re-evaluated;
* ``score_linear_<net>`` — ``score + Δy_lin`` per event, ``Δy_lin = Σ_i ∂y/∂z_i Δz_i`` the
  first-order Taylor prediction from the gradient in the network's inputs
  (:func:`hepnn.nets.linear.linear_shift`): the *linearised* prediction;
* ``syst_shift_<net>`` — weighted sums of the per-event shifts (actual, linear, and
  the squared difference of the two).

Columns of ``systematics/<net>.csv`` (one row per variation, direction and process):

``variation, direction, process``
    The variation (``<name>``), ``Up`` / ``Down``, the process (``all`` = summed).
``mean_shift``, ``mean_shift_linear``
    Weighted mean of the per-event score change, actual and linearised (exact sums,
    not binned).
``rms_linear_error``
    Weighted RMS over events of (actual − linear) per-event change.
``yield_above_cut``, ``yield_change``, ``yield_change_linear``
    Nominal weighted yield with score > ``score_cut`` and its relative change
    (actual, linearised), from the 1000-bin score histograms (overflow included).
``chi2``, ``chi2_linear``, ``ndf``
    Σ_b (varied_b − nominal_b)² / (σ²_nominal,b + σ²_varied,b) over the ``ndf`` bins
    (50 bins in [0, 1]) with content in either, σ² the sums of squared weights. The
    varied and nominal histograms hold the *same* events, so the two uncertainties
    are not independent and this is not a goodness-of-fit p-value: it measures the
    size of the shape change in units of the simulation's statistical precision.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hist
import numpy as np

from hepnn.files import atomic_text
from hepnn.systematics.variations import NOMINAL

__all__ = ["QUANTITIES", "nominal_hists", "shift_hists", "variation_rows", "write_variation_tables"]

#: Categories of the ``quantity`` axis of ``syst_shift_<net>``.
QUANTITIES = ("actual", "linear", "residual_sq")
CHI2_BINS = 50
COLUMNS = (
    "variation", "direction", "process", "mean_shift", "mean_shift_linear", "rms_linear_error",
    "yield_above_cut", "yield_change", "yield_change_linear", "chi2", "chi2_linear", "ndf",
)  # fmt: skip


def shift_hists(net: str, processes: Sequence[str], labels: Sequence[str]) -> dict[str, hist.Hist]:
    """Empty ``score_linear_<net>`` and ``syst_shift_<net>`` for the variation ``labels`` (no nominal)."""
    proc = hist.axis.StrCategory(list(processes), name="process")
    syst = hist.axis.StrCategory(list(labels), name="syst")
    linear = hist.Hist(
        proc, syst, hist.axis.Regular(1000, 0.0, 1.0, name="score", label=f"{net} score (linearised)"),
        storage=hist.storage.Weight(),
        label=f"{net} score + first-order Taylor shift (linearised prediction)",
        metadata={"plot": False},
    )  # fmt: skip
    sums = hist.Hist(
        proc, syst, hist.axis.StrCategory(list(QUANTITIES), name="quantity"),
        storage=hist.storage.Weight(),
        label=f"weighted sums of the per-event {net} score shifts",
        metadata={"plot": False},
    )  # fmt: skip
    return {f"score_linear_{net}": linear, f"syst_shift_{net}": sums}


def nominal_hists(hists: dict[str, Any]) -> dict[str, Any]:
    """``hists`` with every histogram that has a ``syst`` axis replaced by its ``nominal`` slice.

    For consumers that sum over the categorical axes they do not know (plots, band
    summaries): without a ``syst`` axis anywhere, ``hists`` itself is returned.
    """
    if not any(isinstance(h, hist.Hist) and "syst" in h.axes.name for h in hists.values()):
        return hists
    return {
        k: h[{"syst": hist.loc(NOMINAL)}]
        if isinstance(h, hist.Hist) and "syst" in h.axes.name and NOMINAL in h.axes["syst"]
        else h
        for k, h in hists.items()
    }


def _sum_other(h: hist.Hist, keep: Sequence[str]) -> hist.Hist:
    drop = {ax.name: sum for ax in h.axes if ax.name not in keep}
    return h[drop] if drop else h


def _values(h: hist.Hist, process: str, syst: str) -> tuple[np.ndarray, np.ndarray]:
    sel: dict[str, Any] = {"syst": hist.loc(syst)}
    sel["process"] = sum if process == "all" else hist.loc(process)
    hh = h[sel]
    return hh.values(flow=True), hh.variances(flow=True)


def _yield_above(values: np.ndarray, edges: np.ndarray, cut: float) -> float:
    # values include under/overflow: index 0 underflow, 1..n bins, n+1 overflow
    inner = values[1:-1]
    return float(inner[edges[:-1] >= cut - 1e-12].sum() + values[-1])


def _chi2(
    var: np.ndarray, var_var: np.ndarray, nom: np.ndarray, nom_var: np.ndarray
) -> tuple[float, int]:
    groups = (len(nom) - 2) // CHI2_BINS

    def rebin(a: np.ndarray) -> np.ndarray:
        inner = a[1:-1].reshape(CHI2_BINS, groups).sum(axis=1)
        inner[0] += a[0]  # under- and overflow join the edge bins
        inner[-1] += a[-1]
        return inner

    v, n, s2 = rebin(var), rebin(nom), rebin(nom_var) + rebin(var_var)
    ok = s2 > 0
    return float(np.sum((v[ok] - n[ok]) ** 2 / s2[ok])), int(ok.sum())


def variation_rows(hists: dict[str, hist.Hist], net: str, score_cut: float) -> list[dict[str, Any]]:
    """The rows of ``systematics/<net>.csv`` (see the module docstring)."""
    fine = _sum_other(hists[f"score_fine_syst_{net}"], ("process", "syst", "score"))
    linear = hists[f"score_linear_{net}"]
    sums = hists[f"syst_shift_{net}"]
    edges = fine.axes["score"].edges
    processes = ["all", *list(fine.axes["process"])]
    rows = []
    for label in sums.axes["syst"]:
        name, direction = (label[:-2], "Up") if label.endswith("Up") else (label[:-4], "Down")
        for proc in processes:
            nom, nom_var = _values(fine, proc, NOMINAL)
            total = float(nom[1:-1].sum() + nom[0] + nom[-1])
            if total == 0:
                continue
            act, act_var = _values(fine, proc, label)
            lin, lin_var = _values(linear, proc, label)
            q = sums[
                {"process": sum if proc == "all" else hist.loc(proc), "syst": hist.loc(label)}
            ].values()
            y0 = _yield_above(nom, edges, score_cut)
            chi2, ndf = _chi2(act, act_var, nom, nom_var)
            chi2_lin, _ = _chi2(lin, lin_var, nom, nom_var)
            rows.append({
                "variation": name, "direction": direction, "process": proc,
                "mean_shift": q[0] / total, "mean_shift_linear": q[1] / total,
                "rms_linear_error": float(np.sqrt(max(q[2], 0.0) / total)),
                "yield_above_cut": y0,
                "yield_change": (_yield_above(act, edges, score_cut) - y0) / y0 if y0 else float("nan"),
                "yield_change_linear": (_yield_above(lin, edges, score_cut) - y0) / y0 if y0 else float("nan"),
                "chi2": chi2, "chi2_linear": chi2_lin, "ndf": ndf,
            })  # fmt: skip
    return rows


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def _markdown(net: str, rows: list[dict[str, Any]], score_cut: float) -> str:
    lines = [
        f"# Input variations through `{net}`",
        "",
        "Each variation's effect on the score, the network re-evaluated on the varied events "
        "(actual), beside the **linearised prediction** from the first-order Taylor coefficients "
        "(Δy ≈ Σ_i ∂y/∂z_i Δz_i per event, gradients in the network's standardised inputs; "
        "exact only for small variations).",
        "",
        f"Yields: weighted events with score > {score_cut:g}. χ²: varied vs nominal score histogram "
        f"({CHI2_BINS} bins) over the sum of both statistical variances; both hold the same "
        "events, so it measures the size of the change, not a p-value.",
        "",
        "| variation | dir | process | ⟨Δy⟩ | ⟨Δy⟩ linear | RMS(actual−linear) | yield change | linear | χ²/ndf | linear χ²/ndf |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['variation']} | {r['direction']} | {r['process']} | {r['mean_shift']:+.5f} | "
            f"{r['mean_shift_linear']:+.5f} | {r['rms_linear_error']:.5f} | {r['yield_change']:+.2%} | "
            f"{r['yield_change_linear']:+.2%} | {r['chi2']:.1f}/{r['ndf']} | {r['chi2_linear']:.1f}/{r['ndf']} |"
        )
    return "\n".join(lines) + "\n"


def write_variation_tables(
    hists: dict[str, hist.Hist], outdir: Path, *, score_cut: float = 0.5
) -> list[Path]:
    """``<outdir>/<net>.csv`` and ``.md`` for every network with ``syst_shift_<net>`` in ``hists``."""
    files: list[Path] = []
    for key in sorted(hists):
        if not key.startswith("syst_shift_"):
            continue
        net = key[len("syst_shift_") :]
        rows = variation_rows(hists, net, score_cut)
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(COLUMNS)
        for r in rows:
            writer.writerow([_fmt(r[c]) for c in COLUMNS])
        outdir.mkdir(parents=True, exist_ok=True)
        atomic_text(outdir / f"{net}.csv", buf.getvalue())
        atomic_text(outdir / f"{net}.md", _markdown(net, rows, score_cut))
        files += [outdir / f"{net}.csv", outdir / f"{net}.md"]
    return files
