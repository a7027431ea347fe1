"""``hepnn run``: everything a config asks for, as an explicit list of stages.

:data:`STAGES` is the run, in order; each stage is a short function of the
:class:`Run` state, which it reads and extends. See docs/architecture.md for the
data that flows between them.
"""

from __future__ import annotations

import datetime as dt
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from hepnn.config import Config, config_hash, config_source, resolved_dict
from hepnn.files import atomic_text, write_json
from hepnn.manifest import MANIFEST, dataset_accounting, package_versions, write_manifest
from hepnn.samples import Dataset, load_samples, resolve_samples
from hepnn.workflow import FoundWorkflow, WorkflowContext, find_workflow

if TYPE_CHECKING:
    from hepnn.execution import ChunkCheckpoints, RunResult
    from hepnn.nets.data import DataReader
    from hepnn.nets.lifecycle import PreparedNetwork

#: Exit status of a run that skipped chunks without the config allowing it.
EXIT_SKIPPED = 3


def cache_dir() -> Path:
    """Where converted inputs are cached: ``$HEPNN_CACHE_DIR`` or ``~/.cache/hepnn``."""
    env = os.environ.get("HEPNN_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "hepnn"


def default_outdir(cfg: Config) -> Path:
    return Path("outputs") / cfg.name


def prepare(cfg: Config, *, progress: bool = True) -> tuple[dict[str, Dataset], FoundWorkflow]:
    """Resolve samples and find the workflow (everything before processing)."""
    datasets = resolve_samples(
        load_samples(cfg.samples), cache_dir(), progress=progress,
        skip_bad_files=cfg.executor.skip_bad_files,
    )  # fmt: skip
    src = config_source(cfg)
    return datasets, find_workflow(cfg.workflow, src.parent if src else None)


@dataclass
class Run:
    """The state of one run, filled in stage by stage."""

    cfg: Config
    outdir: Path
    test: bool = False
    progress: bool = True
    console: Any = None
    resume: bool = False
    models_dir: Path | None = None
    started: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.timezone.utc))
    t0: float = field(default_factory=time.perf_counter)
    datasets: dict[str, Dataset] = field(default_factory=dict)
    found: FoundWorkflow | None = None
    reader: DataReader | None = None
    networks: dict[str, PreparedNetwork] = field(default_factory=dict)
    checkpoints: ChunkCheckpoints | None = None
    result: RunResult | None = None
    hists: dict[str, Any] = field(default_factory=dict)
    columns: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    root_extra: dict[str, Any] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)
    manifest: dict[str, Any] = field(default_factory=dict)
    #: Wall seconds of every stage run so far, by stage name.
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def formats(self) -> tuple[str, ...]:
        """Plot formats, empty when plots are off."""
        return tuple(self.cfg.outputs.plot_formats) if self.cfg.outputs.plots else ()

    @property
    def skipped(self) -> int:
        """Chunks and files skipped (``executor.skip_bad_files``)."""
        assert self.result is not None
        return sum(len(v) for v in self.result.chunks_skipped.values()) + sum(
            len(v) for v in self.result.files_skipped.values()
        )


# ------------------------------------------------------------------- stages
def resolve_inputs(run: Run) -> None:
    """Start the output folder (no manifest), resolve the samples, find the workflow."""
    from hepnn.outputs import start_outdir

    start_outdir(run.outdir, MANIFEST)
    run.datasets, run.found = prepare(run.cfg, progress=run.progress)
    if run.console is not None:
        _print_start(run)


def prepare_networks(run: Run) -> None:
    """Train every network (or take it from ``--models``); training rows are read once."""
    if not run.cfg.networks:
        return
    from hepnn.nets.data import DataReader
    from hepnn.nets.lifecycle import prepare_networks as prepare_all

    run.reader = DataReader(run.datasets)
    run.networks = prepare_all(
        run.cfg, run.reader, run.outdir, run.models_dir, test=run.test, progress=run.progress
    )


def rank_networks(run: Run) -> None:
    """Taylor ranking (flat) or first-order maps (jets) of every trained network (``taylor``)."""
    if run.cfg.taylor is None or run.reader is None:
        return
    from hepnn.nets.apply import get_network
    from hepnn.nets.rank import write_network_ranking

    for name, net in run.networks.items():
        if net.spec.train:
            data = run.reader.training_data(name, net.spec)
            run.files += write_network_ranking(
                name, get_network(net.path), data, run.cfg.taylor, run.outdir,
                seed=run.cfg.seed, formats=run.formats, progress=run.progress,
            )  # fmt: skip


