"""MC-dropout and deep-ensemble uncertainty with replica-coherent, seeded masks.

>>> mc = MCDropout(model, samples=100, seed=1234)
>>> s = mc.scores(x)  # (100, N): row t is thinned network t applied to every event
>>> mean, std = mc.mean_std(x)  # per event, over replicas
>>> ens = Ensemble([net_a, net_b, net_c])
>>> e = ens.scores(x)  # (3, N)

MC dropout (Gal & Ghahramani, arXiv:1506.02142) samples thinned networks. Torch's
train-mode dropout draws a fresh mask for every event from a global generator, so
its output depends on batch composition and the run, and a histogram filled from
it has almost no spread. Here replica ``t`` is **one** thinned network applied to
every event: the mask of dropout site ``l`` comes from a CPU ``torch.Generator``
seeded by a 64-bit hash of ``(seed, t, l)``. Each replica thereby fills a whole
histogram, the band is the spread over replicas, and with the fixed-size padded
micro-batches of :func:`hepnn.models.forward.padded_apply` every number is bitwise
independent of chunking, executor and batch composition, and reproducible.

Mask conventions (the reproducibility contract; a test pins them):

* a *dropout site* is one application of a dropout module during a forward pass,
  numbered ``0, 1, ...`` in execution order (a module called twice is two sites);
* ``uniform = torch.rand(shape, generator=Generator().manual_seed(replica_seed(seed, t, l)))``
  and the site keeps the units with ``uniform >= p``, scaled by ``1 / (1 - p)``.
  The same uniforms serve every ``p``, so masks are nested in ``p``;
* ``nn.Dropout`` (elementwise in training) gets a mask over the layer's whole
  input feature shape without the batch dimension: ``(F,)`` for an MLP,
  ``(C, P)`` for a 1D CNN, ``(C, H, W)`` for a 2D CNN. ``nn.Dropout1d/2d/3d``
  (channel dropout in training) get ``(C, 1, ...)``: whole channels are dropped.
  The inference noise has the structure the network was trained with, which is
  what the variational interpretation needs (Gal's Bayesian CNN, arXiv:1506.02158,
  uses elementwise Bernoulli noise on the feature maps; that is ``nn.Dropout``).

The model is always run in eval mode (BatchNorm uses its running statistics and
never updates them); the module training flags are restored afterwards without
calling ``model.train()``.
"""

from __future__ import annotations

import contextlib
import hashlib
import struct
from collections.abc import Callable, Iterator, Sequence
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hepnn.errors import ModelError
from hepnn.models.forward import MICRO_BATCH, padded_apply
from hepnn.models.mlp import MLP

__all__ = [
    "Ensemble",
    "MCDropout",
    "dropout_modules",
    "mask_shape",
    "replica_mask",
    "replica_seed",
]

Output = Literal["logit", "sigmoid", "softmax"]

#: Dropout modules whose masks are whole channels (the first feature dimension).
_CHANNEL_DROPOUT = (nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)
#: Dropout variants whose inference noise is not a scaled Bernoulli mask.
_UNSUPPORTED_DROPOUT = (nn.AlphaDropout, nn.FeatureAlphaDropout)


