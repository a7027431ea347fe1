"""The ``hepnn`` command: ``run``, ``review``, ``plot``, ``inspect``, ``validate``, ``generate``, ``list``.

Bad input ends with ``error: <one line>`` and a non-zero exit status; add
``--debug`` (before the subcommand) for the traceback.
"""

from __future__ import annotations

import errno
import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from hepnn import __version__
from hepnn.errors import HepnnError

console = Console(stderr=True)

EXIT_INPUT = 2
#: Exit status of an exception hepnn did not expect: a bug.
EXIT_BUG = 1
#: OSErrors caused by the machine (permissions, read-only or full file systems): exit 2.
_ENVIRONMENT_ERRNOS = frozenset(
    {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENAMETOOLONG}
)
#: Where to report a bug.
BUG_REPORT = "the hepnn issue tracker (with the output of `hepnn --debug ...`)"


def _bug(err: BaseException) -> None:
    """One line saying that an unexpected exception is a bug in hepnn, and exit 1."""
    tb = err.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    place = f" at {Path(tb.tb_frame.f_code.co_filename).name}:{tb.tb_lineno}" if tb else ""
    text = " ".join(str(err).split())[:300]
    click.echo(
        f"error: bug in hepnn {__version__}: {type(err).__name__}{place}: {text} — please report it "
        f"to {BUG_REPORT}; rerun with --debug for the traceback",
        err=True,
    )
    sys.exit(EXIT_BUG)


def _handle_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        debug = click.get_current_context().find_root().obj.get("debug", False)
        try:
            return func(*args, **kwargs)
        except HepnnError as err:
            if debug:
                raise
            click.echo(f"error: {' '.join(str(err).split())}", err=True)
            sys.exit(getattr(err, "exit_code", EXIT_INPUT))
        except KeyboardInterrupt:
            click.echo("error: interrupted", err=True)
            sys.exit(130)
        except OSError as err:
            if debug:
                raise
            if err.errno not in _ENVIRONMENT_ERRNOS:
                _bug(err)
            # the machine, not hepnn: a read-only folder, a full disk, no permission
            where = err.filename or "output"
            click.echo(f"error: {where}: {err.strerror or err}", err=True)
            sys.exit(EXIT_INPUT)
        except Exception as err:
            if debug:
                raise
            _bug(err)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="hepnn")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """Neural networks as deterministic high-level variables in coffea analyses."""
    ctx.obj = {"debug": debug}


def _load(config: str, sets: tuple[str, ...], **cli: Any) -> Any:
    from hepnn.config import load_config
    from hepnn.shipped import find_config

    config = find_config(config)  # a name such as "higgs": the shipped configs/higgs.yaml
    overrides = list(sets)
    mapping = {
        "executor": "executor.name",
        "workers": "executor.workers",
        "threads": "executor.threads_per_worker",
        "chunksize": "executor.chunksize",
        "scheduler": "executor.scheduler",
        "samples": "samples",
    }
    for key, dotted in mapping.items():
        value = cli.get(key)
        if value is not None:
            if key == "samples":
                value = str(Path(value).resolve())
            overrides.append(f"{dotted}={value}")
    return load_config(config, overrides)