def process_events(run: Run) -> None:
    """Run the workflow over every chunk (checkpointed, retried, merged in a fixed order)."""
    from hepnn.execution import ChunkCheckpoints, run_fingerprint, run_workflow

    cfg, found = run.cfg, run.found
    assert found is not None
    mcd = cfg.uncertainty.mc_dropout
    context = WorkflowContext(
        options=dict(cfg.options),
        datasets={n: {**d.metadata, "format": d.format} for n, d in run.datasets.items()},
        models={n: str(p.path) for n, p in run.networks.items()},
        kinds={n: p.spec.kind for n, p in run.networks.items()},
        seed=cfg.seed,
        mc_dropout=(
            {"samples": mcd.samples, "seed": cfg.seed if mcd.seed is None else mcd.seed}
            if mcd is not None
            else {}
        ),
        ensembles={n: [str(q) for q in p.members] for n, p in run.networks.items() if p.members},
    )
    schema = getattr(found.cls, "schema", None)
    if schema is None:
        from coffea.nanoevents import NanoAODSchema

        schema = NanoAODSchema
    models = {**context.models}
    models |= {f"{n}[{i}]": q for n, ps in context.ensembles.items() for i, q in enumerate(ps)}
    fingerprint = run_fingerprint(
        resolved_dict(cfg), found.source_sha256, models, cfg.executor.block_size, context.datasets
    )
    run.checkpoints = ChunkCheckpoints(run.outdir, fingerprint, resume=run.resume)
    run.result = run_workflow(
        found.cls(context), schema, run.datasets, cfg.executor,
        maxchunks=2 if run.test else None, status=run.progress, checkpoints=run.checkpoints,
    )  # fmt: skip
    run.hists = dict(run.result.output)
    run.columns = run.hists.pop("columns", {})


def write_columns(run: Run) -> None:
    """``columns/<dataset>.parquet``: the per-event (per-jet) columns of every dataset."""
    for dataset, cols in run.columns.items():
        path = run.outdir / "columns" / f"{dataset}.parquet"
        cols.write_parquet(path)
        run.files.append(path)


def evaluate_networks(run: Run) -> None:
    """Held-out metrics of every network beside its baselines, ROC curves, average images."""
    from hepnn.nets.report import network_report

    networks = {n: p.path for n, p in run.networks.items()}
    metrics, files = network_report(
        networks, run.hists, run.columns, run.datasets, run.outdir / "plots", formats=run.formats
    )
    run.metrics.update(metrics)
    run.files += files


def cross_validate(run: Run) -> None:
    """K-fold evaluation of the trained networks (``cross_validation``, not with ``--models``)."""
    if run.cfg.cross_validation is None or run.models_dir is not None or run.reader is None:
        return
    from hepnn.nets.cv import cross_validate as cv

    block, files = cv(run.cfg, run.reader, run.outdir, test=run.test, progress=run.progress,
                      formats=run.formats)  # fmt: skip
    run.metrics["cross_validation"] = block
    run.files += files


def summarise_bands(run: Run) -> None:
    """MC-dropout / ensemble band summaries, their ROOT templates and plots."""
    from hepnn.bands import band_outputs

    run.root_extra, files = band_outputs(
        run.hists, run.outdir / "plots", plots=bool(run.formats), formats=list(run.formats)
    )
    run.files += files


def review_networks(run: Run) -> None:
    """``review/``: GoF of the top-ranked inputs against data, overtraining test, README (``review``)."""
    if run.cfg.review is None or run.reader is None:
        return
    from hepnn.review import write_review

    block, files = write_review(run.cfg, run.networks, run.reader, run.outdir, formats=run.formats)
    for name, entry in block.items():
        run.metrics.setdefault("networks", {}).setdefault(name, {}).update(entry)
    run.files += files


def write_results(run: Run) -> None:
    """``metrics.json``, ``config.resolved.yaml``, ``hists.pkl`` and ``hists.root``."""
    from hepnn.outputs import write_pickle, write_root

    out = run.outdir
    if run.metrics:
        write_json(out / "metrics.json", run.metrics)
        run.files.append(out / "metrics.json")
    atomic_text(out / "config.resolved.yaml", yaml.safe_dump(resolved_dict(run.cfg), sort_keys=False))
    write_pickle(out / "hists.pkl", run.hists)
    run.files += [out / "config.resolved.yaml", out / "hists.pkl"]
    if run.cfg.outputs.hists_root:
        write_root(out / "hists.root", run.hists, run.root_extra)
        run.files.append(out / "hists.root")


def draw_plots(run: Run) -> None:
    """The histograms' plots (``plots/``)."""
    if run.formats:
        from hepnn.plotting import plot_hists

        run.files += plot_hists(run.hists, run.outdir / "plots", list(run.formats))


