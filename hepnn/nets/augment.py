"""Random symmetry transformations of training jets (``training.augment``, sequence inputs).

Drawn per jet and epoch from the training's augmentation stream
(:class:`hepnn.nets.split.Stream`), on the training batches only: validation,
test and applied scores never see them, and the network stays deterministic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from hepnn.nets.spec import AugmentSpec

if TYPE_CHECKING:
    from hepnn.nets.inputs import SequenceBuilder


@dataclass(frozen=True)
class SequenceAugmenter:
    """Applies :class:`~hepnn.nets.spec.AugmentSpec` to scaled network inputs.

    The network sees standardised features, ``(x - mean) / std`` per feature, so
    Δη and Δφ are taken back to angles, rotated and/or reflected about the jet
    axis (one draw per jet, the same for all its constituents) and scaled again;
    padded slots stay 0. Every other channel (pT, energies, ΔR, the mask) is
    left untouched: those features are invariant under the transformation.

    Attributes
    ----------
    deta, dphi
        ``(channel, mean, std)`` of the scaled Δη / Δφ input, or None when the
        tagger does not use the feature.
    """

    deta: tuple[int, float, float] | None
    dphi: tuple[int, float, float] | None
    rotate: bool
    reflect: bool

    @classmethod
    def build(cls, augment: AugmentSpec, builder: SequenceBuilder) -> SequenceAugmenter | None:
        """The augmenter of a fitted sequence preprocessing; None when nothing would change."""
        if not augment.active:
            return None
        features = list(builder.settings.features)

        def channel(name: str) -> tuple[int, float, float] | None:
            if name not in features:
                return None
            i = features.index(name)
            if builder.scaler is None:
                return i, 0.0, 1.0
            return i, builder.scaler.mean[i], builder.scaler.std[i]

        deta, dphi = channel("deta"), channel("dphi")
        if deta is None and dphi is None:
            return None
        # A rotation needs both angles (checked by NetworkSpec); without them only reflect.
        rotate = augment.rotate and deta is not None and dphi is not None
        return cls(deta, dphi, rotate, augment.reflect)

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """An augmented copy of ``x`` ``(N, F + 1, P)``; the draws come from ``generator``."""
        n = x.shape[0]
        mask = x[:, -1, :]
        angles: dict[str, torch.Tensor] = {}
        for key, ch in (("deta", self.deta), ("dphi", self.dphi)):
            if ch is not None:
                angles[key] = x[:, ch[0], :] * ch[2] + ch[1]
        # Draws in a fixed order (angle, then the two signs) whatever is used,
        # so that a run is reproducible from the seed alone.
        theta = torch.rand(n, 1, generator=generator, dtype=x.dtype) * (2 * math.pi)
        signs = torch.where(torch.rand(n, 2, generator=generator) < 0.5, -1.0, 1.0).to(x.dtype)
        if self.rotate:
            c, s = torch.cos(theta), torch.sin(theta)
            eta, phi = angles["deta"], angles["dphi"]
            angles["deta"], angles["dphi"] = c * eta - s * phi, s * eta + c * phi
        if self.reflect:
            for j, key in enumerate(("deta", "dphi")):
                if key in angles:
                    angles[key] = angles[key] * signs[:, j : j + 1]
        out = x.clone()
        for key, ch in (("deta", self.deta), ("dphi", self.dphi)):
            if ch is not None:
                out[:, ch[0], :] = (angles[key] - ch[1]) / ch[2] * mask
        return out
