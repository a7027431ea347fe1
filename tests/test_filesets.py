"""coffea filesets given to ``--samples`` as they are, on the shipped NanoAOD files."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import pytest
import uproot
import yaml
from click.testing import CliRunner
from count_jets import assert_same_hists, resolve, run_count
from range_server import serve

import hepnn.samples
from hepnn.cli import main
from hepnn.errors import ConfigError, InputError
from hepnn.samples import load_samples

REPO = Path(__file__).resolve().parents[1]
NANO = REPO / "samples" / "nanoaod"
DY, TT = NANO / "nano_dy.root", NANO / "nano_tt_v15.root"
DIMUON = NANO / "nano_dimuon.root"


def _entries(path: Path) -> int:
    with uproot.open(path) as f:
        return int(f["Events"].num_entries)


def _dump(path: Path, data: dict[str, Any]) -> Path:
    text = json.dumps(data) if path.suffix == ".json" else yaml.safe_dump(data, sort_keys=False)
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_fileset_forms_read_like_hepnn_samples(tmp_path: Path, suffix: str) -> None:
    """``{files: {path: tree}}``, ``{files: [...]}`` and ``[...]``: same datasets, same trees."""
    (tmp_path / "sub").mkdir()
    fileset = {
        "dy": {"files": {str(DY): "Events"}, "metadata": {"is_mc": True, "xsec": 6077.2}},
        "tt": {"files": [str(TT)], "treename": "Events"},
        "both": [str(DY), str(DIMUON)],
    }
    specs = load_samples(_dump(tmp_path / "sub" / f"fileset{suffix}", fileset))
    assert list(specs) == ["dy", "tt", "both"]
    assert specs["dy"].files == [str(DY)]
    assert specs["dy"].metadata == {"is_mc": True, "xsec": 6077.2}
    assert specs["both"].files == [str(DY), str(DIMUON)]
    assert all(s.tree_of(f) == "Events" for s in specs.values() for f in s.files)
    if suffix == ".json":  # opening the files is the same for both (seconds each on NanoAOD)
        both = hepnn.samples.resolve_dataset("both", specs["both"], tmp_path / "cache")
        assert [f.entries for f in both.files] == [_entries(DY), _entries(DIMUON)]
        assert [f.treename for f in both.files] == ["Events", "Events"]


def test_relative_paths_are_relative_to_the_fileset(tmp_path: Path) -> None:
    rel = Path("..") / "samples" / "nanoaod" / "nano_dy.root"
    path = _dump(
        REPO / "tests" / f".fileset-{tmp_path.name}.json", {"dy": {"files": {str(rel): "Events"}}}
    )
    try:
        assert load_samples(path)["dy"].files == [str(DY)]
    finally:
        path.unlink()


def test_wrong_tree_name_in_a_fileset_is_named(tmp_path: Path) -> None:
    specs = load_samples(_dump(tmp_path / "f.json", {"dy": {"files": {str(DY): "Nope"}}}))
    with pytest.raises(InputError, match=r"nano_dy\.root: no tree 'Nope' \(found: .*Events"):
        hepnn.samples.resolve_samples(specs, tmp_path / "cache")


@pytest.mark.parametrize(
    ("fileset", "match"),
    [
        ({}, "no datasets"),
        ({"dy": {"metadata": {}}}, r"dy: expected a coffea fileset entry"),
        ({"dy": {"files": {}}}, r"dy\.files: no files"),
        ({"dy": {"files": "x.root"}}, r"dy\.files: expected a mapping"),
        ({"dy": {"files": [str(DY)], "schema": 1}}, r"dy: unknown key\(s\) schema"),
        ({"dy": {"files": [str(DY)], "format": "parquet"}}, "ROOT filesets only"),
        ({"dy": {"files": ["missing.root"]}}, r"dy\.files: file not found: .*missing\.root"),
        ({"dy": {"files": {str(DY): {"object_path": "Events", "num_entries": -1}}}}, "num_entries"),
        (
            {
                "dy": {
                    "files": {
                        str(DY): {"object_path": "Events", "steps": [[0, 10]], "num_entries": 40}
                    }
                }
            },
            r"steps cover only part of the file \(entries 0\.\.10 of 40\)",
        ),
    ],
)
def test_bad_filesets_fail_with_one_line(tmp_path: Path, fileset: dict, match: str) -> None:
    path = _dump(tmp_path / "f.json", fileset)
    with pytest.raises(ConfigError, match=match) as err:
        load_samples(path)
    assert "\n" not in str(err.value)
    assert str(err.value).startswith(str(path))


def test_invalid_json_is_named(tmp_path: Path) -> None:
    path = tmp_path / "f.json"
    path.write_text('{"dy": {"files": [}', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"f\.json: invalid JSON"):
        load_samples(path)


def test_dataset_named_datasets_is_a_fileset(tmp_path: Path) -> None:
    """hepnn's own format is a top-level ``datasets:`` *of datasets*; coffea's may name one so."""
    specs = load_samples(_dump(tmp_path / "f.yaml", {"datasets": {"files": [str(DY)]}}))
    assert list(specs) == ["datasets"]
    own = load_samples(_dump(tmp_path / "o.yaml", {"datasets": {"dy": {"files": [str(DY)]}}}))
    assert list(own) == ["dy"]


@pytest.fixture(scope="module")
def preprocessed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The output of coffea's own ``dataset_tools.preprocess`` on two shipped files, as JSON."""
    import dask
    from coffea.dataset_tools import preprocess

    fileset = {
        "dy": {"files": {str(DY): "Events"}, "metadata": {"is_mc": True}},
        "tt": {"files": {str(TT): "Events"}, "metadata": {"is_mc": True}},
    }
    # dask-awkward's graph optimisation fails on this dask version ("Cannot fuse tasks
    # with multiple outputs"); preprocess itself does not need it
    with dask.config.set({"awkward.optimization.enabled": False}), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # coffea suggests its pydantic DataGroupSpec API
        available, _updated = preprocess(
            fileset, step_size=15, skip_bad_files=False, save_form=False
        )
    path = tmp_path_factory.mktemp("pre") / "preprocessed.json"
    path.write_text(json.dumps(available, default=str), encoding="utf-8")
    return path


