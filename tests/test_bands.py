"""Bands as hist objects: replica histograms, summaries, ROOT templates, plots."""

from __future__ import annotations

import hist
import matplotlib as mpl
import numpy as np
import pytest
import torch
import uproot

from hepnn.bands import (
    QUANTILES,
    STATS,
    Ensemble,
    MCDropout,
    replica_hists,
    summarise,
    to_root_variations,
)
from hepnn.bands.plots import band_figure, plot_band, plot_std_vs_score
from hepnn.models import build

T = 30
N = 4000
PROCESSES = ["signal", "background"]


@pytest.fixture
def values() -> np.ndarray:
    """(T, N) per-replica scores with a replica-dependent shift (a real spread)."""
    rng = np.random.default_rng(5)
    base = rng.beta(2, 3, N)
    shift = rng.normal(0, 0.05, (T, 1))
    return np.clip(base + shift, 0, 0.999)


@pytest.fixture
def weights() -> np.ndarray:
    return np.random.default_rng(6).uniform(0.5, 1.5, N)


@pytest.fixture
def process() -> np.ndarray:
    """Two thirds signal, one third background."""
    return np.where(np.arange(N) % 3 == 2, "background", "signal")


def _nominal(score: np.ndarray, weight: np.ndarray | None = None) -> hist.Hist:
    """Nominal histogram on the score axis of :func:`replica_hists`."""
    axis = hist.axis.Regular(50, 0.0, 1.0, name="score")
    return hist.Hist(axis, storage=hist.storage.Weight()).fill(score=score, weight=weight)


def _filled(values, weights, process, axis="mc"):
    """Signal replica histogram (axes replica x score) and its nominal."""
    out = replica_hists("dnn", values.mean(axis=0), {axis: values}, process, weights, PROCESSES)
    sig = process == "signal"
    h = out[f"score_dnn_{'mcdropout' if axis == 'mc' else 'ensemble'}"][{"process": "signal"}]
    return h, _nominal(values.mean(axis=0)[sig], weights[sig])


# -- axes ----------------------------------------------------------------------------------


def test_replica_hists_names_and_axes(values, weights, process):
    out = replica_hists(
        "dnn", values[0], {"mc": values, "member": values[:4]}, process, weights, PROCESSES
    )
    assert list(out) == ["score_dnn_mcdropout", "score_dnn_ensemble", "score_std_dnn"]
    h = out["score_dnn_mcdropout"]
    proc, rep, var = h.axes
    assert isinstance(proc, hist.axis.StrCategory)
    assert (proc.name, list(proc)) == ("process", PROCESSES)
    assert isinstance(rep, hist.axis.IntCategory)
    assert rep.name == "mc"
    assert list(rep) == list(range(T))
    assert not rep.traits.overflow
    assert isinstance(var, hist.axis.Regular)
    assert (var.name, var.label) == ("score", "dnn score")
    assert (len(var.edges), var.edges[0], var.edges[-1]) == (51, 0.0, 1.0)
    assert isinstance(h.storage_type(), hist.storage.Weight)
    ens = out["score_dnn_ensemble"]
    assert [a.name for a in ens.axes] == ["process", "member", "score"]
    assert list(ens.axes["member"]) == [0, 1, 2, 3]
    # The std-vs-score histogram comes with MC dropout only.
    only_ens = replica_hists("dnn", values[0], {"member": values[:4]}, process, weights, PROCESSES)
    assert list(only_ens) == ["score_dnn_ensemble"]


def test_replica_hists_rejects_unknown_replica_axis(values, weights, process):
    with pytest.raises(ValueError, match="unknown replica axis"):
        replica_hists("dnn", values[0], {"bootstrap": values}, process, weights, PROCESSES)


def test_summary_axes(values, weights, process):
    s = summarise(*_filled(values, weights, process))
    stat, var = s.axes
    assert isinstance(stat, hist.axis.StrCategory)
    assert stat.name == "stat"
    assert list(stat) == list(STATS) == ["nominal", "mean", "std", "q16", "q84", "up", "down"]
    assert isinstance(var, hist.axis.Regular)
    assert var.name == "score"
    assert isinstance(s.storage_type(), hist.storage.Weight)
    assert s.metadata == {"replica_axis": "mc", "replicas": T}


