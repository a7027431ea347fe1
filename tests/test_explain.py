"""Taylor ranking of trained networks on the seeded Gaussian toys."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hepnn.config import TaylorConfig
from hepnn.explain import rank_network
from hepnn.io.toy import ToyGauss, generate_toy, log_likelihood_ratio, sample
from hepnn.train import TrainSettings, train


def test_toy_is_seeded_and_cached(tmp_path: Path) -> None:
    spec = ToyGauss(events_per_class=500, seed=7)
    a, b = sample(spec), sample(spec)
    for key in a:
        assert np.array_equal(a[key], b[key])
    first = generate_toy(spec, tmp_path)
    mtime = first.root_path.stat().st_mtime_ns
    again = generate_toy(spec, tmp_path)
    assert again.root_path == first.root_path
    assert again.root_path.stat().st_mtime_ns == mtime  # reused, not regenerated
    assert (
        generate_toy(ToyGauss(events_per_class=500, seed=8), tmp_path).root_path != first.root_path
    )


def test_toy_moments_and_llr() -> None:
    spec = ToyGauss(events_per_class=50_000, rho_signal=0.5, rho_background=-0.5, seed=3)
    d = sample(spec)
    sig = d["Label"] == 1
    corr_s = np.corrcoef(d["x1"][sig], d["x2"][sig])[0, 1]
    corr_b = np.corrcoef(d["x1"][~sig], d["x2"][~sig])[0, 1]
    assert corr_s == pytest.approx(0.5, abs=0.02)
    assert corr_b == pytest.approx(-0.5, abs=0.02)
    assert d["x1"][sig].mean() == pytest.approx(0.5, abs=0.02)
    # LLR = -1/2 x^T (S_s^-1 - S_b^-1) x + linear: its x1*x2 coefficient is
    # (rho_s - rho_b) / (1 - rho^2) = 4/3 and the x1^2, x2^2 terms cancel. The mixed
    # second difference picks out 4 times that coefficient, linear terms cancel.
    x1 = np.array([1.0, 1.0, -1.0, -1.0])
    x2 = np.array([1.0, -1.0, 1.0, -1.0])
    llr = log_likelihood_ratio(x1, x2, spec)
    assert llr[0] - llr[1] - llr[2] + llr[3] == pytest.approx(16 / 3, rel=1e-12)
    # pure x1^2 curvature vanishes: LLR(2,0) - 2 LLR(1,0) + LLR(0,0) = 0
    c = log_likelihood_ratio(np.array([2.0, 1.0, 0.0]), np.zeros(3), spec)
    assert c[0] - 2 * c[1] + c[2] == pytest.approx(0.0, abs=1e-12)


def _train_toy(seed: int, data: dict[str, np.ndarray], outdir: Path) -> Path:
    settings = TrainSettings(
        architecture="mlp",
        params={"hidden": [32], "activation": "tanh", "dropout": 0.0},
        features=["x1", "x2"],
        missing_flags="none",
        epochs=12,
        batch_size=256,
        lr=3e-3,
        patience=12,
        seed=seed,
        split={"method": "parity"},
    )
    result = train(settings, data, data["Label"], None, data["EventId"], outdir, progress=False)
    assert result.path is not None
    return result.path


def test_ranking_stable_under_retraining(tmp_path: Path) -> None:
    """Two seeds, different networks, the same ranking (the lecture's point)."""
    data = sample(ToyGauss(events_per_class=6000, rho_signal=0.5, rho_background=-0.5, seed=11))
    tops = []
    for seed in (1, 2):
        path = _train_toy(seed, data, tmp_path / f"s{seed}")
        result = rank_network(path, data, TaylorConfig(orders=[1, 2], events=4000), seed=0)
        tops.append([r[1] for r in result.ranked(3)])
        w = __import__("torch").load(path / "model.pt", weights_only=True)
        tops[-1].append(float(next(iter(w.values())).flatten()[0]))
    assert tops[0][-1] != tops[1][-1]  # the networks differ ...
    assert set(tops[0][:3]) == set(tops[1][:3])  # ... their top terms do not
    assert set(tops[0][:3]) == {"x1", "x2", "x1*x2"}
