"""The overtraining test and ``hepnn review`` on small networks trained on the shipped events."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from hepnn.cli import main
from hepnn.nets.data import DataReader
from hepnn.nets.spec import NetworkSpec
from hepnn.nets.split import TEST, TRAIN, VAL, split_codes
from hepnn.nets.store import load_network, save_network
from hepnn.nets.train import train_network
from hepnn.review import overtraining_test

REPO = Path(__file__).resolve().parents[1]
FEATURES = ["DER_mass_MMC", "DER_mass_transverse_met_lep", "DER_mass_vis", "DER_deltar_tau_lep",
            "DER_pt_ratio_lep_tau", "PRI_tau_pt", "PRI_lep_pt", "PRI_met", "DER_mass_jet_jet",
            "PRI_jet_num"]  # fmt: skip


def _datasets(name: str):
    from hepnn.pipeline import cache_dir
    from hepnn.samples import load_samples, resolve_samples

    return resolve_samples(load_samples(REPO / "samples" / f"{name}.yaml"), cache_dir())


@pytest.fixture(scope="module")
def higgs_reader() -> DataReader:
    return DataReader(_datasets("higgs"))


def _flat_spec(split: dict, epochs: int = 2, **extra) -> NetworkSpec:
    return NetworkSpec.model_validate({
        "inputs": {"kind": "flat", "features": FEATURES},
        "params": {"hidden": [16], "activation": "tanh", "dropout": 0.0},
        "training": {"epochs": epochs, "seed": 3},
        "split": split,
    } | extra)  # fmt: skip


def _memorise(model: torch.nn.Module, x: np.ndarray, y: np.ndarray, epochs: int) -> None:
    """Keep training on the training rows alone, far past the best epoch (overtraining on purpose)."""
    torch.manual_seed(0)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y.astype(np.float32))
    for _ in range(epochs):
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(xt).squeeze(-1), yt)
        loss.backward()
        opt.step()
    model.eval()


# ------------------------------------------------------------ hepnn review
CONFIG = """
name: tiny
workflow: higgs
samples: {samples}
seed: 11
outputs: {{plot_formats: [png]}}
networks:
  dnn:
    inputs: {{kind: flat, features: {features}}}
    params: {{hidden: [16], activation: tanh, dropout: 0.0}}
    training: {{epochs: 2, seed: 5}}
    split: {{method: kfold, folds: 4, id_column: EventId}}
taylor: {{orders: [1, 2], events: 4000, monitor_every: 0}}
review:
  top: 20
  pseudo_data: {{fraction: 0.5, seed: 3, mismodel: {{feature: PRI_tau_pt, scale: 1.05}}}}
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """A config, and an output folder with its network trained and ranked (no event processing)."""
    from hepnn.config import load_config
    from hepnn.nets.lifecycle import prepare_networks
    from hepnn.pipeline import Run, rank_networks

    tmp = tmp_path_factory.mktemp("review")
    cfg_path = tmp / "tiny.yaml"
    cfg_path.write_text(
        CONFIG.format(samples=REPO / "samples" / "higgs.yaml", features=FEATURES), encoding="utf-8"
    )
    out = tmp / "out"
    cfg = load_config(cfg_path)
    run = Run(cfg, out, progress=False)
    run.datasets = _datasets("higgs")
    run.reader = DataReader(run.datasets)
    run.networks = prepare_networks(cfg, run.reader, out, None, progress=False)
    rank_networks(run)
    return cfg_path, out


