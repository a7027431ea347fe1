"""Per-event columns spilled to part files: the same values as kept in memory, nothing left behind."""

from __future__ import annotations

import json
from itertools import pairwise
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from hepnn.columns import PARTS_DIR, ColumnParts, Columns, ColumnSpill
from hepnn.config import load_config
from hepnn.pipeline import run_config

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def real_columns(higgs: dict[str, np.ndarray]) -> Columns:
    """The columns the Higgs workflow returns, from the 18k real events."""
    return Columns(
        {
            "EventId": higgs["EventId"].astype(np.int64),
            "Label": (higgs["Label"] == "s").astype(np.int8),
            "Weight": higgs["Weight"].astype(np.float64),
            "score": np.linspace(0, 1, len(higgs["EventId"]), dtype=np.float32),
        }
    )


def _pieces(cols: Columns, bounds: list[int]) -> list[Columns]:
    return [Columns({k: v[a:b] for k, v in cols.data.items()}) for a, b in pairwise(bounds)]


def test_spilled_parts_give_the_in_memory_columns(real_columns: Columns, tmp_path: Path) -> None:
    """Uneven pieces spilled, added in a tree order and written: every value and dtype kept."""
    bounds = [0, 1, 2500, 2500, 9000, 12001, 18000]  # an empty piece and a one-event piece
    pieces = _pieces(real_columns, bounds)
    spill = ColumnSpill(tmp_path / "parts")
    spilled = [
        spill.spill({"columns": {"higgs": p}, "other": 1})["columns"]["higgs"] for p in pieces
    ]
    assert all(isinstance(s, ColumnParts) for s in spilled)
    left = (spilled[0] + spilled[1]) + spilled[2]
    merged = left + (spilled[3] + (spilled[4] + spilled[5]))
    assert len(merged) == len(real_columns) == 18000
    assert merged.paths == [s.paths[0] for s in spilled]

    out = tmp_path / "out" / "higgs.parquet"
    merged.write_parquet(out)
    assert pq.ParquetFile(out).num_row_groups == len(pieces)
    table = pq.read_table(out)
    assert table.column_names == list(real_columns.data)
    for name, values in real_columns.data.items():
        back = table.column(name).to_numpy()
        assert back.dtype == values.dtype, name
        assert np.array_equal(back, values), name
    read = merged.read()
    for name, values in real_columns.data.items():
        assert np.array_equal(read.data[name], values), name

    spill.clear()
    assert not (tmp_path / "parts").exists()


def test_parts_of_different_dtypes_promote_like_numpy(tmp_path: Path) -> None:
    a = Columns({"x": np.array([1, 2], dtype=np.int8), "y": np.array([0.5, 1.5], dtype=np.float32)})
    b = Columns({"x": np.array([300], dtype=np.int64), "y": np.array([2.25], dtype=np.float64)})
    spill = ColumnSpill(tmp_path / "parts")
    parts = (
        spill.spill({"columns": {"d": a}})["columns"]["d"]
        + spill.spill({"columns": {"d": b}})["columns"]["d"]
    )
    expected = a + b
    got = parts.read()
    for name in ("x", "y"):
        assert got.data[name].dtype == expected.data[name].dtype
        assert np.array_equal(got.data[name], expected.data[name])


def test_spill_leaves_its_input_alone(real_columns: Columns, tmp_path: Path) -> None:
    """The chunk's own output is checkpointed as it came: spilling must not change it."""
    spill = ColumnSpill(tmp_path / "parts")
    output = {"columns": {"higgs": real_columns}, "h": 3}
    spilled = spill.spill(output)
    assert output["columns"]["higgs"] is real_columns
    assert spilled["h"] == 3
    assert spill.spill({"h": 3}) == {"h": 3}  # nothing to spill: as it came
    assert spill.spill([1, 2]) == [1, 2]


def test_columns_of_different_names_do_not_merge(tmp_path: Path) -> None:
    spill = ColumnSpill(tmp_path / "parts")
    a = spill.spill({"columns": {"d": Columns({"x": np.arange(2)})}})["columns"]["d"]
    b = spill.spill({"columns": {"d": Columns({"y": np.arange(2)})}})["columns"]["d"]
    with pytest.raises(ValueError, match="cannot concatenate columns"):
        _ = a + b


def test_a_run_spills_and_cleans_up(tmp_path: Path, higgs: dict[str, np.ndarray]) -> None:
    """A run in several chunks: every event's columns in the parquet, in file order, no parts left."""
    cfg = load_config(
        REPO / "configs" / "higgs.yaml",
        [
            "networks={}", "uncertainty={}", "taylor=null", "outputs.plots=false",
            "executor.chunksize=4000", "executor.block_size=2000",
        ],
    )  # fmt: skip
    run = run_config(cfg, tmp_path / "out", progress=False)
    assert run.result.n_chunks == 5
    assert not (tmp_path / "out" / PARTS_DIR).exists()
    table = pq.read_table(tmp_path / "out" / "columns" / "higgs_challenge.parquet")
    assert np.array_equal(table.column("EventId").to_numpy(), higgs["EventId"])
    assert np.array_equal(table.column("Weight").to_numpy(), higgs["Weight"].astype(np.float64))
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert not any(PARTS_DIR in path for path in manifest["outputs"])
    # later stages read the written file
    assert run.columns["higgs_challenge"].paths == [
        tmp_path / "out" / "columns" / "higgs_challenge.parquet"
    ]
    assert np.array_equal(run.columns["higgs_challenge"].read().data["EventId"], higgs["EventId"])
