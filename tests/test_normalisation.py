"""xsec × lumi / Σw normalisation and the stacked data/simulation plots (issue #13 item 4).

The acceptance run: two simulated NanoAOD datasets with cross-sections (ttbar: no
``Runs`` tree, so Σw is Σ genWeight over every event; DY: ``Runs.genEventSumw_``)
and one dataset marked as data, through the fatjets workflow with ``lumi``.
Σw are computed here independently with uproot.
"""

from __future__ import annotations

import functools
import json
import math
import pickle
from pathlib import Path

import awkward as ak
import numpy as np
import pytest
import uproot

from hepnn.config import load_config
from hepnn.errors import ConfigError, InputError
from hepnn.normalisation import dataset_role, normalisation, normalise_hists
from hepnn.pipeline import run_config
from hepnn.samples import Dataset, FileEntry

REPO = Path(__file__).resolve().parents[1]
NANO = REPO / "samples" / "nanoaod"
LUMI = 59830.0  # pb^-1
XSEC = {"ttbar": 831.76, "dy": 6077.22}  # pb
FILES = {"ttbar": "nano_tt_v15.root", "dy": "nano_dy.root", "data": "pfnano.root"}
PT_MIN = 170.0


def _samples_yaml(path: Path) -> Path:
    path.write_text(
        "datasets:\n"
        f"  ttbar: {{format: root, files: [{NANO / FILES['ttbar']}],"
        f" metadata: {{xsec: {XSEC['ttbar']}, process: ttbar}}}}\n"
        f"  dy: {{format: root, files: [{NANO / FILES['dy']}],"
        f" metadata: {{xsec: {XSEC['dy']}, process: dy}}}}\n"
        f"  data: {{format: root, files: [{NANO / FILES['data']}], metadata: {{is_data: true}}}}\n"
    )
    return path


@pytest.fixture(scope="module")
def norm_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("norm")
    samples = _samples_yaml(out.parent / "norm_samples.yaml")
    cfg = load_config(
        REPO / "configs" / "fatjets.yaml",
        [f"samples={samples}", "networks={}", f"lumi={LUMI}", "sqrt_s=13",
         "plots.experiment=cms", "outputs.plot_formats=[png]"],
    )  # fmt: skip
    run_config(cfg, out, progress=False)
    return out


@functools.cache
def _gen_weights(name: str) -> tuple[np.ndarray, ak.Array]:
    with uproot.open(NANO / FILES[name]) as f:
        ev = f["Events"].arrays(["genWeight", "FatJet_pt"])
    return ak.to_numpy(ev["genWeight"]).astype(np.float64), ev["FatJet_pt"]


@functools.cache
def _total_sumw(name: str) -> float:
    """Σw before any selection: Runs.genEventSumw(_) when the file has it, else Σ genWeight."""
    with uproot.open(NANO / FILES[name]) as f:
        if "Runs" in f:
            runs = f["Runs"]
            branch = "genEventSumw" if "genEventSumw" in runs else "genEventSumw_"
            return float(runs[branch].array(library="np").sum())
    return float(_gen_weights(name)[0].sum())


def _load(path: Path) -> dict:
    with path.open("rb") as fh:
        return pickle.load(fh)


@pytest.mark.parametrize("name", ["ttbar", "dy"])
def test_integral_is_xsec_lumi_selected_over_total(norm_run: Path, name: str) -> None:
    """Normalised integral = xsec × lumi × (selected Σw / total Σw), Σw from uproot."""
    hists = _load(norm_run / "hists_normalised.pkl")
    raw = _load(norm_run / "hists.pkl")
    gw, fat_pt = _gen_weights(name)
    total = _total_sumw(name)
    # every event fills njet; FatJets above PT_MIN fill fatjet_pt, with their event's weight
    per_fat = ak.to_numpy(ak.flatten(ak.broadcast_arrays(gw, fat_pt)[0][fat_pt >= PT_MIN]))
    for hname, selected in (("njet", gw.sum()), ("fatjet_pt", per_fat.sum())):
        got = hists[hname][{"dataset": name}].sum(flow=True)
        expected = XSEC[name] * LUMI * selected / total
        assert got.value == pytest.approx(expected, rel=1e-12, abs=1e-300)
        # hists.pkl keeps the raw Σ genWeight
        assert raw[hname][{"dataset": name}].sum(flow=True).value == pytest.approx(
            selected, rel=1e-12
        )
        # variances scale with the square of the scale
        scale = XSEC[name] * LUMI / total
        raw_var = raw[hname][{"dataset": name}].sum(flow=True).variance
        assert got.variance == pytest.approx(raw_var * scale**2, rel=1e-12)
    assert per_fat.size > 0 or name == "dy"


