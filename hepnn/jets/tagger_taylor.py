"""First-order Taylor maps of the jet taggers: what in a jet image or sequence matters.

For an image tagger, ⟨|∂y/∂pixel|⟩ over the held-out jets, drawn as an image per
channel; for a constituent tagger, ⟨|∂y/∂x_{f,p}|⟩ per feature f and constituent
slot p (only real constituents count), drawn as a map and aggregated over the
constituents into one value per feature — a ranking of the constituent features.
y is the sigmoid score, x the tagger's normalised inputs (as for
:mod:`hepnn.taylor`). Written to ``OUTDIR/ranking/<tagger>_taylor_map.*`` and
``OUTDIR/ranking/<tagger>.{csv,json,md}`` (first order only).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib as mpl

mpl.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from hepnn.explain import _prepared_inputs
from hepnn.jets.tagger_training import read_training_jets
from hepnn.jets.taggers import TEST, get_tagger, split_codes
from hepnn.plotting import save_figure
from hepnn.taylor import TaylorResult, aggregate_constituents, mean_abs_gradient

if TYPE_CHECKING:
    from hepnn.jets.taggers import TaggerSpec
    from hepnn.samples import Dataset


def tagger_taylor_maps(
    name: str,
    spec: TaggerSpec,
    model_path: Path,
    datasets: dict[str, Dataset],
    outdir: Path,
    *,
    max_jets: int = 2000,
    formats: tuple[str, ...] = ("png", "pdf"),
) -> list[Path]:
    """Compute and write the first-order Taylor map of tagger ``name`` on its test jets."""
    from hepnn.ranking import write_ranking

    loaded = get_tagger(model_path)
    jets = read_training_jets(name, spec, datasets)
    rows = np.flatnonzero(split_codes(jets.ids, loaded.split) == TEST)[:max_jets]
    if rows.size == 0:
        return []
    x = loaded.prep.transform(loaded.prep.raw(jets.batch.take(rows)))
    files: list[Path] = []
    stem = outdir / "ranking" / f"{name}_taylor_map"
    if loaded.kind == "image":
        with _prepared_inputs():
            gmap = mean_abs_gradient(loaded.model, x, check_inputs=False)
        channels = list(loaded.prep.settings["channels"])
        fig, axes = plt.subplots(1, len(channels), figsize=(6 * len(channels), 5), squeeze=False)
        for c, ax in enumerate(axes[0]):
            im = ax.imshow(gmap[c].T, origin="lower", cmap="viridis")
            ax.set_xlabel("η pixel (principal axis)")
            ax.set_ylabel("φ pixel")
            ax.set_title(f"{name}: ⟨|∂y/∂pixel|⟩, channel {channels[c]}", fontsize=11)
            fig.colorbar(im, ax=ax)
        files += save_figure(fig, stem, formats)
        values = gmap.sum(axis=(1, 2))  # one summed sensitivity per channel
        names = [f"image_{ch}" for ch in channels]
    else:
        features = list(loaded.prep.settings["features"])
        # only real constituents count: the last input channel is the mask
        mask = np.repeat((x[:, -1:] != 0), x.shape[1], axis=1)
        with _prepared_inputs():
            fmap, norm = mean_abs_gradient(
                loaded.model, x, mask=mask, check_inputs=False, return_norm=True
            )
        fmap = fmap[:-1]  # the mask channel is not a physics input
        values = aggregate_constituents(fmap, norm[:-1])
        names = features
        fig, ax = plt.subplots(figsize=(9, 4))
        im = ax.imshow(fmap, aspect="auto", cmap="viridis", origin="lower")
        ax.set_yticks(range(len(features)), features)
        ax.set_xlabel("constituent (pT-ordered)")
        ax.set_title(f"{name}: ⟨|∂y/∂x|⟩ per feature and constituent", fontsize=11)
        fig.colorbar(im, ax=ax)
        files += save_figure(fig, stem, formats)
    result = TaylorResult(
        terms=[(i,) for i in range(len(names))],
        names=names,
        orders=[1] * len(names),
        values=np.asarray(values, dtype=np.float64),
        n_events=int(rows.size),
        sum_weights=float(rows.size),
        input_names=names,
    )
    files += list(write_ranking(result, outdir, name, formats=formats).values())
    return files
