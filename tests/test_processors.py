"""An unmodified coffea processor (coffea-documentation style) run by ``hepnn run``."""

from __future__ import annotations

import json
import pickle
import textwrap
from pathlib import Path

import awkward as ak
import numpy as np
import pytest
import uproot
from click.testing import CliRunner

from hepnn.cli import main
from hepnn.config import load_config
from hepnn.errors import ConfigError
from hepnn.pipeline import run_config

REPO = Path(__file__).resolve().parents[1]
NANO = REPO / "samples" / "nanoaod"
FILES = {"dy": "nano_dy.root", "data": "nano_dimuon.root"}  # 40 events each

#: Written as the coffea documentation writes processors: plain __init__, no hepnn import,
#: nested dict output with a cutflow defaultdict, hist.Hist, column / value accumulators,
#: a set, and a postprocess that adds a derived entry (and returns None: in-place).
PROCESSOR = """
from collections import defaultdict

import awkward as ak
import hist
import numpy as np
from coffea import processor


class DimuonProcessor(processor.ProcessorABC):
    def __init__(self):
        pass

    def process(self, events):
        dataset = events.metadata["dataset"]
        cutflow = defaultdict(int)
        cutflow["all"] += len(events)
        muons = events.Muon[(events.Muon.pt > 5) & (np.abs(events.Muon.eta) < 2.4)]
        two = ak.num(muons) == 2
        cutflow["two_muons"] += int(ak.sum(two))
        opposite = two & (ak.sum(muons.charge, axis=1) == 0)
        cutflow["opposite_sign"] += int(ak.sum(opposite))
        pairs = muons[opposite]
        dimuon = pairs[:, 0] + pairs[:, 1]
        h_mass = (
            hist.Hist.new.Reg(60, 0.0, 240.0, name="mass", label=r"$m_{\\mu\\mu}$ [GeV]")
            .Weight()
        )
        h_mass.fill(mass=dimuon.mass)
        return {
            dataset: {
                "entries": len(events),
                "cutflow": cutflow,
                "mass": h_mass,
                "leading_pt": processor.column_accumulator(ak.to_numpy(pairs[:, 0].pt)),
                "sum_pt": processor.value_accumulator(float, float(ak.sum(pairs[:, 0].pt))),
                "runs": set(np.unique(ak.to_numpy(events.run)).tolist()),
            }
        }

    def postprocess(self, accumulator):
        for out in accumulator.values():
            out["cutflow"]["opposite_sign_fraction"] = (
                out["cutflow"]["opposite_sign"] / out["cutflow"]["all"]
            )
"""


def _write_setup(
    tmp: Path, *, schema_attr: bool = False, extra: str = "", cfg_extra: str = ""
) -> Path:
    code = PROCESSOR
    if schema_attr:
        code = code.replace(
            "    def __init__(self):", "    schema = 'base'\n\n    def __init__(self):"
        )
    (tmp / "dimuon.py").write_text(code + extra)
    samples = {
        "datasets": {n: {"format": "root", "files": [str(NANO / f)]} for n, f in FILES.items()}
    }
    (tmp / "samples.yaml").write_text(json.dumps(samples))
    (tmp / "cfg.yaml").write_text(
        textwrap.dedent(
            f"""\
            name: dimuon
            workflow: {tmp / "dimuon.py"}:DimuonProcessor
            samples: {tmp / "samples.yaml"}
            executor: {{chunksize: 40, block_size: 10}}
            outputs: {{plots: false}}
            """
        )
        + cfg_extra
    )
    return tmp / "cfg.yaml"


def _direct_cutflow(path: Path) -> dict[str, int]:
    """The same selection counted straight from the file with uproot."""
    a = uproot.open(path)["Events"].arrays(["Muon_pt", "Muon_eta", "Muon_charge"])
    good = (a.Muon_pt > 5) & (np.abs(a.Muon_eta) < 2.4)
    two = ak.num(a.Muon_pt[good]) == 2
    opposite = two & (ak.sum(a.Muon_charge[good], axis=1) == 0)
    return {"all": len(a), "two_muons": int(ak.sum(two)), "opposite_sign": int(ak.sum(opposite))}