def test_overtraining_flags_a_memorising_network_only(
    trained, higgs_reader, tmp_path: Path
) -> None:
    _, out = trained
    split = {"method": "kfold", "folds": 4, "id_column": "EventId"}
    spec = _flat_spec(split)
    data = higgs_reader.training_data("dnn", spec)
    honest = load_network(
        out / "models" / "dnn"
    )  # 2 epochs of a 16-node network, 9,000 events per fold
    summary, arrays = overtraining_test(honest, data, flag_p=0.01)
    assert len(summary["models"]) == 4
    for m, entry in enumerate(summary["models"]):
        codes = split_codes(data.ids, split, m)
        for cls, label in (("signal", 1), ("background", 0)):
            assert entry[cls]["n_train"] == int(((codes == TRAIN) & (data.labels == label)).sum())
            assert entry[cls]["n_held_out"] == int(((codes == TEST) & (data.labels == label)).sum())
            assert len(arrays[m][f"{cls}_train"]) == entry[cls]["n_train"]
        assert entry["held_out"] == "test rows"
    assert not summary["flagged"]
    # a wide network trained on 200 events per fold for 400 full-batch steps memorises them
    small = _flat_spec(split, epochs=1, max_events=800).model_copy(
        update={"params": {"hidden": [64, 64], "activation": "tanh", "dropout": 0.0}}
    )
    sdata = higgs_reader.training_data("small", small)
    result = train_network("small", small, sdata, progress=False)
    for m, fitted in enumerate(result.models):
        rows = split_codes(sdata.ids, split, m) == TRAIN
        _memorise(fitted.model, fitted.builder.transform(sdata.raw[rows]), sdata.labels[rows], 400)
    over = load_network(save_network(tmp_path / "over", "small", result, sdata))
    summary, _ = overtraining_test(over, sdata, flag_p=0.01)
    assert summary["flagged"]
    assert sum(e["flagged"] for e in summary["models"]) >= 3
    assert all(e["background"]["ks"] > 0.15 for e in summary["models"])


def test_overtraining_on_parity_and_random_splits(higgs_reader, tmp_path: Path) -> None:
    """Parity has no test rows: its held-out rows are the validation (odd) ids; a jet tagger's random split."""
    spec = _flat_spec({"method": "parity", "id_column": "EventId"}, epochs=1)
    data = higgs_reader.training_data("par", spec)
    net = load_network(
        save_network(
            tmp_path / "par", "par", train_network("par", spec, data, progress=False), data
        )
    )
    summary, _ = overtraining_test(net, data)
    (entry,) = summary["models"]
    assert entry["held_out"] == "validation rows"
    codes = split_codes(data.ids, spec.split)
    assert entry["signal"]["n_held_out"] == int(((codes == VAL) & (data.labels == 1)).sum())
    assert entry["background"]["n_train"] == int(((data.ids % 2 == 0) & (data.labels == 0)).sum())

    jets = DataReader(_datasets("toptag"))
    jspec = NetworkSpec.model_validate({
        "inputs": {"kind": "sequence", "max_constituents": 32},
        "params": {"filters": [4, 4], "dense": [8], "dropout": 0.0},
        "label": "label", "training": {"epochs": 1, "seed": 2},
        "split": {"method": "random", "id_column": "event", "seed": 7},
    })  # fmt: skip
    jdata = jets.training_data("cnn1d", jspec)
    jnet = load_network(
        save_network(
            tmp_path / "cnn1d", "cnn1d", train_network("cnn1d", jspec, jdata, progress=False), jdata
        )
    )
    summary, arrays = overtraining_test(jnet, jdata)
    (entry,) = summary["models"]
    assert entry["held_out"] == "test rows"
    codes = split_codes(jdata.ids, jspec.split)
    n_test = int(((codes == TEST) & jdata.usable).sum())
    assert entry["signal"]["n_held_out"] + entry["background"]["n_held_out"] == n_test
    assert np.all((arrays[0]["signal_train"] >= 0) & (arrays[0]["signal_train"] <= 1))


def test_hepnn_review_writes_one_document(trained) -> None:
    cfg_path, out = trained
    res = CliRunner().invoke(main, ["review", str(cfg_path), "-o", str(out)])
    assert res.exit_code == 0, res.output
    review = out / "review"
    readme = (review / "README.md").read_text(encoding="utf-8")
    # every link is relative and resolves to a file inside the output folder
    links = re.findall(r"\]\(([^)]+)\)", readme)
    assert len(links) > 10
    for link in links:
        assert not link.startswith(("/", "http")), link
        target = (review / link).resolve()
        assert target.is_file(), link
        assert out.resolve() in target.parents
    for part in ("## Network `dnn`", "### Input ranking", "### Simulation vs data", "### Overtraining",
                 "ranking/dnn.png", "plots/overtraining_dnn.png", "Kolmogorov"):  # fmt: skip
        assert part in readme
    with (review / "gof.csv").open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0])[:6] == ["term", "order", "rank", "chi2", "ndf", "p_value"]
    assert not any("_missing" in r["term"] for r in rows)
    related = [r for r in rows if "PRI_tau_pt" in r["term"].split("*")]
    assert related  # PRI_tau_pt is among the top ranked terms of the Higgs network
    # every term with the mismodelled input is flagged where it has the statistics to see a
    # 5 % scale (pairs with DER_mass_jet_jet exist in ~170 pseudo-data events only)
    assert all(r["flagged"] == "True" for r in related if int(r["n_data"]) >= 1000)
    assert sum(int(r["n_data"]) >= 1000 for r in related) >= 2
    assert sum(r["flagged"] == "True" for r in rows if r not in related) <= 1
    for r in rows:
        assert (review / "plots" / f"gof_dnn_{r['term'].replace('*', '_x_')}.png").is_file()
    ot = json.loads((review / "overtraining.json").read_text(encoding="utf-8"))
    assert len(ot["dnn"]["models"]) == 4


