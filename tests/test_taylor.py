"""Taylor coefficients against analytic derivatives, each other, and tayloranalysis."""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from hepnn.models import MLP
from hepnn.taylor import (
    TaylorWarning,
    aggregate_constituents,
    mean_abs_gradient,
    mean_abs_taylor,
    taylor_coefficients,
    taylor_terms,
)

# ----------------------------------------------------------------- helpers


def sigmoid_derivs(s: np.ndarray) -> list[np.ndarray]:
    """sigma, sigma', sigma'', sigma''' of s (closed form)."""
    sig = 1 / (1 + np.exp(-s))
    p = sig * (1 - sig)
    return [sig, p, p * (1 - 2 * sig), p * (1 - 6 * sig + 6 * sig**2)]


def factor(term: tuple[int, ...]) -> float:
    counts: dict[int, int] = {}
    for i in term:
        counts[i] = counts.get(i, 0) + 1
    return 1.0 / math.prod(math.factorial(c) for c in counts.values())


def chain_rule(
    f: list[np.ndarray], s1: np.ndarray, s2: np.ndarray, s3: np.ndarray, n: int
) -> dict[int, np.ndarray]:
    """Taylor coefficients of y = f(s(x)) from per-event derivative tensors of s.

    s1 (N, n), s2 (N, n, n), s3 (N, n, n, n); f = [f, f', f'', f'''] at s.
    """
    out = {1: f[1][:, None] * s1}
    cols2, cols3 = [], []
    for i, j in itertools.combinations_with_replacement(range(n), 2):
        y = f[2] * s1[:, i] * s1[:, j] + f[1] * s2[:, i, j]
        cols2.append(factor((i, j)) * y)
    for i, j, k in itertools.combinations_with_replacement(range(n), 3):
        y = (
            f[3] * s1[:, i] * s1[:, j] * s1[:, k]
            + f[2] * (s2[:, i, j] * s1[:, k] + s2[:, i, k] * s1[:, j] + s2[:, j, k] * s1[:, i])
            + f[1] * s3[:, i, j, k]
        )
        cols3.append(factor((i, j, k)) * y)
    out[2] = np.stack(cols2, axis=1)
    out[3] = np.stack(cols3, axis=1)
    return out


def identity_derivs(s: np.ndarray) -> list[np.ndarray]:
    return [s, np.ones_like(s), np.zeros_like(s), np.zeros_like(s)]


def assert_coeffs_close(
    got: dict[int, torch.Tensor], want: dict[int, np.ndarray], rtol: float
) -> None:
    for order, w in want.items():
        if order not in got:
            continue
        g = got[order].detach().double().numpy()
        scale = max(np.abs(w).max(), 1e-300)
        np.testing.assert_allclose(g, w, rtol=0, atol=rtol * scale, err_msg=f"order {order}")


# ------------------------------------------------------- analytic "models"


