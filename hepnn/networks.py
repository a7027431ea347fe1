"""Networks a config trains and applies: ``networks: {name: {training: ...}}``.

``hepnn run`` trains every network the config lists (or takes it from
``--models DIR``), saves it under ``OUTDIR/models/<name>/`` and hands the
workflow the paths, which applies them as deterministic columns
(:func:`hepnn.variables.network_score`).

.. code-block:: yaml

    networks:
      dnn:
        label: Label          # integer 0/1 branch
        weight: Weight        # branch used when training.use_weights is true
        datasets: null        # train on these datasets (default: all)
        training:             # hepnn.train.TrainSettings
          features: [DER_mass_MMC, ...]
          split: {method: kfold, folds: 3}
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import uproot
from pydantic import BaseModel, ConfigDict, Field

from hepnn.errors import ConfigError, InputError, ModelError
from hepnn.train import TrainSettings

if TYPE_CHECKING:
    from hepnn.config import Config, TaylorConfig
    from hepnn.samples import Dataset


class NetworkSpec(BaseModel):
    """One network of a config."""

    model_config = ConfigDict(extra="forbid")

    training: TrainSettings
    label: str = "Label"
    weight: str = "Weight"
    datasets: list[str] | None = Field(None, description="datasets to train on (default all)")
    max_events: int | None = Field(None, ge=1, description="train on at most this many events")


def read_columns(
    datasets: dict[str, Dataset], names: list[str], branches: list[str]
) -> dict[str, np.ndarray]:
    """Read ``branches`` of the listed datasets' files into memory, in file order."""
    parts: dict[str, list[np.ndarray]] = {b: [] for b in branches}
    for name in names:
        if name not in datasets:
            msg = f"networks: unknown dataset {name!r} (known: {', '.join(datasets)})"
            raise ConfigError(msg)
        for f in datasets[name].files:
            with uproot.open(f.root_path) as fh:
                tree = fh[f.treename]
                missing = [b for b in branches if b not in tree]
                if missing:
                    msg = f"{f.source}: branch(es) {', '.join(missing)} needed for training not in tree {f.treename!r}"
                    raise InputError(msg)
                arrays = tree.arrays(branches, library="np")
            for b in branches:
                parts[b].append(arrays[b])
    return {b: np.concatenate(v) for b, v in parts.items()}


def network_columns(
    spec: NetworkSpec, datasets: dict[str, Dataset], *, weights: bool = False
) -> dict[str, np.ndarray]:
    """The columns a network trains and is ranked on: features, event id, label (, weight)."""
    s = spec.training
    extra = [spec.weight] if (weights or s.use_weights) else []
    branches = list(dict.fromkeys([*s.features, s.split.id_column, spec.label, *extra]))
    cols = read_columns(datasets, spec.datasets or list(datasets), branches)
    if spec.max_events is not None:
        cols = {k: v[: spec.max_events] for k, v in cols.items()}
    return cols


def train_network(
    name: str,
    spec: NetworkSpec,
    datasets: dict[str, Dataset],
    outdir: Path,
    *,
    progress: bool = True,
    taylor: TaylorConfig | None = None,
    run_dir: Path | None = None,
    seed: int = 0,
    plot: bool = True,
) -> Path:
    """Train network ``name`` on the config's datasets and save it to ``outdir/name``.

    With ``taylor.monitor_every > 0`` and a ``run_dir``, the Taylor ranking on
    validation events is recorded during training and written to
    ``run_dir/ranking/<name>_history.{csv,png,pdf}``. With ``plot``, the loss and
    AUC per epoch are drawn to ``run_dir/plots/training_<name>.{png,pdf}``.
    """
    s = spec.training
    id_col = s.split.id_column
    cols = network_columns(spec, datasets)
    epoch_callback = monitor = None
    if taylor is not None and taylor.monitor_every > 0 and run_dir is not None:
        from hepnn.explain import epoch_monitor

        epoch_callback, monitor = epoch_monitor(
            run_dir, name, taylor, cols, id_col, s.split.folds, seed=seed
        )
    labels = cols[spec.label]
    if not np.isin(labels, (0, 1)).all():
        msg = f"networks.{name}: label branch {spec.label!r} must hold 0/1"
        raise InputError(msg)
    weights = cols[spec.weight] if s.use_weights else None
    from hepnn.train import train

    result = train(
        s,
        cols,
        labels,
        weights,
        cols[id_col],
        outdir / name,
        progress=progress,
        epoch_callback=epoch_callback,
    )
    if result.path is None:  # pragma: no cover - train saves when given an outdir
        msg = f"networks.{name}: training did not save a model"
        raise ModelError(msg)
    if run_dir is not None and plot:
        plot_history(result.history, run_dir / "plots" / f"training_{name}")
    if monitor is not None and monitor.history and run_dir is not None:
        from hepnn.ranking import write_history

        write_history(monitor.history, run_dir, name)
    return result.path