@main.command()
@click.argument("config", type=click.Path(dir_okay=False))
@click.option(
    "-o",
    "--outdir",
    type=click.Path(file_okay=False),
    help="Output folder [outputs/<config name>].",
)
@click.option("--samples", type=click.Path(dir_okay=False), help="Run over another samples YAML.")
@click.option(
    "--executor", type=click.Choice(["iterative", "futures", "dask"]), help="coffea executor."
)
@click.option("--workers", type=int, help="Worker processes (futures, dask).")
@click.option("--threads", type=int, help="Threads per dask worker of a LocalCluster.")
@click.option("--chunksize", type=int, help="Entries per chunk.")
@click.option("--scheduler", help="Address of an existing dask scheduler (tcp://host:port).")
@click.option(
    "--test", is_flag=True, help="Smoke run: two chunks per dataset, two training epochs."
)
@click.option(
    "--models",
    "models_dir",
    type=click.Path(exists=True, file_okay=False),
    help="Apply the networks in this folder (e.g. OUT/models of an earlier run) instead of training.",
)
@click.option(
    "--resume",
    is_flag=True,
    help="Reuse the chunks an interrupted run into the same output folder finished.",
)
@click.option(
    "--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override a config key (repeatable)."
)
@click.option("--quiet", is_flag=True, help="No progress bars or tables.")
@_handle_errors
def run(
    config: str,
    outdir: str | None,
    test: bool,
    resume: bool,
    models_dir: str | None,
    sets: tuple[str, ...],
    quiet: bool,
    **cli: Any,
) -> None:
    """Run CONFIG: process its samples and write hists, plots and a manifest.

    Exit status: 0 done (chunks skipped only where executor.skip_bad_files
    allows), 2 bad config or input, 3 a chunk failed after its retries (the
    finished chunks are checkpointed: fix the input and rerun with --resume),
    130 interrupted.
    """
    from hepnn.pipeline import EXIT_SKIPPED, run_config

    if cli.get("scheduler") and not cli.get("executor"):
        cli["executor"] = "dask"
    cfg = _load(config, sets, **cli)
    summary = run_config(
        cfg,
        Path(outdir) if outdir else None,
        test=test,
        progress=not quiet,
        console=None if quiet else console,
        resume=resume,
        models_dir=Path(models_dir) if models_dir else None,
    )
    if summary.skipped and not cfg.executor.skip_bad_files:  # pragma: no cover - guarded upstream
        sys.exit(EXIT_SKIPPED)


@main.command()
@click.argument("config", type=click.Path(dir_okay=False))
@click.option(
    "-o", "--outdir", type=click.Path(file_okay=False), help="Run folder [outputs/<config name>]."
)
@click.option(
    "--models",
    "models_dir",
    type=click.Path(exists=True, file_okay=False),
    help="Networks to rank [OUTDIR/models].",
)
@click.option("--samples", type=click.Path(dir_okay=False), help="Rank on another samples YAML.")
@click.option("--order", type=click.IntRange(1, 3), help="Highest Taylor order (1, 2 or 3).")
@click.option("--top", type=int, help="Rows in the ranking tables.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override a config key.")
@_handle_errors
def rank(
    config: str,
    outdir: str | None,
    models_dir: str | None,
    samples: str | None,
    order: int | None,
    top: int | None,
    sets: tuple[str, ...],
) -> None:
    """Rank the inputs of CONFIG's trained networks by their Taylor coefficients."""
    from hepnn.config import TaylorConfig
    from hepnn.nets.data import DataReader
    from hepnn.nets.lifecycle import prepare_networks
    from hepnn.pipeline import Run, cache_dir, default_outdir, rank_networks
    from hepnn.samples import load_samples, resolve_samples

    cfg = _load(config, sets, samples=samples)
    taylor = cfg.taylor or TaylorConfig()
    update: dict[str, Any] = {}
    if order is not None:
        update["orders"] = list(range(1, order + 1))
    if top is not None:
        update["top"] = top
    cfg.taylor = taylor.model_copy(update=update)
    out = Path(outdir) if outdir else default_outdir(cfg)
    mdir = Path(models_dir) if models_dir else out / "models"
    run = Run(cfg, out, models_dir=mdir)
    run.datasets = resolve_samples(load_samples(cfg.samples), cache_dir())
    run.reader = DataReader(run.datasets)
    run.networks = prepare_networks(cfg, run.reader, out, mdir)
    from hepnn.lock import OutputLock
    from hepnn.paths import write_fence

    with OutputLock(out), write_fence(out):  # not while a run writes into the same folder
        rank_networks(run)
    for f in run.files:
        if f.suffix == ".md":
            click.echo(f.read_text(encoding="utf-8"))
    console.print(f"wrote {len(run.files)} files to {out / 'ranking'}")


