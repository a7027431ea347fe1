"""Ranking writers: documented columns and names, atomic writes, history, monitor."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from hepnn.files import atomic_path, atomic_text
from hepnn.models import MLP
from hepnn.taylor import TaylorMonitor, TaylorResult, mean_abs_taylor, write_history, write_ranking

NAMES = ["m_jj", "pt_h", "eta_j"]


@pytest.fixture(scope="module")
def result() -> TaylorResult:
    torch.manual_seed(0)
    net = MLP(3, [16, 16], activation="tanh")
    x = np.random.default_rng(0).normal(size=(200, 3))
    return mean_abs_taylor(net, x, orders=(1, 2), input_names=NAMES)


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_write_ranking_files_and_columns(tmp_path, result):
    paths = write_ranking(result, tmp_path, "mlp", formats=("png", "pdf"))
    folder = tmp_path / "ranking"
    assert {p.name for p in folder.iterdir()} == {
        f"mlp.{e}" for e in ("csv", "json", "md", "png", "pdf")
    }
    assert paths["csv"] == folder / "mlp.csv"
    for ext in ("png", "pdf"):
        assert paths[ext].stat().st_size > 1000

    rows = read_csv(paths["csv"])
    assert list(rows[0]) == ["rank", "term", "order", "value"]
    assert len(rows) == 3 + 6
    assert [int(r["rank"]) for r in rows] == list(range(1, 10))
    values = [float(r["value"]) for r in rows]
    assert values == sorted(values, reverse=True)
    terms = {r["term"]: int(r["order"]) for r in rows}
    assert terms["m_jj"] == 1
    assert terms["m_jj*pt_h"] == 2  # joined in input order, counted once
    assert "pt_h*m_jj" not in terms
    assert terms["eta_j*eta_j"] == 2
    # values written at full precision
    assert float(rows[0]["value"]) == result.ranked()[0].value

    doc = json.loads(paths["json"].read_text())
    assert doc["columns"] == ["rank", "term", "order", "value"]
    meta = doc["metadata"]
    assert meta["model"] == "mlp"
    assert meta["n_events"] == 200
    assert "sigmoid" in meta["output"]
    assert "standardised" in meta["inputs"]
    assert meta["weights"] == "unweighted"
    assert meta["input_names"] == NAMES
    assert doc["ranking"][0] == {
        "rank": 1, "term": rows[0]["term"], "order": int(rows[0]["order"]), "value": values[0]
    }  # fmt: skip
    assert [r["term"] for r in doc["ranking"]] == [r["term"] for r in rows]

    md = paths["md"].read_text()
    assert "arXiv:1803.08782" in md
    assert "standardised inputs" in md
    assert "| rank | term | order |" in md
    assert "m\\_jj" not in md  # underscores left alone, '*' escaped
    assert "m_jj\\*pt_h" in md
    table = [line for line in md.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert len(table) == 9


def test_write_ranking_top_and_logx(tmp_path, result):
    paths = write_ranking(result, tmp_path, "top3", top=3, log_x=True, formats=("png",))
    assert len(read_csv(paths["csv"])) == 3
    assert len(json.loads(paths["json"].read_text())["ranking"]) == 3
    assert "pdf" not in paths


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    target = tmp_path / "ranking" / "x.csv"
    atomic_text(target, "old\n")

    class Boom(Exception):
        pass

    def write_then_fail() -> None:
        with atomic_path(target) as tmp:
            tmp.write_text("partial")
            raise Boom

    with pytest.raises(Boom):
        write_then_fail()
    assert target.read_text() == "old\n"
    assert [p.name for p in target.parent.iterdir()] == ["x.csv"]  # no temporary left


def test_write_history(tmp_path, result):
    later = TaylorResult(**{**result.__dict__, "values": result.values * 2})
    paths = write_history([(10, later), (1, result)], tmp_path, "mlp", top=4, formats=("png",))
    assert paths["csv"] == tmp_path / "ranking" / "mlp_history.csv"
    rows = read_csv(paths["csv"])
    assert list(rows[0]) == ["epoch", "term", "order", "value"]
    assert len(rows) == 2 * 9
    assert [int(r["epoch"]) for r in rows[:9]] == [1] * 9  # sorted by epoch
    by_key = {(int(r["epoch"]), r["term"]): float(r["value"]) for r in rows}
    assert by_key[(10, "m_jj*pt_h")] == pytest.approx(2 * by_key[(1, "m_jj*pt_h")])
    assert paths["png"].stat().st_size > 1000
    with pytest.raises(ValueError, match="no history"):
        write_history([], tmp_path, "mlp")


def test_monitor_records_every_n_epochs_on_fixed_subsample(tmp_path):
    torch.manual_seed(1)
    net = MLP(3, [8], activation="tanh", dropout=0.3)
    x_val = np.random.default_rng(1).normal(size=(500, 3))
    monitor = TaylorMonitor(tmp_path, "mlp", every=2, n_events=100, input_names=NAMES, formats=())
    net.train()
    recorded = [monitor(epoch, net, x_val) is not None for epoch in range(1, 6)]
    assert recorded == [True, True, False, True, False]
    assert net.training  # the training mode survives the callback
    assert [e for e, _ in monitor.history] == [1, 2, 4]
    assert all(r.n_events == 100 for _, r in monitor.history)
    # unchanged weights and fixed subsample -> identical rankings; dropout off
    np.testing.assert_array_equal(monitor.history[0][1].values, monitor.history[2][1].values)
    rows = read_csv(tmp_path / "ranking" / "mlp_history.csv")
    assert len(rows) == 3 * 9
    with pytest.raises(ValueError, match="changed size"):
        monitor(6, net, x_val[:400])
