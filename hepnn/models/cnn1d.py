"""1D CNN over pT-ordered jet constituents (P-CNN / DeepJet style), dropout before every weight layer.

>>> net = build("cnn1d", n_features=7, filters=(64, 64, 64))
>>> x = np.concatenate([X_scaled, mask], axis=1)      # (N, 7 + 1, P): mask is the last channel
>>> net(torch.as_tensor(x)).shape
torch.Size([N])

How the mask travels: ``forward`` takes **one** tensor ``(N, F + 1, P)`` whose last
channel is the 0/1 constituent mask (from
:func:`hepnn.jets.constituents.constituent_sequences`), so the network fits every
single-tensor API (``padded_apply``, Taylor, MC dropout). After every convolution
the padded slots are reset to 0, so they never leak into real constituents
through the kernel, and the global average runs over real constituents only:
the output does not depend on how many padding slots follow the last real
constituent (a jet padded to 64 or to 128 slots gives the same logit).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import nn

from hepnn.models.layers import (
    ACTIVATIONS,
    check_activation,
    check_kernel,
    check_rate,
    check_widths,
)
from hepnn.models.registry import register

#: Global pooling operations over the real constituents.
POOLINGS = ("mean", "max", "sum", "weighted")
#: ``sum`` pooling is divided by this constant (a typical multiplicity) to keep
#: the dense layers' inputs O(1); it keeps the multiplicity information that
#: ``mean`` discards.
SUM_SCALE = 32.0


@register("cnn1d")
class CNN1D(nn.Module):
    """Constituent-sequence CNN returning one logit per jet.

    Architecture: per ``filters`` width, [Dropout -> Conv1d('same') ->
    activation -> zero padded slots]; masked global pooling over the real
    constituents (default: mean and max, concatenated);
    [Dropout -> Linear -> activation] per ``dense`` width; Dropout -> Linear(1).

    Every weight layer is preceded by an elementwise ``nn.Dropout`` (the first
    one acts on the input features, never on the mask channel). No batch
    normalisation.

    ``weighted`` pooling is a softmax-weighted sum over the real constituents,
    ``sum_i w_i h_i`` with ``w_i = softmax_i(a · x_i + b)`` and ``x_i`` the
    constituent's input features (one extra [Dropout -> Conv1d(F, 1, 1)] layer).
    With log-pT inputs the weights can become exactly ``pT_i^k / sum_j pT_j^k``,
    so ``k = 1`` gives energy-flow sums ``sum_i z_i Φ(Δη_i, Δφ_i)`` (EFN,
    arXiv:1810.05165): the jet mass, ``m² / pT² ≈ sum z r² - |sum z r|²``, is then
    a function of three pooled values, while unweighted pools would have to learn
    the product of pT and angles constituent by constituent.

    Parameters
    ----------
    n_features
        Feature channels ``F`` (the input has ``F + 1`` channels, the last being the mask).
    filters
        Output channels of each convolution.
    kernel_size
        Odd kernel size along the constituent axis (1 = per-particle dense layer).
    dense
        Hidden dense widths after pooling.
    activation
        Name in :data:`hepnn.models.layers.ACTIVATIONS`.
    pooling
        Global pooling over real constituents: names from :data:`POOLINGS`
        joined by ``_``, concatenated in that order (default ``"mean_max"``;
        ``"mean_max_sum"`` also keeps the multiplicity; ``weighted`` see above).
    dropout, conv_dropout, input_dropout
        Rates before dense layers, before convolutions (default ``dropout``)
        and on the input features (default ``conv_dropout``).
    """

    def __init__(
        self,
        n_features: int = 7,
        filters: Sequence[int] = (64, 64, 64),
        kernel_size: int = 3,
        dense: Sequence[int] = (64,),
        activation: str = "relu",
        pooling: str = "mean_max",
        dropout: float = 0.1,
        conv_dropout: float | None = None,
        input_dropout: float | None = None,
    ) -> None:
        super().__init__()
        check_activation(activation)
        if n_features < 1:
            msg = f"n_features must be >= 1, got {n_features}"
            raise ValueError(msg)
        check_kernel(kernel_size)
        pools = pooling.split("_")
        if not pools or len(set(pools)) != len(pools) or any(q not in POOLINGS for q in pools):
            msg = f"pooling must join distinct names from {', '.join(POOLINGS)} with '_', got {pooling!r}"
            raise ValueError(msg)
        filt = check_widths("filters", filters, allow_empty=False)
        widths = check_widths("dense", dense, allow_empty=True)
        p = check_rate(dropout)
        p_conv = check_rate(p if conv_dropout is None else conv_dropout)
        p_in = check_rate(p_conv if input_dropout is None else input_dropout)
        self.n_features = int(n_features)
        self.pooling = pooling
        self._pools = pools
        self.activation = ACTIVATIONS[activation]()

        chans = [self.n_features, *filt]
        self.conv_dropouts = nn.ModuleList(
            nn.Dropout(p_in if i == 0 else p_conv) for i in range(len(filt))
        )
        self.convs = nn.ModuleList(
            nn.Conv1d(a, b, kernel_size, padding=kernel_size // 2)
            for a, b in itertools.pairwise(chans)
        )
        # The weighted pool's score layer sees the input features, so its
        # dropout has the input rate.
        self.score_dropouts = nn.ModuleList([nn.Dropout(p_in)] if "weighted" in pools else [])
        self.scores = nn.ModuleList(
            [nn.Conv1d(self.n_features, 1, 1)] if "weighted" in pools else []
        )
        n = filt[-1] * len(pools)
        sizes = [n, *widths, 1]
        self.dense_dropouts = nn.ModuleList(nn.Dropout(p) for _ in range(len(sizes) - 1))
        self.linears = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(sizes))

    @property
    def dropouts(self) -> list[nn.Module]:
        """The dropout layers, in order; ``dropouts[i]`` acts right before ``weight_layers[i]``."""
        return [*self.conv_dropouts, *self.score_dropouts, *self.dense_dropouts]

    @property
    def weight_layers(self) -> list[nn.Module]:
        """The Conv1d and Linear layers, in order."""
        return [*self.convs, *self.scores, *self.linears]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 3 or x.shape[1] != self.n_features + 1:
            msg = f"expected input (N, {self.n_features} + 1, P) with the mask last, got {tuple(x.shape)}"
            raise ValueError(msg)
        mask = x[:, -1:, :]
        feats = x[:, :-1, :] * mask  # padded slots are 0 whatever the caller left there
        h = feats
        for drop, conv in zip(self.conv_dropouts, self.convs, strict=True):
            h = self.activation(conv(drop(h))) * mask
        n_real = mask.sum(dim=2)
        total = h.sum(dim=2)
        parts = []
        for q in self._pools:
            if q == "mean":
                parts.append(total / n_real.clamp(min=1.0))
            elif q == "sum":
                parts.append(total * (1.0 / SUM_SCALE))
            elif q == "weighted":
                score = self.scores[0](self.score_dropouts[0](feats))
                score = score.masked_fill(mask == 0, torch.finfo(h.dtype).min)
                # softmax over the constituent axis; padded slots get weight 0
                # (exp(min - max) underflows), an empty jet all-equal weights on h = 0.
                w = torch.softmax(score, dim=2) * mask
                parts.append((h * w).sum(dim=2))
            else:
                # Masked max over real constituents (padded slots filled with the
                # lowest float); a jet without constituents gets 0.
                mx = h.masked_fill(mask == 0, torch.finfo(h.dtype).min).amax(dim=2)
                parts.append(torch.where(n_real > 0, mx, torch.zeros_like(mx)))
        pooled = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
        last = len(self.linears) - 1
        for i, (drop, lin) in enumerate(zip(self.dense_dropouts, self.linears, strict=True)):
            pooled = lin(drop(pooled))
            if i < last:
                pooled = self.activation(pooled)
        return pooled.squeeze(-1)
