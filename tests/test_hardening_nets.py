"""Hardening (issue #14): the reads done for training and ranking, through ``hepnn run``.

A tiny flat network (3 Higgs features, one hidden layer of 8, one epoch) keeps each
run to seconds. Reads for training name the file and entry range of a failure,
honour ``executor.skip_bad_files`` and count what they skip; a zero-entry tree with a
trained model and the Taylor ranking, and negative event weights, end in exit 0.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import uproot
import yaml
from cli_helpers import error_line, hepnn_run

import hepnn.nets.data

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "tests" / "data" / "tiny_model"
FEATURES = ["DER_mass_MMC", "DER_mass_vis", "PRI_tau_pt"]


def write_config(folder: Path, samples: Path, *, taylor: bool = False, **executor: object) -> Path:
    net = {
        "inputs": {"kind": "flat", "features": FEATURES, "missing_flags": "auto"},
        "params": {"hidden": [8], "activation": "tanh", "dropout": 0.1},
        "label": "Label", "weight": "Weight",
        "training": {"epochs": 1, "batch_size": 256, "lr": 0.01, "patience": 2, "seed": 1},
        "split": {"method": "parity", "id_column": "EventId"},
    }  # fmt: skip
    cfg = {
        "name": "tiny", "workflow": str(REPO / "workflows" / "higgs.py"), "samples": str(samples),
        "executor": {"chunksize": 2000, "block_size": 2000, "retries": 0, **executor},
        "outputs": {"plots": False, "hists_root": False}, "options": {"use_weights": True},
        "networks": {"dnn": net},
    }  # fmt: skip
    if taylor:
        cfg["taylor"] = {"orders": [1, 2], "events": 2000, "monitor_every": 0}
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def samples_yaml(folder: Path, fmt: str, file: Path) -> Path:
    path = folder / "samples.yaml"
    path.write_text(yaml.safe_dump({"datasets": {"higgs_challenge": {"format": fmt, "files": [str(file)]}}}))
    return path


@pytest.fixture
def truncated(tmp_path: Path, higgs_converted: object, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The converted Higgs file cut in half (its tree header survives), read in steps of 2,000."""
    data = Path(higgs_converted.root_path).read_bytes()  # type: ignore[attr-defined]
    cut = tmp_path / "cut.root"
    cut.write_bytes(data[: len(data) // 2])
    monkeypatch.setattr(hepnn.nets.data, "READ_STEP", 2000)
    return samples_yaml(tmp_path, "root", cut)


@pytest.mark.slow  # trains a network (~20 s on two shared cores)
def test_truncated_file_read_for_training_names_the_entry_range(tmp_path: Path, truncated: Path) -> None:
    out = tmp_path / "out"
    line = error_line(hepnn_run(write_config(tmp_path, truncated), out), status=3)
    assert f"error: {tmp_path / 'cut.root'}: entries [" in line
    assert "(reading training rows; set executor.skip_bad_files: true to skip them)" in line
    start, stop = (int(x) for x in line.split("entries [")[1].split(")")[0].split(", "))
    assert stop - start == 2000
    assert 0 < start < 18000
    assert not (out / "manifest.json").exists()


@pytest.mark.slow  # trains a network (~20 s on two shared cores)
def test_truncated_file_read_for_training_is_skipped_and_counted(tmp_path: Path, truncated: Path) -> None:
    out = tmp_path / "out"
    res = hepnn_run(write_config(tmp_path, truncated, skip_bad_files=True), out)
    assert res.exit_code == 0, res.output
    m = json.loads((out / "manifest.json").read_text())
    skipped = m["training_rows_skipped"]
    assert skipped
    assert all(s["entries"] == s["entrystop"] - s["entrystart"] for s in skipped)
    model = json.loads((out / "models" / "dnn" / "model.json").read_text())
    (read,) = model["training_data"]
    assert read["rows"] + sum(s["entries"] for s in skipped) == 18000  # every entry read or counted
    assert not m["complete"]  # the processing skipped the same region


@pytest.fixture
def empty_samples(tmp_path: Path, higgs_converted: object) -> Path:
    with uproot.open(higgs_converted.root_path) as f:  # type: ignore[attr-defined]
        arrays = f["Events"].arrays(library="np", entry_stop=0)
    path = tmp_path / "empty.root"
    with uproot.recreate(path) as f:
        f["Events"] = dict(arrays)
    return samples_yaml(tmp_path, "root", path)


def test_zero_entry_tree_with_a_trained_model_and_taylor(tmp_path: Path, empty_samples: Path) -> None:
    models = tmp_path / "models"
    shutil.copytree(TINY, models / "dnn")
    out = tmp_path / "out"
    res = hepnn_run(write_config(tmp_path, empty_samples, taylor=True), out, "--models", str(models))
    assert res.exit_code == 0, res.output
    m = json.loads((out / "manifest.json").read_text())
    assert m["ranking_skipped"] == {"dnn": "no events"}
    assert m["datasets"]["higgs_challenge"]["entries_processed"] == 0
    assert not (out / "ranking").exists()


@pytest.mark.slow  # trains a network (~20 s on two shared cores)
def test_negative_weights_in_shipped_events_exit_0(tmp_path: Path) -> None:
    """A quarter of the shipped Higgs events with their weight negated (as NLO simulation has).

    ``hepnn.metrics.auc`` itself fails on such weights (sklearn's ROC is not monotone);
    this end-to-end run did not reach that failure on this branch, so it guards the
    convention fixed with the metrics (issue #14, item 4) rather than reproducing it.
    """
    lines = (REPO / "samples" / "higgs_challenge_18k.csv").read_text().splitlines()
    col = lines[0].split(",").index("Weight")
    rows = []
    for i, row in enumerate(lines[1:]):
        fields = row.split(",")
        if i % 4 == 0:
            fields[col] = repr(-float(fields[col]))
        rows.append(",".join(fields))
    csv = tmp_path / "negative.csv"
    csv.write_text("\n".join([lines[0], *rows]) + "\n")
    out = tmp_path / "out"
    res = hepnn_run(write_config(tmp_path, samples_yaml(tmp_path, "higgs-csv", csv)), out)
    assert res.exit_code == 0, res.output
    weights = np.array([float(r.split(",")[col]) for r in rows])
    assert (weights < 0).sum() == 4500
    m = json.loads((out / "manifest.json").read_text())
    assert m["complete"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["networks"]["dnn"]
