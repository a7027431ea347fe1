"""Jet images on the real top-tagging jets: recipe properties, reference equality, errors."""

from __future__ import annotations

from pathlib import Path

import awkward as ak
import numpy as np
import pytest

from hepnn.errors import InputError
from hepnn.jets.images import jet_images, jet_images_reference, transform_constituents
from hepnn.jets.nanoaod import read_fatjet_constituents

REPO = Path(__file__).resolve().parents[1]
_TOPTAG = (REPO / "samples" / "toptag",)
_PFNANO = (REPO / "samples" / "nanoaod" / "pfnano.root",)


def _first_existing(paths: tuple[Path, ...], what: str) -> Path:
    for p in paths:
        if p.exists():
            return p
    pytest.fail(f"real {what} not found (looked at {[str(p) for p in paths]})")


@pytest.fixture(scope="module")
def jets() -> dict[str, np.ndarray]:
    """The 1,600 real jets: pT from the 4-vectors, (Δη, Δφ) from pf_points, mask, labels."""
    d = _first_existing(_TOPTAG, "top-tagging jets")
    v = np.load(d / "tl_pf_vectors.npy")
    p = np.load(d / "tl_pf_points.npy")
    return {
        "pt": np.hypot(v[:, 0], v[:, 1]),
        "eta": p[:, 0],
        "phi": p[:, 1],
        "mask": np.load(d / "tl_pf_mask.npy"),
        "label": np.load(d / "tl_labels.npy"),
    }


def _awkward(jets: dict[str, np.ndarray], name: str, sl: slice = slice(None)) -> ak.Array:
    m = jets["mask"][sl, 0] != 0
    return ak.unflatten(jets[name][sl][m], m.sum(axis=1))


def test_vectorised_equals_per_jet_reference(jets: dict[str, np.ndarray]) -> None:
    args = (jets["pt"], jets["eta"], jets["phi"])
    for normalize in ("sum", "max", None):
        fast = jet_images(*args, mask=jets["mask"], normalize=normalize)
        ref = jet_images_reference(*args, jets["mask"], normalize=normalize)
        assert fast.shape == ref.shape == (1600, 1, 33, 33)
        assert fast.dtype == np.float32
        scale = 1.0 if normalize else float(ref.max())
        np.testing.assert_allclose(fast, ref, rtol=0, atol=2e-6 * scale)


def test_awkward_input_equals_padded(jets: dict[str, np.ndarray]) -> None:
    sl = slice(0, 200)
    padded = jet_images(jets["pt"][sl], jets["eta"][sl], jets["phi"][sl], mask=jets["mask"][sl])
    jag = jet_images(*(_awkward(jets, k, sl) for k in ("pt", "eta", "phi")))
    np.testing.assert_array_equal(padded, jag)


def test_transformed_coordinates_are_standardised(jets: dict[str, np.ndarray]) -> None:
    flat, x, y = transform_constituents(jets["pt"], jets["eta"], jets["phi"], mask=jets["mask"])
    w, off = flat.fields["pt"], flat.offsets
    seg = np.add.reduceat
    sw = seg(w, off[:-1])
    # centroid at (0, 0)
    assert np.abs(seg(w * x, off[:-1]) / sw).max() < 1e-9
    assert np.abs(seg(w * y, off[:-1]) / sw).max() < 1e-9
    # principal axis along η: no η-φ correlation and the larger spread along η
    sxx, syy, sxy = (seg(w * a * b, off[:-1]) / sw for a, b in ((x, x), (y, y), (x, y)))
    assert np.abs(sxy).max() < 1e-9 * np.max(sxx + syy)
    assert (sxx >= syy).all()
    # flips: the pT sum of the positive half-plane is the larger one, in both directions
    for c in (x, y):
        pos = seg(np.where(c > 0, w, 0.0), off[:-1])
        neg = seg(np.where(c < 0, w, 0.0), off[:-1])
        assert (pos >= neg).all()


