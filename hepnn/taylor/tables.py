"""Writers for Taylor rankings: tables and plots, and the per-epoch history.

>>> from hepnn.taylor import write_ranking
>>> paths = write_ranking(result, "outputs/higgs", "mlp")  # outputs/higgs/ranking/mlp.{csv,json,md,png,pdf}

Every file is written atomically (temporary file in the same folder, then
``os.replace``), so a reader never sees a half-written ranking and an
interrupted run leaves the previous files intact.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hepnn.files import atomic_path, atomic_text, json_text
from hepnn.taylor.result import TaylorResult, output_description

__all__ = ["write_helpers", "write_history", "write_ranking"]

COLUMNS = ("rank", "term", "order", "value")
HELPER_COLUMNS = ("input", "value", "n_events")
HISTORY_COLUMNS = ("epoch", "term", "order", "value")
#: Bar colours by order (matplotlib default cycle: blue, orange, green).
ORDER_COLOURS = {1: "C0", 2: "C1", 3: "C2"}


# ------------------------------------------------------------------- atomic io


def _atomic_figure(fig: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip("."), bbox_inches="tight")


def _csv_text(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def _fmt(value: float) -> str:
    return repr(float(value))


def _cell(value: Any) -> str:
    """CSV cell: full-precision floats, empty for None, ``true``/``false`` for booleans."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return _fmt(value)
    return str(value)


# --------------------------------------------------------------------- ranking


def _convention_lines(result: TaylorResult) -> list[str]:
    meta = result.metadata()
    weights = (
        f"weighted by event weights (sum {result.sum_weights:.6g})"
        if result.weighted
        else "unweighted"
    )
    if result.inputs == "unscaled":
        inputs = (
            "Derivatives are taken in the original (unscaled) inputs: each standardised "
            "derivative times 1/sigma_i per derivative in feature i."
        )
    else:
        inputs = "Derivatives are taken in the network's prepared, standardised inputs."
    lines = [
        f"Taylor-coefficient ranking (Wunsch et al., arXiv:1803.08782) of {meta['output']}.",
        inputs,
        f"Value: <t_a> = sum_k w_k |t_a(x_k)| / sum_k w_k over {result.n_events} events, {weights}.",
        "Taylor factors: t_ii = (1/2) d2y/dx_i2, a mixed pair t_ij (i<j) is counted once; "
        "third order 1/6 (iii), 1/2 (iij), 1 (ijk). All orders are ranked together.",
    ]
    if result.has_errors:
        n_boot = 0 if result.boot_sums is None else result.boot_sums.shape[0]
        lines += [
            "Each term is averaged only over the events where all of its features are defined "
            "(defined = that fraction of the events); helper inputs (missing flags) are not ranked.",
            f"Errors: stat = std of {n_boot} event-bootstrap replicas; "
            + (
                f"train = std over {len(result.train_labels)} retrained models "
                f"({result.train_basis})"
                if result.train_labels
                else "train = none (a single model: no ensemble members, no k folds)"
            )
            + "; err = both in quadrature.",
            "z = (value - next value) / uncertainty of that difference (from the same replicas, "
            "correlations included); ≈ marks a term not separated from the next one (z <= 2).",
        ]
    return lines


def _num(value: float | None, spec: str = ".3g") -> str:
    return "–" if value is None else format(value, spec)


def _markdown(result: TaylorResult, model_name: str, records: list[dict[str, Any]]) -> str:
    lines = [f"### Taylor ranking: {model_name}", ""]
    lines += [*_convention_lines(result), ""]
    if result.has_errors:
        lines += [
            "| rank | term | order | <\\|t\\|> | ± err | ± stat | ± train | defined | z to next |",
            "|---:|:---|---:|---:|---:|---:|---:|---:|:---|",
        ]
    else:
        lines += ["| rank | term | order | <\\|t\\|> |", "|---:|:---|---:|---:|"]
    for rec in records:
        term = str(rec["term"]).replace("|", "\\|").replace("*", "\\*")
        row = f"| {rec['rank']} | {term} | {rec['order']} | {_num(rec['value'], '.4g')} |"
        if result.has_errors:
            z = rec["z_next"]
            mark = "" if rec["separated"] is not False else " ≈"
            row += (
                f" {_num(rec['err'], '.2g')} | {_num(rec['err_stat'], '.2g')} |"
                f" {_num(rec['err_train'], '.2g')} | {rec['defined_fraction']:.3f} |"
                f" {_num(z, '.3g')}{mark} |"
            )
        lines.append(row)
    return "\n".join(lines) + "\n"