@main.command()
@click.argument("config", type=click.Path(dir_okay=False))
@click.option(
    "-o", "--outdir", type=click.Path(file_okay=False), help="Run folder [outputs/<config name>]."
)
@click.option(
    "--models",
    "models_dir",
    type=click.Path(exists=True, file_okay=False),
    help="Networks to review [OUTDIR/models].",
)
@click.option(
    "--samples", type=click.Path(dir_okay=False), help="Simulation and data (is_data: true) to compare."
)
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override a config key.")
@_handle_errors
def review(
    config: str, outdir: str | None, models_dir: str | None, samples: str | None, sets: tuple[str, ...]
) -> None:
    """Write OUTDIR/review/ for CONFIG's trained networks: GoF against data, overtraining, README.md.

    Uses the config's review section (defaults without one) and the ranking in
    OUTDIR/ranking when present; metrics.json is left as it is (the overtraining
    test goes to review/overtraining.json).
    """
    from hepnn.config import ReviewConfig
    from hepnn.nets.data import DataReader
    from hepnn.nets.lifecycle import prepare_networks
    from hepnn.pipeline import cache_dir, default_outdir
    from hepnn.review import write_review
    from hepnn.samples import load_samples, resolve_samples

    cfg = _load(config, sets, samples=samples)
    if cfg.review is None:
        cfg.review = ReviewConfig()
    out = Path(outdir) if outdir else default_outdir(cfg)
    mdir = Path(models_dir) if models_dir else out / "models"
    reader = DataReader(resolve_samples(load_samples(cfg.samples), cache_dir()))
    networks = prepare_networks(cfg, reader, out, mdir)
    formats = tuple(cfg.outputs.plot_formats) if cfg.outputs.plots else ()
    _, files = write_review(cfg, networks, reader, out, formats=formats)
    console.print(f"wrote {len(files)} files to {out / 'review'} (start with README.md)")


@main.command()
@click.argument("outdir", type=click.Path(exists=True, file_okay=False))
@click.option(
    "--format",
    "formats",
    multiple=True,
    type=click.Choice(["png", "pdf", "svg"]),
    help="Plot formats [png, pdf].",
)
@_handle_errors
def plot(outdir: str, formats: tuple[str, ...]) -> None:
    """Re-draw every plot of OUTDIR (histograms, bands, ROC, training, rankings) from its files."""
    from hepnn.replot import redraw

    written = redraw(Path(outdir), list(formats or ("png", "pdf")))
    console.print(f"wrote {len(written)} plots to {outdir} (plots/, ranking/)")


@main.command()
@click.argument("path", type=click.Path(exists=True))
@_handle_errors
def inspect(path: str) -> None:
    """Summarise a sample file (ROOT, Higgs CSV, npy folder), hists.pkl or output folder."""
    from hepnn.inspection import inspect_path

    click.echo(inspect_path(Path(path)))


@main.command()
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE")
@_handle_errors
def validate(config: str, sets: tuple[str, ...]) -> None:
    """Check CONFIG, its samples and its workflow without processing anything."""
    from hepnn.config import config_hash, config_source
    from hepnn.errors import ConfigError
    from hepnn.normalisation import check_metadata
    from hepnn.pipeline import cache_dir
    from hepnn.samples import load_samples, resolve_samples
    from hepnn.workflow import find_workflow

    # the same validators as `run`: config values, dataset names, every input opened
    cfg = _load(config, sets)
    specs = load_samples(cfg.samples)
    check_metadata({n: s.metadata for n, s in specs.items()}, cfg.lumi, str(cfg.samples))
    for name, spec in cfg.networks.items():
        for ds in spec.datasets or []:
            if ds not in specs:
                msg = f"{config}: networks.{name}.datasets: unknown dataset {ds!r} (known: {', '.join(specs)})"
                raise ConfigError(msg)
    datasets = resolve_samples(specs, cache_dir(), skip_bad_files=cfg.executor.skip_bad_files)
    src = config_source(cfg)
    found = find_workflow(cfg.workflow, src.parent if src else None)
    from hepnn.processors import make_processor, resolve_schema
    from hepnn.workflow import WorkflowContext

    resolve_schema(found.cls, cfg.schema_)
    make_processor(found.cls, WorkflowContext(options=dict(cfg.options)), found.origin)
    entries = sum(d.entries for d in datasets.values())
    skipped = sum(len(d.skipped_files) for d in datasets.values())
    click.echo(
        f"{config}: ok — workflow {cfg.workflow} ({found.origin}), "
        f"{len(specs)} dataset(s) in {cfg.samples} ({entries} entries"
        f"{f', {skipped} unreadable file(s) to skip' if skipped else ''}), "
        f"config hash {config_hash(cfg)[:16]}"
    )


