"""README.md quotes measured numbers only through ``scripts/readme_numbers.py`` blocks.

The slow tests run each shipped config as README describes it and fail when README's
block differs from what the run gives; the fast ones check the block machinery itself.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location(
    "readme_numbers", ROOT / "scripts" / "readme_numbers.py"
)
assert _spec is not None
assert _spec.loader is not None
numbers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(numbers)


def test_readme_has_every_block() -> None:
    quoted = numbers.readme_blocks(numbers.README.read_text())
    assert set(quoted) == set(numbers.BLOCKS)
    for name, body in quoted.items():
        assert body.strip(), f"numbers:{name} is empty"


def test_write_replaces_only_the_block_body(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("intro 0.5\n<!-- numbers:higgs -->\nAUC 0.111\n<!-- /numbers -->\nend 0.7\n")
    run = tmp_path / "runs" / "higgs"
    run.mkdir(parents=True)
    (run / "metrics.json").write_text(
        '{"networks": {"dnn": {"datasets": {"higgs_challenge": '
        '{"auc": 0.8934, "auc_weighted": 0.9199, "rows": 18000}}}}}'
    )
    assert numbers.differences(tmp_path / "runs", readme)  # 0.111 is not what the run gives
    assert numbers.write(tmp_path / "runs", readme) == ["higgs"]
    text = readme.read_text()
    assert text.startswith("intro 0.5\n")
    assert text.endswith("end 0.7\n")
    assert "AUC 0.893 (weighted 0.920) on all 18,000 events" in text
    assert not [p for p in numbers.differences(tmp_path / "runs", readme) if "higgs" in p]


@pytest.mark.slow
@pytest.mark.parametrize("block", [b for b in numbers.BLOCKS if b != "toptag_cv"])
def test_readme_numbers_are_what_the_configs_give(block: str, tmp_path: Path) -> None:
    """Runs the configs a block reads (as README runs them) and compares the block."""
    from hepnn.config import load_config
    from hepnn.pipeline import run_config

    for folder in numbers.NEEDS[block]:
        config, sets = numbers.RUNS[folder]
        cfg = load_config(ROOT / config, [*sets, "outputs.plots=false", "outputs.hists_root=false"])
        run_config(cfg, tmp_path / folder, progress=False)
    quoted = numbers.readme_blocks(numbers.README.read_text())[block]
    assert numbers.BLOCKS[block](tmp_path) == quoted