def _plot_ranking(
    result: TaylorResult, model_name: str, n_bars: int, log_x: bool, paths: dict[str, Path]
) -> None:
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    from hepnn.plotstyle import plot_style

    records = result.ranked(n_bars)
    with plot_style():
        fig, ax = plt.subplots(figsize=(10, max(3.0, 0.45 * len(records) + 1.5)))
        ypos = np.arange(len(records))[::-1]
        values = [r.value for r in records]
        colours = [ORDER_COLOURS.get(r.order, "C3") for r in records]
        errs = None
        if result.has_errors:
            order = np.argsort(-result.values, kind="stable")[: len(records)]
            errs = np.nan_to_num(result.err[order])
        ax.barh(
            ypos, values, color=colours, height=0.7, xerr=errs, capsize=3 if errs is not None else 0
        )
        ax.set_yticks(ypos, [r.term for r in records], fontsize=14)
        ax.set_xlabel(r"$\langle |t_\alpha| \rangle$")
        if log_x:
            positive = [v for v in values if v > 0]
            ax.set_xscale("log")
            if positive:
                ax.set_xlim(min(positive) / 2, max(positive) * 2)
        orders = sorted({r.order for r in records})
        ax.legend(
            handles=[Patch(color=ORDER_COLOURS.get(o, "C3"), label=f"order {o}") for o in orders],
            loc="lower right",
            fontsize=14,
        )
        out = "sigmoid" if result.output == "sigmoid" else "logit"
        ax.set_title(
            f"{model_name}: Taylor ranking of the {out}, {result.n_events} events", fontsize=16
        )
        _save(fig, paths)


def _save(fig: Any, paths: dict[str, Path]) -> None:
    """Lay out and write ``fig`` to every path (inside the style context), then close it."""
    import matplotlib.pyplot as plt

    try:
        fig.tight_layout()
        for path in paths.values():
            _atomic_figure(fig, path)
    finally:
        plt.close(fig)


def write_ranking(
    result: TaylorResult,
    outdir: str | os.PathLike[str],
    model_name: str,
    top: int | None = None,
    *,
    plot_top: int = 20,
    log_x: bool = False,
    formats: Sequence[str] = ("png", "pdf"),
) -> dict[str, Path]:
    """Write a ranking to ``OUTDIR/ranking/<model_name>.{csv,json,md,png,pdf}``.

    Parameters
    ----------
    result
        Output of :func:`hepnn.taylor.mean_abs_taylor`.
    outdir
        Run output folder; files go to its ``ranking/`` subfolder.
    model_name
        File stem (e.g. the model's name in the config).
    top
        Keep only the ``top`` highest terms in the tables (default: all).
    plot_top
        Bars in the plot (highest first; at most ``top``).
    log_x
        Logarithmic value axis in the plot.
    formats
        Plot formats.

    Returns
    -------
    dict of str to Path
        ``{"csv", "json", "md", <format>...}`` to the written files.

    Notes
    -----
    CSV and Markdown columns: ``rank, term, order, value`` (rank from 1, term
    the feature names joined by ``*``), then, when the result carries
    uncertainties (:attr:`TaylorResult.has_errors`), ``err_stat, err_train,
    err, defined_fraction, z_next, separated`` (empty / null when not
    available). The JSON holds ``{"metadata": {...}, "columns": [...],
    "ranking": [{rank, term, order, value, ...}, ...]}`` (and the per-model
    ``training_replicas`` values) where the metadata states the convention:
    differentiated output, standardised or unscaled inputs, weights, number of
    events, Taylor factors, and what every error means. The plot draws ``err``
    as error bars.
    """
    folder = Path(outdir) / "ranking"
    records = result.to_records(top)
    columns = result.columns()
    paths: dict[str, Path] = {}

    paths["csv"] = folder / f"{model_name}.csv"
    if result.has_errors:
        rows = [[_cell(r[c]) for c in columns] for r in records]
    else:
        rows = [[r["rank"], r["term"], r["order"], _fmt(r["value"])] for r in records]
    atomic_text(paths["csv"], _csv_text(columns, rows))

    paths["json"] = folder / f"{model_name}.json"
    meta = {
        "model": model_name,
        **result.metadata(),
        "convention": " ".join(_convention_lines(result)),
    }
    doc: dict[str, Any] = {"metadata": meta, "columns": columns, "ranking": records}
    if result.train_values is not None:
        doc["training_replicas"] = {
            "labels": list(result.train_labels),
            "values": {
                name: [float(v) for v in result.train_values[:, i]]
                for name, i in ((r["term"], result.names.index(r["term"])) for r in records)
            },
        }
    atomic_text(paths["json"], json_text(doc))

    paths["md"] = folder / f"{model_name}.md"
    atomic_text(paths["md"], _markdown(result, model_name, records))

    if formats:
        plots = {fmt: folder / f"{model_name}.{fmt}" for fmt in formats}
        n_bars = plot_top if top is None else min(plot_top, top)
        _plot_ranking(result, model_name, n_bars, log_x, plots)
        paths.update(plots)
    return paths


