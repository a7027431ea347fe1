"""Wheel build hook: the shipped workflows/, configs/ and samples/ as package data.

A standard wheel carries them under ``hepnn/data/`` with their layout (found by
``hepnn.shipped``). An editable install reads them from the checkout, so they are not
copied into it (a ``force-include`` in ``pyproject.toml`` would copy them into
site-packages for editable installs too).
"""

from __future__ import annotations

from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

FOLDERS = ("workflows", "configs", "samples")


class CustomBuildHook(BuildHookInterface):
    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if self.target_name != "wheel" or version != "standard":
            return
        for folder in FOLDERS:
            build_data["force_include"][folder] = f"hepnn/data/{folder}"
