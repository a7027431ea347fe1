"""Every ``hepnn`` subcommand as a user types it, on one ``--test`` run of the Higgs config.

Also the promises README makes about a run's files: the manifest's sha256 values,
``hists.pkl`` loading with pickle and hist alone, ``hists.root`` holding the same
values, and ``metrics.json``'s AUC recomputed from the written columns.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import uproot
from click.testing import CliRunner
from sklearn.metrics import roc_auc_score

from hepnn.cli import main

REPO = Path(__file__).resolve().parents[1]
HIGGS = REPO / "configs" / "higgs.yaml"


def hepnn(*args: str) -> tuple[int, str]:
    """Run ``hepnn ARGS`` in this process; returns (exit status, stdout + stderr)."""
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def test_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``hepnn run configs/higgs.yaml --test`` (two chunks, two epochs), png plots only."""
    out = tmp_path_factory.mktemp("cli") / "higgs"
    code, text = hepnn(
        "run", str(HIGGS), "--test", "-o", str(out), "--quiet",
        "--set", "outputs.plot_formats=[png]", "--set", "executor.block_size=2000",
    )  # fmt: skip
    assert code == 0, text
    return out


def test_run_test_mode_processes_two_chunks(test_run: Path) -> None:
    manifest = json.loads((test_run / "manifest.json").read_text())
    assert manifest["test_mode"] is True
    acc = manifest["datasets"]["higgs_challenge"]
    ex = manifest["executor"]
    chunk = -(-ex["chunksize"] // ex["block_size"]) * ex["block_size"]  # whole blocks
    # --test: two chunks of the dataset, every entry of them processed, none skipped
    assert acc["entries_processed"] == min(2 * chunk, acc["entries_expected"])
    assert acc["entries_skipped"] == 0
    columns = pq.read_table(test_run / "columns" / "higgs_challenge.parquet")
    assert columns.num_rows == acc["entries_processed"]


def test_manifest_hashes_are_the_files(test_run: Path) -> None:
    manifest = json.loads((test_run / "manifest.json").read_text())
    outputs = manifest["outputs"]
    assert {"hists.pkl", "config.resolved.yaml", "columns/higgs_challenge.parquet"} <= set(outputs)
    for name, digest in outputs.items():
        assert hashlib.sha256((test_run / name).read_bytes()).hexdigest() == digest, name
    # and every file the run wrote is listed (checkpoints and the manifest itself aside)
    written = {
        str(p.relative_to(test_run))
        for p in test_run.rglob("*")
        if p.is_file()
        and p.name not in ("manifest.json", ".hepnn.lock")  # the manifest itself, the run's lock
        and ".checkpoints" not in p.parts
    }
    assert written == set(outputs)


def test_hists_pkl_loads_with_pickle_and_hist_alone(test_run: Path) -> None:
    code = (
        "import sys, pickle; sys.modules['hepnn'] = None\n"  # any import of hepnn now fails
        f"h = pickle.load(open({str(test_run / 'hists.pkl')!r}, 'rb'))\n"
        "import hist; assert all(isinstance(v, hist.Hist) for v in h.values()), h.keys()\n"
        "print(len(h))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) > 5


def test_hists_root_has_the_same_values(test_run: Path) -> None:
    """Every fit template of DER_mass_MMC in hists.root against the histogram in hists.pkl."""
    with (test_run / "hists.pkl").open("rb") as fh:
        h = pickle.load(fh)["DER_mass_MMC"]
    assert {"dataset", "process", "njet", "syst"} <= set(h.axes.name)  # the config's variations
    compared = 0
    with uproot.open(test_run / "hists.root") as f:
        for process in h.axes["process"]:
            for syst in h.axes["syst"]:
                # <hist>/<process>/<syst>: summed over the other categories
                th1 = f[f"DER_mass_MMC/{process}/{syst}"]
                sub = h[{"process": process, "syst": syst, "dataset": sum, "njet": sum}]
                np.testing.assert_allclose(th1.values(), sub.values(), rtol=1e-12)
                np.testing.assert_allclose(th1.variances(), sub.variances(), rtol=1e-12)
                # <hist>_<dataset>_<jet bin>/<process>/<syst>: one region per category
                for njet in h.axes["njet"]:
                    region = f"DER_mass_MMC_higgs_challenge_{njet.replace(' ', '_')}"
                    th1 = f[f"{region}/{process}/{syst}"]
                    sub = h[{"process": process, "syst": syst, "dataset": "higgs_challenge",
                             "njet": njet}]  # fmt: skip
                    np.testing.assert_array_equal(th1.values(), sub.values())
                    compared += 1
        assert f["DER_mass_MMC/signal/nominal"].member("fXaxis").member("fTitle")  # an axis title
    assert compared == len(h.axes["process"]) * len(h.axes["syst"]) * len(h.axes["njet"])


def test_metrics_auc_recomputed_from_the_columns(test_run: Path) -> None:
    metrics = json.loads((test_run / "metrics.json").read_text())
    d = metrics["networks"]["dnn"]["datasets"]["higgs_challenge"]
    cols = pq.read_table(test_run / "columns" / "higgs_challenge.parquet").to_pandas()
    assert d["rows"] == len(cols)
    assert d["auc"] == pytest.approx(roc_auc_score(cols["Label"], cols["score_dnn"]), abs=1e-6)
    assert d["signal"] == int((cols["Label"] == 1).sum())


def test_metrics_ams_recomputed_from_the_columns(test_run: Path) -> None:
    """Best AMS at the challenge totals, b_reg = 10, from the columns with numpy alone."""
    d = json.loads((test_run / "metrics.json").read_text())["networks"]["dnn"]["datasets"][
        "higgs_challenge"
    ]
    cols = pq.read_table(test_run / "columns" / "higgs_challenge.parquet").to_pandas()
    label = cols["Label"].to_numpy() == 1
    w = cols["Weight"].to_numpy(dtype=np.float64)
    w = np.where(label, w * 691.988607712 / w[label].sum(), w * 410999.847322 / w[~label].sum())
    score = cols["score_dnn"].to_numpy(dtype=np.float64)
    thresholds = np.arange(1000) / 1000  # the metric's 1000 score bins: select score >= t
    s = np.array([w[label & (score >= t)].sum() for t in thresholds])
    b = np.array([w[~label & (score >= t)].sum() for t in thresholds])
    ams = np.sqrt(2 * ((s + b + 10) * np.log(1 + s / (b + 10)) - s))
    assert d["ams_best"] == pytest.approx(ams.max(), rel=1e-6)
    assert d["ams_threshold"] == pytest.approx(thresholds[ams.argmax()], abs=1e-9)


def test_rank_saved_models(test_run: Path) -> None:
    code, text = hepnn(
        "rank", str(HIGGS), "-o", str(test_run), "--order", "1", "--top", "5",
        "--set", "taylor.events=500", "--set", "outputs.plots=false",
    )  # fmt: skip
    assert code == 0, text
    assert "| rank | term" in text
    lines = (test_run / "ranking" / "dnn.csv").read_text().splitlines()
    assert lines[0].startswith("rank,term,order,value")
    assert {line.split(",")[2] for line in lines[1:]} == {"1"}  # --order 1


def test_plot_redraws_the_plots(test_run: Path) -> None:
    plots = test_run / "plots"
    before = sorted(p.name for p in plots.glob("*.png"))
    assert before
    for p in plots.glob("*.png"):
        p.unlink()
    code, text = hepnn("plot", str(test_run), "--format", "png")
    assert code == 0, text
    after = {p.name for p in plots.glob("*.png")}
    assert set(before) <= after  # every plot a run makes, ROC and training curves too


def test_inspect_files_and_folders(test_run: Path) -> None:
    code, text = hepnn("inspect", str(test_run / "hists.pkl"))
    assert code == 0, text
    assert "DER_mass_MMC" in text
    code, text = hepnn("inspect", str(REPO / "samples" / "higgs_challenge_18k.csv"))
    assert code == 0, text
    assert "18000" in text.replace(",", "")
    code, text = hepnn("inspect", str(test_run))
    assert code == 0, text


def test_validate_every_shipped_config() -> None:
    for config in sorted((REPO / "configs").glob("*.yaml")):
        code, text = hepnn("validate", str(config))
        assert code == 0, text
        assert ": ok" in text


def test_validate_rejects_a_bad_value(tmp_path: Path) -> None:
    code, text = hepnn("validate", str(HIGGS), "--set", "executor.chunksize=-5")
    assert code == 2
    assert text.startswith("error: ")
    assert "chunksize" in text
    assert len(text.strip().splitlines()) == 1


def test_debug_shows_the_traceback() -> None:
    from hepnn.errors import HepnnError

    with pytest.raises(HepnnError, match="chunksize"):
        CliRunner().invoke(
            main, ["--debug", "validate", str(HIGGS), "--set", "executor.chunksize=-5"],
            catch_exceptions=False,
        )  # fmt: skip


def test_list_shows_workflows_configs_and_architectures(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    code, text = hepnn("list")
    assert code == 0, text
    for name in (
        "higgs",
        "toptag",
        "fatjets",
        "toy",
        "configs/higgs.yaml",
        "mlp",
        "cnn1d",
        "cnn2d",
    ):
        assert name in text


def test_console_script_is_installed() -> None:
    out = subprocess.run(["hepnn", "--version"], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    from hepnn import __version__

    assert __version__ in out.stdout


def test_a_run_without_networks_imports_no_torch(tmp_path: Path) -> None:
    """Nothing heavy is imported that the run does not use (torch, scikit-learn)."""
    code = (
        "import sys\n"
        "from hepnn.config import load_config\n"
        "from hepnn.pipeline import run_config\n"
        f"cfg = load_config({str(HIGGS)!r}, ['networks={{}}', 'taylor=null', 'review=null',"
        " 'outputs.plots=false'])\n"
        f"run_config(cfg, {str(tmp_path / 'out')!r}, progress=False)\n"
        "print(sorted(m for m in ('torch', 'sklearn') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["complete"]