def test_hepnn_review_compares_with_is_data_datasets(trained, tmp_path: Path) -> None:
    """A dataset marked is_data is data: not trained on, compared with the simulation."""
    cfg_path, out = trained
    samples = tmp_path / "with_data.yaml"
    csv_path = REPO / "samples" / "higgs_challenge_18k.csv"
    samples.write_text(
        f"datasets:\n  higgs_challenge:\n    format: higgs-csv\n    files: [{csv_path}]\n"
        f"  fake_data:\n    format: higgs-csv\n    files: [{csv_path}]\n    metadata: {{is_data: true}}\n",
        encoding="utf-8",
    )
    from hepnn.config import load_config
    from hepnn.pipeline import cache_dir
    from hepnn.samples import load_samples, resolve_samples

    cfg = load_config(cfg_path, [f"samples={samples}"])
    reader = DataReader(resolve_samples(load_samples(samples), cache_dir()))
    data = reader.training_data("dnn", cfg.networks["dnn"])
    assert len(data) == 18_000  # the data is not trained on
    assert {f["dataset"] for f in data.files} == {"higgs_challenge"}
    o2 = tmp_path / "o2"
    (o2 / "ranking").mkdir(parents=True)
    (o2 / "ranking" / "dnn.csv").write_bytes((out / "ranking" / "dnn.csv").read_bytes())
    res = CliRunner().invoke(main, ["review", str(cfg_path), "-o", str(o2), "--models", str(out / "models"),
                                    "--samples", str(samples), "--set", "review.pseudo_data=null",
                                    "--set", "outputs.plots=false"])  # fmt: skip
    assert res.exit_code == 0, res.output
    readme = (o2 / "review" / "README.md").read_text(encoding="utf-8")
    assert "Simulation compared with data (fake_data)" in readme
    with (o2 / "review" / "gof.csv").open(newline="", encoding="utf-8") as fh:
        rows = {r["term"]: r for r in csv.DictReader(fh)}
    # the same events, unweighted as "data" against weighted simulation: signal-rich data,
    # so the mass is far off; the data count is every event where the term is defined
    assert rows["DER_mass_MMC"]["flagged"] == "True"
    defined = int(np.isfinite(data.raw[:, FEATURES.index("DER_mass_MMC")]).sum())
    assert int(rows["DER_mass_MMC"]["n_data"]) == defined < 18_000


def test_hepnn_review_bad_settings_are_one_line(trained) -> None:
    cfg_path, out = trained
    res = CliRunner().invoke(
        main,
        [
            "review",
            str(cfg_path),
            "-o",
            str(out),
            "--set",
            "review.pseudo_data.mismodel.feature=PRI_nope",
        ],
    )
    assert res.exit_code == 2
    assert res.output.strip().count("\n") == 0
    assert (
        "review.pseudo_data.mismodel.feature: 'PRI_nope' is not a flat input of any network"
        in res.output
    )


@pytest.mark.slow
def test_hepnn_run_with_a_review_section(tmp_path: Path) -> None:
    """``hepnn run --test`` on configs/higgs.yaml: review/ written, overtraining in metrics.json."""
    out = tmp_path / "run"
    res = CliRunner().invoke(main, ["run", str(REPO / "configs" / "higgs.yaml"), "--test", "--quiet",
                                    "-o", str(out), "--set", "outputs.plot_formats=[png]"])  # fmt: skip
    assert res.exit_code == 0, res.output
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert len(metrics["networks"]["dnn"]["overtraining"]["models"]) == 4
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert "review/README.md" in json.dumps(manifest)
    readme = (out / "review" / "README.md").read_text(encoding="utf-8")
    assert "score_dnn_bands" in readme  # the band plots of the run