class Polynomial(nn.Module):
    """y = x0^2 x1 + 3 x1 x2 - x0^3 + 2 x2 on the flattened input (a logit)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], -1)
        x0, x1, x2 = x[:, 0], x[:, 1], x[:, 2]
        return x0**2 * x1 + 3 * x1 * x2 - x0**3 + 2 * x2


def polynomial_coefficients(x: np.ndarray) -> dict[int, np.ndarray]:
    """Hand-derived Taylor coefficients of Polynomial (4 inputs, x3 unused)."""
    x0, x1 = x[:, 0], x[:, 1]
    zero, one = np.zeros_like(x0), np.ones_like(x0)
    first = np.stack([2 * x0 * x1 - 3 * x0**2, x0**2 + 3 * x[:, 2], 3 * x1 + 2, zero], axis=1)
    second = {  # with the 1/2 on squares
        (0, 0): x1 - 3 * x0,
        (0, 1): 2 * x0,
        (1, 2): 3 * one,
    }
    third = {(0, 0, 0): -1.0 * one, (0, 0, 1): 1.0 * one}
    out2 = np.stack([second.get(t, zero) for t in taylor_terms(4, (2,))], axis=1)
    out3 = np.stack([third.get(t, zero) for t in taylor_terms(4, (3,))], axis=1)
    return {1: first, 2: out2, 3: out3}


class Linear2(nn.Module):
    """Logit a.x + b: the Bayes-optimal LLR of two unit-covariance Gaussians."""

    def __init__(self, a: np.ndarray, b: float) -> None:
        super().__init__()
        self.register_buffer("a", torch.as_tensor(a, dtype=torch.float64))
        self.b = float(b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.a + self.b


class GaussianLLR(nn.Module):
    """Logit log N(x; mu_s, cov_s) - log N(x; mu_b, cov_b) (equal priors)."""

    def __init__(self, mu_s, cov_s, mu_b, cov_b) -> None:
        super().__init__()
        for name, v in [("mu_s", mu_s), ("cov_s", cov_s), ("mu_b", mu_b), ("cov_b", cov_b)]:
            self.register_buffer(name, torch.as_tensor(v, dtype=torch.float64))

    @staticmethod
    def _logpdf(x: torch.Tensor, mu: torch.Tensor, cov: torch.Tensor) -> torch.Tensor:
        d = x - mu
        maha = (d @ torch.linalg.inv(cov) * d).sum(1)
        return -0.5 * maha - 0.5 * torch.logdet(cov) - math.log(2 * math.pi)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._logpdf(x, self.mu_s, self.cov_s) - self._logpdf(x, self.mu_b, self.cov_b)


def gaussian_toy(n_per_class: int, rho_s: float, rho_b: float, seed: int = 1234) -> np.ndarray:
    """The lecture toy: means +-(0.5, 0.5), unit variances, correlations rho_s / rho_b."""
    rng = np.random.default_rng(seed)
    mu = np.array([0.5, 0.5])
    cov = lambda rho: np.array([[1.0, rho], [rho, 1.0]])  # noqa: E731
    sig = rng.multivariate_normal(mu, cov(rho_s), n_per_class)
    bkg = rng.multivariate_normal(-mu, cov(rho_b), n_per_class)
    return np.concatenate([sig, bkg])


# ------------------------------------------------------------------- tests


def test_terms_and_factors_convention():
    assert taylor_terms(3, (1, 2)) == [
        (0,), (1,), (2,), (0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2)
    ]  # fmt: skip
    assert len(taylor_terms(30, (1, 2))) == 30 + 465
    assert len(taylor_terms(30, (3,))) == 4960
    assert taylor_terms([4, 1], (2,)) == [(1, 1), (1, 4), (4, 4)]


def test_polynomial_all_orders():
    x = np.random.default_rng(1).normal(size=(64, 4))
    got = taylor_coefficients(Polynomial(), torch.as_tensor(x), (1, 2, 3), output="logit")
    assert_coeffs_close(got, polynomial_coefficients(x), rtol=1e-12)


def test_polynomial_on_image_shaped_input_first_order():
    """First order does not assume a flat feature vector: features are flattened indices."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=(50, 1, 2, 2))
    got = taylor_coefficients(Polynomial(), torch.as_tensor(x), (1,), output="logit")
    want = polynomial_coefficients(x.reshape(50, 4))[1]
    np.testing.assert_allclose(got[1].numpy(), want, rtol=1e-12)
    gmap = mean_abs_gradient(Polynomial(), x, output="logit", chunk_size=16)
    assert gmap.shape == (1, 2, 2)
    np.testing.assert_allclose(gmap.reshape(4), np.abs(want).mean(0), rtol=1e-12)
    result = mean_abs_taylor(Polynomial(), x, orders=(1,), output="logit")
    assert result.names == ["x[0,0,0]", "x[0,0,1]", "x[0,1,0]", "x[0,1,1]"]


def tiny_network() -> tuple[MLP, np.ndarray, np.ndarray, np.ndarray, float]:
    """MLP(2, [3], tanh) with hand-set weights."""
    w1 = np.array([[1.0, -0.5], [0.3, 0.8], [-1.2, 0.4]])
    b1 = np.array([0.1, -0.2, 0.05])
    v = np.array([0.7, -1.1, 0.9])
    c = -0.3
    net = MLP(2, [3], activation="tanh", dropout=0.5).double()
    with torch.no_grad():
        net.linears[0].weight.copy_(torch.as_tensor(w1))
        net.linears[0].bias.copy_(torch.as_tensor(b1))
        net.linears[1].weight.copy_(torch.as_tensor(v[None, :]))
        net.linears[1].bias.fill_(c)
    return net, w1, b1, v, c


