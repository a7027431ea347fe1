"""Train a config's networks (or take them from ``--models``), the same way for every kind.

>>> reader = DataReader(datasets)
>>> prepared = prepare_networks(cfg, reader, outdir, models_dir=None)
>>> prepared["dnn"].path, prepared["dnn"].members      # model folder, ensemble members

For each network with ``train: true`` (and no ``--models``) the training rows are
read once (:class:`hepnn.nets.data.DataReader`), every model of its split trained
(:func:`hepnn.nets.train.train_network`) and saved to ``OUTDIR/models/<name>/``;
with ``uncertainty.ensemble`` the network is trained ``members`` times, member
``i`` with seed ``training.seed + i`` and its own split
(:func:`hepnn.nets.split.member_split`: k-fold members get hashed folds salted
with ``training.seed + i``, so they also differ in which events they train on),
into ``models/<name>_member<i>/``; member 0 is the deployed network, unchanged. With a ``taylor`` section the first member records
its ranking after every epoch (flat inputs; ``ranking/<name>_history.*``), and
the loss and AUC per epoch are drawn to ``plots/training_<name>.*``. A flat
network (member 0) is compared with a boosted tree on the rows its models held
out (:func:`hepnn.nets.report.heldout_comparison`, ``metrics.vs_boosted_trees`` in
``model.json``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from hepnn.errors import ModelError
from hepnn.nets.store import MODEL_JSON, parse_model_json
from hepnn.plotting import save_figure

if TYPE_CHECKING:
    from hepnn.config import Config
    from hepnn.nets.data import DataReader
    from hepnn.nets.spec import NetworkSpec


@dataclass
class PreparedNetwork:
    """A network of the run: its spec, model folder and ensemble members (member 0 first)."""

    name: str
    spec: NetworkSpec
    path: Path
    members: list[Path] = field(default_factory=list)
    trained: bool = False


def member_name(name: str, member: int) -> str:
    """Folder name of ensemble member ``member`` (>= 1) of network ``name``."""
    return name if member == 0 else f"{name}_member{member}"


def find_model(name: str, models_dir: Path, spec: NetworkSpec) -> Path:
    """``models_dir/name`` as a model folder of the spec's kind, with a one-line error otherwise."""
    path = Path(models_dir) / name
    json_path = path / MODEL_JSON
    if not json_path.is_file():
        msg = f"--models {models_dir}: no model.json for network {name!r} (expected {json_path})"
        raise ModelError(msg)
    meta = parse_model_json(json_path, json_path.read_bytes())
    if meta["inputs"]["kind"] != spec.kind:
        msg = f"{json_path}: expected a {spec.kind} network, found {meta['inputs']['kind']}"
        raise ModelError(msg)
    return path


def plot_history(history: list[dict[str, float]], stem: Path, formats: tuple[str, ...]) -> list[Path]:
    """Loss (train, validation) and validation AUC per epoch, one line per model."""
    import matplotlib.pyplot as plt

    if not history or not formats:
        return []
    fig, (ax_loss, ax_auc) = plt.subplots(1, 2, figsize=(12, 4.5))
    models = sorted({int(h["model"]) for h in history})
    for i, m in enumerate(models):
        rows = [h for h in history if int(h["model"]) == m]
        epochs = [h["epoch"] for h in rows]
        label = f"model {m}" if len(models) > 1 else ""
        ax_loss.plot(epochs, [h["train_loss"] for h in rows], color=f"C{i}", ls="--", lw=1)
        ax_loss.plot(epochs, [h["val_loss"] for h in rows], color=f"C{i}", label=label)
        ax_auc.plot(epochs, [h["val_auc"] for h in rows], color=f"C{i}", label=label)
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss (solid: validation, dashed: training)")
    ax_auc.set_xlabel("epoch")
    ax_auc.set_ylabel("validation AUC")
    if len(models) > 1:
        ax_auc.legend(fontsize=9)
    fig.tight_layout()
    return save_figure(fig, stem, formats)


def quick_spec(spec: NetworkSpec) -> NetworkSpec:
    """``spec`` capped at two epochs: a smoke run (``--test``) that exercises everything."""
    training = spec.training.model_copy(update={"epochs": min(2, spec.training.epochs)})
    return spec.model_copy(update={"training": training})


def _train(
    cfg: Config, name: str, spec: NetworkSpec, reader: DataReader, outdir: Path, member: int,
    *, progress: bool,
) -> Path:  # fmt: skip
    from hepnn.nets.rank import epoch_monitor
    from hepnn.nets.split import member_split
    from hepnn.nets.store import save_network
    from hepnn.nets.train import train_network
    from hepnn.taylor import write_history

    data = reader.training_data(name, spec)
    folder = member_name(name, member)
    if member:
        spec = spec.model_copy(
            update={
                "training": spec.training.model_copy(update={"seed": spec.training.seed + member}),
                "split": member_split(spec.split, spec.training.seed, member),
            }
        )
    hook = monitor = None
    taylor = cfg.taylor
    if member == 0 and taylor is not None and taylor.monitor_every > 0 and spec.kind == "flat":
        hook, monitor = epoch_monitor(name, spec.split, data, taylor, seed=cfg.seed)
    result = train_network(folder, spec, data, progress=progress, on_epoch=hook)
    if member == 0 and spec.kind == "flat":
        from hepnn.nets.report import HIGGS_FORMAT, heldout_comparison

        trained_on = {f["dataset"] for f in data.files}
        challenge = bool(trained_on) and all(
            reader.datasets[ds].format == HIGGS_FORMAT for ds in trained_on if ds in reader.datasets
        )
        result.metrics["vs_boosted_trees"] = heldout_comparison(
            result, data, seed=cfg.seed, challenge=challenge
        )
    path = save_network(outdir / "models" / folder, folder, result, data)
    formats = tuple(cfg.outputs.plot_formats) if cfg.outputs.plots else ()
    if member == 0:
        plot_history(result.history, outdir / "plots" / f"training_{name}", formats)
    if monitor is not None and monitor.history:
        write_history(monitor.history, outdir, name, formats=formats)
    return path


def prepare_networks(
    cfg: Config,
    reader: DataReader,
    outdir: Path,
    models_dir: Path | None,
    *,
    test: bool = False,
    progress: bool = True,
) -> dict[str, PreparedNetwork]:
    """Train the config's networks (and ensemble members) or take them from ``models_dir``.

    Networks with ``train: false`` are applied only when ``models_dir`` has them
    (otherwise left out). ``test`` caps every training at two epochs.

    Returns
    -------
    dict
        Network name → :class:`PreparedNetwork`, in config order.
    """
    ens = cfg.uncertainty.ensemble
    n_members = ens.members if ens is not None else 1
    out: dict[str, PreparedNetwork] = {}
    for name, spec in cfg.networks.items():
        if models_dir is not None:
            paths = [find_model(member_name(name, m), Path(models_dir), spec) for m in range(n_members)]
            out[name] = PreparedNetwork(name, spec, paths[0], paths if n_members > 1 else [])
        elif spec.train:
            run_spec = quick_spec(spec) if test else spec
            paths = [
                _train(cfg, name, run_spec, reader, outdir, m, progress=progress)
                for m in range(n_members)
            ]
            out[name] = PreparedNetwork(name, spec, paths[0], paths if n_members > 1 else [], True)
    return out
