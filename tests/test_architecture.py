"""The layout of issue 11, kept by tests: one network map, inputs read once, clean imports.

* the config schema is a leaf that imports no torch;
* a hepnn 0.1 config (``taggers:``, ``networks.<name>.training.features``) is refused
  with one line saying how to migrate;
* a run reads the training inputs once and hands them to every later step
  (ensemble members, Taylor ranking and monitor);
* ``lint-imports`` keeps the declared layers and forbidden imports;
* no module is over 600 lines, no module imports another module's private names.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from hepnn.config import load_config
from hepnn.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "hepnn"
WORKFLOWS = REPO / "workflows"
MAX_LINES = 600
OLD_FORM = "networks and taggers are one map"
FEATURES = ["DER_mass_MMC", "DER_mass_vis", "PRI_tau_pt", "PRI_jet_num", "DER_mass_jet_jet"]


def _python_files(*roots: Path) -> list[Path]:
    return sorted(p for root in roots for p in root.rglob("*.py") if "__pycache__" not in p.parts)


# ------------------------------------------------------------------ config leaf
def test_config_imports_no_torch() -> None:
    code = "import hepnn.config, sys; assert 'torch' not in sys.modules, 'torch imported'"
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=False
    )
    assert proc.returncode == 0, proc.stderr


def _write_config(tmp_path: Path, extra: dict[str, Any]) -> Path:
    data = {
        "name": "old",
        "workflow": "higgs",
        "samples": str(REPO / "samples" / "higgs.yaml"),
        **extra,
    }
    path = tmp_path / "old.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


OLD_CONFIGS = {
    "taggers_section": {
        "taggers": {
            "cnn2d": {
                "kind": "image",
                "image": {"n_eta": 33, "n_phi": 33},
                "training": {"epochs": 2, "split": {"method": "random"}},
            }
        }
    },
    "training_features": {
        "networks": {
            "dnn": {
                "training": {
                    "features": FEATURES,
                    "missing_flags": "auto",
                    "split": {"method": "kfold", "folds": 4},
                }
            }
        }
    },
    "tagger_kind_in_networks": {
        "networks": {"cnn2d": {"kind": "image", "image": {"n_eta": 33}, "training": {"epochs": 2}}}
    },
}


@pytest.mark.parametrize("extra", OLD_CONFIGS.values(), ids=OLD_CONFIGS.keys())
def test_old_config_form_is_a_one_line_error(tmp_path: Path, extra: dict[str, Any]) -> None:
    path = _write_config(tmp_path, extra)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    msg = str(info.value)
    assert OLD_FORM in msg
    assert "\n" not in msg
    assert msg.startswith(str(path))


def test_new_config_form_loads(tmp_path: Path) -> None:
    """The migrated form of the ``training_features`` case above is valid."""
    net = {
        "inputs": {"kind": "flat", "features": FEATURES, "missing_flags": "auto"},
        "training": {"epochs": 2},
        "split": {"method": "kfold", "folds": 4},
    }
    cfg = load_config(_write_config(tmp_path, {"networks": {"dnn": net}}))
    spec = cfg.networks["dnn"]
    assert (spec.kind, spec.arch, spec.split.n_models) == ("flat", "mlp", 4)


def test_old_form_via_override_is_refused() -> None:
    """``--set`` cannot smuggle the old form in either."""
    with pytest.raises(ConfigError, match=OLD_FORM):
        load_config(REPO / "configs" / "higgs.yaml", ["networks.dnn.training.features=[PRI_met]"])


# ------------------------------------------------------------- read inputs once
def _count_reads(monkeypatch: pytest.MonkeyPatch) -> tuple[Counter[str], list[str]]:
    """Count the files ``hepnn.nets.data`` opens with uproot, and the training-data requests."""
    import hepnn.nets.data as data_mod

    real = data_mod.uproot
    opened: Counter[str] = Counter()
    requests: list[str] = []

    class CountingUproot:
        """``uproot`` as hepnn.nets.data sees it, counting the files it opens."""

        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

        def open(self, path: Any, *args: Any, **kwargs: Any) -> Any:
            opened[str(Path(path).resolve())] += 1
            return real.open(path, *args, **kwargs)

    training_data = data_mod.DataReader.training_data

    def counting_training_data(self: Any, name: str, spec: Any) -> Any:
        requests.append(name)
        return training_data(self, name, spec)

    monkeypatch.setattr(data_mod, "uproot", CountingUproot())
    monkeypatch.setattr(data_mod.DataReader, "training_data", counting_training_data)
    return opened, requests


def _assert_each_file_opened_once(run: Any, opened: Counter[str]) -> None:
    assert run.reader is not None
    files = [f.root_path for ds in run.datasets.values() for f in ds.files]
    assert files
    expected = Counter(str(Path(f).resolve()) for f in files)
    assert opened == expected, f"files opened: {dict(opened)}"


def test_training_inputs_read_once_per_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two ensemble members, the Taylor monitor and the Taylor ranking share one read."""
    from hepnn.pipeline import run_config

    opened, requests = _count_reads(monkeypatch)
    cfg = load_config(
        REPO / "configs" / "higgs.yaml",
        [
            "networks.dnn.split={method: parity, id_column: EventId}",
            "networks.dnn.params.hidden=[16]",
            "uncertainty.mc_dropout=null",
            "uncertainty.ensemble.members=2",
            "taylor.events=500",
            "taylor.monitor_events=200",
            "outputs.plots=false",
            "outputs.hists_root=false",
        ],
    )
    run = run_config(cfg, tmp_path / "out", test=True, progress=False)

    _assert_each_file_opened_once(run, opened)
    # the inputs were asked for by both members and the ranking
    assert requests.count("dnn") >= 3, requests
    assert [p.name for p in run.networks["dnn"].members] == ["dnn", "dnn_member1"]
    assert (tmp_path / "out" / "ranking" / "dnn.csv").is_file()
    assert (tmp_path / "out" / "ranking" / "dnn_history.csv").is_file()