@pytest.fixture(scope="module")
def dimuon_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("proc")
    out = tmp / "out"
    result = CliRunner().invoke(main, ["run", str(_write_setup(tmp)), "-o", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    return out


def test_plain_processor_runs_and_writes_everything(dimuon_run: Path) -> None:
    manifest = json.loads((dimuon_run / "manifest.json").read_text())
    for name in FILES:
        assert (
            manifest["datasets"][name]["entries_processed"]
            == manifest["datasets"][name]["entries_expected"]
            > 0
        )
    for f in ("hists.pkl", "hists.root", "outputs.pkl", "cutflow.json"):
        assert (dimuon_run / f).is_file()
        assert f in manifest["outputs"]  # with its sha256


def test_cutflow_equals_direct_uproot_count(dimuon_run: Path) -> None:
    cutflow = json.loads((dimuon_run / "cutflow.json").read_text())
    for name, file in FILES.items():
        direct = _direct_cutflow(NANO / file)
        got = cutflow[name]["cutflow"]
        assert {k: got[k] for k in direct} == direct
        assert cutflow[name]["entries"] == direct["all"]
        # postprocess ran once, on the merged output
        assert got["opposite_sign_fraction"] == pytest.approx(
            direct["opposite_sign"] / direct["all"]
        )


def test_accumulators_merged_and_hists_split(dimuon_run: Path) -> None:
    out = pickle.loads((dimuon_run / "outputs.pkl").read_bytes())
    hists = pickle.loads((dimuon_run / "hists.pkl").read_bytes())
    assert set(hists) == {f"{n}/mass" for n in FILES}
    for name, file in FILES.items():
        direct = _direct_cutflow(NANO / file)
        # column_accumulator: one value per selected event, in file order across blocks
        lead = out[name]["leading_pt"].value
        assert lead.shape == (direct["opposite_sign"],)
        assert out[name]["sum_pt"].value == pytest.approx(float(lead.sum()), rel=1e-6)
        assert hists[f"{name}/mass"].sum().value == direct["opposite_sign"]
        assert out[name]["mass"] == hists[f"{name}/mass"]
        assert isinstance(out[name]["runs"], set)
        assert out[name]["runs"]
    with uproot.open(dimuon_run / "hists.root") as f:
        names = {k.split(";")[0] for k in f}
    assert {f"{n}_mass" for n in FILES} <= names


@pytest.mark.slow
def test_chunking_does_not_change_the_merged_output(dimuon_run: Path, tmp_path: Path) -> None:
    cfg = load_config(_write_setup(tmp_path), ["executor.chunksize=20"])
    run = run_config(cfg, tmp_path / "out", progress=False)
    ref = pickle.loads((dimuon_run / "outputs.pkl").read_bytes())
    for name in FILES:
        assert run.other_outputs[name]["cutflow"] == ref[name]["cutflow"]
        assert np.array_equal(
            run.other_outputs[name]["leading_pt"].value, ref[name]["leading_pt"].value
        )
        assert run.hists[f"{name}/mass"] == ref[name]["mass"]


def test_wrong_schema_is_one_line_exit_3(tmp_path: Path) -> None:
    cfg = _write_setup(tmp_path, cfg_extra="schema: nanoaod\n")
    flat = tmp_path / "flat.root"
    with uproot.recreate(flat) as f:
        f["Events"] = {"x": np.arange(10.0)}
    (tmp_path / "samples.yaml").write_text(
        json.dumps({"datasets": {"flat": {"files": [str(flat)]}}})
    )
    result = CliRunner().invoke(main, ["run", str(cfg), "-o", str(tmp_path / "out"), "--quiet"])
    assert result.exit_code == 3, result.output
    line = result.output.strip().splitlines()[-1]
    assert "flat.root" in line
    assert "cannot be read with NanoAODSchema" in line
    assert "missing event ID fields" in line
    assert "not retried" in line
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_schema_attribute_wins_over_config(tmp_path: Path) -> None:
    from hepnn.processors import resolve_schema
    from hepnn.workflow import find_workflow

    cfg = load_config(_write_setup(tmp_path, schema_attr=True), ["schema=nanoaod"])
    found = find_workflow(cfg.workflow)
    schema, source = resolve_schema(found.cls, cfg.schema_)
    assert (schema.__name__, source) == ("BaseSchema", "processor")


def test_validate_catches_an_unconstructible_processor(tmp_path: Path) -> None:
    cfg = _write_setup(tmp_path)
    code = (
        (tmp_path / "dimuon.py")
        .read_text()
        .replace("def __init__(self):", "def __init__(self, year):")
    )
    (tmp_path / "dimuon.py").write_text(code)
    result = CliRunner().invoke(main, ["validate", str(cfg)])
    assert result.exit_code == 2
    assert "cannot construct processor DimuonProcessor" in result.output
    assert "year" in result.output
    # ... and the config's options give it
    (tmp_path / "cfg.yaml").write_text(cfg.read_text() + "options: {year: '2018'}\n")
    result = CliRunner().invoke(main, ["validate", str(cfg)])
    assert result.exit_code == 0, result.output


def test_make_processor_reports_constructor_errors() -> None:
    from coffea import processor

    from hepnn.processors import make_processor
    from hepnn.workflow import WorkflowContext

    class Broken(processor.ProcessorABC):
        def __init__(self) -> None:
            raise RuntimeError("no corrections file")

        def process(self, events):  # pragma: no cover - never built
            return {}

        def postprocess(self, accumulator):  # pragma: no cover
            return accumulator

    with pytest.raises(ConfigError, match="RuntimeError: no corrections file"):
        make_processor(Broken, WorkflowContext())
