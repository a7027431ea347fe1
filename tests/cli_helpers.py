"""Helpers shared by the tests that drive ``hepnn run`` through click's CliRunner."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result

from hepnn.cli import main


def hepnn_run(config: Path, out: Path, *args: str, quiet: bool = True) -> Result:
    """``hepnn run CONFIG -o OUT [--quiet] ARGS`` in-process."""
    argv = ["run", str(config), "-o", str(out), *(["--quiet"] if quiet else []), *args]
    return CliRunner().invoke(main, argv)


def manifest(out: Path) -> dict[str, Any]:
    """The run's ``manifest.json``."""
    return json.loads((out / "manifest.json").read_text())


def error_line(res: Result, status: int = 2) -> str:
    """Exit ``status``, exactly one ``error:`` line, no traceback; that line."""
    assert res.exit_code == status, res.output
    lines = [ln for ln in res.output.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1, res.output
    assert "Traceback" not in res.output
    return lines[0]
