"""Regenerate, or check, the measured numbers README.md quotes.

Every number README.md prints from a shipped config sits in a block::

    <!-- numbers:toptag -->
    ...generated markdown...
    <!-- /numbers -->

and the block's text is what :func:`render` makes from that config's output folder.
So README quotes this script's output, and a slow test (``tests/test_readme_numbers.py``,
run in CI) runs the configs and fails when a block differs::

    python scripts/readme_numbers.py run OUT            # run the shipped configs into OUT/<config>
    python scripts/readme_numbers.py check OUT          # compare README.md's blocks with OUT
    python scripts/readme_numbers.py write OUT          # rewrite README.md's blocks from OUT

``run --cv`` also runs ``configs/toptag.yaml`` with its 5-fold cross-validation (about
7 minutes on 2 cores; the ``toptag_cv`` block is only checked when its folder exists).
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BLOCK = re.compile(r"(<!-- numbers:(?P<name>[a-z_]+) -->\n)(?P<body>.*?)(<!-- /numbers -->)", re.S)

#: Output folder name -> (config, --set overrides, folder whose models it applies or None).
RUNS: dict[str, tuple[str, list[str], str | None]] = {
    "higgs": ("configs/higgs.yaml", [], None),
    "toptag": ("configs/toptag.yaml", ["cross_validation=null"], None),
    "toy_taylor": ("configs/toy_taylor.yaml", [], None),
    # the same trained network, ranked in the unscaled inputs
    "toy_taylor_unscaled": ("configs/toy_taylor.yaml", ["taylor.inputs=unscaled"], "toy_taylor"),
    "toy_correlation": ("configs/toy_correlation.yaml", [], None),
}
#: Runs only made with ``run --cv`` (too long for CI).
CV_RUNS: dict[str, tuple[str, list[str], str | None]] = {
    "toptag_cv": ("configs/toptag.yaml", [], None)
}


def run_one(out: Path, name: str, *, progress: bool = False) -> None:
    """Run ``RUNS[name]`` (or ``CV_RUNS[name]``) into ``out/<name>``, no plots, no ROOT file."""
    sys.path.insert(0, str(ROOT))
    from hepnn.config import load_config
    from hepnn.pipeline import run_config

    config, sets, models_from = {**RUNS, **CV_RUNS}[name]
    cfg = load_config(ROOT / config, [*sets, "outputs.plots=false", "outputs.hists_root=false"])
    models = out / models_from / "models" if models_from else None
    run_config(cfg, out / name, progress=progress, models_dir=models)


# --------------------------------------------------------------------- reading
def _metrics(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "metrics.json").read_text())


def ranking(folder: Path, net: str) -> dict[str, dict[str, str]]:
    with (folder / "ranking" / f"{net}.csv").open() as fh:
        return {row["term"]: row for row in csv.DictReader(fh)}


def _f3(x: float) -> str:
    return f"{x:.3f}"


def _rejection(d: dict[str, Any]) -> str:
    n = d["background_passing"]
    if d["rejection"] is None:
        return f"> {d['rejection_lower_bound']:.0f} (no background jet passes)"
    jets = "background jet passes" if n == 1 else "background jets pass"
    return f"{d['rejection']:.0f} ({n} {jets})" if n <= 10 else f"{d['rejection']:.0f}"


# ---------------------------------------------------------------------- blocks
def block_toptag(out: Path) -> str:
    """The single-split tagger table (``configs/toptag.yaml``, test jets)."""
    m = _metrics(out / "toptag")
    rows = [
        ("cnn2d", m["networks"]["cnn2d"]["datasets"]["toptag"]),
        ("cnn1d", m["networks"]["cnn1d"]["datasets"]["toptag"]),
        ("jet mass", m["baselines"]["mass"]["datasets"]["toptag"]),
        (
            "gradient-boosted tree on (mass, n constituents, p_T^D)",
            m["baselines"]["gbt_mass_nconst_ptd"]["datasets"]["toptag"],
        ),
    ]
    n = rows[0][1]["rows"]
    lines = [f"| on the {n} test jets | AUC | 1/ε_B at ε_S = 0.3 |", "| --- | --- | --- |"]
    lines += [f"| {name} | {_f3(d['auc'])} | {_rejection(d)} |" for name, d in rows]
    return "\n".join(lines) + "\n"


def block_toptag_cv(out: Path) -> str:
    """The 5-fold cross-validation tables (``configs/toptag.yaml``)."""
    cv = _metrics(out / "toptag_cv")["cross_validation"]
    names = {
        "cnn2d": "cnn2d",
        "cnn1d": "cnn1d",
        "mass": "jet mass",
        "gbt_mass_nconst_ptd": "GBT on (mass, n constituents, p_T^D)",
    }
    lines = [
        f"| out of fold, all {cv['rows']:,} jets ({cv['folds']} folds) | AUC | AUC per fold, mean ± sd "
        "| 1/ε_B at ε_S = 0.3 |",
        "| --- | --- | --- | --- |",
    ]
    for key, label in names.items():
        d = cv["classifiers"][key]
        lines.append(
            f"| {label} | {_f3(d['auc'])} | {_f3(d['fold_auc_mean'])} ± {_f3(d['fold_auc_sd'])} "
            f"| {_rejection(d)} |"
        )
    lines += [
        "",
        f"| AUC difference to the GBT (paired bootstrap of the {cv['rows']:,} jets, "
        f"{cv['auc_difference_to_gbt']['cnn2d']['resamples']:,} resamples) | difference ± se "
        "| 68 % interval |",
        "| --- | --- | --- |",
    ]
    for key in ("cnn2d", "cnn1d"):
        d = cv["auc_difference_to_gbt"][key]
        lo, hi = d["interval_68"]
        lines.append(
            f"| {key} − GBT | {d['difference']:+.3f} ± {d['standard_error']:.3f} | [{lo:+.3f}, {hi:+.3f}] |"
        )
    return "\n".join(lines) + "\n"


def _toy_terms(out: Path, folder: str, terms: list[str]) -> str:
    rank = ranking(out / folder, "nn")
    return ", ".join(f"{t.replace('*', '·')} {_f3(float(rank[t]['value']))}" for t in terms)


#: The lecture's toy table (derivatives in the unscaled inputs).
LECTURE = {"x1": 0.16, "x2": 0.16, "x1*x2": 0.07, "x1*x1": 0.04, "x2*x2": 0.04}


def _term(term: str) -> str:
    a, _, b = term.partition("*")
    return f"{a}²" if a == b else term.replace("*", "·")


def block_toy_taylor(out: Path) -> str:
    """The lecture toy's ranking in both input conventions beside the lecture's table."""
    unscaled = ranking(out / "toy_taylor_unscaled", "nn")
    standard = ranking(out / "toy_taylor", "nn")
    auc = _metrics(out / "toy_taylor")["networks"]["nn"]["datasets"]["toy_gauss"]["auc"]
    lines = [
        "| term | lecture (unscaled) | `--set taylor.inputs=unscaled` | ratio | `standardised` (default) |",
        "|---|---:|---:|---:|---:|",
    ]
    for term, ref in LECTURE.items():
        u = unscaled[term]
        v = float(u["value"])
        lines.append(
            f"| {_term(term)} | {ref:.2f} | {v:.4f} ± {float(u['err_stat']):.4f} | {v / ref:.2f} "
            f"| {float(standard[term]['value']):.4f} |"
        )
    return "\n".join(lines) + f"\n\nAUC {_f3(auc)} on the held-out (odd-id) events.\n"


def block_toy_correlation(out: Path) -> str:
    """The correlation toy's final ranking."""
    return f"final: {_toy_terms(out, 'toy_correlation', ['x1*x2', 'x1', 'x2'])}.\n"