@pytest.mark.parametrize("output", ["sigmoid", "logit"])
@pytest.mark.parametrize("method", ["mlp", "autograd"])
def test_hand_built_network(method, output):
    net, w1, b1, v, c = tiny_network()
    x = np.random.default_rng(3).normal(size=(40, 2))
    z = x @ w1.T + b1
    t = np.tanh(z)
    d1 = 1 - t**2
    d2 = -2 * t * d1
    d3 = d1 * (6 * t**2 - 2)
    # s = sum_m v_m tanh(z_m) + c, z_m = w_m . x + b_m
    s = t @ v + c
    s1 = np.einsum("nm,m,mi->ni", d1, v, w1)
    s2 = np.einsum("nm,m,mi,mj->nij", d2, v, w1, w1)
    s3 = np.einsum("nm,m,mi,mj,mk->nijk", d3, v, w1, w1, w1)
    f = sigmoid_derivs(s) if output == "sigmoid" else identity_derivs(s)
    want = chain_rule(f, s1, s2, s3, 2)
    net.train()  # dropout 0.5 must be switched off and the mode restored
    got = taylor_coefficients(net, torch.as_tensor(x), (1, 2, 3), output=output, method=method)
    assert net.training
    assert_coeffs_close(got, want, rtol=1e-12)


def test_gaussian_toy_uncorrelated_closed_form():
    """sigma(LLR) with LLR = (1, 1).x exactly: every coefficient in closed form."""
    x = gaussian_toy(2000, 0.0, 0.0)
    mu = np.array([0.5, 0.5])
    a = 2 * mu  # Sigma^-1 (mu_s - mu_b)
    b = -0.5 * (mu @ mu - mu @ mu)
    # the generic Gaussian LLR module agrees with the linear form
    llr = GaussianLLR(mu, np.eye(2), -mu, np.eye(2))
    lin = Linear2(a, b)
    xt = torch.as_tensor(x)
    np.testing.assert_allclose(llr(xt).numpy(), lin(xt).numpy(), atol=1e-12)
    s = x @ a + b
    f = sigmoid_derivs(s)
    want = {
        1: np.stack([f[1] * a[i] for i in range(2)], 1),
        2: np.stack([factor(t) * f[2] * a[t[0]] * a[t[1]] for t in taylor_terms(2, (2,))], 1),
        3: np.stack(
            [factor(t) * f[3] * a[t[0]] * a[t[1]] * a[t[2]] for t in taylor_terms(2, (3,))], 1
        ),
    }
    for model in (lin, llr):
        got = taylor_coefficients(model, xt, (1, 2, 3))
        assert_coeffs_close(got, want, rtol=1e-10)
    result = mean_abs_taylor(lin, x, orders=(1, 2, 3), input_names=["x1", "x2"], chunk_size=777)
    for order, w in want.items():
        cols = [i for i, o in enumerate(result.orders) if o == order]
        np.testing.assert_allclose(result.values[cols], np.abs(w).mean(0), rtol=1e-12)
    # symmetric problem: the mixed term is exactly twice each square term (1/2 factor)
    assert result.value("x1*x2") == pytest.approx(2 * result.value("x1*x1"), rel=1e-12)
    assert result.value("x1") == pytest.approx(result.value("x2"), rel=1e-12)
    assert result.value("x1*x1*x2") == pytest.approx(3 * result.value("x1*x1*x1"), rel=1e-12)


