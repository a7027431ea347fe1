"""Bad input end to end through ``hepnn run``: one-line errors, non-zero status, no manifest.

The CSV reader is unit-tested (and fuzzed) in ``test_higgs_csv.py``; here every case
goes through the command line with a samples YAML in ``tmp_path`` (``--samples``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import awkward as ak
import numpy as np
import pytest
import uproot
import yaml
from cli_helpers import hepnn_run
from click.testing import Result

from hepnn.io.higgs_layout import FEATURES, LAYOUTS

REPO = Path(__file__).resolve().parents[1]
NANO_DY = REPO / "samples" / "nanoaod" / "nano_dy.root"
OUTPUTS = {"plots": False, "hists_root": False}


def write_yaml(path: Path, data: object) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture
def configs(tmp_path: Path) -> dict[str, Path]:
    """Configs of the shipped higgs and fatjets workflows, without networks or plots."""
    return {
        name: write_yaml(
            tmp_path / f"{name}.yaml",
            {
                "name": name,
                "workflow": str(REPO / "workflows" / f"{name}.py"),
                "samples": str(
                    REPO / "samples" / ("higgs.yaml" if name == "higgs" else "nanoaod.yaml")
                ),
                "outputs": OUTPUTS,
            },
        )
        for name in ("higgs", "fatjets")
    }


def run_samples(config: Path, tmp_path: Path, fmt: str, files: list[Path], **extra: str) -> Result:
    samples = write_yaml(
        tmp_path / "samples.yaml",
        {"datasets": {"d": {"format": fmt, "files": [str(f) for f in files], **extra}}},
    )
    return hepnn_run(config, tmp_path / "out", "--samples", str(samples))


def assert_error(res: Result, out: Path, *parts: str, status: int = 2) -> str:
    """Exit ``status``, exactly one ``error:`` line containing ``parts``, no traceback, no manifest."""
    assert res.exit_code == status, res.output
    lines = [ln for ln in res.output.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1, res.output
    assert "Traceback" not in res.output
    for part in parts:
        assert part in lines[0], (part, lines[0])
    assert not (out / "manifest.json").exists()
    return lines[0]


def processed(out: Path) -> dict[str, object]:
    return json.loads((out / "manifest.json").read_text())["datasets"]["d"]


# --------------------------------------------------------------------------- Higgs CSV


def _sub(row: str, column: str, value: str) -> str:
    fields = row.split(",")
    fields[LAYOUTS["cern-v2"].index(column)] = value
    return ",".join(fields)


BAD_CSV: list[tuple[str, Callable[[list[str]], list[str]], list[str]]] = [
    (
        "wrong_field_count",
        lambda r: [*r[:3], r[3].rsplit(",", 1)[0], *r[4:]],
        ["line 4 (data row 3)", "expected 35", "got 34"],
    ),
    (
        "text_in_number",
        lambda r: [*r[:2], _sub(r[2], "DER_mass_vis", "abc"), *r[3:]],
        ["line 3 (data row 2)", "column 'DER_mass_vis'", "got 'abc'"],
    ),
    (
        "nan",
        lambda r: [*r[:1], _sub(r[1], "DER_mass_MMC", "nan"), *r[2:]],
        ["line 2 (data row 1)", "column 'DER_mass_MMC'", "got 'nan'"],
    ),
    (
        "inf",
        lambda r: [*r[:5], _sub(r[5], "PRI_met", "inf"), *r[6:]],
        ["line 6 (data row 5)", "column 'PRI_met'", "got 'inf'"],
    ),
    ("empty_line", lambda r: [*r[:4], "", *r[4:]], ["line 5 (data row 4)", "blank line"]),
    (
        "unknown_column",
        lambda r: [r[0] + ",Extra", *(row + ",1" for row in r[1:])],
        ["line 1 (header)", "unexpected columns ['Extra']"],
    ),
]


@pytest.mark.parametrize(
    ("mutate", "expected"), [c[1:] for c in BAD_CSV], ids=[c[0] for c in BAD_CSV]
)
def test_malformed_csv(
    mutate: Callable[[list[str]], list[str]],
    expected: list[str],
    configs: dict[str, Path],
    higgs_csv_lines: list[str],
    tmp_path: Path,
) -> None:
    csv_path = tmp_path / "bad.csv"
    csv_path.write_text("\n".join(mutate(higgs_csv_lines[:21])) + "\n")
    res = run_samples(configs["higgs"], tmp_path, "higgs-csv", [csv_path])
    assert_error(res, tmp_path / "out", f"error: {csv_path}: ", *expected)


def test_zero_byte_csv(configs: dict[str, Path], tmp_path: Path) -> None:
    csv_path = tmp_path / "empty.csv"
    csv_path.write_bytes(b"")
    res = run_samples(configs["higgs"], tmp_path, "higgs-csv", [csv_path])
    assert_error(res, tmp_path / "out", f"{csv_path}: ", "empty file (0 bytes)")


def test_csv_of_one_event(
    configs: dict[str, Path], higgs_csv_lines: list[str], tmp_path: Path
) -> None:
    csv_path = tmp_path / "one.csv"
    csv_path.write_text("\n".join(higgs_csv_lines[:2]) + "\n")
    res = run_samples(configs["higgs"], tmp_path, "higgs-csv", [csv_path])
    assert res.exit_code == 0, res.output
    assert processed(tmp_path / "out")["entries_processed"] == 1


def test_kaggle_training_layout(
    configs: dict[str, Path], higgs_csv_lines: list[str], tmp_path: Path
) -> None:
    header = higgs_csv_lines[0].split(",")
    rows = []
    for line in higgs_csv_lines[1:51]:
        f = dict(zip(header, line.split(","), strict=True))
        rows.append(
            ",".join([f["EventId"], *(f[c] for c in FEATURES), f["KaggleWeight"], f["Label"]])
        )
    csv_path = tmp_path / "training.csv"
    csv_path.write_text(
        "\n".join([",".join(["EventId", *FEATURES, "Weight", "Label"]), *rows]) + "\n"
    )
    res = run_samples(configs["higgs"], tmp_path, "higgs-csv", [csv_path])
    assert res.exit_code == 0, res.output
    assert processed(tmp_path / "out")["entries_processed"] == 50


# --------------------------------------------------------------------------- ROOT


def test_truncated_root(configs: dict[str, Path], tmp_path: Path) -> None:
    path = tmp_path / "truncated.root"
    data = NANO_DY.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    res = run_samples(configs["fatjets"], tmp_path, "root", [path])
    assert_error(res, tmp_path / "out", f"{path}: cannot read ROOT file (OSError:")


def test_corrupted_root(configs: dict[str, Path], tmp_path: Path) -> None:
    """Bytes overwritten inside the Jet_pt baskets: fails at read time, naming chunk and branch."""
    data = bytearray(NANO_DY.read_bytes())
    with uproot.open(NANO_DY) as f:
        branch = f["Events"]["Jet_pt"]
        for seek in branch.member("fBasketSeek")[: branch.num_baskets]:
            data[int(seek) + 80 : int(seek) + 200] = b"\x55" * 120
    path = tmp_path / "corrupted.root"
    path.write_bytes(bytes(data))
    res = run_samples(configs["fatjets"], tmp_path, "root", [path])
    line = assert_error(res, tmp_path / "out", f"error: {path}: entries [0, 40): ", status=3)
    assert "DeserializationError" in line
    assert "(branch Jet_pt)" in line


def test_missing_tree(configs: dict[str, Path], tmp_path: Path) -> None:
    res = run_samples(configs["fatjets"], tmp_path, "root", [NANO_DY], treename="Nope")
    assert_error(res, tmp_path / "out", f"{NANO_DY}: no tree 'Nope' (found: ", "Events")


def _nano_like(path: Path, n: int) -> Path:
    """A NanoAOD-like tree written with uproot: FatJet without msoftdrop."""
    rng = np.random.default_rng(5)

    def collection(counts: np.ndarray) -> ak.Array:
        total = int(counts.sum())
        return ak.zip(
            {
                f: ak.unflatten(rng.uniform(1, 500, total).astype(np.float32), counts)
                for f in ("pt", "eta", "phi", "mass")
            }
        )

    fat, jet = collection(rng.integers(0, 3, n)), collection(rng.integers(0, 5, n))
    flat = {
        "run": np.ones(n, np.uint32),
        "luminosityBlock": np.ones(n, np.uint32),
        "event": np.arange(n, dtype=np.uint64),
        "genWeight": np.ones(n, np.float32),
    }
    with uproot.recreate(path) as f:
        tree = f.mktree(
            "Events",
            {"FatJet": fat.type, "Jet": jet.type, **{k: v.dtype for k, v in flat.items()}},
            counter_name=lambda c: "n" + c,
            field_name=lambda outer, inner: outer + "_" + inner,
        )
        if n:
            tree.extend({"FatJet": fat, "Jet": jet, **flat})
    return path


def test_missing_branch(configs: dict[str, Path], tmp_path: Path) -> None:
    path = _nano_like(tmp_path / "no_msoftdrop.root", 30)
    res = run_samples(configs["fatjets"], tmp_path, "root", [path])
    line = assert_error(res, tmp_path / "out", f"error: {path}: entries [0, 30): ", status=3)
    assert "FieldNotFoundError: no field 'msoftdrop'" in line
    assert "raised by the workflow, not retried" in line


def test_empty_tree(configs: dict[str, Path], tmp_path: Path) -> None:
    path = _nano_like(tmp_path / "empty.root", 0)
    res = run_samples(configs["fatjets"], tmp_path, "root", [path])
    assert res.exit_code == 0, res.output
    acc = processed(tmp_path / "out")
    assert acc["entries_expected"] == acc["entries_processed"] == 0
    assert acc["complete"]


# --------------------------------------------------------------------------- configs


def test_config_unknown_key(configs: dict[str, Path], tmp_path: Path) -> None:
    data = yaml.safe_load(configs["higgs"].read_text())
    data["executor"] = {"workerz": 2}
    path = write_yaml(tmp_path / "typo.yaml", data)
    res = hepnn_run(path, tmp_path / "out")
    assert_error(res, tmp_path / "out", f"{path}: unknown key 'executor.workerz'")


def test_config_wrong_type(configs: dict[str, Path], tmp_path: Path) -> None:
    res = hepnn_run(configs["higgs"], tmp_path / "out", "--set", "executor.chunksize=many")
    assert_error(res, tmp_path / "out", f"{configs['higgs']}: executor.chunksize:", "'many'")


def test_config_missing_paths(configs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert_error(hepnn_run(tmp_path / "nope.yaml", out), out, "nope.yaml: file not found")
    res = hepnn_run(configs["higgs"], out, "--set", "samples=nowhere.yaml")
    assert_error(res, out, "samples: file not found:", "nowhere.yaml")
    res = run_samples(configs["higgs"], tmp_path, "higgs-csv", [tmp_path / "missing.csv"])
    assert_error(res, out, "datasets.d.files: file not found:", "missing.csv")
    res = hepnn_run(configs["higgs"], out, "--set", "workflow=/no/such/workflow.py")
    assert_error(res, out, "workflow file not found: /no/such/workflow.py")


def test_file_listed_twice(configs: dict[str, Path], tmp_path: Path) -> None:
    """It would be counted twice but merged once: refused before processing."""
    res = run_samples(configs["fatjets"], tmp_path, "root", [NANO_DY, NANO_DY])
    assert_error(res, tmp_path / "out", "dataset d: file listed twice:", "nano_dy.root")