def block_higgs(out: Path) -> str:
    """The Higgs DNN's held-out metrics and its comparison with boosted trees."""
    net = _metrics(out / "higgs")["networks"]["dnn"]
    d = net["datasets"]["higgs_challenge"]
    text = (
        f"AUC {_f3(d['auc'])} (weighted {_f3(d['auc_weighted'])}) on all "
        f"{d['rows']:,} events, each scored by the fold model that did not train on it; "
        f"best AMS {d['ams_best']:.2f} at the challenge totals (b_reg = 10).\n"
    )
    vs = net.get("vs_boosted_trees") or net.get("training", {}).get("vs_boosted_trees")
    if vs:
        diff = vs["auc_difference"]
        text += (
            f"Against a `HistGradientBoostingClassifier` on the same held-out events: AUC "
            f"{vs['network']['auc']:.4f} vs {vs['boosted_trees']['auc']:.4f}, difference "
            f"{diff['difference']:+.4f} ± {diff['standard_error']:.4f} (paired bootstrap, "
            f"{diff['resamples']:,} resamples); weighted AUC {vs['network']['auc_weighted']:.4f} vs "
            f"{vs['boosted_trees']['auc_weighted']:.4f}; best AMS {vs['network']['ams_best']:.2f} vs "
            f"{vs['boosted_trees']['ams_best']:.2f}.\n"
        )
    same = vs.get("boosted_trees_same_inputs") if vs else None
    if same:
        diff = vs["auc_difference_same_inputs"]
        text += (
            f"A second tree on the DNN's own inputs (the symmetric angles): AUC "
            f"{same['auc']:.4f}, difference {diff['difference']:+.4f} ± "
            f"{diff['standard_error']:.4f}; weighted AUC {same['auc_weighted']:.4f}; best AMS "
            f"{same['ams_best']:.2f}.\n"
        )
    return text


