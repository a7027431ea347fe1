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
        '{"auc": 0.8934, "auc_weighted": 0.9199, "rows": 18000, "ams_best": 3.2}}}}}'
    )
    assert numbers.differences(tmp_path / "runs", readme)  # 0.111 is not what the run gives
    assert numbers.write(tmp_path / "runs", readme) == ["higgs"]
    text = readme.read_text()
    assert text.startswith("intro 0.5\n")
    assert text.endswith("end 0.7\n")
    assert "AUC 0.893 (weighted 0.920) on all 18,000 events" in text
    assert "best AMS 3.20 at the challenge totals" in text
    assert not [
        p for p in numbers.differences(tmp_path / "runs", readme) if p.startswith("numbers:higgs:")
    ]


#: The blocks checked in CI, grouped by the runs they read (each group runs its configs once).
GROUPS: dict[tuple[str, ...], list[str]] = {}
for _block, _folders in numbers.NEEDS.items():
    if _block != "toptag_cv":  # the 5-fold cross-validation: ~7 min, `readme_numbers.py run --cv`
        GROUPS.setdefault(_folders, []).append(_block)


@pytest.mark.slow
@pytest.mark.parametrize("folders", list(GROUPS), ids=["+".join(f) for f in GROUPS])
def test_readme_numbers_are_what_the_configs_give(folders: tuple[str, ...], tmp_path: Path) -> None:
    """Runs the configs (as README runs them) and compares every block that reads them."""
    for folder in folders:
        numbers.run_one(tmp_path, folder)
    quoted = numbers.readme_blocks(numbers.README.read_text())
    for block in GROUPS[folders]:
        assert numbers.BLOCKS[block](tmp_path) == quoted[block], block
    if "toy_taylor_unscaled" in folders:
        # the lecture's toy table (derivatives in the unscaled inputs): within 25 %, in its order
        rank = numbers.ranking(tmp_path / "toy_taylor_unscaled", "nn")
        values = {t: float(rank[t]["value"]) for t in numbers.LECTURE}
        for term, ref in numbers.LECTURE.items():
            assert abs(values[term] / ref - 1) < 0.25, (term, values[term], ref)
        order = sorted(values, key=lambda t: -values[t])
        assert set(order[:2]) == {"x1", "x2"}
        assert order[2] == "x1*x2"
