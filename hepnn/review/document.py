"""``review/README.md`` and ``review/gof.md``: one document to attach to an analysis review.

Every link is relative to ``review/`` and stays inside the run's output folder
(``../ranking/...``, ``../plots/...``, ``../models/...``, ``plots/...``). Files that
other parts of a run write (ranking, history, band plots, ``systematics/<net>.csv``)
are included when they exist.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hepnn.files import atomic_text

if TYPE_CHECKING:
    from hepnn.config import ReviewConfig
    from hepnn.review.build import NetworkReview

TEST_TEXT = (
    "Saturated-model Poisson likelihood ratio (Baker–Cousins) with the simulation's "
    "statistical uncertainty (Σw² per bin) profiled per bin (Barlow–Beeston lite); "
    "the simulation is normalised to the data total (ndf = bins − 1). Bins are "
    "weighted quantiles of the simulation with at least {min_expected:g} expected data "
    "events each (at most {max_bins}; pairs: quantiles of the first feature, then of the "
    "second inside each slice, unrolled); only events where every feature of the term is "
    "defined. Flagged: p < {flag_p:g}."
)


def _table(header: Sequence[str], rows: list[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _csv_table(path: Path, limit: int | None = None) -> str:
    with path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    if not rows:
        return "(empty)\n"
    body = rows[1 : None if limit is None else limit + 1]
    return _table(rows[0], body)


def gof_rows(rev: NetworkReview) -> list[list[Any]]:
    return [
        [r.term.rank, f"`{r.term.name}`", r.term.order, f"{r.chi2:.1f} / {r.ndf}",
         f"{r.p_value:.3g}", r.binning.n_bins, r.n_data, f"{r.defined_data:.2f}",
         "**yes**" if r.flagged else "no"]
        for r in rev.gof
    ]  # fmt: skip


GOF_HEADER = ("rank", "term", "order", "χ² / ndf", "p-value", "bins", "data events",
              "defined (data)", "flagged")  # fmt: skip


def gof_markdown(reviews: Sequence[NetworkReview], settings: ReviewConfig) -> str:
    """``review/gof.md``: the goodness-of-fit table of every flat network."""
    out = ["# Input-space goodness of fit\n", TEST_TEXT.format(**settings.model_dump()) + "\n"]
    for rev in reviews:
        out.append(f"## {rev.name}\n")
        out.append(_gof_section_body(rev, settings))
    return "\n".join(out)


def _gof_section_body(rev: NetworkReview, settings: ReviewConfig) -> str:
    if rev.gof_note:
        return rev.gof_note + "\n"
    n_flag = sum(r.flagged for r in rev.gof)
    text = [
        f"Simulation compared with {rev.compared_with}; terms: {rev.terms_from}.\n",
        *(
            [
                "**A closure test: the pseudo-data are drawn from the simulation (independent events), "
                "not collision data.**\n"
            ]
            if rev.compared_with.startswith("pseudo-data")
            else []
        ),
        f"{n_flag} of {len(rev.gof)} terms flagged (expected by chance: "
        f"{len(rev.gof) * settings.flag_p:.2f} if simulation and data agree; the terms share events, "
        "so their tests are correlated).\n",
        _table(GOF_HEADER, gof_rows(rev)),
    ]
    if rev.skipped:
        text.append("Not compared: " + "; ".join(f"`{t}` ({why})" for t, why in rev.skipped) + "\n")
    return "\n".join(text)


def _network_section(rev: NetworkReview, outdir: Path) -> str:
    meta = rev.meta
    arch = meta.get("architecture", {})
    inputs = meta.get("inputs", {})
    names = meta.get("input_names", [])
    features = inputs.get("features", [])
    helpers = [n for n in names if n not in features]
    split = meta.get("split", {})
    lines = [
        f"- kind: {meta.get('kind', inputs.get('kind'))}; architecture `{arch.get('name')}` "
        f"with `{arch.get('params')}`; output: sigmoid of the logit",
        f"- inputs ({len(names)}): "
        + (", ".join(f"`{f}`" for f in features) if features else f"`{inputs}`")
        + (
            f"; helper inputs (not measured): {', '.join(f'`{h}`' for h in helpers)}"
            if helpers and features
            else ""
        ),
        f"- split: `{split.get('method')}`"
        + (
            f", {split.get('folds')} folds by `{split.get('id_column')} % {split.get('folds')}`"
            if split.get("method") == "kfold"
            else f" by `{split.get('id_column')}`"
        )
        + f"; training seed {meta.get('seed')}",
        f"- files: [`model.json`](../models/{rev.name}/model.json), "
        f"[`history.csv`](../models/{rev.name}/history.csv)",
    ]
    metrics = meta.get("metrics", {})
    models = metrics.get("models", [])
    out = ["\n".join(lines) + "\n"]
    if models:
        rows = [[i, m.get("best_epoch"), m.get("epochs_run"), m.get("n_train"), m.get("n_val"),
                 _fmt(m.get("val_loss")), _fmt(m.get("val_auc"))] for i, m in enumerate(models)]  # fmt: skip
        out.append(_table(("model", "best epoch", "epochs run", "training rows", "validation rows",
                           "validation loss", "validation AUC"), rows))  # fmt: skip
    held = metrics.get("held_out")
    if held:
        out.append("Held out: " + ", ".join(f"{k} {_fmt(v)}" for k, v in held.items()) + "\n")
    if (outdir / "plots" / f"training_{rev.name}.png").is_file():
        out.append(f"![training history](../plots/training_{rev.name}.png)\n")
    return "\n".join(out)


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _ranking_section(rev: NetworkReview, outdir: Path, settings: ReviewConfig) -> str:
    rk = outdir / "ranking"
    csv_path = rk / f"{rev.name}.csv"
    if not csv_path.is_file():
        return "No ranking in this run (add a `taylor` section to the config).\n"
    out = [
        f"Mean absolute Taylor coefficients ⟨|t_α|⟩ on held-out events, the first {settings.top} rows "
        f"of [`ranking/{rev.name}.csv`](../ranking/{rev.name}.csv) "
        f"(full table: [`{rev.name}.md`](../ranking/{rev.name}.md)):\n",
        _csv_table(csv_path, settings.top),
    ]
    for stem, alt in ((rev.name, "ranking"), (f"{rev.name}_history", "ranking per epoch"),
                      (f"{rev.name}_taylor_map", "first-order Taylor map")):  # fmt: skip
        if (rk / f"{stem}.png").is_file():
            out.append(f"![{alt}](../ranking/{stem}.png)\n")
    return "\n".join(out)


def _overtraining_section(rev: NetworkReview) -> str:
    ot = rev.overtraining
    if ot is None:
        return (rev.overtraining_note or "not run (review.overtraining: false)") + "\n"
    rows = []
    for m in ot["models"]:
        row = [m["model"], m["held_out"]]
        for cls in ("signal", "background"):
            c = m[cls]
            row.append(
                f"{c['ks']:.4f} (p = {c['p_value']:.3g}; {c['n_train']} / {c['n_held_out']})"
            )
        row.append("**yes**" if m["flagged"] else "no")
        rows.append(row)
    out = [
        f"{ot['test']}; flagged when p < {ot['flag_p']:g} in either class "
        "(the table gives the KS distance D, its p-value and the training / held-out rows):\n",
        _table(("model", "held out", "signal: D", "background: D", "flagged"), rows),
    ]
    if "overtraining" in rev.plots:
        out.append(f"![training vs held-out scores]({rev.plots['overtraining']})\n")
    return "\n".join(out)


def _bands_section(rev: NetworkReview, outdir: Path) -> str:
    plots = sorted((outdir / "plots").glob("*band*.png"))
    mine = [p for p in plots if rev.name in p.name] or plots
    if not mine:
        return "No band plots in this run (`uncertainty` section).\n"
    text = ("MC-dropout / ensemble bands: a measure of training reproducibility (epistemic), "
            "not a measurement uncertainty of the deterministic network.\n")  # fmt: skip
    return text + "\n" + "\n".join(f"![{p.stem}](../plots/{p.name})" for p in mine) + "\n"


def write_readme(
    path: Path, outdir: Path, reviews: Sequence[NetworkReview], settings: ReviewConfig
) -> None:
    """Write ``review/README.md`` (see the module docstring)."""
    out = [
        "# Network review\n",
        "What this folder shows, per network: the network and its training, the ranking of its "
        "inputs, the comparison of simulation with data in the inputs the network relies on most, "
        "the effect of input variations, the overtraining test and the uncertainty bands. "
        "Links are relative; everything lives in the run's output folder.\n",
        f"Goodness of fit: {TEST_TEXT.format(**settings.model_dump())} Table: [`gof.md`](gof.md), "
        "[`gof.csv`](gof.csv); overtraining: [`overtraining.json`](overtraining.json).\n",
    ]
    for rev in reviews:
        out.append(f"## Network `{rev.name}`\n")
        out.append(_network_section(rev, outdir))
        out.append("### Input ranking\n")
        out.append(_ranking_section(rev, outdir, settings))
        out.append("### Simulation vs data in the input space\n")
        out.append(_gof_section_body(rev, settings))
        for r in rev.gof:
            if r.term.name in rev.plots:
                out.append(f"![{r.term.name}]({rev.plots[r.term.name]})")
        out.append("")
        syst = outdir / "systematics" / f"{rev.name}.csv"
        out.append("### Input variations\n")
        if syst.is_file():
            out.append(f"From [`systematics/{rev.name}.csv`](../systematics/{rev.name}.csv):\n")
            out.append(_csv_table(syst))
        else:
            out.append("No input variations in this run (`systematics/<net>.csv` absent).\n")
        out.append("### Overtraining\n")
        out.append(_overtraining_section(rev))
        out.append("### Uncertainty bands\n")
        out.append(_bands_section(rev, outdir))
    atomic_text(path, "\n".join(out))
