"""``manifest.json``: what a run did, written last so that its presence means "complete".

It records the config (file and hash), the workflow (origin and source sha256),
package versions, wall times, the executor, checkpoint reuse, per dataset the
entries expected, processed and skipped (with every skipped chunk and file and its
reason), and the sha256 of every output file of the run.
"""

from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hepnn.errors import AccountingError
from hepnn.files import sha256_file, write_json

if TYPE_CHECKING:
    from hepnn.execution import RunResult
    from hepnn.samples import Dataset

MANIFEST = "manifest.json"
#: Packages whose versions are recorded.
PACKAGES = (
    "hepnn", "coffea", "uproot", "awkward", "hist", "numpy", "torch", "mplhep", "dask", "distributed",
)  # fmt: skip


def package_versions() -> dict[str, str]:
    """Python and the installed versions of :data:`PACKAGES`."""
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out


def run_outputs(outdir: Path, since: float, exclude: tuple[str, ...] = ()) -> list[Path]:
    """Every file a run wrote (modified since ``since``; hidden files such as checkpoints excluded).

    ``exclude``: top-level names the run left alone because hepnn did not write them.
    """
    return sorted(
        p
        for p in outdir.rglob("*")
        if p.is_file()
        and p.name != MANIFEST
        and not any(part.startswith(".") for part in p.relative_to(outdir).parts)
        and p.relative_to(outdir).parts[0] not in exclude
        and p.stat().st_mtime >= since
    )


def dataset_accounting(result: RunResult, datasets: dict[str, Dataset]) -> dict[str, Any]:
    """Per dataset: entries expected / processed / skipped, skipped chunks and files, file list.

    Raises
    ------
    AccountingError
        Processed and skipped entries do not add up to the expected entries.
    """
    out = {}
    for name, acc in result.accounting().items():
        if acc["entries_processed"] + acc["entries_skipped"] != acc["entries_expected"]:
            msg = f"dataset {name}: entries do not add up in the manifest"
            raise AccountingError(msg)
        files = [
            {"path": str(f.source), "root_file": str(f.root_path), "entries": f.entries}
            for f in datasets[name].files
        ]
        out[name] = {**acc, "files": files}
    return out


def write_manifest(
    outdir: Path, manifest: dict[str, Any], since: float, exclude: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Add the sha256 of every output written since ``since`` and write ``manifest.json``."""
    files = run_outputs(outdir, since, exclude)
    manifest = {**manifest, "outputs": {str(f.relative_to(outdir)): sha256_file(f) for f in files}}
    write_json(outdir / MANIFEST, manifest)
    return manifest