# -- filling and summarising ---------------------------------------------------------------


def test_per_replica_histograms(values, weights, process):
    out = replica_hists("dnn", values[0], {"mc": values}, process, weights, PROCESSES)
    h = out["score_dnn_mcdropout"]
    edges = h.axes["score"].edges
    for proc in PROCESSES:
        sel = process == proc
        h_proc = h[{"process": proc}]
        for t in (0, 7, T - 1):
            ref, _ = np.histogram(values[t][sel], bins=edges, weights=weights[sel])
            np.testing.assert_allclose(h_proc[t, :].values(), ref, rtol=1e-12)
            ref_var, _ = np.histogram(values[t][sel], bins=edges, weights=weights[sel] ** 2)
            np.testing.assert_allclose(h_proc[t, :].variances(), ref_var, rtol=1e-12)
    # Replicas differ (a replica-dependent shift), so the rows are not copies.
    sig = h[{"process": "signal"}]
    assert not np.array_equal(sig[0, :].values(), sig[T - 1, :].values())


def test_summary_matches_numpy_over_replicas(values, weights, process):
    h, h_nom = _filled(values, weights, process)
    s = summarise(h, h_nom)
    reps = h.view(flow=True).value  # (T, bins + flow)
    out = s.view(flow=True)
    q16, q84 = np.quantile(reps, [0.16, 0.84], axis=0)
    assert QUANTILES == {"q16": 0.16, "q84": 0.84}
    np.testing.assert_array_equal(out.value[STATS.index("q16")], q16)
    np.testing.assert_array_equal(out.value[STATS.index("q84")], q84)
    np.testing.assert_array_equal(out.value[STATS.index("mean")], reps.mean(axis=0))
    np.testing.assert_array_equal(out.value[STATS.index("std")], reps.std(axis=0, ddof=1))
    np.testing.assert_array_equal(s["nominal", :].values(), h_nom.values())
    np.testing.assert_array_equal(s["nominal", :].variances(), h_nom.variances())
    # Per-bin check by hand for one bin, replica by replica.
    b = 20
    col = np.array([h[t, b].value for t in range(T)])
    assert s["q84", b].value == np.quantile(col, 0.84)
    assert s["q16", b].value < s["q84", b].value  # a real band


def test_summarise_rejects_other_binning(values, weights, process):
    h, _ = _filled(values, weights, process)
    other = hist.Hist(hist.axis.Regular(10, 0, 1, name="score"), storage=hist.storage.Weight())
    with pytest.raises(ValueError, match="same variable axes"):
        summarise(h, other)


def _sum(a: dict[str, hist.Hist], b: dict[str, hist.Hist]) -> dict[str, hist.Hist]:
    assert list(a) == list(b)
    return {k: a[k] + b[k] for k in a}


def test_chunk_sum_equals_single_fill(values, weights, process):
    def fill(sl, w):
        reps = {"mc": values[:, sl], "member": values[:5, sl]}
        return replica_hists("dnn", values[0, sl], reps, process[sl], w[sl], PROCESSES)

    first, rest = slice(None, 1700), slice(1700, None)
    # Unit weights: counts are exact in float, so the sum must be bitwise equal.
    ones = np.ones(N)
    once = fill(slice(None), ones)
    parts = _sum(fill(first, ones), fill(rest, ones))
    assert list(once) == ["score_dnn_mcdropout", "score_dnn_ensemble", "score_std_dnn"]
    for key, h in once.items():
        assert h.sum().value > 0
        assert h.view(flow=True).tobytes() == parts[key].view(flow=True).tobytes(), key
    # Float weights: equal up to summation order.
    once_w = fill(slice(None), weights)
    parts_w = _sum(fill(first, weights), fill(rest, weights))
    for key, h in once_w.items():
        np.testing.assert_allclose(h.values(), parts_w[key].values(), rtol=1e-12)
        np.testing.assert_allclose(h.variances(), parts_w[key].variances(), rtol=1e-12)
    sig = process == "signal"
    h_nom = _nominal(values[0][sig], weights[sig])
    once_sig = once_w["score_dnn_mcdropout"][{"process": "signal"}]
    parts_sig = parts_w["score_dnn_mcdropout"][{"process": "signal"}]
    np.testing.assert_allclose(
        summarise(once_sig, h_nom).values(), summarise(parts_sig, h_nom).values(), rtol=1e-12
    )