def find_model(name: str, models_dir: Path) -> Path:
    """``models_dir/name`` as a model folder, with a one-line error when absent."""
    path = models_dir / name
    if not (path / "model.json").is_file():
        msg = f"--models {models_dir}: no model.json for network {name!r} (expected {path / 'model.json'})"
        raise ModelError(msg)
    return path


def member_name(name: str, member: int) -> str:
    """Folder name of ensemble member ``member`` (>= 1) of network ``name``."""
    return f"{name}_member{member}"


def prepare_networks(
    cfg: Config,
    datasets: dict[str, Dataset],
    outdir: Path,
    models_dir: Path | None,
    *,
    test: bool = False,
    progress: bool = True,
) -> tuple[dict[str, Path], dict[str, list[Path]]]:
    """Train the config's networks (and ensemble members) or take them from ``models_dir``.

    Returns
    -------
    models, ensembles
        Network name → model folder; network name → member folders (member 0 is
        the network itself, member ``i`` trained with seed ``training.seed + i``),
        empty without ``uncertainty.ensemble``.
    """
    ens = cfg.uncertainty.ensemble
    members = ens.members if ens is not None else 1
    models: dict[str, Path] = {}
    ensembles: dict[str, list[Path]] = {}
    for name, spec in cfg.networks.items():
        paths = []
        for m in range(members):
            folder = name if m == 0 else member_name(name, m)
            if models_dir is not None:
                paths.append(find_model(folder, Path(models_dir)))
                continue
            training = spec.training.model_copy(update={"seed": spec.training.seed + m})
            if test:  # smoke run: a couple of epochs exercise everything
                training = training.model_copy(update={"epochs": min(2, training.epochs)})
            member_spec = spec.model_copy(update={"training": training})
            paths.append(
                train_network(
                    folder,
                    member_spec,
                    datasets,
                    outdir / "models",
                    progress=progress,
                    taylor=cfg.taylor if m == 0 else None,
                    run_dir=outdir,
                    seed=cfg.seed,
                    plot=cfg.outputs.plots,
                )
            )
        models[name] = paths[0]
        if members > 1:
            ensembles[name] = paths
    return models, ensembles


def rank_networks(
    cfg: Config,
    models: dict[str, Path],
    datasets: dict[str, Dataset],
    outdir: Path,
    *,
    progress: bool = True,
) -> list[Path]:
    """Write the Taylor ranking of every network to ``outdir/ranking/`` (``cfg.taylor``)."""
    from hepnn.explain import rank_network, write_outputs

    if cfg.taylor is None:
        return []
    files: list[Path] = []
    formats = tuple(cfg.outputs.plot_formats) if cfg.outputs.plots else ()
    for name, path in models.items():
        spec = cfg.networks[name]
        cols = network_columns(spec, datasets, weights=cfg.taylor.use_weights)
        weights = cols.get(spec.weight) if cfg.taylor.use_weights else None
        result = rank_network(
            path, cols, cfg.taylor, seed=cfg.seed, weights=weights, progress=progress
        )
        files += write_outputs(outdir, name, result, cfg.taylor, formats)
    return files


def plot_history(history: list[dict[str, float]], stem: Path) -> list[Path]:
    """Loss (train, validation) and validation AUC per epoch, one line per fold."""
    import matplotlib as mpl

    mpl.use("Agg")
    import matplotlib.pyplot as plt

    from hepnn.plotting import save_figure

    if not history:
        return []
    fig, (ax_loss, ax_auc) = plt.subplots(1, 2, figsize=(12, 4.5))
    folds = sorted({int(h.get("fold", 0) or 0) for h in history})
    for i, fold in enumerate(folds):
        rows = [h for h in history if int(h.get("fold", 0) or 0) == fold]
        epochs = [h["epoch"] for h in rows]
        label = f"fold {fold}" if len(folds) > 1 else ""
        ax_loss.plot(epochs, [h["train_loss"] for h in rows], color=f"C{i}", ls="--", lw=1)
        ax_loss.plot(epochs, [h["val_loss"] for h in rows], color=f"C{i}", label=label)
        ax_auc.plot(epochs, [h["val_auc"] for h in rows], color=f"C{i}", label=label)
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss (solid: validation, dashed: training)")
    ax_auc.set_xlabel("epoch")
    ax_auc.set_ylabel("validation AUC")
    if len(folds) > 1:
        ax_auc.legend(fontsize=9)
    fig.tight_layout()
    return save_figure(fig, stem, ("png", "pdf"))