def block_higgs_ranking(out: Path) -> str:
    """The top of the Higgs DNN's ranking with its errors."""
    with (out / "higgs" / "ranking" / "dnn.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    lines = [
        "| rank | term | ⟨\\|t\\|⟩ | ± err | ± stat | ± train | defined | z to next |",
        "|---:|:---|---:|---:|---:|---:|---:|:---|",
    ]
    for r in rows[:7]:
        mark = "" if r["separated"] in ("True", "true", "1") else " ≈"
        train = f"{float(r['err_train']):.4f}" if r["err_train"] else "–"
        lines.append(
            f"| {r['rank']} | {_term(r['term'])} | {float(r['value']):.4f} | {float(r['err']):.4f} "
            f"| {float(r['err_stat']):.4f} | {train} | {float(r['defined_fraction']):.3f} "
            f"| {float(r['z_next']):.1f}{mark} |"
        )
    return "\n".join(lines) + "\n"


BLOCKS: dict[str, Callable[[Path], str]] = {
    "higgs": block_higgs,
    "higgs_ranking": block_higgs_ranking,
    "toptag": block_toptag,
    "toptag_cv": block_toptag_cv,
    "toy_taylor": block_toy_taylor,
    "toy_correlation": block_toy_correlation,
}
#: The folders each block reads (a block is rendered only when they all exist).
NEEDS: dict[str, tuple[str, ...]] = {
    "higgs": ("higgs",),
    "higgs_ranking": ("higgs",),
    "toptag": ("toptag",),
    "toptag_cv": ("toptag_cv",),
    "toy_taylor": ("toy_taylor", "toy_taylor_unscaled"),
    "toy_correlation": ("toy_correlation",),
}


# ------------------------------------------------------------------ the script
def readme_blocks(text: str) -> dict[str, str]:
    """The numbers blocks of a README text, by name."""
    return {m["name"]: m["body"] for m in BLOCK.finditer(text)}


def render(out: Path) -> dict[str, str]:
    """Every block whose output folders exist under ``out``."""
    rendered = {}
    for name, make in BLOCKS.items():
        if all((out / f / "metrics.json").exists() for f in NEEDS[name]):
            try:
                rendered[name] = make(out)
            except FileNotFoundError:
                continue  # a run without the file this block reads (e.g. no ranking)
    return rendered


def differences(out: Path, readme: Path = README) -> list[str]:
    """One line per README block that differs from what ``out`` gives (empty: all agree)."""
    quoted = readme_blocks(readme.read_text())
    problems = [f"README has no block numbers:{n}" for n in BLOCKS if n not in quoted]
    for name, text in render(out).items():
        if quoted.get(name) is not None and quoted[name] != text:
            problems.append(f"numbers:{name}: README has\n{quoted[name]}but the run gives\n{text}")
    return problems


def write(out: Path, readme: Path = README) -> list[str]:
    """Rewrite README's blocks from ``out``; returns the names rewritten."""
    rendered = render(out)

    def sub(m: re.Match[str]) -> str:
        body = rendered.get(m["name"], m["body"])
        return m.group(1) + body + m.group(4)

    readme.write_text(BLOCK.sub(sub, readme.read_text()))
    return sorted(rendered)


def run(out: Path, *, cv: bool = False) -> None:
    """Run the shipped configs into ``out/<name>``."""
    for name in [*RUNS, *(CV_RUNS if cv else [])]:
        run_one(out, name, progress=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["run", "check", "write"])
    parser.add_argument("out", type=Path, help="folder of the runs (one sub-folder per config)")
    parser.add_argument("--cv", action="store_true", help="run: also the 5-fold toptag CV (~7 min)")
    args = parser.parse_args(argv)
    if args.action == "run":
        run(args.out, cv=args.cv)
        return 0
    if args.action == "write":
        print("rewrote:", ", ".join(write(args.out)) or "nothing")
        return 0
    problems = differences(args.out)
    for line in problems:
        print(line)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
