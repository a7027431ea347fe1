"""``hepnn run``: everything a config asks for, as an explicit list of stages.

:data:`STAGES` is the run, in order; each stage is a short function of the
:class:`Run` state, which it reads and extends. See docs/architecture.md for the
data that flows between them.
"""

from __future__ import annotations

import contextlib
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
    from hepnn.columns import ColumnSpill
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
    from hepnn.normalisation import check_metadata

    specs = load_samples(cfg.samples)
    check_metadata({n: s.metadata for n, s in specs.items()}, cfg.lumi, str(cfg.samples))
    datasets = resolve_samples(
        specs, cache_dir(), progress=progress, skip_bad_files=cfg.executor.skip_bad_files,
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
    spill: ColumnSpill | None = None
    result: RunResult | None = None
    hists: dict[str, Any] = field(default_factory=dict)
    columns: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    root_extra: dict[str, Any] = field(default_factory=dict)
    #: ``lumi`` runs: the scaled histograms and ``normalisation.json`` (:mod:`hepnn.normalisation`)
    normalised: dict[str, Any] = field(default_factory=dict)
    normalisation: dict[str, Any] = field(default_factory=dict)
    #: The whole postprocessed output when it holds more than histograms (``outputs.pkl``).
    other_outputs: Any = None
    files: list[Path] = field(default_factory=list)
    manifest: dict[str, Any] = field(default_factory=dict)
    #: An earlier run's lock file was in the output folder (hepnn.lock.OutputLock.found).
    lock_found: bool = False
    #: Names in the output folder that hepnn did not write (left alone, not in the manifest).
    left_alone: list[str] = field(default_factory=list)
    #: Networks not ranked, with the reason (no events).
    ranking_skipped: dict[str, str] = field(default_factory=dict)
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

    keep = (run.models_dir,) if run.models_dir is not None else ()
    run.left_alone = start_outdir(
        run.outdir, MANIFEST, resume=run.resume, keep=keep, hepnn_folder=run.lock_found
    )
    if run.left_alone and run.console is not None:
        run.console.print(f"[yellow]left in {run.outdir} (not written by hepnn):[/] {', '.join(run.left_alone)}")
    run.datasets, run.found = prepare(run.cfg, progress=run.progress)
    if run.console is not None:
        _print_start(run)


def prepare_networks(run: Run) -> None:
    """Train every network (or take it from ``--models``); training rows are read once."""
    if not run.cfg.networks:
        return
    from hepnn.nets.data import DataReader
    from hepnn.nets.lifecycle import prepare_networks as prepare_all

    run.reader = DataReader(run.datasets, skip_bad_files=run.cfg.executor.skip_bad_files)
    run.networks = prepare_all(
        run.cfg, run.reader, run.outdir, run.models_dir, test=run.test, progress=run.progress
    )
    _check_model_features(run)


def _check_model_features(run: Run) -> None:
    """Flat networks from ``--models``: their features are branches of the data (exit 2, not 3)."""
    from hepnn.nets.apply import get_network
    from hepnn.nets.data import check_features
    from hepnn.nets.store import MODEL_JSON

    for net in run.networks.values():
        if net.trained or net.spec.kind != "flat":
            continue
        names = [d for d in (net.spec.datasets or run.datasets) if d in run.datasets]
        for path in [net.path, *net.members[1:]]:
            check_features(run.datasets, names, get_network(path).features, Path(path) / MODEL_JSON)


def rank_networks(run: Run) -> None:
    """Taylor ranking (flat) or first-order maps (jets) of every trained network (``taylor``)."""
    if run.cfg.taylor is None or run.reader is None:
        return
    from hepnn.nets.apply import get_network
    from hepnn.nets.rank import write_network_ranking

    for name, net in run.networks.items():
        if net.spec.train:
            data = run.reader.training_data(name, net.spec)
            if len(data) == 0:  # e.g. a zero-entry tree with --models: nothing to rank
                run.ranking_skipped[name] = "no events"
                continue
            run.files += write_network_ranking(
                name, get_network(net.path), data, run.cfg.taylor, run.outdir,
                seed=run.cfg.seed, formats=run.formats, progress=run.progress,
                members=[get_network(p) for p in net.members[1:]],
            )  # fmt: skip


def process_events(run: Run) -> None:
    """Run the workflow over every chunk (checkpointed, retried, merged in a fixed order)."""
    from hepnn.columns import PARTS_DIR, ColumnSpill
    from hepnn.execution import ChunkCheckpoints, run_fingerprint, run_workflow
    from hepnn.processors import (
        hepnn_columns,
        make_processor,
        postprocess_output,
        resolve_schema,
        split_output,
    )

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
        systematics=systematics_context(cfg, run.datasets),
    )
    schema, _ = resolve_schema(found.cls, cfg.schema_)
    processor = make_processor(found.cls, context, found.origin)
    models = {**context.models}
    models |= {f"{n}[{i}]": q for n, ps in context.ensembles.items() for i, q in enumerate(ps)}
    fingerprint = run_fingerprint(
        resolved_dict(cfg), found.source_sha256, models, cfg.executor.block_size, context.datasets
    )
    run.checkpoints = ChunkCheckpoints(run.outdir, fingerprint, resume=run.resume)
    run.spill = ColumnSpill(run.outdir / PARTS_DIR)
    run.result = run_workflow(
        processor, schema, run.datasets, cfg.executor,
        maxchunks=2 if run.test else None, status=run.progress, checkpoints=run.checkpoints,
        spill=run.spill,
    )  # fmt: skip
    output = postprocess_output(processor, run.result.output)  # once, on the merged output
    run.columns = hepnn_columns(output)
    for merged in (output, run.result.output):  # one mapping: write_columns updates it for all
        if run.columns and isinstance(merged, dict) and "columns" in merged:
            merged["columns"] = run.columns
    run.hists, other = split_output(output)
    run.other_outputs = output if other else None