def test_images_of_real_top_jets(jets: dict[str, np.ndarray]) -> None:
    top = jets["label"] == 1
    args = (jets["pt"][top], jets["eta"][top], jets["phi"][top])
    # Even pixel counts: the image halves split exactly at 0; a wide window keeps every constituent.
    n, width = 32, 3.2
    images, info = jet_images(
        *args, mask=jets["mask"][top], n_eta=n, n_phi=n, width=width, return_info=True
    )
    img = images[:, 0].astype(np.float64)
    assert info.n_empty == 0
    assert info.n_outside.sum() == 0
    np.testing.assert_allclose(img.sum(axis=(1, 2)), 1.0, atol=1e-5)
    centres = (np.arange(n) + 0.5) * (width / n) - width / 2
    ce = np.einsum("jab,a->j", img, centres)
    cp = np.einsum("jab,b->j", img, centres)
    half_pixel = width / n / 2
    assert np.abs(ce).max() <= half_pixel
    assert np.abs(cp).max() <= half_pixel
    # the brighter half is at positive η (rows n/2...) and positive φ (columns n/2...)
    h = n // 2
    assert (img[:, h:].sum(axis=(1, 2)) >= img[:, :h].sum(axis=(1, 2)) - 1e-6).all()
    assert (img[:, :, h:].sum(axis=(1, 2)) >= img[:, :, :h].sum(axis=(1, 2)) - 1e-6).all()
    # principal axis along η: larger spread along the rows for (almost) every jet
    see = np.einsum("jab,a->j", img, centres**2) - ce**2
    spp = np.einsum("jab,b->j", img, centres**2) - cp**2
    assert np.mean(see >= spp) > 0.99
    assert np.mean(see) > 1.5 * np.mean(spp)


def test_phi_wraparound(jets: dict[str, np.ndarray]) -> None:
    sl = slice(0, 300)
    pt, deta, dphi, mask = jets["pt"][sl], jets["eta"][sl], jets["phi"][sl], jets["mask"][sl]
    real = mask[:, 0] != 0
    phi_jet = np.pi - 0.05
    seam = np.mod(phi_jet + dphi.astype(np.float64) + np.pi, 2 * np.pi) - np.pi  # wrapped
    assert ((seam < -2.5) & real).any(axis=1).sum() > 100  # many jets straddle ±π
    assert ((seam > 2.5) & real).any(axis=1).all()
    at_zero = jet_images(pt, deta + 0.3, dphi, mask=mask)
    at_pi = jet_images(pt, deta + 0.3, seam, mask=mask)
    np.testing.assert_allclose(at_pi, at_zero, atol=1e-6)
    with_axis = jet_images(pt, deta + 0.3, seam, mask=mask, jet_eta=0.3, jet_phi=phi_jet)
    np.testing.assert_allclose(with_axis, at_zero, atol=1e-6)
    centred_on_axis = jet_images(
        pt, deta + 0.3, seam, mask=mask, jet_eta=0.3, jet_phi=phi_jet, center="jet"
    )
    assert centred_on_axis[:, 0].sum(axis=(1, 2)).min() > 0.9  # the jet is whole, not split at ±π


def test_charge_channels_on_pfnano() -> None:
    path = _first_existing(_PFNANO, "PFNano file")
    cons = ak.flatten(read_fatjet_constituents(path), axis=1)
    kw = {"charge": cons.charge, "channels": ("pt", "charged_pt", "neutral_pt", "count")}
    img, info = jet_images(cons.pt, cons.eta, cons.phi, return_info=True, **kw)
    assert img.shape == (len(cons), 4, 33, 33)
    np.testing.assert_allclose(img[:, 1] + img[:, 2], img[:, 0], atol=1e-6)
    np.testing.assert_allclose(img.sum(axis=(2, 3))[:, [0, 3]], 1.0, atol=1e-5)
    raw = jet_images(cons.pt, cons.eta, cons.phi, normalize=None, **kw)
    n_in = info.n_constituents - info.n_outside
    np.testing.assert_array_equal(raw[:, 3].sum(axis=(1, 2)), n_in)
    charged = ak.to_numpy(ak.sum(cons.pt * (cons.charge != 0), axis=1))
    assert np.corrcoef(raw[:, 1].sum(axis=(1, 2)), charged)[0, 1] > 0.99
    mx = jet_images(cons.pt, cons.eta, cons.phi, normalize="max", **kw)
    np.testing.assert_allclose(mx[:, 0].max(axis=(1, 2)), 1.0, atol=1e-6)
    np.testing.assert_allclose(mx[:, 3].max(axis=(1, 2)), 1.0, atol=1e-6)


