"""2D CNN on jet images, dropout before every weight layer.

>>> net = build("cnn2d", in_channels=1, image_size=(33, 33), filters=(16, 32, 32))
>>> net(torch.zeros(8, 1, 33, 33)).shape
torch.Size([8])
"""

from __future__ import annotations

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


@register("cnn2d")
class CNN2D(nn.Module):
    """Image CNN returning one logit per jet.

    Architecture: ``len(filters)`` blocks of ``convs_per_block`` x
    [Dropout -> Conv2d('same') -> activation] followed by 2x2 max pooling,
    then flatten -> [Dropout -> Linear -> activation] per ``dense`` width ->
    Dropout -> Linear(1).

    Every weight layer (Conv2d or Linear) is preceded by an elementwise
    ``nn.Dropout`` -- including the first convolution, acting on the pixels --
    the condition for MC dropout (Gal & Ghahramani arXiv:1506.02142; for CNNs
    arXiv:1506.02158 also use elementwise Bernoulli dropout). ``Dropout2d``
    (whole channels) would be cheaper to fold into weights but drops entire
    feature maps, a different approximate posterior; not used. No batch
    normalisation (train-mode BN would update statistics during MC dropout).

    Parameters
    ----------
    in_channels
        Image channels (e.g. 1 for ``pt``; 3 for ``pt, charged_pt, count``).
    image_size
        ``(n_eta, n_phi)``, needed for the size of the first dense layer.
    filters
        Output channels of each conv block.
    kernel_size
        Square kernel size (odd, 'same' padding).
    convs_per_block
        Convolutions per block before pooling.
    dense
        Widths of the hidden dense layers.
    activation
        Name in :data:`hepnn.models.layers.ACTIVATIONS`.
    dropout
        Rate before every dense layer (and the output layer).
    conv_dropout
        Rate before every convolution after the first; defaults to ``dropout``.
    input_dropout
        Rate on the input pixels before the first convolution; defaults to ``conv_dropout``.

    Notes
    -----
    ``forward`` maps ``(N, in_channels, n_eta, n_phi)`` to logits ``(N,)``.
    Weight layers and their dropouts are exposed in order as
    ``weight_layers`` and ``dropouts`` (same length) for MC-dropout tooling.
    """

    def __init__(
        self,
        in_channels: int = 1,
        image_size: Sequence[int] = (33, 33),
        filters: Sequence[int] = (16, 32, 32),
        kernel_size: int = 3,
        convs_per_block: int = 1,
        dense: Sequence[int] = (64,),
        activation: str = "relu",
        dropout: float = 0.1,
        conv_dropout: float | None = None,
        input_dropout: float | None = None,
    ) -> None:
        super().__init__()
        check_activation(activation)
        if in_channels < 1 or convs_per_block < 1:
            msg = "in_channels and convs_per_block must be >= 1"
            raise ValueError(msg)
        check_kernel(kernel_size)
        size = [int(s) for s in image_size]
        if len(size) != 2 or min(size) < 1:
            msg = f"image_size must be two positive integers, got {list(image_size)}"
            raise ValueError(msg)
        filt = check_widths("filters", filters, allow_empty=False)
        widths = check_widths("dense", dense, allow_empty=True)
        p = check_rate(dropout)
        p_conv = check_rate(p if conv_dropout is None else conv_dropout)
        p_in = check_rate(p_conv if input_dropout is None else input_dropout)

        layers: list[nn.Module] = []

        def add(drop: nn.Dropout, weight: nn.Module) -> None:
            layers.extend([drop, weight])

        c = int(in_channels)
        h, w = size
        for b, f in enumerate(filt):
            for k in range(convs_per_block):
                rate = p_in if (b == 0 and k == 0) else p_conv
                add(nn.Dropout(rate), nn.Conv2d(c, f, kernel_size, padding=kernel_size // 2))
                layers.append(ACTIVATIONS[activation]())
                c = f
            if min(h, w) >= 2:
                layers.append(nn.MaxPool2d(2))
                h, w = h // 2, w // 2
        layers.append(nn.Flatten())
        n = c * h * w
        for width in widths:
            add(nn.Dropout(p), nn.Linear(n, width))
            layers.append(ACTIVATIONS[activation]())
            n = width
        add(nn.Dropout(p), nn.Linear(n, 1))
        self.net = nn.Sequential(*layers)

    @property
    def dropouts(self) -> list[nn.Dropout]:
        """The dropout layers, in order; ``dropouts[i]`` acts right before ``weight_layers[i]``."""
        return [m for m in self.net if isinstance(m, nn.Dropout)]

    @property
    def weight_layers(self) -> list[nn.Module]:
        """The Conv2d and Linear layers, in order."""
        return [m for m in self.net if isinstance(m, (nn.Conv2d, nn.Linear))]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)
