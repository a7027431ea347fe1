"""Plots: shape overlays per category, labels, log scale, one style without global state,
``hepnn plot`` redrawing ROC and ranking plots, TLatex axis titles in ``hists.root``.

Histograms are filled from the shipped Higgs-ML CSV (real events) the way the higgs
workflow fills them: ``dataset`` × ``process`` × ``njet`` × a kinematic variable.
"""

from __future__ import annotations

import csv
import pickle
import re
from pathlib import Path

import hist
import matplotlib as mpl
import numpy as np
import pytest
import uproot

from hepnn.outputs import tlatex, write_pickle, write_root
from hepnn.plotstyle import active_experiment, plot_style
from hepnn.plotting import PlotSettings, plot_hists, plot_overlay

REPO = Path(__file__).resolve().parents[1]
JET_BINS = ["0 jets", "1 jet", "2+ jets"]


@pytest.fixture(scope="module")
def mvis(higgs: dict[str, np.ndarray]) -> hist.Hist:
    """m_vis by dataset, process and jet bin from the real CSV, weighted by ``Weight``."""
    h = hist.Hist(
        hist.axis.StrCategory(["higgs_challenge"], name="dataset"),
        hist.axis.StrCategory(["signal", "background"], name="process"),
        hist.axis.StrCategory(JET_BINS, name="njet", label="jet multiplicity"),
        hist.axis.Regular(30, 0.0, 300.0, name="x", label=r"$m_{vis}(\tau, \ell)$ [GeV]"),
        storage=hist.storage.Weight(),
        label="DER_mass_vis",
    )
    njet = np.minimum(higgs["PRI_jet_num"], 2)
    h.fill(
        dataset="higgs_challenge",
        process=np.where(higgs["Label"] == "s", "signal", "background"),
        njet=np.asarray(JET_BINS)[njet],
        x=higgs["DER_mass_vis"],
        weight=higgs["Weight"],
    )
    return h


def _rc_snapshot() -> dict:
    return {k: v for k, v in mpl.rcParams.items() if k != "backend"}


def test_one_plot_per_category_and_the_sum(mvis: hist.Hist, tmp_path: Path) -> None:
    before, backend = _rc_snapshot(), mpl.get_backend()
    files = plot_hists({"mvis": mvis}, tmp_path, ["png"])
    names = sorted(p.name for p in files)
    assert names == sorted(
        ["mvis.png", "mvis__njet_0_jets.png", "mvis__njet_1_jet.png", "mvis__njet_2+_jets.png"]
    )
    assert all(p.stat().st_size > 5_000 for p in files)
    # no global matplotlib state touched
    assert _rc_snapshot() == before
    assert mpl.get_backend() == backend
    off = plot_hists(
        {"mvis": mvis}, tmp_path / "off", ["png"], settings=PlotSettings(categories=False)
    )
    assert [p.name for p in off] == ["mvis.png"]


def test_shape_overlay_content_label_and_log(mvis: hist.Hist, higgs: dict[str, np.ndarray]) -> None:
    one_jet = mvis[{"njet": "1 jet"}]
    with plot_style():
        fig = plot_overlay(one_jet, "m_vis (1 jet)")
    ax, rax = fig.axes
    assert rax.get_ylabel() == "/ background"
    assert ax.get_ylabel() == "fraction (unit area)"
    # unit-area shapes: the signal line is the 1-jet signal m_vis histogram / its sum
    sel = (np.minimum(higgs["PRI_jet_num"], 2) == 1) & (higgs["Label"] == "s")
    counts, _ = np.histogram(higgs["DER_mass_vis"][sel], bins=30, range=(0, 300),
                             weights=higgs["Weight"][sel])  # fmt: skip
    assert ax.get_legend_handles_labels()[1] == ["background", "signal"]  # drawn in this order
    signal = ax.patches[1].get_data().values
    np.testing.assert_allclose(signal, counts / counts.sum(), rtol=1e-10)
    texts = [t.get_text() for t in ax.texts]
    assert "hepnn" in texts  # no experiment: the plain hepnn label
    assert "m_vis (1 jet)" in texts  # no lumi: the title on the right
    with plot_style("atlas"):
        fig = plot_overlay(one_jet, "t", PlotSettings(experiment="atlas", log=True, lumi=20300.0,
                                                     sqrt_s=8.0, label="Open Data"))  # fmt: skip
    ax = fig.axes[0]
    texts = [t.get_text() for t in ax.texts]
    assert "ATLAS" in texts
    assert "Simulation Open Data" in texts  # no data drawn: mplhep's simulation label
    assert "20.3 fb$^{-1}$ (8 TeV)" in texts
    assert ax.get_yscale() == "log"