def test_zero_band_for_p0_end_to_end():
    torch.manual_seed(0)
    net = build("mlp", n_inputs=4, hidden=[16], dropout=0.0).eval()
    x = np.random.default_rng(0).normal(size=(2000, 4)).astype(np.float32)
    process = np.full(2000, "signal")
    mc = MCDropout(net, samples=10, seed=3)
    nominal = mc.nominal(x)
    out = replica_hists("dnn", nominal, {"mc": mc.scores(x)}, process, np.ones(2000), PROCESSES)
    s = summarise(out["score_dnn_mcdropout"][{"process": "signal"}], _nominal(nominal))
    nom = s["nominal", :].values()
    assert nom.sum() > 0
    for stat in ("mean", "q16", "q84"):
        np.testing.assert_array_equal(s[stat, :].values(), nom)
    assert np.all(s["std", :].values() == 0.0)
    # Every event has zero per-event std: all in the first std bin.
    std_hist = out["score_std_dnn"][{"process": "signal"}]
    assert std_hist[:, 0].sum().value == std_hist.sum().value == 2000


def test_score_std_hist():
    nominal = np.array([0.05, 0.55, 0.55, 0.95])
    std = np.array([0.015, 0.115, 0.115, 0.205])
    # Two replicas at nominal -/+ std/sqrt(2): per-event std (ddof=1) is std itself.
    replicas = np.stack([nominal - std / np.sqrt(2), nominal + std / np.sqrt(2)])
    process = np.array(["signal", "signal", "background", "signal"])
    w = np.array([1.0, 2.0, 3.0, 4.0])
    out = replica_hists("dnn", nominal, {"mc": replicas}, process, w, PROCESSES)
    h = out["score_std_dnn"]
    assert [a.name for a in h.axes] == ["process", "score", "score_std"]
    assert [len(a) for a in h.axes[1:]] == [25, 25]
    assert (h.axes["score_std"].edges[0], h.axes["score_std"].edges[-1]) == (0.0, 0.25)
    assert isinstance(h.storage_type(), hist.storage.Weight)
    assert h.sum().value == 10.0
    sig = h[{"process": "signal"}]
    assert sig.sum().value == 7.0
    assert sig[hist.loc(0.55), hist.loc(0.115)].value == 2.0
    assert sig[hist.loc(0.95), hist.loc(0.205)].value == 4.0
    assert h["background", hist.loc(0.55), hist.loc(0.115)].value == 3.0


# -- ROOT templates ------------------------------------------------------------------------


def test_to_root_variations_roundtrip(values, weights, process, tmp_path):
    reps, nom = _filled(values, weights, process)
    out = to_root_variations(reps, nom, "score_dnn", "ttbar")
    assert list(out)[:3] == [
        "score_dnn/ttbar/nominal",
        "score_dnn/ttbar/mcdropoutUp",
        "score_dnn/ttbar/mcdropoutDown",
    ]
    assert [k for k in out if "replica" in k] == [f"score_dnn/ttbar/mcdropout_replica{k}" for k in range(T)]
    np.testing.assert_array_equal(out["score_dnn/ttbar/nominal"].values(flow=True), nom.values(flow=True))
    np.testing.assert_array_equal(out["score_dnn/ttbar/nominal"].variances(), nom.variances())
    np.testing.assert_array_equal(out["score_dnn/ttbar/mcdropout_replica3"].values(), reps[3, :].values())
    path = tmp_path / "templates.root"
    with uproot.recreate(path) as f:
        for key, h in out.items():
            f[key] = h
    with uproot.open(path) as f:
        for key, h in out.items():
            np.testing.assert_allclose(f[key].values(), h.values())
            np.testing.assert_allclose(f[key].axis().edges(), h.axes[0].edges)