def finish(run: Run) -> None:
    """Write ``manifest.json`` last; clear the checkpoints of a complete run."""
    cfg, result, found = run.cfg, run.result, run.found
    assert result is not None
    assert found is not None
    datasets = dataset_accounting(result, run.datasets)
    manifest = {
        "hepnn_manifest": 1,
        "config": cfg.name,
        "config_file": str(config_source(cfg) or ""),
        "config_hash": config_hash(cfg),
        "workflow": {"name": cfg.workflow, "origin": found.origin, "source_sha256": found.source_sha256},
        "test_mode": run.test,
        "executor": cfg.executor.model_dump(),
        "packages": package_versions(),
        "started": run.started.isoformat(timespec="seconds"),
        "wall_time_s": round(time.perf_counter() - run.t0, 3),
        "processing_time_s": round(result.wall_time, 3),
        "stage_seconds": dict(run.seconds),
        "events_per_second": (
            round(sum(result.entries_processed.values()) / result.wall_time, 1)
            if result.wall_time > 0
            else None
        ),
        "n_chunks": result.n_chunks,
        "executor_used": result.executor_info,
        "checkpoints": {"resume": run.resume, "chunks_reused": result.chunks_reused},
        "networks": {
            n: {"path": str(p.path), "kind": p.spec.kind, "trained": p.trained}
            for n, p in run.networks.items()
        },
        "complete": all(acc["complete"] for acc in datasets.values()),
        "retries": result.retries,
        "datasets": datasets,
    }
    run.manifest = write_manifest(run.outdir, manifest, run.started.timestamp() - 1)
    run.files.append(run.outdir / MANIFEST)
    if run.manifest["complete"] and run.checkpoints is not None:
        run.checkpoints.clear()  # kept otherwise: --resume then retries only the skipped chunks
    if run.console is not None:
        _print_end(run)


#: The run, in order.
STAGES: tuple[Callable[[Run], None], ...] = (
    resolve_inputs,
    prepare_networks,
    rank_networks,
    process_events,
    write_columns,
    evaluate_networks,
    cross_validate,
    summarise_bands,
    review_networks,
    write_results,
    draw_plots,
    finish,
)


def run_config(
    cfg: Config,
    outdir: Path | None = None,
    *,
    test: bool = False,
    progress: bool = True,
    console: Any = None,
    resume: bool = False,
    models_dir: Path | None = None,
) -> Run:
    """Run a validated config end to end (:data:`STAGES`) and write its outputs.

    Parameters
    ----------
    cfg
        The validated config (:func:`hepnn.config.load_config`).
    outdir
        Output folder (default ``outputs/<config name>``).
    test
        Process only two chunks per dataset; train two epochs.
    progress
        Show progress bars.
    console
        A ``rich.console.Console`` for tables; ``None`` prints nothing.
    resume
        Reuse the chunks an interrupted run into ``outdir`` checkpointed, when
        config, workflow source, models and inputs are unchanged
        (:mod:`hepnn.execution.checkpoints`). Without it, old checkpoints are deleted.
    models_dir
        Apply the networks found here (``<dir>/<name>/model.json``) instead of training.
    """
    run = Run(
        cfg, Path(outdir) if outdir is not None else default_outdir(cfg), test=test,
        progress=progress, console=console, resume=resume, models_dir=models_dir,
    )  # fmt: skip
    for stage in STAGES:
        start = time.perf_counter()
        stage(run)
        run.seconds[stage.__name__] = round(time.perf_counter() - start, 3)
    return run


def _print_start(run: Run) -> None:
    from rich.table import Table

    cfg, found = run.cfg, run.found
    assert found is not None
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
        ", ".join(f"{n} ({d.entries} entries, {len(d.files)} file(s))" for n, d in run.datasets.items()),
    )
    if cfg.networks:
        table.add_row("networks", ", ".join(f"{n} ({s.kind})" for n, s in cfg.networks.items()))
    table.add_row("config hash", config_hash(cfg)[:16])
    table.add_row("output", str(run.outdir) + ("  [--test: 2 chunks per dataset]" if run.test else ""))
    run.console.print(table)


def _print_end(run: Run) -> None:
    from rich.table import Table

    console, manifest = run.console, run.manifest
    table = Table(title="events", title_justify="left")
    for col in ("dataset", "expected", "processed", "skipped"):
        table.add_column(col, justify="right" if col != "dataset" else "left")
    for name, acc in manifest["datasets"].items():
        table.add_row(
            name, str(acc["entries_expected"]), str(acc["entries_processed"]), str(acc["entries_skipped"])
        )
    console.print(table)
    for name, acc in manifest["datasets"].items():
        for c in acc["chunks_skipped"]:
            console.print(f"[yellow]skipped chunk[/] {name}: {c['reason']}")
        for f in acc["files_skipped"]:
            console.print(f"[yellow]skipped file[/] {name}: {f['reason']} (entries unknown)")
    assert run.result is not None
    if run.result.chunks_reused:
        console.print(f"reused {run.result.chunks_reused} chunk(s) from checkpoints (--resume)")
    times = ", ".join(f"{name} {sec:.1f} s" for name, sec in run.seconds.items() if sec >= 0.05)
    console.print(f"time by stage: {times}")
    if manifest["events_per_second"] is not None:
        console.print(f"processing: {manifest['events_per_second']:,.0f} events/s")
    console.print(f"wrote {len(run.files)} files to {run.outdir} in {manifest['wall_time_s']:.1f} s")
