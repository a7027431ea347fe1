"""The workflows, configs and samples shipped with hepnn, installed or in a checkout.

In the repository they are the top-level folders ``workflows/``, ``configs/`` and
``samples/``. A wheel carries the same three folders as package data under
``hepnn/data/`` (the build hook ``hatch_build.py``; an editable install reads them
from the checkout), with the same layout, so a shipped config's relative
``samples: ../samples/higgs.yaml`` and its workflow (``workflows/`` beside the
config's folder) resolve the same way in both places. After ``pip install hepnn``
outside the checkout, ``hepnn list`` shows them, workflows are found by name
(:func:`hepnn.workflow.search_paths` ends with :func:`shipped_dir` ``/ "workflows"``)
and ``hepnn run higgs`` runs the shipped ``configs/higgs.yaml``
(:func:`find_config`). The files are read in place: outputs and converted inputs
go to the output folder and ``$HEPNN_CACHE_DIR``, never beside them.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent
#: Folder names shipped; a wheel holds them under ``hepnn/data/``.
FOLDERS = ("workflows", "configs", "samples")


def shipped_dir() -> Path | None:
    """The folder holding ``workflows/``, ``configs/`` and ``samples/``, or None.

    ``hepnn/data`` in an installed wheel; the repository root for a checkout or an
    editable install.
    """
    for root in (_PACKAGE / "data", _PACKAGE.parent):
        if all((root / name).is_dir() for name in FOLDERS):
            return root
    return None


def shipped_files(folder: str, pattern: str = "*.yaml") -> list[Path]:
    """Files of one shipped folder (``configs``, ``samples``, ``workflows``), sorted."""
    root = shipped_dir()
    if root is None:
        return []
    return sorted(p for p in (root / folder).glob(pattern) if not p.name.startswith("_"))


def find_config(name: str) -> str:
    """``name`` itself if it is a path that exists, else the shipped ``configs/<name>.yaml``.

    ``hepnn run higgs`` or ``hepnn run higgs.yaml`` from any folder runs the shipped
    Higgs config when there is no such file here; anything else is returned unchanged
    (the config loader then reports the missing file).
    """
    if Path(name).exists() or "/" in name or "\\" in name:
        return name
    stem = name.removesuffix(".yaml").removesuffix(".yml")
    for path in shipped_files("configs"):
        if path.stem == stem:
            return str(path)
    return name
