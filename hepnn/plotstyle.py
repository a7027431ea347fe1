"""One matplotlib style for every hepnn plot, without touching global matplotlib state.

>>> with plot_style("cms"):          # mplhep's CMS style inside the block only
...     fig = new_figure(figsize=(7, 6))

:func:`plot_style` applies an mplhep style with :func:`matplotlib.style.context`
(an ``rc_context``: the caller's ``rcParams`` come back when the block ends) and
never calls ``matplotlib.use``, ``plt.style.use`` or ``plt.rcdefaults``. Nested
blocks without an experiment inherit the outer style, so ``hepnn run`` opens one
block around all its stages (the config's ``plots.experiment``) and every plot
drawn inside -- histograms, ROC curves, rankings, bands, training curves -- looks
the same, while a function called on its own still gets the default style.

Styles: ``cms`` → ``mplhep.style.CMS``, ``atlas`` → ``mplhep.style.ATLAS``, none →
``mplhep.style.ROOT`` (an experiment-neutral ROOT look).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["EXPERIMENTS", "active_experiment", "new_figure", "plot_style", "style_dict"]

#: Experiments with their own style and label.
EXPERIMENTS = ("cms", "atlas")
_NONE = "none"
#: The experiment of the innermost active :func:`plot_style` block (unset outside).
_ACTIVE: ContextVar[str | None] = ContextVar("hepnn_plot_style", default=None)


def style_dict(experiment: str | None) -> dict[str, Any]:
    """The mplhep style (rcParams) of ``experiment`` (``cms``, ``atlas`` or None)."""
    import mplhep

    if experiment not in (*EXPERIMENTS, None):
        msg = f"unknown experiment {experiment!r}: expected one of {EXPERIMENTS} or None"
        raise ValueError(msg)
    style = {"cms": mplhep.style.CMS, "atlas": mplhep.style.ATLAS}.get(
        experiment or "", mplhep.style.ROOT
    )
    return dict(style)


def active_experiment() -> str | None:
    """The experiment of the enclosing :func:`plot_style` block (None: none or no block)."""
    active = _ACTIVE.get()
    return None if active in (None, _NONE) else active


@contextmanager
def plot_style(experiment: str | None = None) -> Iterator[None]:
    """Draw (and save) figures inside this block with the hepnn style.

    Parameters
    ----------
    experiment
        ``cms``, ``atlas`` or None. None inside another block keeps that block's
        style (nothing changes); None outside any block applies the neutral style.
    """
    if experiment is None and _ACTIVE.get() is not None:
        yield
        return
    import matplotlib.style

    token = _ACTIVE.set(experiment or _NONE)
    try:
        with matplotlib.style.context(style_dict(experiment)):
            yield
    finally:
        _ACTIVE.reset(token)


def new_figure(**kwargs: Any) -> Figure:
    """A ``matplotlib.figure.Figure`` outside pyplot's registry (no backend, no display)."""
    from matplotlib.figure import Figure

    return Figure(**kwargs)