def test_empty_jets_are_flagged(jets: dict[str, np.ndarray]) -> None:
    pt, eta, phi = (_awkward(jets, k, slice(0, 3)) for k in ("pt", "eta", "phi"))
    with_empty = [ak.concatenate([a[:1], a[1:2, :0], a[2:]]) for a in (pt, eta, phi)]
    img, info = jet_images(*with_empty, return_info=True)
    assert info.n_empty == 1
    assert info.empty.tolist() == [False, True, False]
    assert not img[1].any()
    np.testing.assert_allclose(img[[0, 2], 0].sum(axis=(1, 2)), 1.0, atol=1e-6)
    mask = jets["mask"][:4].copy()
    mask[3] = 0  # a padded jet without constituents, last (reduceat edge case)
    img2, info2 = jet_images(
        jets["pt"][:4], jets["eta"][:4], jets["phi"][:4], mask=mask, return_info=True
    )
    assert info2.empty.tolist() == [False, False, False, True]
    assert not img2[3].any()
    none = jet_images(ak.Array([[]]) * 1.0, ak.Array([[]]) * 1.0, ak.Array([[]]) * 1.0)
    assert none.shape == (1, 1, 33, 33)
    assert not none.any()


@pytest.mark.parametrize(
    ("field", "value"), [("pt", np.nan), ("eta", np.inf), ("phi", -np.inf), ("pt", -1.0)]
)
def test_bad_constituent_names_the_jet(
    jets: dict[str, np.ndarray], field: str, value: float
) -> None:
    arrays = {k: jets[k][:20].copy() for k in ("pt", "eta", "phi")}
    arrays[field][7, 2] = value
    with pytest.raises(InputError, match=r"of jet 7\b"):
        jet_images(arrays["pt"], arrays["eta"], arrays["phi"], mask=jets["mask"][:20])
    arrays[field][7, 127] = np.nan  # a NaN in a padded slot is ignored
    arrays[field][7, 2] = jets[field][7, 2]
    jet_images(arrays["pt"], arrays["eta"], arrays["phi"], mask=jets["mask"][:20])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_eta": 0}, "n_eta"),
        ({"n_phi": 2.5}, "n_phi"),
        ({"width": -1.0}, "width"),
        ({"width": (1.0, 0.0)}, "width"),
        ({"width": (1.0, np.nan)}, "width"),
        ({"normalize": "l2"}, "normalize"),
        ({"center": "leading"}, "center"),
        ({"channels": ("pt", "pt")}, "channels"),
        ({"channels": ("energy",)}, "channels"),
        ({"channels": ("charged_pt",)}, "charge"),
        ({"center": "jet"}, "jet_eta"),
        ({"jet_eta": 0.0}, "both"),
    ],
)
def test_bad_parameters_raise_value_error(
    jets: dict[str, np.ndarray], kwargs: dict, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        jet_images(
            jets["pt"][:5], jets["eta"][:5], jets["phi"][:5], mask=jets["mask"][:5], **kwargs
        )


def test_padded_input_needs_mask(jets: dict[str, np.ndarray]) -> None:
    with pytest.raises(ValueError, match="mask"):
        jet_images(jets["pt"][:5], jets["eta"][:5], jets["phi"][:5])
