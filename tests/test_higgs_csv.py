"""Higgs-ML CSV import: conversion to ROOT, cache, validation, missing-value schema."""

from __future__ import annotations

import csv
import json
import tempfile
from collections.abc import Callable
from pathlib import Path

import awkward as ak
import numpy as np
import pyarrow.csv as pa_csv
import pytest
import uproot
from hypothesis import event, given, settings
from hypothesis import strategies as st

from hepnn.errors import InputError
from hepnn.io import higgs_csv
from hepnn.io.higgs_csv import ConvertedCSV, convert_csv
from hepnn.io.higgs_layout import FEATURES, KAGGLE_SET_CODES, LAYOUTS, MISSING_VALUE
from hepnn.io.missing import mask_missing, with_missing

FLOAT_COLUMNS = [
    c for c in LAYOUTS["cern-v2"] if c not in {"EventId", "PRI_jet_num", "Label", "KaggleSet"}
]


# --------------------------------------------------------------------------------------------
# helpers


def _write(
    path: Path, lines: list[str], *, eol: str = "\n", bom: bool = False, final_eol: bool = True
) -> Path:
    text = eol.join(lines) + (eol if final_eol else "")
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))
    return path


def _sub(row: str, index: int, value: str) -> str:
    fields = row.split(",")
    fields[index] = value
    return ",".join(fields)


def _tree(conv: ConvertedCSV) -> dict[str, np.ndarray]:
    with uproot.open(conv.root_path) as f:
        tree = f[conv.treename]
        assert tree.num_entries == conv.n_events
        return tree.arrays(library="np")


def _cache_files(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir()) if cache.exists() else []