def write_columns(run: Run) -> None:
    """``columns/<dataset>.parquet``: the per-event (per-jet) columns of every dataset.

    Written from the spilled parts, one at a time; the parts are then deleted, and later
    stages read the columns from the written files.
    """
    from hepnn.columns import ColumnParts

    for dataset, cols in run.columns.items():
        path = run.outdir / "columns" / f"{dataset}.parquet"
        cols.write_parquet(path)
        run.files.append(path)
        run.columns[dataset] = ColumnParts([path], cols.names, len(cols))
    if run.spill is not None:
        run.spill.clear()


def normalise(run: Run) -> None:
    """``lumi`` set: simulation scaled by xsec × lumi / Σw into ``hists_normalised.pkl``."""
    if run.cfg.lumi is None:
        return
    from hepnn.normalisation import normalisation, normalisation_record, normalise_hists
    from hepnn.outputs import write_pickle

    sumw = run.hists.get("sumw")
    scales = normalisation(
        run.datasets, run.cfg.lumi, workflow_sumw=sumw if isinstance(sumw, dict) else None,
        source=str(run.cfg.samples),
    )  # fmt: skip
    run.normalised, skipped = normalise_hists(run.hists, scales)
    run.normalisation = normalisation_record(scales, run.cfg.lumi, run.cfg.sqrt_s, skipped)
    write_pickle(run.outdir / "hists_normalised.pkl", run.normalised)
    write_json(run.outdir / "normalisation.json", run.normalisation)
    run.files += [run.outdir / "hists_normalised.pkl", run.outdir / "normalisation.json"]


def evaluate_networks(run: Run) -> None:
    """Held-out metrics of every network beside its baselines, ROC curves, average images."""
    if not run.networks:
        return  # nothing to evaluate (and torch and scikit-learn stay unimported)
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
    if not run.networks:
        return  # no replicas without networks (and torch stays unimported)
    from hepnn.bands import band_outputs
    from hepnn.systematics import nominal_hists

    view = nominal_hists(run.hists)  # the nominal slice of histograms with a syst axis
    run.root_extra, files = band_outputs(
        view, run.outdir / "plots", plots=bool(run.formats), formats=list(run.formats)
    )
    run.hists.update({k: v for k, v in view.items() if k not in run.hists})
    run.files += files


