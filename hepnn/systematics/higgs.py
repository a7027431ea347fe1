"""The Higgs-challenge ``DER_`` features recomputed from the ``PRI_`` ones, and the tau energy scale.

The formulas are those of the challenge documentation (C. Adam-Bourdarios et al.,
"Learning to discover: the Higgs boson machine learning challenge", 2014, appendix B);
tau, lepton and jets are massless four-vectors, the missing transverse momentum is a
transverse vector. Every function works on a mapping of column name to a 1D numpy
array in the challenge's raw form (``-999.0`` = undefined, see
:data:`hepnn.io.higgs_layout.MISSING_VALUE`) and returns arrays in the same form.

What can be recomputed (:data:`RECOMPUTABLE`, with the ``PRI_`` inputs of each):

========================== =================================================================
``DER_mass_transverse_met_lep`` √(2 pT(ℓ) E_T^miss (1 − cos Δφ(ℓ, E_T^miss)))
``DER_mass_vis``           invariant mass of τ + ℓ
``DER_pt_h``               |pT(τ) + pT(ℓ) + E_T^miss| (vector sum)
``DER_deltaeta_jet_jet``   |η(j1) − η(j2)| (≥ 2 jets)
``DER_mass_jet_jet``       invariant mass of j1 + j2 (≥ 2 jets)
``DER_prodeta_jet_jet``    η(j1) η(j2) (≥ 2 jets)
``DER_deltar_tau_lep``     √(Δη(τ, ℓ)² + Δφ(τ, ℓ)²)
``DER_pt_tot``             |pT(τ) + pT(ℓ) + E_T^miss + pT(j1) + pT(j2)| (jets if present)
``DER_sum_pt``             pT(τ) + pT(ℓ) + ``PRI_jet_all_pt``
``DER_pt_ratio_lep_tau``   pT(ℓ) / pT(τ)
``DER_met_phi_centrality`` (A + B)/√(A² + B²), A = sin(φ_met − φ_ℓ) s, B = sin(φ_τ − φ_met) s,
                           s = sign(sin(φ_τ − φ_ℓ))
``DER_lep_eta_centrality`` exp(−4 (η_ℓ − (η_j1 + η_j2)/2)² / (η_j1 − η_j2)²) (≥ 2 jets)
========================== =================================================================

``DER_mass_MMC`` (the missing-mass calculator: a likelihood fit of the neutrino
momenta over the di-tau decay kinematics, with ATLAS-internal probability
densities) **cannot be recomputed** from the ``PRI_`` features: every variation
leaves it at its stored value.

Jet energy scale (:func:`jet_energy_scale`, a ``scale`` of ``PRI_jet_all_pt``): every
jet's pT scales and the MET absorbs the change of the two leading jets.

Tau energy scale (:func:`tau_energy_scale`), as in the FAIR Universe HiggsML
Uncertainty Challenge (arXiv:2410.02867): ``PRI_tau_pt`` is multiplied by the
factor (η, φ unchanged: the tau four-vector scales), the missing transverse
momentum absorbs the opposite of the change of the tau's transverse momentum
vector (``E_T^miss → E_T^miss − (pT(τ)' − pT(τ))``, giving new ``PRI_met`` and
``PRI_met_phi``), and every ``DER_`` feature that depends on a changed ``PRI_``
quantity is recomputed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from hepnn.errors import InputError
from hepnn.systematics.variations import Variation

__all__ = [
    "DEPENDS_ON",
    "NOT_RECOMPUTABLE",
    "RECOMPUTABLE",
    "derived_features",
    "jet_energy_scale",
    "propagate",
    "tau_energy_scale",
    "vary_higgs_columns",
]

MISSING = -999.0

#: ``DER_`` feature → the ``PRI_`` columns its formula reads.
DEPENDS_ON: dict[str, tuple[str, ...]] = {
    "DER_mass_transverse_met_lep": ("PRI_lep_pt", "PRI_lep_phi", "PRI_met", "PRI_met_phi"),
    "DER_mass_vis": (
        "PRI_tau_pt", "PRI_tau_eta", "PRI_tau_phi", "PRI_lep_pt", "PRI_lep_eta", "PRI_lep_phi",
    ),
    "DER_pt_h": (
        "PRI_tau_pt", "PRI_tau_phi", "PRI_lep_pt", "PRI_lep_phi", "PRI_met", "PRI_met_phi",
    ),
    "DER_deltaeta_jet_jet": ("PRI_jet_num", "PRI_jet_leading_eta", "PRI_jet_subleading_eta"),
    "DER_mass_jet_jet": (
        "PRI_jet_num", "PRI_jet_leading_pt", "PRI_jet_leading_eta", "PRI_jet_leading_phi",
        "PRI_jet_subleading_pt", "PRI_jet_subleading_eta", "PRI_jet_subleading_phi",
    ),
    "DER_prodeta_jet_jet": ("PRI_jet_num", "PRI_jet_leading_eta", "PRI_jet_subleading_eta"),
    "DER_deltar_tau_lep": ("PRI_tau_eta", "PRI_tau_phi", "PRI_lep_eta", "PRI_lep_phi"),
    "DER_pt_tot": (
        "PRI_tau_pt", "PRI_tau_phi", "PRI_lep_pt", "PRI_lep_phi", "PRI_met", "PRI_met_phi",
        "PRI_jet_num", "PRI_jet_leading_pt", "PRI_jet_leading_phi",
        "PRI_jet_subleading_pt", "PRI_jet_subleading_phi",
    ),
    "DER_sum_pt": ("PRI_tau_pt", "PRI_lep_pt", "PRI_jet_all_pt"),
    "DER_pt_ratio_lep_tau": ("PRI_tau_pt", "PRI_lep_pt"),
    "DER_met_phi_centrality": ("PRI_tau_phi", "PRI_lep_phi", "PRI_met_phi"),
    "DER_lep_eta_centrality": (
        "PRI_jet_num", "PRI_lep_eta", "PRI_jet_leading_eta", "PRI_jet_subleading_eta",
    ),
}  # fmt: skip

#: The ``DER_`` features :func:`derived_features` recomputes.
RECOMPUTABLE: tuple[str, ...] = tuple(DEPENDS_ON)

#: ``DER_`` features that cannot be recomputed from the ``PRI_`` ones (left unchanged).
NOT_RECOMPUTABLE: tuple[str, ...] = ("DER_mass_MMC",)


def _col(columns: Mapping[str, Any], name: str) -> np.ndarray:
    return np.asarray(columns[name], dtype=np.float64)


def _pxpy(pt: np.ndarray, phi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return pt * np.cos(phi), pt * np.sin(phi)


def _mass(
    pt1: np.ndarray, eta1: np.ndarray, phi1: np.ndarray,
    pt2: np.ndarray, eta2: np.ndarray, phi2: np.ndarray,
) -> np.ndarray:  # fmt: skip
    """Invariant mass of two massless four-vectors."""
    px1, py1 = _pxpy(pt1, phi1)
    px2, py2 = _pxpy(pt2, phi2)
    pz1, pz2 = pt1 * np.sinh(eta1), pt2 * np.sinh(eta2)
    e = pt1 * np.cosh(eta1) + pt2 * np.cosh(eta2)
    m2 = e**2 - (px1 + px2) ** 2 - (py1 + py2) ** 2 - (pz1 + pz2) ** 2
    return np.sqrt(np.maximum(m2, 0.0))


def _dphi(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.mod(a - b + np.pi, 2 * np.pi) - np.pi


def derived_features(
    columns: Mapping[str, Any], names: tuple[str, ...] = RECOMPUTABLE
) -> dict[str, np.ndarray]:
    """The ``DER_`` features ``names`` computed from the ``PRI_`` columns (formulas: module docstring).

    Parameters
    ----------
    columns
        Column name → 1D array with every ``PRI_`` column the requested formulas read
        (:data:`DEPENDS_ON`), ``-999.0`` where undefined.
    names
        Which features (default: all of :data:`RECOMPUTABLE`).

    Returns
    -------
    dict
        Feature → float64 array; ``-999.0`` where the feature is undefined (di-jet
        features with fewer than two jets), as in the challenge files.

    Raises
    ------
    KeyError
        A name not in :data:`RECOMPUTABLE` (``DER_mass_MMC`` among them), or a
        ``PRI_`` column the formula needs is absent.
    """
    unknown = [n for n in names if n not in DEPENDS_ON]
    if unknown:
        msg = f"cannot recompute {unknown}: only {list(RECOMPUTABLE)}"
        raise KeyError(msg)
    c = {p: _col(columns, p) for n in names for p in DEPENDS_ON[n]}
    out: dict[str, np.ndarray] = {}
    njet = c.get("PRI_jet_num")
    two_jets = njet >= 2 if njet is not None else None
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        for name in names:
            out[name] = _one(name, c, two_jets)
    return out


def _one(name: str, c: dict[str, np.ndarray], two_jets: np.ndarray | None) -> np.ndarray:
    if name == "DER_mass_transverse_met_lep":
        dphi = c["PRI_lep_phi"] - c["PRI_met_phi"]
        return np.sqrt(np.maximum(2 * c["PRI_lep_pt"] * c["PRI_met"] * (1 - np.cos(dphi)), 0.0))
    if name == "DER_mass_vis":
        return _mass(
            c["PRI_tau_pt"], c["PRI_tau_eta"], c["PRI_tau_phi"],
            c["PRI_lep_pt"], c["PRI_lep_eta"], c["PRI_lep_phi"],
        )  # fmt: skip
    if name in ("DER_pt_h", "DER_pt_tot"):
        px, py = 0.0, 0.0
        for obj, pt in (("tau", "pt"), ("lep", "pt"), ("met", "")):
            pt_name = f"PRI_{obj}_{pt}" if pt else "PRI_met"
            x, y = _pxpy(c[pt_name], c[f"PRI_{obj}_phi"])
            px, py = px + x, py + y
        if name == "DER_pt_tot":
            njet = c["PRI_jet_num"]
            for k, jet in ((1, "leading"), (2, "subleading")):
                x, y = _pxpy(c[f"PRI_jet_{jet}_pt"], c[f"PRI_jet_{jet}_phi"])
                has = njet >= k
                px, py = px + np.where(has, x, 0.0), py + np.where(has, y, 0.0)
        return np.hypot(px, py)
    if name == "DER_deltar_tau_lep":
        deta = c["PRI_tau_eta"] - c["PRI_lep_eta"]
        return np.hypot(deta, _dphi(c["PRI_tau_phi"], c["PRI_lep_phi"]))
    if name == "DER_sum_pt":
        return (
            c["PRI_tau_pt"]
            + c["PRI_lep_pt"]
            + np.where(c["PRI_jet_all_pt"] == MISSING, 0.0, c["PRI_jet_all_pt"])
        )
    if name == "DER_pt_ratio_lep_tau":
        return c["PRI_lep_pt"] / c["PRI_tau_pt"]
    if name == "DER_met_phi_centrality":
        s = np.sign(np.sin(c["PRI_tau_phi"] - c["PRI_lep_phi"]))
        a = np.sin(c["PRI_met_phi"] - c["PRI_lep_phi"]) * s
        b = np.sin(c["PRI_tau_phi"] - c["PRI_met_phi"]) * s
        norm = np.hypot(a, b)
        return np.where(norm > 0, (a + b) / np.where(norm > 0, norm, 1.0), 0.0)
    # di-jet features: undefined with fewer than two jets
    assert two_jets is not None
    e1, e2 = c["PRI_jet_leading_eta"], c["PRI_jet_subleading_eta"]
    if name == "DER_deltaeta_jet_jet":
        value = np.abs(e1 - e2)
    elif name == "DER_prodeta_jet_jet":
        value = e1 * e2
    elif name == "DER_mass_jet_jet":
        value = _mass(
            c["PRI_jet_leading_pt"], e1, c["PRI_jet_leading_phi"],
            c["PRI_jet_subleading_pt"], e2, c["PRI_jet_subleading_phi"],
        )  # fmt: skip
    else:  # DER_lep_eta_centrality
        value = np.exp(-4.0 * (c["PRI_lep_eta"] - 0.5 * (e1 + e2)) ** 2 / (e1 - e2) ** 2)
    return np.where(two_jets, value, MISSING)


def propagate(
    nominal: Mapping[str, Any], changed: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """The ``DER_`` features that depend on the ``changed`` ``PRI_`` columns, after the change.

    Each is its stored value plus the change of its formula:
    ``DER' = DER + f(PRI') − f(PRI)``. A zero change therefore gives back the stored
    value exactly, and what the formulas cannot know (the visible tau and jet masses
    of the original reconstruction, the 3-decimal rounding of the files) cancels in
    the difference. Undefined values (``-999.0``) stay undefined.

    Parameters
    ----------
    nominal
        Column → 1D array: every ``PRI_`` column the affected formulas read and the
        stored ``DER_`` features (those absent are skipped).
    changed
        The varied ``PRI_`` columns.

    Returns
    -------
    dict
        ``DER_`` feature → varied float64 array, for each affected feature present
        in ``nominal`` (``DER_mass_MMC`` never: see :data:`NOT_RECOMPUTABLE`).
    """
    names = tuple(
        n for n, deps in DEPENDS_ON.items()
        if n in nominal and n not in changed and any(p in changed for p in deps)
        and all(p in nominal for p in deps)
    )  # fmt: skip
    if not names:
        return {}
    before = derived_features(nominal, names)
    after = derived_features({**nominal, **changed}, names)
    out = {}
    for n in names:
        stored = _col(nominal, n)
        with np.errstate(invalid="ignore"):
            out[n] = np.where(stored == MISSING, stored, stored + (after[n] - before[n]))
    return out


def tau_energy_scale(columns: Mapping[str, Any], tau_pt: np.ndarray) -> dict[str, np.ndarray]:
    """``PRI_tau_pt`` set to ``tau_pt`` (a scaled or shifted tau) and the missing momentum corrected.

    The tau keeps its direction (η, φ); the missing transverse momentum absorbs the
    opposite of the change of the tau's transverse momentum vector, as in the FAIR
    Universe HiggsML Uncertainty Challenge (arXiv:2410.02867):
    ``E_T^miss' = E_T^miss − (pT(τ)' − pT(τ))`` (vectors in the transverse plane).

    Returns
    -------
    dict
        ``PRI_tau_pt``, ``PRI_met``, ``PRI_met_phi`` (varied) and every ``DER_`` feature of
        ``columns`` that depends on them (:func:`propagate`).
    """
    pt0 = _col(columns, "PRI_tau_pt")
    phi = _col(columns, "PRI_tau_phi")
    met, met_phi = _col(columns, "PRI_met"), _col(columns, "PRI_met_phi")
    dpt = np.asarray(tau_pt, dtype=np.float64) - pt0
    mx = met * np.cos(met_phi) - dpt * np.cos(phi)
    my = met * np.sin(met_phi) - dpt * np.sin(phi)
    moved = dpt != 0  # events whose tau did not change keep their stored MET bit for bit
    changed = {
        "PRI_tau_pt": np.asarray(tau_pt, dtype=np.float64),
        "PRI_met": np.where(moved, np.hypot(mx, my), met),
        "PRI_met_phi": np.where(moved, np.arctan2(my, mx), met_phi),
    }
    return {**changed, **propagate(columns, changed)}


def jet_energy_scale(columns: Mapping[str, Any], factor: float) -> dict[str, np.ndarray]:
    """Every jet's transverse momentum scaled by ``factor`` and the missing momentum corrected.

    ``PRI_jet_leading_pt`` / ``PRI_jet_subleading_pt`` (where the event has that jet) and
    ``PRI_jet_all_pt`` (all jets) are multiplied by ``factor``; the missing transverse
    momentum absorbs the opposite of the change of the two leading jets' transverse
    momentum vectors (the file has no direction for the others), as in the FAIR
    Universe challenge; dependent ``DER_`` features follow (:func:`propagate`). Jets
    crossing the 25 GeV reconstruction threshold are not added or removed (the jet
    count is kept): valid for scales of a few per cent.
    """
    njet = _col(columns, "PRI_jet_num")
    met, met_phi = _col(columns, "PRI_met"), _col(columns, "PRI_met_phi")
    mx, my = met * np.cos(met_phi), met * np.sin(met_phi)
    changed: dict[str, np.ndarray] = {}
    for k, jet in ((1, "leading"), (2, "subleading")):
        pt = _col(columns, f"PRI_jet_{jet}_pt")
        phi = _col(columns, f"PRI_jet_{jet}_phi")
        has = njet >= k
        new = np.where(has, pt * factor, pt)
        dpt = np.where(has, new - pt, 0.0)
        mx, my = (
            mx - dpt * np.cos(np.where(has, phi, 0.0)),
            my - dpt * np.sin(np.where(has, phi, 0.0)),
        )
        changed[f"PRI_jet_{jet}_pt"] = new
    all_pt = _col(columns, "PRI_jet_all_pt")
    changed["PRI_jet_all_pt"] = np.where(all_pt == MISSING, all_pt, all_pt * factor)
    moved = njet >= 1
    changed["PRI_met"] = np.where(moved, np.hypot(mx, my), met)
    changed["PRI_met_phi"] = np.where(moved, np.arctan2(my, mx), met_phi)
    return {**changed, **propagate(columns, changed)}


def vary_higgs_columns(
    columns: Mapping[str, Any], variation: Variation, direction: str, mask: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """The columns a variation changes in Higgs-challenge events, with everything derived from them.

    * ``PRI_tau_pt``: tau energy scale (:func:`tau_energy_scale`: MET corrected, DER_ recomputed);
    * ``PRI_jet_all_pt`` with ``kind: scale``: jet energy scale of every jet
      (:func:`jet_energy_scale`: leading and subleading jets too, MET corrected);
    * any other ``PRI_`` feature: varied, and the ``DER_`` features that read it recomputed
      (:func:`propagate`; no MET correction);
    * a ``DER_`` feature: varied alone.

    Parameters
    ----------
    columns
        Column → 1D array of the nominal events (raw form, ``-999.0`` = undefined).
    variation, direction
        What to vary, ``Up`` or ``Down``.
    mask
        Events it applies to (default all); the others keep their nominal values.

    Returns
    -------
    dict
        Only the changed columns (float64), to overlay on ``columns``.
    """
    feature = variation.feature
    if feature not in columns:
        msg = f"systematics.{variation.name}: feature {feature!r} is not a column of the events"
        raise InputError(msg)
    varied = variation.vary(_col(columns, feature), direction)
    if feature == "PRI_tau_pt":
        changed = tau_energy_scale(columns, varied)
    elif feature == "PRI_jet_all_pt" and variation.kind == "scale":
        changed = jet_energy_scale(columns, variation.size(direction))
    elif feature.startswith("PRI_"):
        changed = {feature: varied}
        changed |= propagate(columns, changed)
    else:
        changed = {feature: varied}
    if mask is not None and not mask.all():
        changed = {k: np.where(mask, v, _col(columns, k)) for k, v in changed.items()}
    return changed
