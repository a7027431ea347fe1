"""``hepnn run``: everything a config asks for, from samples to plots.

The steps, each in its own module: resolve the samples (CSV/npy converted and
cached, entries counted) → find the workflow → run it with coffea (ordered
merge, accounting) → write histograms, plots and the manifest (last).
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import time
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import yaml

from hepnn.config import Config, config_hash, config_source, resolved_dict
from hepnn.errors import AccountingError
from hepnn.execution import RunResult, run_workflow
from hepnn.files import atomic_write, sha256_file, write_json
from hepnn.networks import prepare_networks, rank_networks
from hepnn.outputs import MANIFEST, start_outdir, write_pickle, write_root
from hepnn.reporting import band_outputs, network_metrics
from hepnn.samples import Dataset, load_samples, resolve_samples
from hepnn.workflow import FoundWorkflow, WorkflowContext, find_workflow

PACKAGES = (
    "hepnn",
    "coffea",
    "uproot",
    "awkward",
    "hist",
    "numpy",
    "torch",
    "mplhep",
    "dask",
    "distributed",
)

#: Exit status of a run that skipped chunks without the config allowing it.
EXIT_SKIPPED = 3


def cache_dir() -> Path:
    """Where converted inputs are cached: ``$HEPNN_CACHE_DIR`` or ``~/.cache/hepnn``."""
    env = os.environ.get("HEPNN_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "hepnn"


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out


@dataclass
class RunSummary:
    outdir: Path
    result: RunResult
    manifest: dict[str, Any]
    files: list[Path]

    @property
    def skipped(self) -> int:
        """Chunks and files skipped (``executor.skip_bad_files``)."""
        return sum(len(v) for v in self.result.chunks_skipped.values()) + sum(
            len(v) for v in self.result.files_skipped.values()
        )


def default_outdir(cfg: Config) -> Path:
    return Path("outputs") / cfg.name


def prepare(cfg: Config, *, progress: bool = True) -> tuple[dict[str, Dataset], FoundWorkflow]:
    """Resolve samples and find the workflow (everything before processing)."""
    datasets = resolve_samples(
        load_samples(cfg.samples),
        cache_dir(),
        progress=progress,
        skip_bad_files=cfg.executor.skip_bad_files,
    )
    src = config_source(cfg)
    found = find_workflow(cfg.workflow, src.parent if src else None)
    return datasets, found


def run_config(
    cfg: Config,
    outdir: Path | None = None,
    *,
    test: bool = False,
    progress: bool = True,
    console: Any = None,
    resume: bool = False,
    models_dir: Path | None = None,
) -> RunSummary:
    """Run a validated config end to end and write its outputs.

    Parameters
    ----------
    cfg
        The validated config (:func:`hepnn.config.load_config`).
    outdir
        Output folder (default ``outputs/<config name>``).
    test
        Process only two chunks per dataset.
    progress
        Show progress bars.
    console
        A ``rich.console.Console`` for tables; ``None`` prints nothing.
    resume
        Reuse the chunks an interrupted run into ``outdir`` checkpointed, when
        config, workflow source, models and inputs are unchanged
        (:mod:`hepnn.checkpoints`). Without it, old checkpoints are deleted.
    models_dir
        Apply the networks found here (``<dir>/<name>/model.json``) instead of training.
    """
    started = dt.datetime.now(dt.timezone.utc)
    t0 = time.perf_counter()
    outdir = Path(outdir) if outdir is not None else default_outdir(cfg)
    start_outdir(outdir)
    datasets, found = prepare(cfg, progress=progress)
    if console is not None:
        _print_start(console, cfg, found, datasets, outdir, test)
    models, ensembles = prepare_networks(
        cfg, datasets, outdir, models_dir, test=test, progress=progress
    )
    from hepnn.jets.tagger_report import tagger_outputs
    from hepnn.jets.tagger_training import prepare_taggers

    taggers = prepare_taggers(cfg, datasets, outdir, models_dir, test=test, progress=progress)
    ranking_files = rank_networks(cfg, models, datasets, outdir, progress=progress)
    mcd = cfg.uncertainty.mc_dropout
    context = WorkflowContext(
        options=dict(cfg.options),
        datasets={n: {**d.metadata, "format": d.format} for n, d in datasets.items()},
        models={name: str(path) for name, path in models.items()},
        seed=cfg.seed,
        mc_dropout=(
            {"samples": mcd.samples, "seed": cfg.seed if mcd.seed is None else mcd.seed}
            if mcd is not None
            else {}
        ),
        ensembles={n: [str(p) for p in ps] for n, ps in ensembles.items()},
        taggers={name: str(path) for name, path in taggers.items()},
    )
    workflow = found.cls(context)
    schema = getattr(found.cls, "schema", None)
    if schema is None:
        from coffea.nanoevents import NanoAODSchema

        schema = NanoAODSchema
    from hepnn.checkpoints import ChunkCheckpoints, run_fingerprint

    checkpoints = ChunkCheckpoints(
        outdir,
        run_fingerprint(
            resolved_dict(cfg),
            found.source_sha256,
            {
                **context.models,
                **{f"tagger:{n}": q for n, q in context.taggers.items()},
                **{f"{n}[{i}]": q for n, ps in context.ensembles.items() for i, q in enumerate(ps)},
            },
            cfg.executor.block_size,
            context.datasets,
        ),
        resume=resume,
    )
    result = run_workflow(
        workflow,
        schema,
        datasets,
        cfg.executor,
        maxchunks=2 if test else None,
        status=progress,
        checkpoints=checkpoints,
    )
    hists = dict(result.output)
    files: list[Path] = list(ranking_files)
    columns = hists.pop("columns", {})
    for dataset, cols in columns.items():
        path = outdir / "columns" / f"{dataset}.parquet"
        cols.write_parquet(path)
        files.append(path)
    metrics = network_metrics(models, hists, columns)
    tagger_metrics, tagger_files = tagger_outputs(
        taggers,
        hists,
        columns,
        datasets,
        outdir / "plots",
        plots=cfg.outputs.plots,
        formats=cfg.outputs.plot_formats,
    )
    metrics.update(tagger_metrics)
    files += tagger_files
    if cfg.cross_validation is not None and models_dir is None:
        # Evaluation only (hepnn.jets.tagger_cv): trains K models per tagger, saves none.
        from hepnn.jets.tagger_cv import cross_validate

        cv_metrics, cv_files = cross_validate(
            cfg,
            datasets,
            outdir,
            test=test,
            progress=progress,
            plots=cfg.outputs.plots,
            formats=cfg.outputs.plot_formats,
        )
        metrics["cross_validation"] = cv_metrics
        files += cv_files
    if cfg.taylor is not None and taggers:
        from hepnn.jets.tagger_taylor import tagger_taylor_maps

        formats = tuple(cfg.outputs.plot_formats) if cfg.outputs.plots else ()
        for name, path in taggers.items():
            files += tagger_taylor_maps(
                name, cfg.taggers[name], Path(path), datasets, outdir, formats=formats
            )
    root_extra, band_files = band_outputs(hists, outdir / "plots", cfg.outputs)
    files += band_files
    if metrics:
        write_json(outdir / "metrics.json", metrics)
        files.append(outdir / "metrics.json")
    resolved = yaml.safe_dump(resolved_dict(cfg), sort_keys=False).encode()
    atomic_write(outdir / "config.resolved.yaml", lambda fh: fh.write(resolved))
    files.append(outdir / "config.resolved.yaml")
    write_pickle(outdir / "hists.pkl", hists)
    files.append(outdir / "hists.pkl")
    if cfg.outputs.hists_root:
        write_root(outdir / "hists.root", hists, root_extra)
        files.append(outdir / "hists.root")
    if cfg.outputs.plots:
        from hepnn.plotting import plot_hists

        files += plot_hists(hists, outdir / "plots", cfg.outputs.plot_formats)

    manifest = {
        "hepnn_manifest": 1,
        "config": cfg.name,
        "config_file": str(config_source(cfg) or ""),
        "config_hash": config_hash(cfg),
        "workflow": {
            "name": cfg.workflow,
            "origin": found.origin,
            "source_sha256": found.source_sha256,
        },
        "test_mode": test,
        "executor": cfg.executor.model_dump(),
        "packages": package_versions(),
        "started": started.isoformat(timespec="seconds"),
        "wall_time_s": round(time.perf_counter() - t0, 3),
        "processing_time_s": round(result.wall_time, 3),
        "n_chunks": result.n_chunks,
        "executor_used": result.executor_info,
        "checkpoints": {"resume": resume, "chunks_reused": result.chunks_reused},
        "taggers": context.taggers,
        "complete": all(acc["complete"] for acc in result.accounting().values()),
        "retries": result.retries,
        "datasets": {
            name: {
                **acc,
                "files": [
                    {"path": str(f.source), "root_file": str(f.root_path), "entries": f.entries}
                    for f in datasets[name].files
                ],
            }
            for name, acc in result.accounting().items()
        },
        "outputs": {
            str(f.relative_to(outdir)): sha256_file(f)
            for f in _all_outputs(outdir, started.timestamp() - 1)
        },
    }
    for name, acc in manifest["datasets"].items():
        if acc["entries_processed"] + acc["entries_skipped"] != acc["entries_expected"]:
            msg = f"dataset {name}: entries do not add up in the manifest"
            raise AccountingError(msg)
    write_json(outdir / MANIFEST, manifest)
    if manifest["complete"]:
        checkpoints.clear()  # kept otherwise: --resume then retries only the skipped chunks
    summary = RunSummary(outdir, result, manifest, [*files, outdir / MANIFEST])
    if console is not None:
        _print_end(console, summary)
    return summary


def _all_outputs(outdir: Path, since: float) -> list[Path]:
    """Every file this run wrote (modified since ``since``; hidden files such as checkpoints excluded)."""
    return sorted(
        p
        for p in outdir.rglob("*")
        if p.is_file()
        and p.name != MANIFEST
        and not any(part.startswith(".") for part in p.relative_to(outdir).parts)
        and p.stat().st_mtime >= since
    )


def _print_start(
    console: Any,
    cfg: Config,
    found: FoundWorkflow,
    datasets: dict[str, Dataset],
    outdir: Path,
    test: bool,
) -> None:
    from rich.table import Table

    table = Table(title=f"hepnn run: {cfg.name}", show_header=False, title_justify="left")
    table.add_row("workflow", f"{cfg.workflow} ({found.origin})")
    table.add_row("samples", str(cfg.samples))
    ex = cfg.executor
    table.add_row(
        "executor",
        f"{ex.name}, workers={ex.workers}, chunksize={ex.chunksize}"
        + (f", scheduler={ex.scheduler}" if ex.scheduler else ""),
    )
    table.add_row(
        "datasets",
        ", ".join(
            f"{n} ({d.entries} entries, {len(d.files)} file(s))" for n, d in datasets.items()
        ),
    )
    table.add_row("config hash", config_hash(cfg)[:16])
    table.add_row("output", str(outdir) + ("  [--test: 2 chunks per dataset]" if test else ""))
    console.print(table)


def _print_end(console: Any, summary: RunSummary) -> None:
    from rich.table import Table

    table = Table(title="events", title_justify="left")
    for col in ("dataset", "expected", "processed", "skipped"):
        table.add_column(col, justify="right" if col != "dataset" else "left")
    for name, acc in summary.manifest["datasets"].items():
        table.add_row(
            name,
            str(acc["entries_expected"]),
            str(acc["entries_processed"]),
            str(acc["entries_skipped"]),
        )
    console.print(table)
    for name, acc in summary.manifest["datasets"].items():
        for c in acc["chunks_skipped"]:
            console.print(f"[yellow]skipped chunk[/] {name}: {c['reason']}")
        for f in acc["files_skipped"]:
            console.print(f"[yellow]skipped file[/] {name}: {f['reason']} (entries unknown)")
    if summary.result.chunks_reused:
        console.print(f"reused {summary.result.chunks_reused} chunk(s) from checkpoints (--resume)")
    console.print(
        f"wrote {len(summary.files)} files to {summary.outdir} in {summary.manifest['wall_time_s']:.1f} s"
    )
