"""First-order Taylor maps of jet taggers: figures and the ranking record.

Pure drawing and bookkeeping for maps computed by
:func:`hepnn.taylor.mean_abs_gradient`: an image tagger's ``<|dy/dpixel|>``
drawn as one image per channel (:func:`image_map_figure`), a constituent
tagger's ``<|dy/dx_{f,p}|>`` drawn as a feature x constituent map
(:func:`sequence_map_figure`), and the first-order :class:`TaylorResult` of
one summed or aggregated value per input (:func:`first_order_result`) for
:func:`hepnn.taylor.write_ranking`. Saving the figures is the caller's job.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from hepnn.taylor.result import TaylorResult

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["first_order_result", "image_map_figure", "sequence_map_figure"]


def image_map_figure(gmap: np.ndarray, channels: Sequence[str], title: str) -> Figure:
    """Draw an image map ``(C, H, W)`` as one panel per channel.

    Parameters
    ----------
    gmap
        ``<|dy/dpixel|>`` per channel, eta pixel and phi pixel (e.g. from
        :func:`hepnn.taylor.mean_abs_gradient` on ``(N, C, H, W)`` images).
    channels
        Channel names, one per panel.
    title
        Prefix of each panel title (e.g. the tagger's name):
        ``"<title>: ⟨|∂y/∂pixel|⟩, channel <name>"``.

    Returns
    -------
    matplotlib.figure.Figure
        The open figure (the caller saves and closes it).
    """
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(channels), figsize=(6 * len(channels), 5), squeeze=False)
    for c, ax in enumerate(axes[0]):
        im = ax.imshow(gmap[c].T, origin="lower", cmap="viridis")
        ax.set_xlabel("η pixel (principal axis)")
        ax.set_ylabel("φ pixel")
        ax.set_title(
            rf"{title}: $\langle|\partial y/\partial$pixel$|\rangle$, channel {channels[c]}",
            fontsize=11,
        )
        fig.colorbar(im, ax=ax)
    return fig


def sequence_map_figure(fmap: np.ndarray, features: Sequence[str], title: str) -> Figure:
    """Draw a constituent map ``(F, P)``: one row per feature, one column per constituent.

    Parameters
    ----------
    fmap
        ``<|dy/dx_{f,p}|>`` per physics feature ``f`` and constituent slot ``p``
        (mask channel already removed).
    features
        Feature names, one per row.
    title
        Prefix of the title (e.g. the tagger's name):
        ``"<title>: ⟨|∂y/∂x|⟩ per feature and constituent"``.

    Returns
    -------
    matplotlib.figure.Figure
        The open figure (the caller saves and closes it).
    """
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4))
    im = ax.imshow(fmap, aspect="auto", cmap="viridis", origin="lower")
    ax.set_yticks(range(len(features)), features)
    ax.set_xlabel("constituent (pT-ordered)")
    ax.set_title(
        rf"{title}: $\langle|\partial y/\partial x|\rangle$ per feature and constituent",
        fontsize=11,
    )
    fig.colorbar(im, ax=ax)
    return fig


def first_order_result(
    names: Sequence[str], values: Sequence[float] | np.ndarray, n_events: int
) -> TaylorResult:
    """A first-order ranking record: one term per name, unweighted over ``n_events``.

    Parameters
    ----------
    names
        Term (and input) names, e.g. ``image_<channel>`` or constituent features.
    values
        One value per name (a summed image sensitivity per channel, or the
        constituent-aggregated map per feature), stored as float64.
    n_events
        Number of events the map was averaged over (also the sum of weights).

    Returns
    -------
    TaylorResult
        Terms ``(0,), (1,), ...``, all of order 1, output ``"sigmoid"``.
    """
    names = list(names)
    return TaylorResult(
        terms=[(i,) for i in range(len(names))],
        names=names,
        orders=[1] * len(names),
        values=np.asarray(values, dtype=np.float64),
        n_events=int(n_events),
        sum_weights=float(n_events),
        input_names=names,
    )
