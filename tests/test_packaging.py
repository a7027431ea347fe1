"""Packaging: the wheel carries the shipped workflows, configs and samples; every import is
declared; the shipped files are found by name from anywhere."""

from __future__ import annotations

import ast
import functools
import os
import subprocess
import sys
import zipfile
from importlib.metadata import packages_distributions, version
from pathlib import Path

import pytest
import yaml

from hepnn.shipped import find_config, shipped_dir, shipped_files
from hepnn.workflow import find_workflow, list_workflows

REPO = Path(__file__).resolve().parents[1]
tomllib = pytest.importorskip("tomllib")
Requirement = pytest.importorskip("packaging.requirements").Requirement
canonicalize_name = pytest.importorskip("packaging.utils").canonicalize_name

#: import name -> distribution, for packages that may not be installed here
KNOWN = {"sklearn": "scikit-learn", "yaml": "pyyaml", "fsspec_xrootd": "fsspec-xrootd"}


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


def _names(reqs: list[str]) -> set[str]:
    return {canonicalize_name(Requirement(r).name) for r in reqs}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from hatchling.builders.wheel import WheelBuilder

    out = tmp_path_factory.mktemp("wheel")
    (path,) = WheelBuilder(str(REPO)).build(directory=str(out), versions=["standard"])
    return Path(path)


def _tracked(folder: str) -> set[str]:
    files = subprocess.run(
        ["git", "ls-files", folder], cwd=REPO, capture_output=True, text=True, check=False
    ).stdout.split()
    if not files:  # not a git checkout: the folder as it is
        files = [str(p.relative_to(REPO)) for p in (REPO / folder).rglob("*") if p.is_file()]
    return {f for f in files if "__pycache__" not in f}


def test_wheel_ships_workflows_configs_and_samples(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    assert not any("__pycache__" in n for n in names)
    for folder in ("workflows", "configs", "samples"):
        tracked = _tracked(folder)
        assert tracked, folder
        assert {f"hepnn/data/{f}" for f in tracked} <= names, folder
    # every shipped config's samples file and every samples file's inputs are in the wheel
    for config in sorted(REPO.glob("configs/*.yaml")):
        samples = yaml.safe_load(config.read_text())["samples"]
        inside = (Path("hepnn/data/configs") / samples).as_posix()
        target = os.path.normpath(inside)
        assert target in names, (config.name, target)
        spec = yaml.safe_load((REPO / "configs" / samples).read_text())
        for ds in spec["datasets"].values():
            for f in ds.get("files", []):
                rel = os.path.normpath(str(Path(target).parent / f))
                assert rel in names or any(n.startswith(rel + "/") for n in names), rel
    entry_points = next(n for n in names if n.endswith("dist-info/entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "hepnn = hepnn.cli:main" in text


def _imports() -> tuple[set[str], set[str]]:
    """Third-party top-level modules imported by hepnn: at module level, and anywhere."""
    std = set(sys.stdlib_module_names) | {"hepnn"}
    top: set[str] = set()
    anywhere: set[str] = set()
    for path in (REPO / "hepnn").rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        module_level = {id(n) for n in tree.body}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                mods = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                mods = [node.module.split(".")[0]]
            else:
                continue
            mods = [m for m in mods if m not in std]
            anywhere.update(mods)
            if id(node) in module_level:
                top.update(mods)
    return top, anywhere


@functools.cache
def _installed() -> dict[str, list[str]]:
    return packages_distributions()  # scans every installed distribution: once


def _dists(module: str) -> set[str]:
    found = _installed().get(module) or [KNOWN.get(module, module)]
    return {canonicalize_name(d) for d in found}


def test_every_import_is_declared() -> None:
    """Module-level imports are core dependencies; lazy ones are core or in an extra."""
    project = _pyproject()["project"]
    core = _names(project["dependencies"])
    extras = set().union(*(_names(v) for v in project["optional-dependencies"].values()))
    extras.discard("hepnn")
    top, anywhere = _imports()
    assert {"torch", "coffea", "uproot", "cloudpickle", "loky"} <= anywhere
    for module in sorted(anywhere):
        dists = _dists(module)
        allowed = core if module in top else core | extras
        assert dists & allowed, f"{module} (distribution {dists}) is not declared"


def test_declared_floors_hold_here_and_dask_extra_is_lazy_ready() -> None:
    """Every core floor is met by the versions installed (the floors are not invented)."""
    project = _pyproject()["project"]
    for req in map(Requirement, project["dependencies"]):
        if req.name == "torch":
            continue  # a local build tag (+cpu)
        assert req.specifier.contains(version(req.name), prereleases=True), str(req)
    assert "dask-awkward" in _names(project["optional-dependencies"]["dask"])
    assert "fsspec-xrootd" in _names(project["optional-dependencies"]["xrootd"])


def test_shipped_files_found_by_name_from_anywhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HEPNN_WORKFLOWS", raising=False)
    assert shipped_dir() == REPO
    found = find_workflow("higgs", None)
    assert Path(found.origin) == REPO / "workflows" / "higgs.py"
    assert set(list_workflows(None)) >= {"higgs", "fatjets", "toptag", "toy"}
    assert find_config("higgs") == str(REPO / "configs" / "higgs.yaml")
    assert find_config("fatjets.yaml") == str(REPO / "configs" / "fatjets.yaml")
    assert find_config("nothing") == "nothing"
    assert {p.name for p in shipped_files("samples")} >= {"higgs.yaml", "nanoaod.yaml"}


@pytest.mark.slow
def test_installed_wheel_lists_and_validates_outside_the_checkout(
    wheel: Path, tmp_path: Path
) -> None:
    """``pip install`` the wheel into a venv (no deps: they come from this environment)."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    py = venv / "bin" / "python"
    subprocess.run(
        [py, "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True
    )
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {**os.environ, "HEPNN_CACHE_DIR": str(tmp_path / "cache")}
    env.pop("HEPNN_WORKFLOWS", None)
    env.pop("PYTHONPATH", None)

    def hepnn(*args: str) -> str:
        res = subprocess.run(
            [venv / "bin" / "hepnn", *args], cwd=work, env=env, capture_output=True, text=True,
            check=False,
        )  # fmt: skip
        assert res.returncode == 0, res.stdout + res.stderr
        return res.stdout

    where = subprocess.run(
        [py, "-c", "import hepnn; print(hepnn.__file__)"], cwd=work, env=env,
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert str(venv) in where
    listing = hepnn("list")
    for name in ("higgs", "fatjets", "toptag", "toy"):
        assert f"hepnn/data/workflows/{name}.py" in listing
    assert "hepnn/data/configs/higgs.yaml" in listing
    assert "hepnn/data/samples/nanoaod.yaml" in listing
    checked = hepnn("validate", "fatjets")  # by name: the shipped config, samples, workflow
    assert checked.startswith("fatjets: ok")
    assert "hepnn/data/workflows/fatjets.py" in checked
    assert "hepnn/data/samples/nanoaod.yaml" in checked