def test_training_jets_read_once_per_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two taggers on the same jets, their Taylor maps and the cross-validation: one read."""
    from hepnn.pipeline import run_config

    opened, requests = _count_reads(monkeypatch)
    cfg = load_config(
        REPO / "configs" / "toptag.yaml",
        [
            "networks.cnn2d.params.filters=[4]",
            "networks.cnn2d.params.dense=[8]",
            "networks.cnn1d.params.filters=[8]",
            "networks.cnn1d.params.dense=[8]",
            "cross_validation.folds=3",
            "cross_validation.bootstrap=10",
            "uncertainty.mc_dropout.samples=2",
            "outputs.plots=false",
            "outputs.hists_root=false",
        ],
    )
    run = run_config(cfg, tmp_path / "out", test=True, progress=False)

    _assert_each_file_opened_once(run, opened)
    assert {"cnn2d", "cnn1d"} <= set(requests)
    ranked = {p.stem.split("_")[0] for p in (tmp_path / "out" / "ranking").iterdir()}
    assert {"cnn2d", "cnn1d"} <= ranked  # hepnn ranks the taggers too
    assert "cross_validation" in run.metrics


# ------------------------------------------------------------------ import rules
def test_lint_imports() -> None:
    exe = shutil.which("lint-imports")
    if exe is None:
        pytest.skip("lint-imports (import-linter) is not installed")
    proc = subprocess.run([exe], capture_output=True, text=True, cwd=REPO, check=False)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


def test_no_module_over_600_lines() -> None:
    long = {
        str(p.relative_to(REPO)): n
        for p in _python_files(PACKAGE)
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def _private_imports(path: Path, root: Path = REPO) -> list[str]:
    """``from hepnn.x import _name`` (absolute or relative) in one file."""
    where = path.relative_to(root)
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            module = node.module or ""
            ours = node.level > 0 or module == "hepnn" or module.startswith("hepnn.")
            if not ours:
                continue
            for alias in node.names:
                name = alias.name
                if name.startswith("_") and not (name.startswith("__") and name.endswith("__")):
                    dots = "." * node.level
                    found.append(f"{where}:{node.lineno}: from {dots}{module} import {name}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                private = any(p.startswith("_") and not p.startswith("__") for p in parts)
                if parts[0] == "hepnn" and private:
                    found.append(f"{where}:{node.lineno}: import {alias.name}")
    return found


def test_no_imports_of_private_names() -> None:
    files = _python_files(PACKAGE, WORKFLOWS)
    assert len(files) > 20
    found = [hit for p in files for hit in _private_imports(p)]
    assert not found, "imports of another module's private names:\n" + "\n".join(found)


def test_private_import_check_finds_them(tmp_path: Path) -> None:
    """The ast check above is not vacuous."""
    path = tmp_path / "probe.py"
    path.write_text(
        "from hepnn.nets.split import _seed\nfrom .x import _y\nfrom hepnn import __version__\n"
        "from numpy import _core\nimport hepnn.nets\n"
    )
    hits = _private_imports(path, tmp_path)
    assert [h.split(": ", 1)[1] for h in hits] == [
        "from hepnn.nets.split import _seed",
        "from .x import _y",
    ]