def systematics_context(cfg: Config, datasets: dict[str, Dataset]) -> dict[str, dict[str, Any]]:
    """The config's ``systematics`` as plain data for the workflow; unknown datasets are an error."""
    out: dict[str, dict[str, Any]] = {}
    for name, spec in (cfg.systematics or {}).items():
        unknown = [d for d in spec.datasets or [] if d not in datasets]
        if unknown:
            from hepnn.errors import ConfigError

            where = config_source(cfg) or cfg.name
            msg = f"{where}: systematics.{name}.datasets: unknown dataset(s) {unknown}; samples have {list(datasets)}"
            raise ConfigError(msg)
        out[name] = spec.model_dump()
    return out


def summarise_systematics(run: Run) -> None:
    """``systematics/<net>.{csv,md}``: each variation's effect on the score beside its linear prediction."""
    if not run.cfg.systematics:
        return
    from hepnn.systematics.table import write_variation_tables

    cut = float(run.cfg.options.get("score_cut", 0.5))
    run.files += write_variation_tables(run.hists, run.outdir / "systematics", score_cut=cut)


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
    if run.other_outputs is not None:
        from hepnn.outputs import write_other_outputs

        run.files += write_other_outputs(out, run.other_outputs)


def draw_plots(run: Run) -> None:
    """The histograms' plots (``plots/``): stacked and normalised with ``lumi``, else shapes."""
    if run.formats:
        from hepnn.plotting import PlotSettings, plot_hists
        from hepnn.systematics import nominal_hists

        settings = PlotSettings.from_resolved(resolved_dict(run.cfg), run.normalisation)
        run.files += plot_hists(
            nominal_hists(run.hists), run.outdir / "plots", list(run.formats), settings=settings,
            normalised=nominal_hists(run.normalised),
        )  # fmt: skip


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
        "checkpoints": {
            "resume": run.resume, "chunks_reused": result.chunks_reused,
            "damaged": len(run.checkpoints.damaged) if run.checkpoints is not None else 0,
        },
        "networks": {
            n: {"path": str(p.path), "kind": p.spec.kind, "trained": p.trained}
            for n, p in run.networks.items()
        },
        "complete": all(acc["complete"] for acc in datasets.values()),
        "retries": result.retries,
        "training_rows_skipped": run.reader.skipped if run.reader is not None else [],
        "ranking_skipped": dict(run.ranking_skipped),
        "datasets": datasets,
    }
    run.manifest = write_manifest(
        run.outdir, manifest, run.started.timestamp() - 1, exclude=tuple(run.left_alone)
    )
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
    normalise,
    evaluate_networks,
    cross_validate,
    summarise_bands,
    summarise_systematics,
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
    from hepnn.lock import OutputLock
    from hepnn.paths import write_fence
    from hepnn.plotstyle import plot_style

    # one run per folder, every write inside it or the conversion cache (hepnn.lock,
    # hepnn.paths); one matplotlib style for every plot of the run (hepnn.plotstyle). A
    # run that draws nothing (no plots, no networks, no review) skips the style: importing
    # mplhep and matplotlib takes 1.5-2 s.
    draws = cfg.outputs.plots or bool(cfg.networks) or cfg.review is not None
    with (
        OutputLock(run.outdir) as lock,
        write_fence(run.outdir, cache_dir()),
        plot_style(cfg.plots.experiment) if draws else contextlib.nullcontext(),
    ):
        run.lock_found = lock.found
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
    if manifest["checkpoints"]["damaged"]:
        n = manifest["checkpoints"]["damaged"]
        console.print(f"[yellow]{n} damaged checkpoint(s) recomputed[/] (sha256 mismatch; not used)")
    for retry in manifest["retries"]:
        console.print(f"[yellow]retried[/] {retry}")
    for skip in manifest["training_rows_skipped"]:
        console.print(f"[yellow]skipped training rows[/]: {skip['reason']}")
    for name, why in run.ranking_skipped.items():
        console.print(f"[yellow]ranking of {name} skipped[/]: {why}")
    times = ", ".join(f"{name} {sec:.1f} s" for name, sec in run.seconds.items() if sec >= 0.05)
    console.print(f"time by stage: {times}")
    if manifest["events_per_second"] is not None:
        console.print(f"processing: {manifest['events_per_second']:,.0f} events/s")
    console.print(f"wrote {len(run.files)} files to {run.outdir} in {manifest['wall_time_s']:.1f} s")
