"""cnn2d / cnn1d: shapes, dropout placement, determinism, and smoke training on the real jets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

import hepnn.models.cnn1d
import hepnn.models.cnn2d  # noqa: F401  (registers the architectures)
from hepnn.jets.constituents import SequenceScaler, constituent_sequences
from hepnn.jets.images import jet_images
from hepnn.models.registry import build

REPO = Path(__file__).resolve().parents[1]
_TOPTAG = (REPO / "samples" / "toptag",)


@pytest.fixture(scope="module")
def data() -> dict[str, np.ndarray]:
    """Images and scaled sequences of the 1,600 real jets, plus a seeded 1,280 / 320 split."""
    d = next((p for p in _TOPTAG if p.is_dir()), None)
    if d is None:
        pytest.fail("real top-tagging jets not found in samples/toptag")
    v = np.load(d / "tl_pf_vectors.npy").astype(np.float64)
    pts = np.load(d / "tl_pf_points.npy")
    m = np.load(d / "tl_pf_mask.npy")
    y = np.load(d / "tl_labels.npy").astype(np.float32)
    real = m[:, 0] != 0
    pt = np.hypot(v[:, 0], v[:, 1])
    jet = np.where(real[:, None], v, 0.0).sum(axis=2)
    jpt = np.hypot(jet[:, 0], jet[:, 1])
    perm = np.random.default_rng(1234).permutation(len(y))
    train, test = perm[:1280], perm[1280:]
    images = jet_images(pt, pts[:, 0], pts[:, 1], mask=m)
    X, mask = constituent_sequences(
        pt, np.arcsinh(v[:, 2] / np.where(real, pt, 1.0)), np.arctan2(v[:, 1], v[:, 0]), v[:, 3],
        mask=m, jet_pt=jpt, jet_eta=np.arcsinh(jet[:, 2] / jpt), jet_phi=np.arctan2(jet[:, 1], jet[:, 0]),
        jet_energy=jet[:, 3], max_constituents=64,
    )  # fmt: skip
    scaler = SequenceScaler.fit(X[train], mask[train])
    seq = np.concatenate([scaler.transform(X, mask), mask.astype(np.float32)], axis=1)
    return {"images": images, "seq": seq, "y": y, "train": train, "test": test}


def _order_of_leaf_calls(net: nn.Module, x: torch.Tensor) -> list[nn.Module]:
    calls: list[nn.Module] = []
    hooks = [
        m.register_forward_hook(lambda mod, _i, _o: calls.append(mod))
        for m in net.modules()
        if not list(m.children())
    ]
    net.eval()
    with torch.no_grad():
        net(x)
    for h in hooks:
        h.remove()
    return calls


CONFIGS = [
    ("cnn2d", {"in_channels": 1, "image_size": (33, 33)}, (5, 1, 33, 33)),
    (
        "cnn2d",
        {
            "in_channels": 3,
            "image_size": (16, 20),
            "filters": (4, 8),
            "convs_per_block": 2,
            "dense": (),
            "kernel_size": 5,
        },
        (5, 3, 16, 20),
    ),
    ("cnn2d", {"in_channels": 1, "image_size": (3, 3), "filters": (4, 4, 4)}, (2, 1, 3, 3)),
    ("cnn1d", {"n_features": 7}, (5, 8, 64)),
    (
        "cnn1d",
        {
            "n_features": 3,
            "filters": (8,),
            "kernel_size": 1,
            "dense": (16, 16),
            "pooling": "mean_max_sum",
        },
        (5, 4, 10),
    ),
    (
        "cnn1d",
        {"n_features": 3, "filters": (8, 8), "kernel_size": 1, "pooling": "max_weighted"},
        (5, 4, 10),
    ),
]


@pytest.mark.parametrize(("name", "params", "shape"), CONFIGS)
def test_shapes_dropout_placement_and_eval_determinism(
    name: str, params: dict, shape: tuple[int, ...]
) -> None:
    torch.manual_seed(0)
    net = build(name, **params)
    x = torch.rand(shape)
    if name == "cnn1d":
        x[:, -1] = (torch.rand(shape[0], shape[2]) < 0.7).float()
    net.eval()
    with torch.no_grad():
        a, b = net(x), net(x)
    assert a.shape == (shape[0],)
    assert torch.equal(a, b)
    net.train()
    with torch.no_grad():
        assert not torch.equal(net(x), a)  # dropout active in train mode
    calls = _order_of_leaf_calls(net, x)
    weights = [i for i, m in enumerate(calls) if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear))]
    assert weights
    for i in weights:
        assert i > 0
        assert isinstance(calls[i - 1], nn.Dropout)
        assert type(calls[i - 1]) is nn.Dropout  # elementwise, not Dropout1d/2d
    assert len(net.dropouts) == len(net.weight_layers) == len(weights)
    assert [calls[i] for i in weights] == list(net.weight_layers)


def test_state_dict_round_trip() -> None:
    torch.manual_seed(1)
    params = {"in_channels": 2, "image_size": (12, 12), "filters": (4,), "dense": (8,)}
    net = build("cnn2d", **params)
    other = build("cnn2d", **params)
    other.load_state_dict(net.state_dict())
    x = torch.rand(3, 2, 12, 12)
    net.eval()
    other.eval()
    assert torch.equal(net(x), other(x))


def test_cnn1d_ignores_padding(data: dict[str, np.ndarray]) -> None:
    torch.manual_seed(2)
    net = build("cnn1d", n_features=7, filters=(16, 16), kernel_size=3)
    net.eval()
    seq = torch.as_tensor(data["seq"][:50])
    with torch.no_grad():
        ref = net(seq)
        longer = torch.cat([seq, torch.zeros(50, 8, 40)], dim=2)
        assert torch.allclose(net(longer), ref, atol=1e-5)
        garbage = seq.clone()
        garbage[:, :-1] += (1 - garbage[:, -1:]) * 5.0  # junk in padded feature slots
        assert torch.allclose(net(garbage), ref, atol=1e-6)
        with pytest.raises(ValueError, match="mask last"):
            net(seq[:, :-1])


def test_weighted_pooling_can_weight_by_pt() -> None:
    """A score of log pT makes the weights pT_i / sum pT: an energy-flow sum, padding-free."""
    torch.manual_seed(3)
    net = build("cnn1d", n_features=2, filters=(2,), kernel_size=1, dense=(), pooling="weighted")
    with torch.no_grad():
        net.convs[0].weight.copy_(torch.eye(2)[:, :, None])  # h = relu(x) = x for x > 0
        net.convs[0].bias.zero_()
        net.scores[0].weight.copy_(torch.tensor([[[1.0], [0.0]]]))  # score = log pT
        net.scores[0].bias.fill_(5.0)  # a constant shift does not change a softmax
        net.linears[0].weight.copy_(torch.tensor([[0.0, 1.0]]))  # read sum_i w_i x1_i
        net.linears[0].bias.zero_()
    pt = torch.rand(4, 6) * 100 + 1
    mask = (torch.arange(6) < torch.tensor([[6], [3], [1], [0]])).float()
    obs = torch.rand(4, 6) + 0.1  # e.g. an angle per constituent
    x = torch.stack([pt.log(), obs, mask], dim=1)
    net.eval()
    with torch.no_grad():
        got = net(x)
        padded = net(torch.cat([x, torch.zeros(4, 3, 5)], dim=2))
    z = pt * mask / (pt * mask).sum(dim=1, keepdim=True).clamp(min=1e-30)
    want = (z * obs).sum(dim=1)
    assert torch.allclose(got, want, rtol=1e-5)
    assert got[3] == 0  # no constituents: nothing to pool
    assert torch.allclose(padded, got, atol=1e-6)  # more padding slots: same value


@pytest.mark.parametrize(
    ("name", "params", "match"),
    [
        ("cnn2d", {"filters": ()}, "filters"),
        ("cnn2d", {"kernel_size": 4}, "kernel_size"),
        ("cnn2d", {"dropout": 1.0}, "dropout"),
        ("cnn2d", {"image_size": (33,)}, "image_size"),
        ("cnn2d", {"activation": "swish"}, "activation"),
        ("cnn1d", {"pooling": "median"}, "pooling"),
        ("cnn1d", {"n_features": 0}, "n_features"),
        ("cnn1d", {"dense": (0,)}, "dense"),
    ],
)
def test_bad_parameters(name: str, params: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build(name, **params)


def _fit(
    net: nn.Module, x: np.ndarray, y: np.ndarray, epochs: int, lr: float, seed: int = 0
) -> None:
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    loss_fn = nn.BCEWithLogitsLoss()
    xt, yt = torch.as_tensor(x), torch.as_tensor(y)
    net.train()
    for _ in range(epochs):
        perm = torch.randperm(len(xt), generator=gen)
        for i in range(0, len(xt), 64):
            idx = perm[i : i + 64]
            opt.zero_grad()
            loss_fn(net(xt[idx]), yt[idx]).backward()
            opt.step()
    net.eval()


def _auc(net: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    with torch.no_grad():
        return float(roc_auc_score(y, net(torch.as_tensor(x)).numpy()))


@pytest.mark.parametrize(("name", "key", "epochs"), [("cnn2d", "images", 4), ("cnn1d", "seq", 6)])
def test_smoke_training_on_real_jets(
    data: dict[str, np.ndarray], name: str, key: str, epochs: int
) -> None:
    torch.manual_seed(0)
    net = build(name, **({"in_channels": 1} if name == "cnn2d" else {"n_features": 7}))
    tr, te = data["train"], data["test"]
    _fit(net, data[key][tr], data["y"][tr], epochs=epochs, lr=3e-3)
    auc = _auc(net, data[key][te], data["y"][te])
    assert auc > 0.8


@pytest.mark.slow
@pytest.mark.parametrize(("name", "key", "epochs"), [("cnn2d", "images", 30), ("cnn1d", "seq", 25)])
def test_longer_training_beats_the_target(
    data: dict[str, np.ndarray], name: str, key: str, epochs: int
) -> None:
    torch.manual_seed(0)
    net = build(name, **({"in_channels": 1} if name == "cnn2d" else {"n_features": 7}))
    tr, te = data["train"], data["test"]
    _fit(net, data[key][tr], data["y"][tr], epochs=epochs, lr=3e-3)
    auc = _auc(net, data[key][te], data["y"][te])
    assert auc > 0.94