def _same_arrays(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert list(a) == list(b)
    for name, values in a.items():
        assert values.dtype == b[name].dtype, name
        # Bitwise: -0.0 and 0.0 must not compare equal here.
        assert values.tobytes() == b[name].tobytes(), name


def _to_kaggle_training(line: str, header: list[str]) -> str:
    """CERN v2 row → Kaggle training.csv row (drop KaggleSet, Weight = KaggleWeight)."""
    f = dict(zip(header, line.split(","), strict=True))
    return ",".join([f["EventId"], *(f[c] for c in FEATURES), f["KaggleWeight"], f["Label"]])


# --------------------------------------------------------------------------------------------
# the real sample


def test_real_sample_converts(higgs_converted: ConvertedCSV, higgs_csv_path: Path) -> None:
    conv = higgs_converted
    assert conv.n_events == 18_000
    assert conv.layout == "cern-v2"
    assert conv.treename == "Events"
    assert conv.columns == LAYOUTS["cern-v2"]
    assert conv.root_path.name == conv.csv_sha256[:16] + ".root"
    arrays = _tree(conv)
    assert list(arrays) == list(conv.columns)
    assert arrays["EventId"].dtype == np.int64
    assert arrays["PRI_jet_num"].dtype == np.int32
    assert arrays["Label"].dtype == np.int8
    assert arrays["KaggleSet"].dtype == np.int8
    assert all(arrays[c].dtype == np.float64 for c in FLOAT_COLUMNS)
    np.testing.assert_array_equal(arrays["EventId"], np.arange(100_000, 118_000))
    assert set(np.unique(arrays["Label"])) == {0, 1}
    assert set(np.unique(arrays["KaggleSet"])) == {KAGGLE_SET_CODES["t"]}  # PROVENANCE: all 't'
    assert set(np.unique(arrays["PRI_jet_num"])) == {0, 1, 2, 3}
    # PROVENANCE.md: DER_mass_MMC undefined in ~15 % of the events.
    assert 0.13 < np.mean(arrays["DER_mass_MMC"] == MISSING_VALUE) < 0.17
    sidecar = json.loads(conv.root_path.with_suffix(".json").read_text())
    assert sidecar["n_events"] == 18_000
    assert sidecar["csv_sha256"] == conv.csv_sha256
    assert sidecar["converter_version"] == higgs_csv.CONVERTER_VERSION


def test_real_sample_values_bitwise(higgs_converted: ConvertedCSV, higgs_csv_path: Path) -> None:
    # Independent reference: the csv module and Python's float(), not pyarrow.
    with higgs_csv_path.open(newline="", encoding="utf-8") as f:
        header, *rows = list(csv.reader(f))
    cols = {name: [r[i] for r in rows] for i, name in enumerate(header)}
    arrays = _tree(higgs_converted)
    assert len(rows) == higgs_converted.n_events
    for name in FLOAT_COLUMNS:
        expected = np.array([float(x) for x in cols[name]])
        assert arrays[name].view(np.uint64).tolist() == expected.view(np.uint64).tolist(), name
    assert arrays["EventId"].tolist() == [int(x) for x in cols["EventId"]]
    assert arrays["PRI_jet_num"].tolist() == [int(x) for x in cols["PRI_jet_num"]]
    assert int((arrays["Label"] == 1).sum()) == cols["Label"].count("s")
    assert int((arrays["Label"] == 0).sum()) == cols["Label"].count("b")
    assert arrays["Label"].tolist() == [1 if x == "s" else 0 for x in cols["Label"]]
    # -999.0 is kept as written, column by column.
    for name in FEATURES:
        assert int((arrays[name] == MISSING_VALUE).sum()) == cols[name].count("-999.0"), name
    # The file has "-0.0" entries: the sign of zero survives.
    n_negzero = cols["PRI_jet_all_pt"].count("-0.0")
    assert n_negzero > 0
    assert int(np.signbit(arrays["PRI_jet_all_pt"]).sum()) == n_negzero + sum(
        float(x) < 0 for x in cols["PRI_jet_all_pt"]
    )


def test_chunked_conversion_identical(
    higgs_csv_path: Path, higgs_converted: ConvertedCSV, tmp_path: Path
) -> None:
    one = convert_csv(higgs_csv_path, tmp_path / "one", chunk_bytes=64 << 20)
    tiny = convert_csv(higgs_csv_path, tmp_path / "tiny", chunk_bytes=1)  # raised to 16 KiB
    assert one.n_events == tiny.n_events == higgs_converted.n_events
    with uproot.open(one.root_path) as f1, uproot.open(tiny.root_path) as f2:
        assert f1["Events/DER_mass_MMC"].num_baskets == 1
        assert f2["Events/DER_mass_MMC"].num_baskets > 200  # really converted in chunks
    _same_arrays(_tree(one), _tree(tiny))
    _same_arrays(_tree(one), _tree(higgs_converted))


def test_progress_reports_bytes(higgs_csv_lines: list[str], tmp_path: Path) -> None:
    csv_path = _write(tmp_path / "p.csv", higgs_csv_lines[:3001])
    calls: list[tuple[int, int]] = []
    convert_csv(
        csv_path,
        tmp_path / "cache",
        chunk_bytes=64 << 10,
        progress=lambda d, t: calls.append((d, t)),
    )
    size = csv_path.stat().st_size
    assert len(calls) > 5
    assert all(t == size for _, t in calls)
    done = [d for d, _ in calls]
    assert done == sorted(done)
    assert calls[-1] == (size, size)


def test_runner_sees_all_events(higgs_converted: ConvertedCSV, higgs_csv_path: Path) -> None:
    from coffea import processor
    from coffea.nanoevents import BaseSchema

    class CountProcessor(processor.ProcessorABC):
        def process(self, events):
            ev = with_missing(events)
            return {
                "n": len(events),
                "n_signal": int(ak.sum(events.Label == 1)),
                "n_mmc_missing": int(ak.sum(ak.is_none(ev.DER_mass_MMC))),
                "n_minus999_seen": sum(int(ak.sum(ev[f] == MISSING_VALUE)) for f in FEATURES),
                "eventid_sum": int(ak.sum(events.EventId)),
            }

        def postprocess(self, accumulator):
            return accumulator

    runner = processor.Runner(
        executor=processor.IterativeExecutor(), schema=BaseSchema, chunksize=5_000
    )
    fileset = {"higgs": {"files": {str(higgs_converted.root_path): higgs_converted.treename}}}
    out = runner(fileset, CountProcessor())

    with higgs_csv_path.open(newline="", encoding="utf-8") as f:
        header, *rows = list(csv.reader(f))
    assert out["n"] == higgs_converted.n_events == len(rows)
    assert out["n_signal"] == sum(r[header.index("Label")] == "s" for r in rows)
    assert out["n_mmc_missing"] == sum(r[1] == "-999.0" for r in rows)
    assert out["n_minus999_seen"] == 0
    assert out["eventid_sum"] == sum(int(r[0]) for r in rows)


# --------------------------------------------------------------------------------------------
# cache


def test_cache_hit_does_not_reparse(
    higgs_csv_lines: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    csv_path = _write(tmp_path / "small.csv", higgs_csv_lines[:201])
    cache = tmp_path / "cache"
    first = convert_csv(csv_path, cache)
    before = first.root_path.stat()
    assert _cache_files(cache) == sorted([first.root_path.name, first.root_path.stem + ".json"])

    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("the CSV was parsed or written again on a cache hit")

    monkeypatch.setattr(pa_csv, "open_csv", fail)
    monkeypatch.setattr(uproot, "recreate", fail)
    second = convert_csv(csv_path, cache)
    assert second == first
    after = second.root_path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    # The cache keys on content, not on the path.
    copy = _write(tmp_path / "copy.csv", higgs_csv_lines[:201])
    assert convert_csv(copy, cache) == first


def test_cache_content_change_gives_new_file(higgs_csv_lines: list[str], tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    csv_path = _write(tmp_path / "small.csv", higgs_csv_lines[:201])
    first = convert_csv(csv_path, cache)
    changed = higgs_csv_lines[:201]
    changed[5] = _sub(changed[5], 3, "123.456")  # DER_mass_vis of data row 5
    _write(csv_path, changed)
    second = convert_csv(csv_path, cache)
    assert second.csv_sha256 != first.csv_sha256
    assert second.root_path != first.root_path
    assert first.root_path.exists()
    assert _tree(second)["DER_mass_vis"][4] == 123.456
    assert _tree(first)["DER_mass_vis"][4] == float(higgs_csv_lines[5].split(",")[3])


@pytest.mark.parametrize("damage", ["version", "sidecar", "truncated_root", "no_root"])
def test_cache_invalidated(
    damage: str, higgs_csv_lines: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    csv_path = _write(tmp_path / "small.csv", higgs_csv_lines[:101])
    first = convert_csv(csv_path, cache)
    sidecar = first.root_path.with_suffix(".json")
    if damage == "version":
        monkeypatch.setattr(higgs_csv, "CONVERTER_VERSION", higgs_csv.CONVERTER_VERSION + 1)
    elif damage == "sidecar":
        sidecar.write_text("{not json")
    elif damage == "truncated_root":
        data = first.root_path.read_bytes()
        first.root_path.write_bytes(data[: len(data) // 2])
    else:
        first.root_path.unlink()
    calls = []
    real_open_csv = pa_csv.open_csv
    monkeypatch.setattr(
        pa_csv, "open_csv", lambda *a, **k: calls.append(1) or real_open_csv(*a, **k)
    )
    second = convert_csv(csv_path, cache)
    assert calls == [1]
    assert second.n_events == 100
    assert json.loads(sidecar.read_text())["converter_version"] == higgs_csv.CONVERTER_VERSION
    _same_arrays(_tree(second), _tree(convert_csv(csv_path, tmp_path / "fresh")))


def test_file_changed_during_conversion(higgs_csv_lines: list[str], tmp_path: Path) -> None:
    csv_path = _write(tmp_path / "grow.csv", higgs_csv_lines[:2001])
    cache = tmp_path / "cache"

    def append_once(done: int, total: int) -> None:
        if done < total and not hasattr(append_once, "done"):
            append_once.done = True  # type: ignore[attr-defined]
            with csv_path.open("a") as f:
                f.write(higgs_csv_lines[2001] + "\n")

    with pytest.raises(InputError, match="changed while") as err:
        convert_csv(csv_path, cache, chunk_bytes=64 << 10, progress=append_once)
    assert str(csv_path) in str(err.value)
    assert _cache_files(cache) == []


# --------------------------------------------------------------------------------------------
# layouts and text encodings


def test_kaggle_training_layout(higgs_csv_lines: list[str], tmp_path: Path) -> None:
    header = higgs_csv_lines[0].split(",")
    lines = [",".join(LAYOUTS["kaggle-training"])]
    lines += [_to_kaggle_training(line, header) for line in higgs_csv_lines[1:301]]
    conv = convert_csv(_write(tmp_path / "training.csv", lines), tmp_path / "cache")
    assert (conv.layout, conv.n_events, conv.columns) == (
        "kaggle-training",
        300,
        LAYOUTS["kaggle-training"],
    )
    arrays = _tree(conv)
    kaggle_weight = [
        float(line.split(",")[header.index("KaggleWeight")]) for line in higgs_csv_lines[1:301]
    ]
    assert arrays["Weight"].tolist() == kaggle_weight
    assert arrays["Label"].tolist() == [int(line.endswith(",s")) for line in lines[1:]]
    assert "KaggleSet" not in arrays


def test_kaggle_test_layout(higgs_csv_lines: list[str], tmp_path: Path) -> None:
    lines = [",".join(LAYOUTS["kaggle-test"])] + [
        ",".join(line.split(",")[:31]) for line in higgs_csv_lines[1:301]
    ]
    conv = convert_csv(_write(tmp_path / "test.csv", lines), tmp_path / "cache")
    assert (conv.layout, conv.n_events, conv.columns) == (
        "kaggle-test",
        300,
        LAYOUTS["kaggle-test"],
    )
    arrays = _tree(conv)
    assert list(arrays) == ["EventId", *FEATURES]
    assert arrays["DER_mass_MMC"].tolist() == [
        float(line.split(",")[1]) for line in higgs_csv_lines[1:301]
    ]


def test_columns_in_any_order(higgs_csv_lines: list[str], tmp_path: Path) -> None:
    canonical = convert_csv(_write(tmp_path / "a.csv", higgs_csv_lines[:101]), tmp_path / "c1")
    swapped = [",".join(reversed(line.split(","))) for line in higgs_csv_lines[:101]]
    conv = convert_csv(_write(tmp_path / "b.csv", swapped), tmp_path / "c2")
    assert conv.columns == LAYOUTS["cern-v2"]
    _same_arrays(_tree(conv), _tree(canonical))


@pytest.mark.parametrize(
    "encoding",  # (line ending, BOM, newline after the last row, trailing bytes)
    [
        ("\r\n", True, True, ""),
        ("\r\n", False, False, ""),
        ("\n", True, False, ""),
        ("\r", False, True, ""),
        ("\n", False, True, "\n\n\r\n"),  # blank lines at the end are ignored
    ],
)
def test_bom_crlf_and_trailing_newlines(
    encoding: tuple[str, bool, bool, str], higgs_csv_lines: list[str], tmp_path: Path
) -> None:
    eol, bom, final_eol, trailer = encoding
    reference = convert_csv(_write(tmp_path / "lf.csv", higgs_csv_lines[:151]), tmp_path / "c1")
    path = _write(tmp_path / "x.csv", higgs_csv_lines[:151], eol=eol, bom=bom, final_eol=final_eol)
    with path.open("ab") as f:
        f.write(trailer.encode())
    conv = convert_csv(path, tmp_path / "c2", chunk_bytes=16 << 10)
    assert conv.n_events == 150
    _same_arrays(_tree(conv), _tree(reference))


def test_single_event(higgs_csv_lines: list[str], tmp_path: Path) -> None:
    conv = convert_csv(
        _write(tmp_path / "one.csv", higgs_csv_lines[:2], final_eol=False), tmp_path / "c"
    )
    assert conv.n_events == 1
    assert _tree(conv)["EventId"].tolist() == [100_000]


def test_alternative_number_spellings(higgs_csv_lines: list[str], tmp_path: Path) -> None:
    row = higgs_csv_lines[1]
    for index, text in [(1, "1.3847e2"), (2, " 51.655 "), (3, "+97.827"), (23, "2.0"), (4, "-999")]:
        row = _sub(row, index, text)
    conv = convert_csv(_write(tmp_path / "s.csv", [higgs_csv_lines[0], row]), tmp_path / "c")
    arrays = _tree(conv)
    assert arrays["DER_mass_MMC"][0] == 138.47
    assert arrays["DER_mass_transverse_met_lep"][0] == 51.655
    assert arrays["DER_mass_vis"][0] == 97.827
    assert arrays["PRI_jet_num"][0] == 2
    assert arrays["DER_pt_h"][0] == MISSING_VALUE


# --------------------------------------------------------------------------------------------
# bad input: one-line InputError naming file, line and column; no cache file left


def _rows_with(rows: list[str], index: int, line: str | None) -> list[str]:
    """Replace data row ``index`` (0-based) with ``line``, or delete it if ``line`` is None."""
    out = list(rows)
    if line is None:
        del out[index]
    else:
        out[index] = line
    return out


H = LAYOUTS["cern-v2"].index
BAD_ROWS: list[tuple[str, Callable[[list[str]], list[str]], list[str]]] = [
    (
        "too_few_fields",
        lambda r: _rows_with(r, 2, r[2].rsplit(",", 1)[0]),
        ["line 4 (data row 3)", "expected 35", "got 34"],
    ),
    (
        "too_many_fields",
        lambda r: _rows_with(r, 2, r[2] + ",1"),
        ["line 4 (data row 3)", "expected 35", "got 36"],
    ),
    (
        "text_in_feature",
        lambda r: _rows_with(r, 1, _sub(r[1], H("DER_mass_vis"), "abc")),
        ["line 3 (data row 2)", "column 'DER_mass_vis'", "expected a finite number", "got 'abc'"],
    ),
    (
        "empty_field",
        lambda r: _rows_with(r, 1, _sub(r[1], H("DER_pt_h"), "")),
        ["line 3 (data row 2)", "column 'DER_pt_h'", "got ''"],
    ),
    (
        "NA_is_not_missing",
        lambda r: _rows_with(r, 4, _sub(r[4], H("PRI_met"), "NA")),
        ["line 6 (data row 5)", "column 'PRI_met'", "got 'NA'"],
    ),
    (
        "nan_feature",
        lambda r: _rows_with(r, 1, _sub(r[1], H("DER_mass_MMC"), "nan")),
        ["line 3 (data row 2)", "column 'DER_mass_MMC'", "finite", "got 'nan'"],
    ),
    (
        "inf_feature",
        lambda r: _rows_with(r, 3, _sub(r[3], H("PRI_met"), "-inf")),
        ["line 5 (data row 4)", "column 'PRI_met'", "got '-inf'"],
    ),
    (
        "nan_weight",
        lambda r: _rows_with(r, 0, _sub(r[0], H("Weight"), "NaN")),
        ["line 2 (data row 1)", "column 'Weight'", "got 'NaN'"],
    ),
    (
        "bad_label",
        lambda r: _rows_with(r, 1, _sub(r[1], H("Label"), "x")),
        ["line 3 (data row 2)", "column 'Label'", "'s' or 'b'", "got 'x'"],
    ),
    (
        "label_upper_case",
        lambda r: _rows_with(r, 1, _sub(r[1], H("Label"), "S")),
        ["line 3 (data row 2)", "column 'Label'", "got 'S'"],
    ),
    (
        "bad_kaggleset",
        lambda r: _rows_with(r, 1, _sub(r[1], H("KaggleSet"), "z")),
        ["line 3 (data row 2)", "column 'KaggleSet'", "got 'z'"],
    ),
    (
        "fractional_jet_num",
        lambda r: _rows_with(r, 1, _sub(r[1], H("PRI_jet_num"), "1.5")),
        ["line 3 (data row 2)", "column 'PRI_jet_num'", "integer", "got '1.5'"],
    ),
    (
        "negative_jet_num",
        lambda r: _rows_with(r, 1, _sub(r[1], H("PRI_jet_num"), "-999.0")),
        ["line 3 (data row 2)", "column 'PRI_jet_num'", "got '-999.0'"],
    ),
    (
        "float_eventid",
        lambda r: _rows_with(r, 1, _sub(r[1], 0, "100001.5")),
        ["line 3 (data row 2)", "column 'EventId'", "got '100001.5'"],
    ),
    ("blank_line_inside", lambda r: [*r[:3], "", *r[3:]], ["line 5 (data row 4)", "blank line"]),
    (
        "spaces_line_inside",
        lambda r: [*r[:3], "   ", *r[3:]],
        ["line 5 (data row 4)", "blank line"],
    ),
    ("spaces_line_at_end", lambda r: [*r, "  "], ["line 12 (data row 11)", "blank line"]),
    (
        "unbalanced_quote",
        lambda r: _rows_with(r, 1, _sub(r[1], H("Label"), '"s')),
        ["line 3 (data row 2)"],
    ),
    (
        "deep_in_file",
        lambda r: _rows_with(r, 1499, _sub(r[1499], H("PRI_tau_eta"), "1.2.3")),
        ["line 1501 (data row 1500)", "column 'PRI_tau_eta'", "got '1.2.3'"],
    ),
    (
        "deep_field_count",
        lambda r: _rows_with(r, 1776, r[1776].rsplit(",", 3)[0]),
        ["line 1778 (data row 1777)", "got 32"],
    ),
]


@pytest.mark.parametrize(
    ("mutate", "expected"), [c[1:] for c in BAD_ROWS], ids=[c[0] for c in BAD_ROWS]
)
def test_bad_rows(
    mutate: Callable[[list[str]], list[str]],
    expected: list[str],
    higgs_csv_lines: list[str],
    tmp_path: Path,
) -> None:
    header, rows = higgs_csv_lines[0], higgs_csv_lines[1:2001]
    n = 2000 if any("deep" in e or "1501" in e or "1778" in e for e in expected) else 10
    csv_path = _write(tmp_path / "bad.csv", [header, *mutate(rows[:n])])
    cache = tmp_path / "cache"
    # Small chunks: errors deep in the file are found across chunk boundaries.
    with pytest.raises(InputError) as err:
        convert_csv(csv_path, cache, chunk_bytes=16 << 10)
    message = str(err.value)
    assert message.startswith(f"{csv_path}: ")
    assert "\n" not in message
    for part in expected:
        assert part in message
    assert _cache_files(cache) == []


HEADER = ",".join(LAYOUTS["cern-v2"])
BAD_FILES: list[tuple[str, Callable[[list[str]], bytes], list[str]]] = [
    ("empty_file", lambda lines: b"", ["empty file (0 bytes)"]),
    ("newlines_only", lambda lines: b"\n\r\n\n", ["line 1 is blank"]),
    ("bom_only", lambda lines: b"\xef\xbb\xbf", ["line 1 is blank"]),
    ("header_only", lambda lines: (lines[0] + "\n").encode(), ["header only", "0 events"]),
    ("header_only_no_eol", lambda lines: lines[0].encode(), ["header only", "0 events"]),
    (
        "header_then_blank",
        lambda lines: (lines[0] + "\n\n\n").encode(),
        ["header only", "0 events"],
    ),
    (
        "renamed_column",
        lambda lines: "\n".join([lines[0].replace("DER_pt_h", "DER_pth"), lines[1]]).encode(),
        [
            "line 1 (header)",
            "closest is 'cern-v2'",
            "missing columns ['DER_pt_h']",
            "unexpected columns ['DER_pth']",
        ],
    ),
    (
        "missing_column",
        lambda lines: "\n".join(line.rsplit(",", 1)[0] for line in lines[:3]).encode(),
        ["line 1 (header)", "missing columns ['KaggleWeight']", "unexpected columns []"],
    ),
    (
        "extra_column",
        lambda lines: "\n".join([lines[0] + ",Extra", lines[1] + ",1"]).encode(),
        ["line 1 (header)", "unexpected columns ['Extra']"],
    ),
    (
        "duplicate_column",
        lambda lines: "\n".join([lines[0].replace("DER_pt_h", "DER_mass_vis"), lines[1]]).encode(),
        ["line 1 (header)", "duplicate", "'DER_mass_vis'"],
    ),
    ("no_header", lambda lines: "\n".join(lines[1:4]).encode(), ["line 1 looks like data"]),
    ("latin1_header", lambda lines: b"\xe9" + lines[0].encode(), ["line 1 (header) is not UTF-8"]),
]


@pytest.mark.parametrize(
    ("content", "expected"), [c[1:] for c in BAD_FILES], ids=[c[0] for c in BAD_FILES]
)
def test_bad_files(
    content: Callable[[list[str]], bytes],
    expected: list[str],
    higgs_csv_lines: list[str],
    tmp_path: Path,
) -> None:
    csv_path = tmp_path / "bad.csv"
    csv_path.write_bytes(content(higgs_csv_lines))
    cache = tmp_path / "cache"
    with pytest.raises(InputError) as err:
        convert_csv(csv_path, cache)
    message = str(err.value)
    assert message.startswith(f"{csv_path}: ")
    assert "\n" not in message
    for part in expected:
        assert part in message
    assert _cache_files(cache) == []


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"nope\.csv: cannot read CSV file"):
        convert_csv(tmp_path / "nope.csv", tmp_path / "cache")
    with pytest.raises(InputError, match="not a regular file"):
        convert_csv(tmp_path, tmp_path / "cache")


# --------------------------------------------------------------------------------------------
# fuzz: a clean InputError or the exact count, never anything else

# Valid kinds repeated so that about half the files are entirely valid.
ROW_KINDS = ["valid"] * 6 + ["valid_float"] * 6 + ["short", "long", "junk", "nan", "label", "blank"]
JUNK = st.text(alphabet="xyz!;#\"' ,", min_size=0, max_size=4)


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_fuzz_rows(data: st.DataObject, higgs_csv_lines: list[str]) -> None:
    kinds = data.draw(st.lists(st.sampled_from(ROW_KINDS), max_size=10), label="kinds")
    layout = data.draw(st.sampled_from(list(LAYOUTS)), label="layout")
    eol = data.draw(st.sampled_from(["\n", "\r\n"]), label="eol")
    bom, final_eol = (
        data.draw(st.booleans(), label="bom"),
        data.draw(st.booleans(), label="eol at end"),
    )
    header = higgs_csv_lines[0].split(",")
    columns = LAYOUTS[layout]
    feature_cols = [i for i, c in enumerate(columns) if c in FEATURES and c != "PRI_jet_num"]
    lines, bad_lines, written = [",".join(columns)], set(), {}
    for k, kind in enumerate(kinds):
        f = dict(zip(header, higgs_csv_lines[1 + k].split(","), strict=True))
        if layout == "kaggle-training":
            f["Weight"] = f["KaggleWeight"]
        fields = [f[c] for c in columns]
        if kind == "valid_float":
            col = data.draw(st.sampled_from(feature_cols))
            value = data.draw(st.floats(allow_nan=False, allow_infinity=False))
            fields[col] = repr(value)
            written[k] = (columns[col], value)
        elif kind == "short":
            fields = fields[: data.draw(st.integers(0, len(fields) - 1))]
        elif kind == "long":
            fields += ["1"] * data.draw(st.integers(1, 3))
        elif kind == "junk":
            fields[data.draw(st.integers(0, len(fields) - 1))] = data.draw(JUNK)
        elif kind == "nan":
            fields[data.draw(st.sampled_from(feature_cols))] = data.draw(
                st.sampled_from(["nan", "inf", "-Infinity"])
            )
        elif kind == "label":
            if "Label" not in columns:
                fields += ["s"]
            else:
                fields[columns.index("Label")] = data.draw(
                    st.sampled_from(["", "sb", "1", "B", "signal"])
                )
        lines.append("" if kind == "blank" else ",".join(fields))
        if kind not in {"valid", "valid_float"}:
            bad_lines.add(len(lines))  # 1-based line number (header = line 1)
    # Blank lines after the last row are ignored, not errors (a "short" row with no field
    # at all is a blank line too).
    n_rows = max((i for i, line in enumerate(lines) if line), default=0)
    bad_lines = {n for n in bad_lines if n <= n_rows + 1}

    with tempfile.TemporaryDirectory() as tmp:
        csv_path = _write(Path(tmp) / "fuzz.csv", lines, eol=eol, bom=bom, final_eol=final_eol)
        cache = Path(tmp) / "cache"
        try:
            conv = convert_csv(csv_path, cache, chunk_bytes=1)
        except InputError as err:
            event("rejected")
            message = str(err)
            assert message.startswith(f"{csv_path}: ")
            assert "\n" not in message
            assert _cache_files(cache) == []
            if n_rows == 0:
                assert "header only" in message
            else:
                assert bad_lines, f"valid file rejected: {message}"
                assert any(f"line {n} " in message for n in bad_lines), (message, bad_lines)
            return
        event("accepted")
        assert not bad_lines, f"invalid lines {sorted(bad_lines)} accepted"
        assert conv.n_events == n_rows
        arrays = _tree(conv)
        for k, (column, value) in written.items():
            assert arrays[column][k].tobytes() == np.float64(value).tobytes()


# --------------------------------------------------------------------------------------------
# missing-value schema


def test_mask_missing_numpy_and_awkward() -> None:
    masked = mask_missing(np.array([1.5, MISSING_VALUE, -0.0, 3.0]))
    assert masked.to_list() == [1.5, None, -0.0, 3.0]
    assert isinstance(masked.type.content, ak.types.OptionType)
    jagged = mask_missing(ak.Array([[1.0, MISSING_VALUE], [], [MISSING_VALUE]]))
    assert jagged.to_list() == [[1.0, None], [], [None]]


def test_with_missing_on_numpy_dict(higgs_converted: ConvertedCSV) -> None:
    with uproot.open(higgs_converted.root_path) as f:
        raw = f["Events"].arrays(library="np")
    ev = with_missing(raw)
    assert ev.fields == list(raw)
    assert len(ev) == higgs_converted.n_events
    n_masked = 0
    for name in FEATURES:
        undefined = raw[name] == MISSING_VALUE
        assert ak.is_none(ev[name]).to_numpy().tolist() == undefined.tolist(), name
        assert ak.to_numpy(ak.drop_none(ev[name])).tolist() == raw[name][~undefined].tolist()
        n_masked += int(undefined.sum())
    assert n_masked > 0
    # Non-features pass through untouched (not option-typed).
    assert str(ak.type(ev.Label).content) == "int8"
    assert ev.Label.to_numpy().tolist() == raw["Label"].tolist()


def test_with_missing_selected_fields() -> None:
    raw = {
        "DER_mass_MMC": np.array([MISSING_VALUE, 1.0]),
        "PRI_met": np.array([MISSING_VALUE, 2.0]),
    }
    ev = with_missing(raw, fields=["DER_mass_MMC"])
    assert ev.DER_mass_MMC.to_list() == [None, 1.0]
    assert ev.PRI_met.to_list() == [MISSING_VALUE, 2.0]
    with pytest.raises(InputError, match="no field"):
        with_missing(raw, fields=["DER_pt_h"])
    with pytest.raises(TypeError):
        with_missing(ak.Array([1.0, 2.0]))


def test_with_missing_is_lazy_and_bitwise_equal(higgs_converted: ConvertedCSV) -> None:
    """Only the fields read are read and masked (coffea access log), each once, same bits."""
    from coffea.nanoevents import BaseSchema, NanoEventsFactory

    log: list = []
    with uproot.open(higgs_converted.root_path) as f:
        events = NanoEventsFactory.from_root(
            file=f,
            treepath=higgs_converted.treename,
            schemaclass=BaseSchema,
            metadata={"dataset": "higgs"},
            access_log=log,
            mode="virtual",
            entry_stop=3_000,
        ).events()
        ev = with_missing(events)
        assert ev.fields == list(events.fields)
        assert len(ev) == 3_000
        assert not log  # nothing read yet
        mmc = ev.DER_mass_MMC
        assert ev["DER_mass_MMC"] is mmc  # cached per field
        assert ev.Label.to_list() == events.Label.to_list()
        assert {a.branch for a in log} == {"DER_mass_MMC", "Label"}
        eager = ak.zip({n: mask_missing(events[n]) for n in FEATURES}, depth_limit=1)
        for name in FEATURES:
            lazy, ref = ev[name], eager[name]
            assert str(lazy.type) == str(ref.type), name
            assert ak.is_none(lazy).to_numpy().tobytes() == ak.is_none(ref).to_numpy().tobytes()
            a = ak.to_numpy(ak.fill_none(lazy, 0.0))
            b = ak.to_numpy(ak.fill_none(ref, 0.0))
            assert a.tobytes() == b.tobytes(), name
    with pytest.raises(AttributeError):
        _ = ev.not_a_field
    with pytest.raises(KeyError):
        _ = ev["not_a_field"]
    assert ev.to_record().fields == ev.fields


def test_mask_missing_flat_is_ak_mask_bitwise() -> None:
    """The numpy path for flat columns builds exactly what ``ak.mask`` builds."""
    rng = np.random.default_rng(5)
    for dtype in (np.float64, np.float32):
        values = np.where(rng.random(1_000) < 0.3, MISSING_VALUE, rng.random(1_000)).astype(dtype)
        arr = ak.Array(values)
        fast, ref = mask_missing(arr), ak.mask(arr, arr != MISSING_VALUE)
        assert fast.layout.form == ref.layout.form
        assert np.asarray(fast.layout.mask).tobytes() == np.asarray(ref.layout.mask).tobytes()
        assert fast.layout.content.data.tobytes() == ref.layout.content.data.tobytes()