def test_to_root_variations_names_and_1d_only(values, weights, process):
    reps, nom = _filled(values[:4], weights, process, axis="member")
    s = summarise(reps, nom)
    assert s.metadata == {"replica_axis": "member", "replicas": 4}
    keys = set(to_root_variations(reps, nom, "h", "sig", with_replicas=False))
    assert keys == {"h/sig/nominal", "h/sig/ensembleUp", "h/sig/ensembleDown"}
    assert "h/sig/nnUp" in to_root_variations(reps, nom, "h", "sig", variation="nn")
    two_d = hist.Hist(
        hist.axis.IntCategory(range(3), name="mc", overflow=False),
        hist.axis.Regular(2, 0, 1, name="a"),
        hist.axis.Regular(2, 0, 1, name="b"),
        storage=hist.storage.Weight(),
    )
    nom_2d = hist.Hist(*two_d.axes[1:], storage=hist.storage.Weight())
    with pytest.raises(ValueError, match="replicas with axes"):
        to_root_variations(two_d, nom_2d, "x", "y")


# -- plots ---------------------------------------------------------------------------------


@pytest.fixture
def mc_and_ensemble():
    x = np.random.default_rng(2).normal(size=(3000, 3)).astype(np.float32)
    process = np.where(np.arange(3000) % 4 == 0, "background", "signal")
    nets = []
    for seed in range(3):
        torch.manual_seed(seed)
        nets.append(build("mlp", n_inputs=3, hidden=[16], dropout=0.2).eval())
    mc = MCDropout(nets[0], samples=20, seed=1)
    nominal = mc.nominal(x)
    reps = {"mc": mc.scores(x), "member": Ensemble(nets).scores(x)}
    out = replica_hists("dnn", nominal, reps, process, np.ones(3000), PROCESSES)
    sig = {"process": "signal"}
    h_nom = _nominal(nominal[process == "signal"])
    s_mc = summarise(out["score_dnn_mcdropout"][sig], h_nom)
    s_ens = summarise(out["score_dnn_ensemble"][sig], h_nom)
    return h_nom, {"MC dropout": s_mc, "Ensemble": s_ens}, out["score_std_dnn"][sig]


def test_band_figure_draws_q16_q84_envelope(mc_and_ensemble):
    h_nom, summaries, _ = mc_and_ensemble
    fig = band_figure(h_nom, summaries)
    ax = fig.axes[0]
    patches = [p for p in ax.patches if isinstance(p, mpl.patches.StepPatch) and p.get_fill()]
    assert len(patches) == 2
    for patch, s in zip(patches, summaries.values(), strict=True):
        data = patch.get_data()
        np.testing.assert_array_equal(data.values, s["q84", :].values())
        np.testing.assert_array_equal(data.baseline, s["q16", :].values())
        np.testing.assert_array_equal(data.edges, h_nom.axes[0].edges)
    # The band says what it is, and the fit templates are drawn beside the envelope.
    assert "training reproducibility (epistemic)" in ax.get_title(loc="left")
    assert "not a measurement uncertainty" in ax.get_title(loc="left")
    labels = ax.get_legend_handles_labels()[1]
    assert "MC dropout: shape template Up/Down" in labels


def test_plot_files_written(mc_and_ensemble, tmp_path):
    h_nom, summaries, h2d = mc_and_ensemble
    assert [a.name for a in h2d.axes] == ["score", "score_std"]
    written = plot_band(h_nom, summaries, tmp_path / "plots" / "score_band")
    written += plot_std_vs_score(h2d, tmp_path / "plots" / "std_vs_score.png")
    assert sorted(p.name for p in written) == [
        "score_band.pdf",
        "score_band.png",
        "std_vs_score.pdf",
        "std_vs_score.png",
    ]
    for p in written:
        assert p.stat().st_size > 1000
    assert written[0].read_bytes()[:4] == b"\x89PNG"
    assert written[1].read_bytes()[:4] == b"%PDF"