def write_helpers(
    result: TaylorResult, outdir: str | os.PathLike[str], model_name: str
) -> dict[str, Path]:
    """Write the first-order ⟨|∂y/∂h|⟩ of helper inputs to ``ranking/<model>_helpers.{csv,md}``.

    Helper inputs (0/1 missing-value flags) are not physics features and are
    never ranked with them; this small table only says how strongly the network
    output moves with each flag, for information. Columns ``input, value, n_events``.
    """
    folder = Path(outdir) / "ranking"
    order = np.argsort(-result.values, kind="stable")
    rows = [[result.names[i], _fmt(result.values[i]), result.n_events] for i in order]
    paths = {"csv": folder / f"{model_name}_helpers.csv", "md": folder / f"{model_name}_helpers.md"}
    atomic_text(paths["csv"], _csv_text(HELPER_COLUMNS, rows))
    lines = [
        f"### Helper inputs of {model_name} (not ranked)",
        "",
        f"First-order <|dy/dh|> of {output_description(result.output)} in each helper input "
        f"(0/1 missing-value flag), over {result.n_events} events. A derivative in a binary "
        "input is not a physics sensitivity: these inputs are reported apart, never ranked.",
        "",
        "| input | <\\|t\\|> |",
        "|:---|---:|",
    ]
    lines += [f"| {name} | {float(value):.4g} |" for name, value, _ in rows]
    atomic_text(paths["md"], "\n".join(lines) + "\n")
    return paths


# --------------------------------------------------------------------- history


def _history_rows(records: Sequence[tuple[int, TaylorResult]]) -> list[tuple[int, str, int, float]]:
    rows = []
    for epoch, result in sorted(records, key=lambda er: er[0]):
        rows.extend(
            (int(epoch), name, order, float(value))
            for name, order, value in zip(result.names, result.orders, result.values, strict=True)
        )
    return rows


def write_history(
    records: Sequence[tuple[int, TaylorResult]],
    outdir: str | os.PathLike[str],
    model_name: str,
    *,
    top: int = 10,
    formats: Sequence[str] = ("png", "pdf"),
) -> dict[str, Path]:
    """Write the per-epoch evolution of ``<|t_a|>`` to ``OUTDIR/ranking/<model>_history.*``.

    Parameters
    ----------
    records
        ``(epoch, TaylorResult)`` pairs, e.g. :attr:`hepnn.taylor.TaylorMonitor.history`.
    outdir
        Run output folder.
    model_name
        File stem.
    top
        Terms drawn: the ``top`` highest at the last epoch.
    formats
        Plot formats.

    Returns
    -------
    dict of str to Path
        ``{"csv", <format>...}``. The CSV has columns ``epoch, term, order, value``
        (one row per epoch and term); the plot one line per term against the
        epoch on a log axis (symlog if an epoch is <= 0).
    """
    folder = Path(outdir) / "ranking"
    if not records:
        msg = "no history records to write"
        raise ValueError(msg)
    rows = _history_rows(records)
    paths = {"csv": folder / f"{model_name}_history.csv"}
    atomic_text(
        paths["csv"], _csv_text(HISTORY_COLUMNS, [[e, t, o, _fmt(v)] for e, t, o, v in rows])
    )
    if not formats:
        return paths

    import matplotlib.pyplot as plt

    from hepnn.plotstyle import plot_style

    ordered = sorted(records, key=lambda er: er[0])
    epochs = np.array([e for e, _ in ordered], dtype=float)
    last = ordered[-1][1]
    with plot_style():
        fig, ax = plt.subplots(figsize=(10, 7))
        styles = {1: "-", 2: "--", 3: ":"}
        for rec in last.ranked(top):
            series = [r.value(rec.term) if rec.term in r.names else np.nan for _, r in ordered]
            ax.plot(epochs, series, styles.get(rec.order, "-"), marker="o", ms=3, label=rec.term)
        if epochs.min() > 0:
            ax.set_xscale("log")
        else:
            ax.set_xscale("symlog", linthresh=1.0)
        ax.set_xlabel("epoch")
        ax.set_ylabel(r"$\langle |t_\alpha| \rangle$")
        ax.legend(fontsize=12, ncol=2, title="order 1 solid, 2 dashed, 3 dotted", title_fontsize=11)
        ax.set_title(f"{model_name}: {output_description(last.output)}", fontsize=16)
        plots = {fmt: folder / f"{model_name}_history.{fmt}" for fmt in formats}
        _save(fig, plots)
    paths.update(plots)
    return paths