def test_gaussian_toy_correlated_mixed_term():
    """Correlations +0.5 (signal) / -0.5 (background): LLR = 4/3 (x1 + x2 + x1 x2) + 1/3."""
    x = gaussian_toy(2000, 0.5, -0.5)
    mu = np.array([0.5, 0.5])
    cov = lambda rho: np.array([[1.0, rho], [rho, 1.0]])  # noqa: E731
    llr = GaussianLLR(mu, cov(0.5), -mu, cov(-0.5))
    xt = torch.as_tensor(x)
    s = 4 / 3 * (x[:, 0] + x[:, 1] + x[:, 0] * x[:, 1]) + 1 / 3
    np.testing.assert_allclose(llr(xt).numpy(), s, atol=1e-12)
    s1 = np.stack([4 / 3 * (1 + x[:, 1]), 4 / 3 * (1 + x[:, 0])], 1)
    hess = np.array([[0.0, 4 / 3], [4 / 3, 0.0]])
    s2 = np.broadcast_to(hess, (len(x), 2, 2))
    s3 = np.zeros((len(x), 2, 2, 2))

    # the logit is exactly quadratic: t_12 = 4/3 for every event, t_11 = t_22 = 0
    got = taylor_coefficients(llr, xt, (1, 2, 3), output="logit")
    t2 = got[2].numpy()
    np.testing.assert_allclose(t2[:, 1], 4 / 3, rtol=1e-12)
    np.testing.assert_allclose(t2[:, [0, 2]], 0, atol=1e-12)
    np.testing.assert_allclose(got[3].numpy(), 0, atol=1e-12)
    np.testing.assert_allclose(got[1].numpy(), s1, rtol=1e-12)

    # sigmoid output: t_12 = sigma'' s_1 s_2 + sigma' * 4/3, and every other term
    f = sigmoid_derivs(s)
    got = taylor_coefficients(llr, xt, (1, 2, 3))
    t12 = f[2] * s1[:, 0] * s1[:, 1] + f[1] * 4 / 3
    np.testing.assert_allclose(got[2].numpy()[:, 1], t12, rtol=1e-10, atol=1e-14)
    assert_coeffs_close(got, chain_rule(f, s1, s2, s3, 2), rtol=1e-10)
    result = mean_abs_taylor(llr, x, orders=(1, 2), input_names=["x1", "x2"])
    assert result.value("x1*x2") == pytest.approx(np.abs(t12).mean(), rel=1e-12)
    # the correlation makes the mixed term dominate the squares
    assert result.value("x1*x2") > 2 * result.value("x1*x1")


@pytest.fixture(scope="module")
def random_mlp() -> MLP:
    torch.manual_seed(7)
    net = MLP(30, [128, 128, 128], activation="tanh")
    # scale up the weights a bit so the tanh layers are genuinely nonlinear
    with torch.no_grad():
        for lin in net.linears:
            lin.weight.mul_(2.0)
    return net.eval()


def test_fast_path_matches_autograd_random_mlp(random_mlp):
    x = torch.randn(300, 30)
    fast = taylor_coefficients(random_mlp, x, (1, 2), method="mlp")
    slow = taylor_coefficients(random_mlp, x, (1, 2), method="autograd")
    for o in (1, 2):
        scale = slow[o].abs().max()
        assert float((fast[o] - slow[o]).abs().max() / scale) < 5e-6
        mf = fast[o].abs().double().mean(0)
        ms = slow[o].abs().double().mean(0)
        assert float(((mf - ms).abs() / ms).max()) < 2e-6
    r_fast = mean_abs_taylor(random_mlp, x, method="mlp")
    r_slow = mean_abs_taylor(random_mlp, x, method="autograd")
    np.testing.assert_allclose(r_fast.values, r_slow.values, rtol=2e-6)
    assert r_fast.method == "mlp"
    assert r_slow.method == "autograd"