def test_is_data_datasets_get_no_network_metrics(trained, higgs_reader) -> None:
    """The same scored events as simulation get metrics; marked is_data, they get none."""
    import dataclasses

    from hepnn.columns import Columns
    from hepnn.nets.apply import apply_network, get_network
    from hepnn.nets.report import network_report

    _, out = trained
    loaded = get_network(out / "models" / "dnn")
    data = higgs_reader.training_data(
        "dnn", _flat_spec({"method": "kfold", "folds": 4, "id_column": "EventId"})
    )
    score = apply_network(loaded, {}, event_ids=data.ids, raw=data.raw)
    cols = Columns({"EventId": data.ids, "Label": data.labels, "score_dnn": score})
    sim = higgs_reader.datasets["higgs_challenge"]
    as_data = dataclasses.replace(sim, metadata={**sim.metadata, "is_data": True})
    metrics, _ = network_report({"dnn": out / "models" / "dnn"}, {}, {"higgs_challenge": cols},
                                {"higgs_challenge": sim}, out / "p", formats=())  # fmt: skip
    assert metrics["networks"]["dnn"]["datasets"]["higgs_challenge"]["rows"] == 18_000
    metrics, _ = network_report({"dnn": out / "models" / "dnn"}, {}, {"higgs_challenge": cols},
                                {"higgs_challenge": as_data}, out / "p", formats=())  # fmt: skip
    assert metrics == {}


SYMMETRIC = """
name: tinysym
workflow: higgs
samples: {samples}
seed: 11
outputs: {{plots: false, hists_root: false}}
networks:
  dnn:
    inputs:
      kind: flat
      features: [PRI_lep_phi, PRI_met_phi, PRI_tau_phi, PRI_tau_eta, PRI_lep_eta, PRI_tau_pt,
                 DER_mass_MMC, DER_mass_vis]
      symmetry: {{phi_reference: PRI_tau_phi, phis: [PRI_lep_phi, PRI_met_phi],
                  phi_reflect: PRI_lep_phi, eta_reference: PRI_tau_eta,
                  etas: [PRI_tau_eta, PRI_lep_eta]}}
    params: {{hidden: [8], activation: tanh, dropout: 0.0}}
    training: {{epochs: 1, seed: 5}}
    split: {{method: kfold, folds: 4, id_column: EventId}}
review:
  top: 20
  pseudo_data: {{fraction: 0.5, seed: 3, mismodel: {{feature: PRI_tau_phi, shift: 1.0}}}}
"""


def test_review_compares_what_a_symmetric_network_sees(tmp_path: Path) -> None:
    """With inputs.symmetry the review compares Δφ, not the absolute angles.

    The pseudo-data's tau φ is shifted by 1 rad: no absolute angle that is an input changes,
    but every Δφ to the tau does, and only those terms are flagged; the tau φ itself (the
    reference, always 0) is not an input and not compared.
    """
    cfg = tmp_path / "tinysym.yaml"
    cfg.write_text(SYMMETRIC.format(samples=REPO / "samples" / "higgs.yaml"), encoding="utf-8")
    res = CliRunner().invoke(main, ["run", str(cfg), "-o", str(tmp_path / "out"), "--quiet"])
    assert res.exit_code == 0, res.output
    with (tmp_path / "out" / "review" / "gof.csv").open(newline="", encoding="utf-8") as fh:
        rows = {r["term"]: r for r in csv.DictReader(fh)}
    assert "PRI_tau_phi" not in rows
    assert set(rows) == {"PRI_lep_phi", "PRI_met_phi", "PRI_tau_eta", "PRI_lep_eta", "PRI_tau_pt",
                         "DER_mass_MMC", "DER_mass_vis"}  # fmt: skip
    flagged = {t for t, r in rows.items() if r["flagged"] == "True"}
    assert flagged == {"PRI_lep_phi", "PRI_met_phi"}