def test_band_figure_rejects_other_binning(mc_and_ensemble):
    _, summaries, _ = mc_and_ensemble
    other = hist.Hist(hist.axis.Regular(10, 0, 1, name="score"), storage=hist.storage.Weight())
    with pytest.raises(ValueError, match="binning"):
        band_figure(other, summaries)


# -- valid templates on the real Higgs events ------------------------------------------------


@pytest.fixture(scope="module")
def higgs_replicas(higgs, features):
    """A small dropout MLP (3 seeds) trained briefly on the real 18k events; its replicas."""
    from hepnn.nets.flat import FlatBuilder
    from hepnn.nets.spec import FlatInputs

    builder = FlatBuilder(FlatInputs(features=features))
    raw = builder.raw(higgs)
    x = torch.from_numpy(builder.fit(raw).transform(raw))
    y = torch.from_numpy((higgs["Label"] == "s").astype(np.float32))
    nets = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # module scope: runs before the per-test one-thread fixture
    for seed in range(3):
        torch.manual_seed(seed)
        net = build("mlp", n_inputs=x.shape[1], hidden=[32, 32], dropout=0.2)
        opt = torch.optim.Adam(net.parameters(), lr=1e-2)
        for start in range(0, len(y), 1024):  # one pass in 18 steps: a real but cheap network
            opt.zero_grad()
            loss = torch.nn.functional.binary_cross_entropy_with_logits(
                net(x[start : start + 1024]), y[start : start + 1024]
            )
            loss.backward()
            opt.step()
        nets.append(net.eval())
    torch.set_num_threads(threads)
    mc = MCDropout(nets[0], samples=20, seed=7)
    process = np.where(higgs["Label"] == "s", "signal", "background")
    return {
        "nominal": mc.nominal(x),
        "replicas": {"mc": mc.scores(x), "member": Ensemble(nets).scores(x)},
        "process": process,
        "weight": higgs["Weight"].astype(np.float64),
    }


def _templates(rep, weight, axis, process):
    out = replica_hists("dnn", rep["nominal"], {axis: rep["replicas"][axis]}, rep["process"], weight, PROCESSES)
    reps = out[f"score_dnn_{'mcdropout' if axis == 'mc' else 'ensemble'}"][{"process": process}]
    sel = rep["process"] == process
    nom = _nominal(rep["nominal"][sel], weight[sel])
    name = "mcdropout" if axis == "mc" else "ensemble"
    t = to_root_variations(reps, nom, "score_dnn", process)
    up, down = (t[f"score_dnn/{process}/{name}{v}"].values(flow=True) for v in ("Up", "Down"))
    return reps, nom, up, down


def _assert_valid(nominal, up, down):
    total = nominal.sum()
    assert up.sum() == pytest.approx(total, rel=1e-12)
    assert down.sum() == pytest.approx(total, rel=1e-12)
    assert up.min() >= 0
    assert down.min() >= 0
    varied = np.abs(up - nominal) > 1e-9 * abs(total)
    assert varied.sum() > 10  # a real variation, in many bins
    lo, hi = np.minimum(up, down), np.maximum(up, down)
    assert np.all((lo <= nominal + 1e-9 * total)[varied] & (nominal <= hi + 1e-9 * total)[varied])


@pytest.mark.parametrize("axis", ["mc", "member"])
@pytest.mark.parametrize("process", PROCESSES)
def test_templates_are_valid_fit_inputs_on_higgs(higgs_replicas, axis, process):
    reps, nom, up, down = _templates(higgs_replicas, higgs_replicas["weight"], axis, process)
    n = nom.values(flow=True)
    _assert_valid(n, up, down)
    # Per-bin quantiles would not be: the q84 "template" has another normalisation.
    q84 = np.quantile(reps.values(flow=True)[: len(reps.axes[0])], 0.84, axis=0)
    assert abs(q84.sum() / n.sum() - 1) > 1e-3