def test_fast_path_third_order_feature_subset(random_mlp):
    x = torch.randn(60, 30)
    feats = [0, 3, 7, 12, 29]
    fast = taylor_coefficients(random_mlp, x, (1, 2, 3), features=feats, method="mlp")
    slow = taylor_coefficients(random_mlp, x, (1, 2, 3), features=feats, method="autograd")
    for o in (1, 2, 3):
        assert fast[o].shape == (60, math.comb(len(feats) + o - 1, o))
        assert float((fast[o] - slow[o]).abs().max() / slow[o].abs().max()) < 5e-6
    # a subset picks the same columns as the full computation
    full = taylor_coefficients(random_mlp, x, (2,), method="mlp")[2]
    cols = [taylor_terms(30, (2,)).index(t) for t in taylor_terms(feats, (2,))]
    torch.testing.assert_close(fast[2], full[:, cols], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(
    "activation", ["tanh", "sigmoid", "elu", "selu", "silu", "gelu", "softplus"]
)
@pytest.mark.parametrize("output", ["sigmoid", "logit"])
def test_fast_path_matches_autograd_activations(activation, output):
    torch.manual_seed(11)
    net = MLP(4, [9, 7, 5], activation=activation).double()
    x = torch.randn(25, 4, dtype=torch.float64)
    fast = taylor_coefficients(net, x, (1, 2, 3), output=output, method="mlp")
    slow = taylor_coefficients(net, x, (1, 2, 3), output=output, method="autograd")
    for o in (1, 2, 3):
        torch.testing.assert_close(
            fast[o], slow[o], rtol=1e-10, atol=1e-12 * float(slow[o].abs().max())
        )


def test_no_hidden_layer_and_first_order_only():
    torch.manual_seed(3)
    net = MLP(3, [], activation="tanh").double()
    x = torch.randn(10, 3, dtype=torch.float64)
    fast = taylor_coefficients(net, x, (1, 2, 3), method="mlp")
    slow = taylor_coefficients(net, x, (1, 2, 3), method="autograd")
    for o in (1, 2, 3):
        torch.testing.assert_close(fast[o], slow[o])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("method", ["mlp", "autograd"])
def test_chunking_invariance(dtype, method):
    torch.manual_seed(5)
    net = MLP(6, [32, 32], activation="tanh").to(dtype)
    x = np.random.default_rng(5).normal(size=(500, 6))
    ref = mean_abs_taylor(net, x, orders=(1, 2, 3), chunk_size=500, method=method)
    rtol = 1e-12 if dtype == torch.float64 else 2e-6
    for chunk in (7, 64, 499):
        other = mean_abs_taylor(net, x, orders=(1, 2, 3), chunk_size=chunk, method=method)
        np.testing.assert_allclose(other.values, ref.values, rtol=rtol)
    assert ref.values.dtype == np.float64
    assert ref.n_events == 500


def test_float64_accumulation_event_by_event():
    """float32 coefficients, one event per chunk: float64 sums keep the mean to ~1e-8.

    (Accumulating in float32 drifts by ~1e-6 over these 1,500 additions.)
    """
    torch.manual_seed(5)
    net = MLP(6, [32, 32], activation="tanh")
    x = np.random.default_rng(5).normal(size=(1500, 6)).astype(np.float32)
    one = mean_abs_taylor(net, x, orders=(1, 2), chunk_size=1)
    full = mean_abs_taylor(net, x, orders=(1, 2), chunk_size=1500)
    np.testing.assert_allclose(one.values, full.values, rtol=2e-7)


def test_weights():
    torch.manual_seed(6)
    net = MLP(4, [16], activation="tanh").double()
    x = np.random.default_rng(6).normal(size=(40, 4))
    w = np.random.default_rng(7).integers(1, 4, size=40)
    weighted = mean_abs_taylor(net, x, weights=w, chunk_size=9)
    repeated = mean_abs_taylor(net, np.repeat(x, w, axis=0))
    np.testing.assert_allclose(weighted.values, repeated.values, rtol=1e-12)
    assert weighted.weighted
    assert weighted.sum_weights == w.sum()
    with pytest.raises(ValueError, match="sum of weights"):
        mean_abs_taylor(net, x, weights=np.zeros(40))


def test_against_tayloranalysis_oracle():
    import tayloranalysis as ta

    class Score(nn.Module):
        def __init__(self, net: nn.Module) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.sigmoid(self.net(x))

    torch.manual_seed(8)
    net = MLP(5, [16, 16], activation="tanh", dropout=0.0).double().eval()
    x = torch.randn(80, 5, dtype=torch.float64)
    terms = taylor_terms(5, (1, 2, 3))  # each pair/triple once: (i, j) and (j, i) would double
    oracle = ta.extend_model(Score(net))
    tcs = oracle.get_tc("x", {"x": x.clone()}, terms, reduce_func=lambda t: t.detach())
    for method in ("mlp", "autograd"):
        got = taylor_coefficients(net, x, (1, 2, 3), method=method)
        mine = torch.cat([got[1], got[2], got[3]], dim=1)
        want = torch.stack([tcs[t] for t in terms], dim=1)
        torch.testing.assert_close(mine, want, rtol=1e-10, atol=1e-13)


def test_relu_warning():
    torch.manual_seed(9)
    net = MLP(3, [8, 8], activation="relu")
    x = torch.randn(50, 3)
    with pytest.warns(TaylorWarning, match="ReLU"):
        result = mean_abs_taylor(net, x, orders=(1, 2), output="logit")
    # the logit Hessian of a ReLU network vanishes
    assert np.all(result.values[3:] < 1e-7)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mean_abs_taylor(net, x, orders=(1,))  # first order alone is fine


def test_unstandardised_warning():
    torch.manual_seed(10)
    net = MLP(3, [8], activation="tanh")
    raw = np.random.default_rng(0).normal(
        loc=[125.0, 0.0, 0.0], scale=[30.0, 1.0, 1.0], size=(100, 3)
    )
    with pytest.warns(TaylorWarning, match="unstandardised.*feature 0"):
        mean_abs_taylor(net, raw)
    with pytest.warns(TaylorWarning, match="unstandardised"):
        mean_abs_gradient(net, raw)
    standard = (raw - raw.mean(0)) / raw.std(0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mean_abs_taylor(net, standard)


def test_batchnorm_train_mode_warning_and_modes_restored():
    torch.manual_seed(12)
    net = nn.Sequential(nn.Linear(3, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 1))
    x = torch.randn(64, 3)
    net.train()
    running = net[1].running_mean.clone()
    with pytest.warns(TaylorWarning, match="BatchNorm"):
        r_train = mean_abs_taylor(net, x, chunk_size=16)
    assert net.training
    assert all(p.requires_grad for p in net.parameters())
    torch.testing.assert_close(net[1].running_mean, running)  # no statistics update
    net.eval()
    r_eval = mean_abs_taylor(net, x, chunk_size=64)  # eval-mode BN: events independent
    np.testing.assert_allclose(r_train.values, r_eval.values, rtol=1e-6)


def test_argument_errors():
    net = MLP(3, [4])
    x = torch.randn(5, 3)
    with pytest.raises(ValueError, match="method='mlp'"):
        taylor_coefficients(Polynomial(), torch.randn(5, 3), method="mlp")
    with pytest.raises(ValueError, match="output"):
        taylor_coefficients(net, x, output="score")
    with pytest.raises(ValueError, match="orders"):
        taylor_coefficients(net, x, orders=(4,))
    with pytest.raises(ValueError, match="input_names"):
        mean_abs_taylor(net, x, input_names=["a", "b"])
    with pytest.raises(ValueError, match="features="):
        taylor_coefficients(net, torch.randn(2, 1, 40, 40), orders=(2,))


class TinyConv1d(nn.Module):
    """(N, C, P) constituents -> logit."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(3, 4, kernel_size=1)
        self.head = nn.Linear(4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.conv(x)).mean(-1))[:, 0]


def test_gradient_map_constituents_masked():
    torch.manual_seed(13)
    net = TinyConv1d().double()
    rng = np.random.default_rng(13)
    x = rng.normal(size=(30, 3, 5))
    mask = rng.random((30, 5)) < 0.7
    w = rng.random(30)
    gmap, norm = mean_abs_gradient(net, x, weights=w, mask=mask, chunk_size=8, return_norm=True)
    assert gmap.shape == (3, 5)
    # reference: per-event autograd, masked weighted mean per (feature, constituent)
    xt = torch.as_tensor(x).requires_grad_(True)
    (g,) = torch.autograd.grad(torch.sigmoid(net(xt)).sum(), xt)
    g = g.abs().numpy()
    wm = w[:, None, None] * mask[:, None, :]
    np.testing.assert_allclose(gmap, (wm * g).sum(0) / wm.sum(0), rtol=1e-12)
    np.testing.assert_allclose(norm, np.broadcast_to(wm.sum(0), (3, 5)), rtol=1e-12)
    per_feature = aggregate_constituents(gmap, norm)
    np.testing.assert_allclose(per_feature, (wm * g).sum((0, 2)) / wm.sum((0, 2)), rtol=1e-12)
    np.testing.assert_allclose(aggregate_constituents(gmap), gmap.mean(1))


def test_result_ranking_and_names():
    net = Linear2(np.array([2.0, -0.5]), 0.0)
    x = np.random.default_rng(4).normal(size=(100, 2))
    result = mean_abs_taylor(net, x, orders=(1, 2), input_names=["pt", "eta"], output="logit")
    assert result.names == ["pt", "eta", "pt*pt", "pt*eta", "eta*eta"]
    assert result.terms == [(0,), (1,), (0, 0), (0, 1), (1, 1)]
    ranked = result.ranked()
    assert [r.term for r in ranked[:2]] == ["pt", "eta"]
    assert ranked[0].rank == 1
    assert ranked[0].value == pytest.approx(2.0)
    assert [r.value for r in ranked] == sorted((r.value for r in ranked), reverse=True)
    assert result.to_records(1) == [{"rank": 1, "term": "pt", "order": 1, "value": ranked[0].value}]
