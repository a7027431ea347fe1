"""MC dropout with replica-coherent seeded masks, and deep ensembles."""

from __future__ import annotations

import hashlib
import itertools
import multiprocessing
import struct
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import hepnn.bands.replicas as unc
from hepnn.bands import Ensemble, MCDropout, replica_mask, replica_seed
from hepnn.errors import ModelError
from hepnn.models import build
from hepnn.models.forward import padded_apply

BATCH = 128
#: 7 uneven chunks of 1500 events, one of a single event.
SPLITS = [0, 1, 130, 131, 500, 977, 1200, 1500]


def _mlp(p: float = 0.1, n_inputs: int = 5, hidden=(16, 16), seed: int = 0, **kw) -> nn.Module:
    torch.manual_seed(seed)
    return build("mlp", n_inputs=n_inputs, hidden=list(hidden), dropout=p, **kw).eval()


def _x(n: int = 1500, shape=(5,), seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, *shape)).astype(np.float32)


class Conv1dNet(nn.Module):
    """1D CNN on (N, C, P) sequences, nn.Dropout before every weight layer."""

    def __init__(self, p: float = 0.2) -> None:
        super().__init__()
        self.seq = nn.Sequential(
            nn.Dropout(p),
            nn.Conv1d(3, 8, 3),
            nn.ReLU(),
            nn.Dropout(p),
            nn.Conv1d(8, 8, 3),
            nn.ReLU(),
            nn.Flatten(),
            nn.Dropout(p),
            nn.Linear(8 * 6, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.seq(x).squeeze(-1)


class Conv2dNet(nn.Module):
    """2D CNN on (N, C, H, W) images with BatchNorm and a channel-dropout layer."""

    def __init__(self, p: float = 0.2) -> None:
        super().__init__()
        self.seq = nn.Sequential(
            nn.Dropout(p),
            nn.Conv2d(2, 4, 3),
            nn.BatchNorm2d(4),
            nn.ReLU(),
            nn.Dropout2d(p),
            nn.Conv2d(4, 4, 3),
            nn.ReLU(),
            nn.Flatten(),
            nn.Dropout(p),
            nn.Linear(4 * 4 * 4, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.seq(x).squeeze(-1)


class SharedDropNet(nn.Module):
    """One dropout module applied twice: two dropout sites."""

    def __init__(self) -> None:
        super().__init__()
        self.drop = nn.Dropout(0.3)
        self.a = nn.Linear(5, 5)
        self.b = nn.Linear(5, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.drop(torch.tanh(self.a(self.drop(x))))).squeeze(-1)


def _conv1d(p: float = 0.2) -> nn.Module:
    torch.manual_seed(3)
    return Conv1dNet(p).eval()


def _conv2d(p: float = 0.2) -> nn.Module:
    torch.manual_seed(4)
    net = Conv2dNet(p)
    # Non-trivial running statistics, as after training.
    bn = net.seq[2]
    bn.running_mean.uniform_(-0.5, 0.5)
    bn.running_var.uniform_(0.5, 2.0)
    return net.eval()


# (factory, input shape, method) for the parametrised properties.
CASES = {
    "mlp-fold": (_mlp, (5,), "fold"),
    "mlp-hooks": (_mlp, (5,), "hooks"),
    "conv1d": (_conv1d, (3, 10), "hooks"),
    "conv2d": (_conv2d, (2, 8, 8), "hooks"),
}


# -- seeds and masks ----------------------------------------------------------------


def test_replica_seed_pinned():
    # The reproducibility contract: BLAKE2b-64 of little-endian int64 (seed, t, l).
    for args in [(0, 0, 0), (1234, 99, 3), (-5, 1, 7)]:
        ref = int.from_bytes(
            hashlib.blake2b(struct.pack("<qqq", *args), digest_size=8).digest(), "little"
        )
        assert replica_seed(*args) == ref
    assert len({replica_seed(1, t, site) for t in range(50) for site in range(5)}) == 250


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_mask_keep_fraction(p):
    n = 200_000
    m = replica_mask(42, 3, 1, (n,), p)
    keep = (m > 0).double().mean().item()
    assert abs(keep - (1 - p)) < 5 * np.sqrt(p * (1 - p) / n)
    np.testing.assert_allclose(torch.unique(m).numpy(), [0.0, 1 / (1 - p)], rtol=1e-7)
    # Reproducible, and a different replica or site gives a different mask.
    assert torch.equal(m, replica_mask(42, 3, 1, (n,), p))
    assert not torch.equal(m, replica_mask(42, 4, 1, (n,), p))
    assert not torch.equal(m, replica_mask(42, 3, 2, (n,), p))


def test_folded_masks_keep_fraction():
    p, samples = 0.2, 40
    mc = MCDropout(_mlp(p, n_inputs=30, hidden=(128, 128)), samples=samples, seed=9)
    net = mc.model
    kept = []
    for t in range(samples):
        for w, w0 in zip(mc.folded_weights(t), (lin.weight for lin in net.linears), strict=True):
            col_kept = (w != 0).any(dim=0)  # a dropped input zeroes a whole weight column
            kept.append(col_kept.double().mean().item())
            assert torch.allclose(w[:, col_kept], w0[:, col_kept] / (1 - p))
    assert abs(np.mean(kept) - (1 - p)) < 0.02


def test_channel_dropout_mask_is_per_channel():
    assert unc.mask_shape(nn.Dropout2d(0.2), (4, 6, 6)) == (4, 1, 1)
    assert unc.mask_shape(nn.Dropout1d(0.2), (4, 6)) == (4, 1)
    assert unc.mask_shape(nn.Dropout(0.2), (4, 6, 6)) == (4, 6, 6)


# -- exactness and reproducibility ------------------------------------------------------


@pytest.mark.parametrize("case", list(CASES))
def test_p0_replicas_equal_nominal_exactly(case):
    factory, shape, method = CASES[case]
    mc = MCDropout(factory(p=0.0), samples=5, seed=1, method=method)
    x = _x(300, shape)
    s = mc.scores(x, batch_size=BATCH)
    nominal = mc.nominal(x, batch_size=BATCH)
    assert s.shape == (5, 300)
    for row in s:
        np.testing.assert_array_equal(row, nominal)
    assert np.all(mc.mean_std(x, batch_size=BATCH)[1] == 0.0)


@pytest.mark.parametrize("case", list(CASES))
def test_bitwise_independent_of_chunking_rerun_and_order(case):
    factory, shape, method = CASES[case]
    model = factory()
    x = _x(1500, shape)
    mc = MCDropout(model, samples=6, seed=11, method=method)
    full = mc.scores(x, batch_size=BATCH)
    chunks = [x[a:b] for a, b in itertools.pairwise(SPLITS)]
    assert len(chunks) == 7
    chunked = np.concatenate([mc.scores(c, batch_size=BATCH) for c in chunks], axis=1)
    np.testing.assert_array_equal(full, chunked)
    # A new instance with the same seed reproduces; batch composition does not matter.
    np.testing.assert_array_equal(
        full, MCDropout(model, 6, 11, method=method).scores(x, batch_size=BATCH)
    )
    perm = np.random.default_rng(0).permutation(len(x))
    np.testing.assert_array_equal(full[:, perm], mc.scores(x[perm], batch_size=BATCH))
    # Replicas differ from each other, and another seed gives other replicas.
    assert not np.array_equal(full[0], full[1])
    assert not np.array_equal(
        full, MCDropout(model, 6, 12, method=method).scores(x, batch_size=BATCH)
    )


def _scores_in_worker(x: np.ndarray) -> np.ndarray:
    torch.set_num_threads(1)
    return MCDropout(_conv1d(), samples=4, seed=5).scores(x, batch_size=BATCH)


def test_bitwise_independent_of_process():
    x = _x(400, (3, 10))
    local = MCDropout(_conv1d(), samples=4, seed=5).scores(x, batch_size=BATCH)
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
        parts = list(pool.map(_scores_in_worker, [x[:150], x[150:]]))
    np.testing.assert_array_equal(local, np.concatenate(parts, axis=1))


# -- fast path = generic path = explicit reference -------------------------------------


def _reference_mlp(net, x: np.ndarray, seed: int, replica: int) -> np.ndarray:
    """Thinned network by hand, float64: zero the dropped inputs of every layer, scale."""
    h = torch.as_tensor(x, dtype=torch.float64)
    last = len(net.linears) - 1
    for site, (drop, lin) in enumerate(zip(net.dropouts, net.linears, strict=True)):
        gen = torch.Generator().manual_seed(replica_seed(seed, replica, site))
        keep = torch.rand(h.shape[1], generator=gen) >= drop.p
        h = h.clone()
        h[:, ~keep] = 0.0
        h = h / (1 - drop.p)
        h = h @ lin.weight.double().T + lin.bias.double()
        if site < last:
            h = torch.tanh(h)
    return torch.sigmoid(h.squeeze(-1)).detach().numpy()


def test_fold_equals_hooks_equals_reference():
    net = _mlp(0.3, n_inputs=3, hidden=(4, 4), input_dropout=0.5)
    x = _x(200, (3,))
    fold = MCDropout(net, samples=8, seed=21, method="fold").scores(x, batch_size=64)
    hooks = MCDropout(net, samples=8, seed=21, method="hooks").scores(x, batch_size=64)
    np.testing.assert_allclose(fold, hooks, rtol=0, atol=1e-6)
    ref = np.stack([_reference_mlp(net, x, 21, t) for t in range(8)])
    np.testing.assert_allclose(fold, ref, rtol=0, atol=1e-6)
    np.testing.assert_allclose(hooks, ref, rtol=0, atol=1e-6)
    assert np.ptp(ref, axis=0).max() > 0.01  # the masks really act


def test_fold_equals_hooks_wide_mlp():
    net = _mlp(0.1, n_inputs=30, hidden=(128, 128, 128))
    x = _x(500, (30,))
    fold = MCDropout(net, 10, 3, method="fold").scores(x)
    hooks = MCDropout(net, 10, 3, method="hooks").scores(x)
    np.testing.assert_allclose(fold, hooks, rtol=0, atol=1e-6)


def _reference_sequential(net, x: np.ndarray, seed: int, replica: int) -> np.ndarray:
    """Walk ``net.seq`` by hand, multiplying each dropout input by its documented mask."""
    h = torch.as_tensor(x)
    site = 0
    with torch.no_grad():
        for mod in net.seq:
            if isinstance(mod, nn.Dropout2d):
                shape = (h.shape[1],) + (1,) * (h.dim() - 2)  # whole channels
            elif isinstance(mod, nn.Dropout):
                shape = tuple(h.shape[1:])  # every element of the feature map
            else:
                h = mod(h)
                continue
            h = h * replica_mask(seed, replica, site, shape, mod.p)
            site += 1
    return torch.sigmoid(h.squeeze(-1)).numpy()


@pytest.mark.parametrize("factory", [_conv1d, _conv2d])
def test_generic_path_conv_reference(factory):
    net = factory()
    shape = (3, 10) if factory is _conv1d else (2, 8, 8)
    x = _x(300, shape)
    s = MCDropout(net, samples=5, seed=8).scores(x, batch_size=BATCH)
    ref = np.stack([_reference_sequential(net, x, 8, t) for t in range(5)])
    np.testing.assert_allclose(s, ref, rtol=0, atol=1e-6)
    assert np.ptp(s, axis=0).max() > 0.01


def test_generic_path_shared_module_is_two_sites():
    torch.manual_seed(0)
    net = SharedDropNet().eval()
    x = _x(100, (5,))
    s = MCDropout(net, samples=3, seed=2).scores(x, output="logit")
    for t in range(3):
        h = torch.as_tensor(x) * replica_mask(2, t, 0, (5,), 0.3)
        h = torch.tanh(net.a(h)) * replica_mask(2, t, 1, (5,), 0.3)
        np.testing.assert_allclose(s[t], net.b(h).squeeze(-1).detach().numpy(), atol=1e-6)


# -- eval mode, cost ---------------------------------------------------------------------


def test_batchnorm_untouched_and_flags_restored():
    net = _conv2d()
    x = _x(200, (2, 8, 8))
    expected = MCDropout(net, 3, 1).scores(x)
    bn = net.seq[2]
    stats = (bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone())
    net.train()  # a caller's model left in training mode
    got = MCDropout(net, 3, 1).scores(x)
    np.testing.assert_array_equal(got, expected)  # ran in eval mode anyway
    assert all(m.training for m in net.modules())  # flags restored
    assert torch.equal(bn.running_mean, stats[0])
    assert torch.equal(bn.running_var, stats[1])
    assert torch.equal(bn.num_batches_tracked, stats[2])
    assert not bn._forward_hooks
    assert not any(m._forward_hooks for m in net.modules())  # hooks removed


@pytest.mark.parametrize("case", list(CASES))
def test_cost_is_samples_forward_passes(case, monkeypatch):
    factory, shape, method = CASES[case]
    mc = MCDropout(factory(), samples=7, seed=0, method=method)
    x = _x(1000, shape)
    n_sites = len(mc.dropouts)
    linear_calls, conv_calls, mask_calls = [], [], []
    orig_linear, orig_mask = F.linear, unc.replica_mask

    def count_linear(*a, **k):
        linear_calls.append(1)
        return orig_linear(*a, **k)

    def count_mask(*a, **k):
        mask_calls.append(1)
        return orig_mask(*a, **k)

    monkeypatch.setattr(F, "linear", count_linear)
    monkeypatch.setattr(unc, "replica_mask", count_mask)
    for m in mc.model.modules():
        if isinstance(m, nn.Conv1d | nn.Conv2d):
            m.register_forward_pre_hook(lambda *_: conv_calls.append(1))
    mc.nominal(x, batch_size=BATCH)
    n_lin, n_conv = len(linear_calls), len(conv_calls)
    assert n_lin > 0
    linear_calls.clear()
    conv_calls.clear()
    mc.scores(x, batch_size=BATCH)
    assert len(linear_calls) == 7 * n_lin
    assert len(conv_calls) == 7 * n_conv
    # Masks are drawn once per replica and site, never per event or micro-batch.
    assert len(mask_calls) == 7 * n_sites


# -- the physics: uncertainty grows off the training distribution ------------------------


def test_std_grows_out_of_distribution():
    rng = np.random.default_rng(1234)
    n = 10_000
    x = np.concatenate([rng.normal(0.5, 1, (n, 2)), rng.normal(-0.5, 1, (n, 2))]).astype(np.float32)
    y = np.concatenate([np.ones(n), np.zeros(n)]).astype(np.float32)
    torch.manual_seed(0)
    net = build("mlp", n_inputs=2, hidden=[32, 32], activation="tanh", dropout=0.2)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    gen = torch.Generator().manual_seed(0)
    net.train()
    for _ in range(400):
        idx = torch.randint(0, 2 * n, (256,), generator=gen)
        loss = F.binary_cross_entropy_with_logits(net(xt[idx]), yt[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    assert loss.item() < 0.6

    mc = MCDropout(net, samples=50, seed=7)
    x_in = x[::10]
    std_in = mc.mean_std(x_in, output="logit")[1].mean()
    for shift in [(5.0, 0.0), (5.0, 5.0)]:
        std_out = mc.mean_std(x_in + np.float32(shift), output="logit")[1].mean()
        assert std_out > 1.25 * std_in, shift
    # On the score too, away from the saturated discriminant direction.
    score_in = mc.mean_std(x_in)[1].mean()
    score_out = mc.mean_std(x_in + np.float32((5.0, 0.0)))[1].mean()
    assert score_out > 1.25 * score_in


# -- ensembles ------------------------------------------------------------------------------


def test_ensemble_members_and_chunking():
    members = [_mlp(0.1, seed=s) for s in range(3)]
    ens = Ensemble(members)
    assert ens.samples == 3
    assert ens.axis_name == "member"
    x = _x(1500)
    s = ens.scores(x, batch_size=BATCH)
    assert s.shape == (3, 1500)
    for row, m in zip(s, members, strict=True):
        ref = padded_apply(lambda b, m=m: torch.sigmoid(m(b)), x, BATCH).numpy()
        np.testing.assert_array_equal(row, ref)
    chunks = [x[a:b] for a, b in itertools.pairwise(SPLITS)]
    chunked = np.concatenate([ens.scores(c, batch_size=BATCH) for c in chunks], axis=1)
    np.testing.assert_array_equal(s, chunked)
    mean, std = ens.mean_std(x, batch_size=BATCH)
    np.testing.assert_allclose(mean, s.astype(np.float64).mean(axis=0))
    # ddof=1: three members are a sample of networks (ddof=0 would be sqrt(2/3) smaller).
    np.testing.assert_allclose(std, s.astype(np.float64).std(axis=0, ddof=1))
    assert std.min() > 0


def test_outputs_and_float64_inputs():
    net = _mlp()
    mc = MCDropout(net, 3, 0)
    x = _x(50)
    logit = mc.scores(x, output="logit")
    np.testing.assert_allclose(mc.scores(x), 1 / (1 + np.exp(-logit)), rtol=1e-6)
    np.testing.assert_array_equal(mc.scores(x.astype(np.float64)), mc.scores(x))
    with pytest.raises(ValueError, match="unknown output"):
        mc.scores(x, output="probit")


# -- errors ---------------------------------------------------------------------------------


def test_errors():
    with pytest.raises(ModelError, match=r"no nn\.Dropout"):
        MCDropout(nn.Linear(3, 1), 5, 0)
    with pytest.raises(ModelError, match="AlphaDropout"):
        MCDropout(nn.Sequential(nn.AlphaDropout(0.1), nn.Linear(3, 1)), 5, 0)
    with pytest.raises(ValueError, match="samples"):
        MCDropout(_mlp(), 0, 0)
    with pytest.raises(ValueError, match="fold"):
        MCDropout(_conv1d(), 5, 0, method="fold")
    with pytest.raises(ValueError, match="at least one"):
        Ensemble([])
    with pytest.raises(ValueError, match="dropout rate"):
        replica_mask(0, 0, 0, (3,), 1.0)