def test_preprocess_output_is_used_without_recounting(
    preprocessed: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = json.loads(preprocessed.read_text())
    entry = data["dy"]["files"][str(DY)]
    assert entry["object_path"] == "Events"
    assert entry["num_entries"] == _entries(DY)
    assert len(entry["steps"]) > 1  # preprocess cut it into steps of 15

    def no_open(*args: object, **kw: object) -> int:
        raise AssertionError("a preprocessed file was opened to count its entries")

    monkeypatch.setattr(hepnn.samples, "_count_root", no_open)
    datasets = resolve(preprocessed, tmp_path / "cache")
    assert datasets["dy"].entries == _entries(DY)
    assert datasets["tt"].entries == _entries(TT)
    monkeypatch.undo()

    # processing it gives the hepnn samples YAML's histograms, bitwise
    own = _dump(
        tmp_path / "own.yaml",
        {"datasets": {"dy": {"files": [str(DY)], "metadata": {"is_mc": True}}}},
    )
    a = run_count({"dy": datasets["dy"]}, chunksize=1000)
    b = run_count(resolve(own, tmp_path / "cache"), chunksize=1000)
    assert a.accounting()["dy"]["entries_processed"] == _entries(DY)
    assert_same_hists(a.output, b.output)


def test_fileset_with_http_url_runs_through_the_cli(preprocessed: Path, tmp_path: Path) -> None:
    """``hepnn run --samples fileset.json`` with an http:// URL served here: every event."""
    data = json.loads(preprocessed.read_text())
    with serve(REPO / "samples") as http:
        url = f"{http.url}/nanoaod/nano_dy.root"
        data["dy"]["files"] = {url: data["dy"]["files"][str(DY)]}
        del data["tt"]
        fileset = _dump(tmp_path / "fileset.json", data)
        out = tmp_path / "out"
        res = CliRunner().invoke(
            main,
            ["run", str(REPO / "configs" / "fatjets.yaml"), "--samples", str(fileset),
             "-o", str(out), "--quiet", "--set", "networks={}", "--set", "outputs.plots=false",
             "--set", "executor.chunksize=1000"],
        )  # fmt: skip
        assert res.exit_code == 0, res.output
        assert any(p.endswith("nano_dy.root") and r for _, p, r in http.log)
    manifest = json.loads((out / "manifest.json").read_text())
    acc = manifest["datasets"]["dy"]
    assert acc["entries_expected"] == acc["entries_processed"] == _entries(DY)
    assert acc["files"][0]["path"] == url