def test_template_is_the_leading_eigen_variation(higgs_replicas):
    """Where no bin limit acts, Up - nominal = N sqrt(λ1) v1 of the replica shapes (SVD oracle)."""
    reps, nom, up, _ = _templates(higgs_replicas, higgs_replicas["weight"], "mc", "background")
    r = reps.values(flow=True)[: len(reps.axes[0])]
    shapes = r / r.sum(axis=1, keepdims=True)
    _, sing, vt = np.linalg.svd(shapes - shapes.mean(axis=0), full_matrices=False)
    lam, v = sing[0] ** 2 / (len(r) - 1), vt[0]
    n = nom.values(flow=True)
    expected = n.sum() * np.sqrt(lam) * v
    expected *= np.sign(expected @ np.arange(len(v)))  # Up towards higher scores
    meta = to_root_variations(reps, nom, "s", "b")["s/b/mcdropoutUp"].metadata
    assert meta["eigenvalue"] == pytest.approx(lam, rel=1e-8)
    assert 0 < meta["explained"] <= 1
    if meta["clipped_fraction"] == 0:
        np.testing.assert_allclose(up - n, expected, atol=1e-9 * n.sum())
    else:  # the limits act only in bins where the nominal is smaller than the variation
        free = np.abs(expected) < 0.5 * n
        assert np.corrcoef((up - n)[free], expected[free])[0, 1] > 0.99


def test_templates_with_negative_weights(higgs_replicas):
    """Flipped weights (NLO-like) in a copy: still valid, and a negative nominal bin is left alone."""
    w = higgs_replicas["weight"].copy()
    w[::40] *= -1  # 450 of 18,000 events with a negative weight
    _reps, nom, up, down = _templates(higgs_replicas, w, "mc", "background")
    _assert_valid(nom.values(flow=True), up, down)
    # All weights negative in the least-filled background bin: its nominal is negative, unvaried.
    counts = nom.values(flow=True)
    b = int(np.argmin(np.where(counts > 0, counts, np.inf)))
    in_bin = np.clip((higgs_replicas["nominal"] * 50).astype(int), 0, 49) + 1 == b
    w2 = np.where(in_bin & (higgs_replicas["process"] == "background"), -np.abs(w), w)
    _, nom2, up2, down2 = _templates(higgs_replicas, w2, "mc", "background")
    n2 = nom2.values(flow=True)
    assert n2[b] < 0
    assert up2[b] == down2[b] == n2[b]
    assert up2.sum() == pytest.approx(n2.sum(), rel=1e-12)


def test_band_outputs_write_full_root_paths(higgs_replicas, tmp_path):
    from hepnn.bands import band_outputs

    rep = higgs_replicas
    hists = replica_hists("dnn", rep["nominal"], rep["replicas"], rep["process"], rep["weight"], PROCESSES)
    h = hist.Hist(
        hist.axis.StrCategory(PROCESSES, name="process"),
        hist.axis.Regular(50, 0.0, 1.0, name="score"),
        storage=hist.storage.Weight(),
    )
    hists["score_dnn"] = h.fill(process=rep["process"], score=rep["nominal"], weight=rep["weight"])
    root, files = band_outputs(hists, tmp_path, plots=False, formats=[])
    assert files == []
    for process in PROCESSES:
        for var in ("mcdropout", "ensemble"):
            for tag in ("Up", "Down"):
                assert f"score_dnn/{process}/{var}{tag}" in root
        assert f"score_dnn/{process}/nominal" in root
        assert f"score_dnn/{process}/mcdropout_replica19" in root
        assert f"score_dnn/{process}/ensemble_replica2" in root
    assert not any("q16" in k or "q84" in k for k in root)
    summary = hists["score_dnn_ensemble_summary"]
    assert list(summary.axes["stat"]) == list(STATS)
    path = tmp_path / "bands.root"
    with uproot.recreate(path) as f:
        for key, hh in root.items():
            f[key] = hh
    with uproot.open(path) as f:
        up = f["score_dnn/signal/ensembleUp"].values(flow=True)
        nominal = f["score_dnn/signal/nominal"].values(flow=True)
        assert up.sum() == pytest.approx(nominal.sum(), rel=1e-6)