def replica_seed(seed: int, replica: int, site: int) -> int:
    """64-bit generator seed of dropout site ``site`` in replica ``replica``.

    The three integers are packed little-endian as signed 64-bit and hashed with
    BLAKE2b (8-byte digest): nearby ``(seed, t, l)`` give unrelated streams, and the
    value does not depend on the platform or Python's hash randomisation.
    """
    digest = hashlib.blake2b(struct.pack("<qqq", seed, replica, site), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def replica_mask(
    seed: int,
    replica: int,
    site: int,
    shape: Sequence[int],
    p: float,
    *,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Scaled keep mask ``keep / (1 - p)`` of one dropout site in one replica.

    Parameters
    ----------
    seed, replica, site
        Identify the mask; see :func:`replica_seed`.
    shape
        Mask shape, the layer's input feature shape without the batch dimension
        (``(C, 1, 1)`` for channel dropout on images).
    p
        Drop probability, ``0 <= p < 1``. ``p = 0`` gives exactly ones.
    dtype
        Floating dtype of the result.

    Returns
    -------
    torch.Tensor
        Tensor of ``shape`` with entries ``0`` or ``1 / (1 - p)``.
    """
    if not 0.0 <= p < 1.0:
        msg = f"dropout rate must be in [0, 1) for MC dropout, got {p}"
        raise ValueError(msg)
    gen = torch.Generator(device="cpu")
    gen.manual_seed(replica_seed(seed, replica, site))
    keep = torch.rand(tuple(shape), generator=gen) >= p
    return keep.to(dtype) * (1.0 / (1.0 - p))


def dropout_modules(model: nn.Module) -> list[nn.Module]:
    """All dropout modules of ``model``, in registration order.

    Raises
    ------
    ModelError
        If ``model`` has no ``nn.Dropout`` layers (a zero band would be silently
        wrong) or uses alpha dropout, whose noise is not a Bernoulli mask.
        Functional ``F.dropout`` inside ``forward`` cannot be seen and is inert in
        eval mode: models must use dropout modules.
    """
    found = [m for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd)]
    bad = [type(m).__name__ for m in found if isinstance(m, _UNSUPPORTED_DROPOUT)]
    if bad:
        msg = f"MC dropout supports nn.Dropout and nn.Dropout1d/2d/3d, not {', '.join(bad)}"
        raise ModelError(msg)
    if not found:
        msg = f"{type(model).__name__} has no nn.Dropout layers: MC dropout needs dropout modules"
        raise ModelError(msg)
    return found


def mask_shape(module: nn.Module, feature_shape: Sequence[int]) -> tuple[int, ...]:
    """Mask shape for ``module`` acting on inputs of ``(batch, *feature_shape)``.

    Channel dropout (``nn.Dropout1d/2d/3d``) on inputs with at least two feature
    dimensions gets ``(C, 1, ...)``; everything else the whole feature shape.
    """
    if isinstance(module, _CHANNEL_DROPOUT) and len(feature_shape) >= 2:
        # Channel dropout: one Bernoulli per channel, broadcast over positions.
        return (feature_shape[0],) + (1,) * (len(feature_shape) - 1)
    return tuple(feature_shape)


_OUTPUTS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "logit": lambda t: t,
    "sigmoid": torch.sigmoid,
    "softmax": lambda t: torch.softmax(t, dim=-1),
}


def _output_fn(output: str) -> Callable[[torch.Tensor], torch.Tensor]:
    try:
        return _OUTPUTS[output]
    except KeyError:
        msg = f"unknown output {output!r}; known: {', '.join(_OUTPUTS)}"
        raise ValueError(msg) from None


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Put every submodule in eval mode; restore the flags on exit.

    The flags are restored by assignment, so ``model.train()`` is never called
    (a subclass overriding ``train`` could have side effects).
    """
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag


def _as_input(model: nn.Module, x: torch.Tensor | np.ndarray) -> torch.Tensor:
    """``x`` as a tensor of the model's floating dtype (float64 numpy -> float32)."""
    param = next(model.parameters(), None)
    dtype = param.dtype if param is not None else torch.get_default_dtype()
    return torch.as_tensor(x).to(dtype)


class _Sampler:
    """Shared interface of :class:`MCDropout` and :class:`Ensemble`."""

    #: Name of the replica axis in histograms (see :mod:`hepnn.bands.hists`).
    axis_name: str = "replica"

    def scores(
        self,
        x: torch.Tensor | np.ndarray,
        output: Output = "sigmoid",
        batch_size: int = MICRO_BATCH,
    ) -> np.ndarray:
        raise NotImplementedError

    def mean_std(
        self,
        x: torch.Tensor | np.ndarray,
        output: Output = "sigmoid",
        batch_size: int = MICRO_BATCH,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Per-event mean and standard deviation over replicas (``ddof=1``), float64.

        ``ddof=1``: the replicas are a sample of networks, not the population (for a
        3-member ensemble ``ddof=0`` would understate the spread by ``sqrt(2/3)``).

        Returns
        -------
        mean, std
            Arrays of shape ``(N,)`` (``(N, K)`` for multi-output models).
        """
        s = self.scores(x, output=output, batch_size=batch_size).astype(np.float64)
        return s.mean(axis=0), s.std(axis=0, ddof=1) if len(s) > 1 else np.zeros(s.shape[1:])


class MCDropout(_Sampler):
    """MC-dropout sampler with replica-coherent masks drawn from ``seed``.

    Parameters
    ----------
    model
        A network with ``nn.Dropout`` (or ``nn.Dropout1d/2d/3d``) modules, ideally
        before every weight layer. It runs in eval mode for the duration of a
        call (training flags restored afterwards); parameters and buffers are
        never modified.
    samples
        Number of replicas ``T`` (thinned networks).
    seed
        Seeds all masks (a signed 64-bit integer); see :func:`replica_seed`.
    method
        ``"fold"``: the :class:`~hepnn.models.MLP` fast path, each replica's masks
        folded into the columns of the following ``Linear`` weight
        (``W diag(m) / (1 - p)``), so a replica costs one plain forward pass and
        no per-event mask work. ``"hooks"``: any model; forward hooks on the
        dropout modules multiply by the fixed replica mask. ``"auto"`` (default)
        picks ``"fold"`` for an exact ``MLP`` and ``"hooks"`` otherwise.

    Notes
    -----
    ``T`` replicas cost ``T`` forward passes of the nominal network (plus one mask
    draw per replica and site). The two methods draw identical masks and agree to
    float rounding (~1e-7). The hook path attaches hooks to ``model`` only for the
    duration of a call: do not share one model instance between threads.
    """

    axis_name = "mc"

    def __init__(
        self,
        model: nn.Module,
        samples: int,
        seed: int,
        method: Literal["auto", "fold", "hooks"] = "auto",
    ) -> None:
        if samples < 1:
            msg = f"samples must be >= 1, got {samples}"
            raise ValueError(msg)
        if method not in ("auto", "fold", "hooks"):
            msg = f"method must be 'auto', 'fold' or 'hooks', got {method!r}"
            raise ValueError(msg)
        self.dropouts = dropout_modules(model)
        for m in self.dropouts:
            if not 0.0 <= m.p < 1.0:
                msg = f"dropout rate must be in [0, 1) for MC dropout, got {m.p}"
                raise ModelError(msg)
        # Only the exact class: a subclass may change ``forward``.
        is_mlp = type(model) is MLP
        if method == "fold" and not is_mlp:
            msg = f"method='fold' needs a hepnn MLP, got {type(model).__name__}; use 'hooks'"
            raise ValueError(msg)
        self.model = model
        self.samples = int(samples)
        self.seed = int(seed)
        self.method = ("fold" if is_mlp else "hooks") if method == "auto" else method

    # -- public API ---------------------------------------------------------------

    def scores(
        self,
        x: torch.Tensor | np.ndarray,
        output: Output = "sigmoid",
        batch_size: int = MICRO_BATCH,
    ) -> np.ndarray:
        """Outputs of every replica for every event.

        Parameters
        ----------
        x
            Inputs ``(N, ...)``; converted to the model's dtype.
        output
            ``"sigmoid"`` (classifier score), ``"logit"`` (raw output) or ``"softmax"``.
        batch_size
            Fixed micro-batch size of :func:`~hepnn.models.forward.padded_apply`; results
            are bitwise independent of how ``x`` is chunked for a given value.

        Returns
        -------
        numpy.ndarray
            Shape ``(T, N)`` (``(T, N, K)`` for ``K`` outputs); row ``t`` is replica ``t``.
        """
        post = _output_fn(output)
        xt = _as_input(self.model, x)
        run = self._fold_replica if self.method == "fold" else self._hook_replica
        with _eval_mode(self.model):
            # Replica-outer loop: one replica's masks (or folded weights) live at a
            # time and stay in cache while the events stream through.
            rows = [run(t, xt, post, batch_size) for t in range(self.samples)]
        return torch.stack(rows).numpy()

    def nominal(
        self,
        x: torch.Tensor | np.ndarray,
        output: Output = "sigmoid",
        batch_size: int = MICRO_BATCH,
    ) -> np.ndarray:
        """The dropout-off network (eval mode), shape ``(N,)``, for the nominal histogram."""
        post = _output_fn(output)
        xt = _as_input(self.model, x)
        with _eval_mode(self.model):
            return padded_apply(lambda b: post(self.model(b)), xt, batch_size).numpy()

    # -- fast path: masks folded into the weights (MLP) -------------------------------

    def _mlp(self) -> MLP:
        if not isinstance(self.model, MLP):
            msg = f"the fold path needs a hepnn MLP, got {type(self.model).__name__}"
            raise TypeError(msg)
        return self.model

    def folded_weights(self, replica: int) -> list[torch.Tensor]:
        """Weights of the thinned MLP of ``replica``: ``W_l * m_l[None, :]``.

        ``m_l`` is the scaled mask of site ``l`` (the dropout before ``linears[l]``),
        so ``F.linear(h, W_l * m_l) == F.linear(h * m_l, W_l)`` up to rounding.
        """
        model = self._mlp()
        out = []
        with torch.no_grad():
            for site, (drop, lin) in enumerate(zip(model.dropouts, model.linears, strict=True)):
                w = lin.weight.detach()
                if drop.p == 0.0:
                    out.append(w)  # exact: p = 0 replicas are the nominal network
                    continue
                m = replica_mask(self.seed, replica, site, (w.shape[1],), drop.p, dtype=w.dtype)
                out.append(w * m)
        return out

    def _fold_replica(
        self,
        replica: int,
        x: torch.Tensor,
        post: Callable[[torch.Tensor], torch.Tensor],
        batch_size: int,
    ) -> torch.Tensor:
        model = self._mlp()
        weights = self.folded_weights(replica)
        biases = [lin.bias for lin in model.linears]
        act = model.activation
        last = len(weights) - 1

        # Mirrors MLP.forward with the dropout modules replaced by the folded weights.
        def thinned(h: torch.Tensor) -> torch.Tensor:
            for i, (w, b) in enumerate(zip(weights, biases, strict=True)):
                h = F.linear(h, w, b)
                if i < last:
                    h = act(h)
            return post(h.squeeze(-1))

        return padded_apply(thinned, x, batch_size)

    # -- generic path: forward hooks on the dropout modules ---------------------------

    def _hook_replica(
        self,
        replica: int,
        x: torch.Tensor,
        post: Callable[[torch.Tensor], torch.Tensor],
        batch_size: int,
    ) -> torch.Tensor:
        site = 0  # dropout site counter, reset before every forward pass
        cache: dict[tuple[int, tuple[int, ...], torch.dtype], torch.Tensor] = {}

        def hook(
            module: nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor
        ) -> torch.Tensor:
            # In eval mode the dropout module returned its input; replace that by
            # input * fixed replica mask. Masks are drawn once per (replica, site)
            # and reused for every micro-batch.
            nonlocal site
            inp = args[0]
            key = (site, tuple(inp.shape[1:]), inp.dtype)
            site += 1
            mask = cache.get(key)
            if mask is None:
                shape = mask_shape(module, inp.shape[1:])
                mask = replica_mask(self.seed, replica, key[0], shape, module.p, dtype=inp.dtype)
                cache[key] = mask
            return inp * mask

        def forward(b: torch.Tensor) -> torch.Tensor:
            nonlocal site
            site = 0
            return post(self.model(b))

        handles = [m.register_forward_hook(hook) for m in self.dropouts]
        try:
            return padded_apply(forward, x, batch_size)
        finally:
            for h in handles:
                h.remove()


class Ensemble(_Sampler):
    """Deep ensemble (Lakshminarayanan et al. 2017): the same inputs through every member.

    Parameters
    ----------
    models
        Members, typically one architecture trained with different seeds. Each is
        run in eval mode (flags restored afterwards) through
        :func:`~hepnn.models.forward.padded_apply`, so outputs are bitwise independent
        of chunking.
    """

    axis_name = "member"

    def __init__(self, models: Sequence[nn.Module]) -> None:
        self.models = list(models)
        if not self.models:
            msg = "an ensemble needs at least one model"
            raise ValueError(msg)

    @property
    def samples(self) -> int:
        """Number of members (the replica count of the band)."""
        return len(self.models)

    def scores(
        self,
        x: torch.Tensor | np.ndarray,
        output: Output = "sigmoid",
        batch_size: int = MICRO_BATCH,
    ) -> np.ndarray:
        """Outputs of every member, shape ``(M, N)`` (``(M, N, K)`` for ``K`` outputs)."""
        post = _output_fn(output)
        rows = []
        for model in self.models:
            xt = _as_input(model, x)
            with _eval_mode(model):
                rows.append(padded_apply(lambda b, m=model: post(m(b)), xt, batch_size))
        return torch.stack(rows).numpy()