def test_data_is_not_scaled_and_sources_are_recorded(norm_run: Path) -> None:
    hists = _load(norm_run / "hists_normalised.pkl")
    raw = _load(norm_run / "hists.pkl")
    with uproot.open(NANO / FILES["data"]) as f:
        n_data = f["Events"].num_entries
    assert hists["njet"][{"dataset": "data"}].sum(flow=True).value == n_data
    assert raw["njet"][{"dataset": "data"}].sum(flow=True).value == n_data
    record = json.loads((norm_run / "normalisation.json").read_text())
    assert record["lumi_pb"] == LUMI
    assert record["sqrt_s_tev"] == 13
    ds = record["datasets"]
    assert ds["ttbar"]["sumw_source"] == "sum of genWeight over all events"
    assert ds["dy"]["sumw_source"] == "Runs.genEventSumw"
    assert ds["data"]["is_data"]
    assert ds["data"]["scale"] == 1.0
    for name in ("ttbar", "dy"):
        assert ds[name]["sumw"] == pytest.approx(_total_sumw(name), rel=1e-12)
        assert ds[name]["scale"] == pytest.approx(XSEC[name] * LUMI / _total_sumw(name), rel=1e-12)
    manifest = json.loads((norm_run / "manifest.json").read_text())
    assert {"hists_normalised.pkl", "normalisation.json"} <= set(manifest["outputs"])


def test_stacked_plots_with_data_and_ratio(norm_run: Path) -> None:
    """The run drew stacks; the figure has a ratio panel, the stack, data and the CMS label."""
    from hepnn.plotstyle import plot_style
    from hepnn.plotting import PlotSettings, stack_figure

    assert (norm_run / "plots" / "njet.png").stat().st_size > 10_000
    assert (norm_run / "plots" / "fatjet_pt.png").is_file()
    import yaml

    settings = PlotSettings.from_resolved(
        yaml.safe_load((norm_run / "config.resolved.yaml").read_text()),
        json.loads((norm_run / "normalisation.json").read_text()),
    )
    hists = _load(norm_run / "hists_normalised.pkl")
    with plot_style(settings.experiment):
        fig = stack_figure(hists["njet"], "Jet multiplicity", settings)
    ax, rax = fig.axes
    assert rax.get_ylabel() == "Data / Sim."
    labels = ax.get_legend_handles_labels()[1]
    assert {"ttbar", "dy", "Data", "Stat. unc."} <= set(labels)
    texts = [t.get_text() for t in ax.texts]
    assert "CMS" in texts
    assert "59.8 fb$^{-1}$ (13 TeV)" in texts
    # the stack's top = the summed normalised simulation
    sim = sum(hists["njet"][{"dataset": d}].values() for d in ("ttbar", "dy"))
    tops = max(
        (p for p in ax.patches if p.get_label() in {"ttbar", "dy"}),
        key=lambda p: p.get_path().vertices[:, 1].max(),
    )
    assert tops.get_path().vertices[:, 1].max() == pytest.approx(sim.max(), rel=1e-9)
    # log option
    log_settings = PlotSettings(**{**settings.__dict__, "log": True})
    with plot_style("cms"):
        assert stack_figure(hists["njet"], "t", log_settings).axes[0].get_yscale() == "log"


def test_hepnn_plot_redraws_the_stacks(norm_run: Path) -> None:
    from hepnn.replot import redraw

    target = norm_run / "plots" / "njet.png"
    target.unlink()
    written = redraw(norm_run, ["png"])
    assert target in written
    assert target.is_file()


# ------------------------------------------------------------ metadata and Σw sources
def _dataset(name: str, metadata: dict, path: Path, tree: str = "Events") -> Dataset:
    with uproot.open(path) as f:
        n = f[tree].num_entries
    return Dataset(name, "root", [FileEntry(path, path, tree, n)], metadata)


def test_sumw_from_the_weight_branch_of_a_converted_csv(higgs_converted, higgs_csv_lines) -> None:
    """No Runs tree (Higgs CSV -> ROOT): Σ ``Weight`` over every event of the dataset."""
    header = higgs_csv_lines[0].split(",")
    col = header.index("Weight")
    truth = math.fsum(float(line.split(",")[col]) for line in higgs_csv_lines[1:])
    path = Path(higgs_converted.root_path)
    ds = _dataset("higgs", {"xsec": 2.0, "weight_branch": "Weight"}, path, higgs_converted.treename)
    scales = normalisation({"higgs": ds}, 1000.0)
    assert scales["higgs"].sumw == pytest.approx(truth, rel=1e-12)
    assert scales["higgs"].scale == pytest.approx(2.0 * 1000.0 / truth, rel=1e-12)
    with pytest.raises(InputError, match="no Runs tree"):
        normalisation({"higgs": _dataset("higgs", {"xsec": 2.0, "sumw": "runs"}, path,
                                         higgs_converted.treename)}, 1000.0)  # fmt: skip
    with pytest.raises(ConfigError, match="no sum of generator weights"):
        normalisation(
            {"higgs": _dataset("higgs", {"xsec": 2.0}, path, higgs_converted.treename)}, 1.0
        )