def test_style_context_nests_and_restores() -> None:
    before = _rc_snapshot()
    assert active_experiment() is None
    with plot_style("cms"):
        cms_font = mpl.rcParams["font.sans-serif"]
        assert active_experiment() == "cms"
        with plot_style():  # a plot drawn inside a CMS run keeps the CMS style
            assert mpl.rcParams["font.sans-serif"] == cms_font
            assert active_experiment() == "cms"
        with plot_style("atlas"):
            assert active_experiment() == "atlas"
        assert mpl.rcParams["font.sans-serif"] == cms_font
    assert _rc_snapshot() == before
    assert active_experiment() is None


def test_no_global_matplotlib_calls_in_the_package() -> None:
    """``matplotlib.use``, ``plt.style.use``, ``mplhep.style.use`` and ``rcdefaults`` are gone."""
    pattern = re.compile(r"(mpl|matplotlib)\.use\(|style\.use\(|rcdefaults\(|rcParams\[[^]]+\]\s*=")
    offenders = [
        f"{p.relative_to(REPO)}:{i}"
        for p in sorted((REPO / "hepnn").rglob("*.py"))
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if pattern.search(line) and not line.lstrip().startswith(("#", "never calls", "``"))
        and "plotstyle.py" not in str(p)
    ]  # fmt: skip
    assert offenders == []


@pytest.mark.parametrize(
    ("label", "root"),
    [
        (r"FatJet $p_{T}$ [GeV]", "FatJet p_{T} [GeV]"),
        (r"$|\Delta\eta_{jj}|$", "|#Delta#eta_{jj}|"),
        (r"$\Delta R(\tau, \ell)$", "#Delta R(#tau, #ell)"),
        (r"$m_{H}^{\mathrm{MMC}}$ [GeV]", "m_{H}^{MMC} [GeV]"),
        (r"$\langle |t_\alpha| \rangle$", "#LT |t_{#alpha}| #GT"),
        (r"signal efficiency $\varepsilon_S$", "signal efficiency #varepsilon_{S}"),
        (r"$\sum p_T$, $a \to b$", "#sum p_{T}, a #rightarrow b"),
        ("PF candidates per FatJet", "PF candidates per FatJet"),
    ],
)
def test_tlatex(label: str, root: str) -> None:
    assert tlatex(label) == root


def test_hists_root_has_tlatex_titles_and_pickle_keeps_mathtext(
    mvis: hist.Hist, tmp_path: Path
) -> None:
    write_pickle(tmp_path / "h.pkl", {"mvis": mvis})
    write_root(tmp_path / "h.root", {"mvis": mvis})
    with uproot.open(tmp_path / "h.root") as f:
        th1 = f["mvis/higgs_challenge/signal/0_jets"]
        assert th1.member("fXaxis").member("fTitle") == r"m_{vis}(#tau, #ell) [GeV]"
        np.testing.assert_array_equal(th1.values(), mvis[{"dataset": 0, "process": "signal",
                                                         "njet": "0 jets"}].values())  # fmt: skip
    assert mvis.axes["x"].label == r"$m_{vis}(\tau, \ell)$ [GeV]"  # the original is untouched
    with (tmp_path / "h.pkl").open("rb") as fh:
        assert pickle.load(fh)["mvis"].axes["x"].label == r"$m_{vis}(\tau, \ell)$ [GeV]"


def test_redraw_roc_and_ranking(
    higgs: dict[str, np.ndarray], mvis: hist.Hist, tmp_path: Path
) -> None:
    """``hepnn plot`` redraws ROC curves from ``roc_networks`` and rankings from their CSV."""
    import json

    from hepnn.metrics import auc
    from hepnn.nets.report import ROC_BINS, roc_points
    from hepnn.replot import redraw

    y = (higgs["Label"] == "s").astype(int)
    score = higgs["DER_mass_MMC"].astype(float)
    tpr, fpr = roc_points(score, y)
    roc = hist.Hist(
        hist.axis.StrCategory(["mmc"], name="classifier"),
        hist.axis.StrCategory(["higgs_challenge"], name="dataset"),
        hist.axis.Regular(ROC_BINS, 0.0, 1.0, name="eff_s"),
        metadata={"plot": False},
    )
    roc.view()[0, 0, :] = np.interp(roc.axes["eff_s"].centers, tpr, fpr)
    write_pickle(tmp_path / "hists.pkl", {"mvis": mvis, "roc_networks": roc})
    metrics = {"networks": {"mmc": {"datasets": {"higgs_challenge": {"auc": auc(score, y)}}}}}
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    (tmp_path / "ranking").mkdir()
    with (tmp_path / "ranking" / "dnn.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["rank", "term", "order", "value"])
        w.writerows([[1, "DER_mass_MMC", 1, 0.3], [2, "DER_mass_MMC*PRI_tau_pt", 2, 0.1]])
    written = {p.relative_to(tmp_path).as_posix() for p in redraw(tmp_path, ["png"])}
    assert {"plots/mvis.png", "plots/roc_higgs_challenge.png", "ranking/dnn.png"} <= written
    assert "plots/roc_networks.png" not in written  # plot: False