@main.command()
@click.argument("process", type=click.Choice(["top", "qcd"]))
@click.option(
    "-n", "--jets", "n_jets", type=click.IntRange(min=1), required=True, help="Jets to keep."
)
@click.option("-o", "--output", type=click.Path(dir_okay=False), required=True, help="ROOT file.")
@click.option("--seed", type=click.IntRange(1, 900_000_000), default=1, show_default=True)
@click.option("--pt-min", type=float, default=550.0, show_default=True, help="Jet pT >= [GeV].")
@click.option("--pt-max", type=float, default=650.0, show_default=True, help="Jet pT < [GeV].")
@click.option("--eta-max", type=float, default=2.0, show_default=True, help="Jet |eta| <.")
@click.option("--max-events", type=click.IntRange(min=1), help="Pythia event cap [1000 + 200 N].")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@_handle_errors
def generate(
    process: str,
    n_jets: int,
    output: str,
    seed: int,
    pt_min: float,
    pt_max: float,
    eta_max: float,
    max_events: int | None,
    quiet: bool,
) -> None:
    """Generate PROCESS (top or qcd) anti-kT R=0.8 jets with Pythia 8 + FastJet into a NanoAOD-like file.

    Needs the optional extra: pip install 'hepnn[generate]'. One jet per event
    (label 1 top, 0 QCD); use the file as a `format: root` sample of the toptag workflow.
    """
    from hepnn.generate import generate as run_generate

    s = run_generate(
        process,
        n_jets,
        output,
        seed=seed,
        pt_min=pt_min,
        pt_max=pt_max,
        eta_max=eta_max,
        max_events=max_events,
        progress=not quiet,
    )
    console.print(
        f"wrote {s.n_jets} {process} jets to {s.path}: {s.n_events} events, "
        f"efficiency {s.efficiency:.3f}, {s.seconds:.1f} s ({s.seconds_per_1000_events:.1f} s / 1000 events)"
    )


@main.command()
@click.argument("models_dir", type=click.Path(exists=True, file_okay=False))
@click.option(
    "-o",
    "--output",
    "outdir",
    type=click.Path(file_okay=False),
    required=True,
    help="Export folder.",
)
@click.option(
    "--score",
    type=click.Choice(["sigmoid", "logit"]),
    default="sigmoid",
    show_default=True,
    help="What the exported graphs return.",
)
@click.option("--no-onnx", is_flag=True, help="TorchScript only (no onnx package needed).")
@_handle_errors
def export(models_dir: str, outdir: str, score: str, no_onnx: bool) -> None:
    """Export MODELS_DIR's networks (OUT/models, or one network folder) to TorchScript and ONNX.

    Per network and fold: OUTDIR/<net>/fold<i>.pt and fold<i>.onnx with the input
    preprocessing inside the graph, and OUTDIR/<net>/export.json (inputs, fold rule, output).
    """
    from hepnn.nets.export import export_models

    written = export_models(models_dir, outdir, output=score, onnx=not no_onnx)  # type: ignore[arg-type]
    for name, files in written.items():
        console.print(f"{name}: " + ", ".join(f.name for f in files))
    console.print(f"wrote {sum(map(len, written.values()))} files to {outdir}")


@main.command(name="list")
@_handle_errors
def list_() -> None:
    """List workflows, configs and samples visible from here."""
    from hepnn.models import available
    from hepnn.shipped import shipped_files
    from hepnn.workflow import list_workflows

    click.echo("workflows:")
    for name, origin in list_workflows(Path.cwd() / "configs").items():
        click.echo(f"  {name:<16} {origin}")
    for folder in ("configs", "samples"):
        click.echo(f"{folder}:")
        here = sorted(Path(folder).glob("*.yaml"))
        for p in here:
            click.echo(f"  {p}")
        for p in shipped_files(folder):  # shipped with hepnn (hepnn.shipped), if not here
            if p.resolve() not in {h.resolve() for h in here}:
                click.echo(f"  {p}")
    click.echo("model architectures:")
    click.echo("  " + ", ".join(available()))


if __name__ == "__main__":  # pragma: no cover
    main()
