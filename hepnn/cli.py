"""The ``hepnn`` command: ``run``, ``review``, ``plot``, ``inspect``, ``validate``, ``generate``, ``list``.

Bad input ends with ``error: <one line>`` and a non-zero exit status; add
``--debug`` (before the subcommand) for the traceback.
"""

from __future__ import annotations

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
        except Exception as err:
            if debug:
                raise
            text = " ".join(str(err).split())[:400]
            click.echo(
                f"error: {type(err).__name__}: {text} (rerun with --debug for the traceback)",
                err=True,
            )
            sys.exit(1)

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
    """Re-draw the plots of OUTDIR from its hists.pkl, without reprocessing."""
    from hepnn.errors import InputError
    from hepnn.outputs import load_hists
    from hepnn.plotting import plot_hists

    path = Path(outdir) / "hists.pkl"
    if not path.is_file():
        msg = f"{path}: not found (is {outdir} the output folder of a hepnn run?)"
        raise InputError(msg)
    from hepnn.bands import band_outputs

    hists = load_hists(path)
    fmts = list(formats or ("png", "pdf"))
    written = plot_hists(hists, Path(outdir) / "plots", fmts)
    # bands are drawn from the replica histograms (summaries recomputed, not saved here)
    written += band_outputs(hists, Path(outdir) / "plots", plots=True, formats=fmts)[1]
    console.print(f"wrote {len(written)} plots to {Path(outdir) / 'plots'}")


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
    from hepnn.samples import load_samples
    from hepnn.workflow import find_workflow

    cfg = _load(config, sets)
    specs = load_samples(cfg.samples)
    src = config_source(cfg)
    found = find_workflow(cfg.workflow, src.parent if src else None)
    click.echo(
        f"{config}: ok — workflow {cfg.workflow} ({found.origin}), "
        f"{len(specs)} dataset(s) in {cfg.samples}, config hash {config_hash(cfg)[:16]}"
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


@main.command(name="list")
@_handle_errors
def list_() -> None:
    """List workflows, configs and samples visible from here."""
    from hepnn.models import available
    from hepnn.workflow import list_workflows

    click.echo("workflows:")
    for name, origin in list_workflows(Path.cwd() / "configs").items():
        click.echo(f"  {name:<16} {origin}")
    for folder in ("configs", "samples"):
        click.echo(f"{folder}:")
        for p in sorted(Path(folder).glob("*.yaml")):
            click.echo(f"  {p}")
    click.echo("model architectures:")
    click.echo("  " + ", ".join(available()))


if __name__ == "__main__":  # pragma: no cover
    main()