def test_sumw_precedence_metadata_runs_workflow() -> None:
    tt = _dataset("ttbar", {"xsec": 1.0}, NANO / FILES["ttbar"])
    dy = _dataset("dy", {"xsec": 1.0}, NANO / FILES["dy"])
    wf = {"ttbar": 5.0, "dy": 7.0}
    got = normalisation({"ttbar": tt, "dy": dy}, 1.0, workflow_sumw=wf)
    assert got["ttbar"].sumw == 5.0  # no Runs tree: the workflow's accumulator
    assert got["ttbar"].sumw_source == "workflow sumw accumulator"
    assert got["dy"].sumw == pytest.approx(_total_sumw("dy"))  # Runs first
    given = _dataset("dy", {"xsec": 1.0, "sumw": 123.0}, NANO / FILES["dy"])
    assert normalisation({"dy": given}, 1.0, workflow_sumw=wf)["dy"].sumw == 123.0


@pytest.mark.parametrize(
    ("metadata", "match"),
    [
        ({"xsec": -1.0}, "xsec: expected a positive"),
        ({"xsec": "831"}, "xsec: expected a positive"),
        ({"xsec": True}, "xsec: expected a positive"),
        ({"is_data": "yes"}, "is_data: expected true or false"),
        ({"is_data": True, "is_mc": True}, "contradicts"),
        ({"is_data": True, "xsec": 1.0}, "takes no cross-section"),
        ({"xsec": 1.0, "sumw": "lhe"}, "sumw: expected a positive number"),
        ({"xsec": 1.0, "sumw": 0}, "sumw: expected a positive number"),
        ({"process": ""}, "process: expected a non-empty string"),
    ],
)
def test_bad_metadata_is_one_line(metadata: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as err:
        dataset_role("ttbar", metadata, "samples.yaml")
    assert str(err.value).startswith("samples.yaml: datasets.ttbar.metadata")
    assert "\n" not in str(err.value)


def test_is_mc_false_is_data_and_lumi_needs_every_xsec() -> None:
    assert dataset_role("d", {"is_mc": False}).is_data
    assert not dataset_role("d", {"is_mc": True}).is_data
    tt = _dataset("ttbar", {"process": "ttbar"}, NANO / FILES["ttbar"])
    with pytest.raises(ConfigError, match="missing 'xsec'"):
        normalisation({"ttbar": tt}, 1.0, source="s.yaml")


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("lumi=-5", "lumi"),
        ("lumi=true", "lumi"),
        ("lumi='100'", "lumi"),
        ("sqrt_s=0", "sqrt_s"),
        ("plots.experiment=lhcb", "plots.experiment"),
        ("plots.log=1", "plots.log"),
        ("plots.colour=red", "unknown key 'plots.colour'"),
    ],
)
def test_config_validation(override: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_config(REPO / "configs" / "fatjets.yaml", [override])


def test_normalise_hists_without_dataset_axis_and_double_storage() -> None:
    """One dataset and no ``dataset`` axis: the whole histogram is scaled; Double -> Weight."""
    import hist

    gw, fat_pt = _gen_weights("ttbar")
    h = hist.Hist(hist.axis.Regular(10, 0, 1000, name="pt"))  # Double storage: var = counts
    h.fill(pt=ak.to_numpy(ak.flatten(fat_pt)))
    tt = _dataset("ttbar", {"xsec": 2.0}, NANO / FILES["ttbar"])
    scales = normalisation({"ttbar": tt}, 3.0)
    out, skipped = normalise_hists({"pt": h, "cutflow": {"all": 3}}, scales)
    s = 2.0 * 3.0 / gw.sum()
    assert skipped == ["cutflow"]
    np.testing.assert_allclose(out["pt"].values(flow=True), h.values(flow=True) * s, rtol=1e-15)
    np.testing.assert_allclose(
        out["pt"].variances(flow=True), h.values(flow=True) * s * s, rtol=1e-15
    )
    assert h.sum() == len(ak.flatten(fat_pt))  # the input is untouched


def test_missing_xsec_fails_before_processing(tmp_path: Path) -> None:
    """``hepnn validate`` and ``hepnn run`` refuse a simulated dataset without xsec when lumi is set."""
    from click.testing import CliRunner

    from hepnn.cli import main

    samples = tmp_path / "s.yaml"
    samples.write_text(
        f"datasets:\n  ttbar: {{files: [{NANO / FILES['ttbar']}], metadata: {{process: ttbar}}}}\n"
    )
    args = [
        str(REPO / "configs" / "fatjets.yaml"),
        "--set",
        f"samples={samples}",
        "--set",
        "lumi=1000",
    ]
    result = CliRunner().invoke(main, ["validate", *args])
    assert result.exit_code == 2
    assert f"{samples}: datasets.ttbar.metadata: missing 'xsec' (pb)" in result.output
    result = CliRunner().invoke(main, ["run", *args, "-o", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "missing 'xsec'" in result.output
    assert not (tmp_path / "out" / "hists.pkl").exists()  # nothing was processed
    ok = CliRunner().invoke(main, ["validate", args[0], "--set", f"samples={samples}"])
    assert ok.exit_code == 0, ok.output  # without lumi, no cross-section is needed
