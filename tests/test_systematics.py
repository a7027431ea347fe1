"""hepnn.systematics on the shipped events: DER_ formulas, tau energy scale, variations, templates."""

from __future__ import annotations

from pathlib import Path

import hist
import numpy as np
import pytest
import uproot

from hepnn.config import load_config
from hepnn.errors import ConfigError
from hepnn.outputs import write_root
from hepnn.systematics import (
    DEPENDS_ON,
    RECOMPUTABLE,
    Variation,
    derived_features,
    is_data,
    nominal_hists,
    propagate,
    syst_labels,
    tau_energy_scale,
    variations_from_mapping,
    vary_higgs_columns,
)

REPO = Path(__file__).resolve().parents[1]
#: The formulas treat tau, lepton and jets as massless; the original reconstruction did not.
MASSIVE = ("DER_mass_vis", "DER_mass_jet_jet")


@pytest.fixture(scope="module")
def cols(higgs_csv_path: Path) -> dict[str, np.ndarray]:
    """The 30 features of the shipped 18k events as float64 (read with pandas, not hepnn)."""
    import pandas as pd

    df = pd.read_csv(higgs_csv_path)
    return {k: df[k].to_numpy(np.float64) for k in df.columns if k.startswith(("PRI_", "DER_"))}


def _rounding_tolerance(cols: dict[str, np.ndarray], name: str) -> np.ndarray:
    """The change of a formula when each input moves by half a CSV digit (5e-4), plus the output's."""
    tol = np.full(len(cols[name]), 5e-4)
    for p in DEPENDS_ON[name]:
        if p == "PRI_jet_num":
            continue
        up = derived_features({**cols, p: cols[p] + 5e-4}, (name,))[name]
        down = derived_features({**cols, p: cols[p] - 5e-4}, (name,))[name]
        tol += np.abs(up - down) / 2
    return tol


def test_der_features_recomputed_from_pri_match_the_stored_ones(cols):
    recomputed = derived_features(cols)
    assert set(recomputed) == set(RECOMPUTABLE)
    assert "DER_mass_MMC" not in recomputed
    for name in RECOMPUTABLE:
        stored, new = cols[name], recomputed[name]
        np.testing.assert_array_equal(new == -999.0, stored == -999.0, err_msg=name)
        defined = stored != -999.0
        diff = (new - stored)[defined]
        within = np.abs(diff) <= 1.0001 * _rounding_tolerance(cols, name)[defined]
        if name in MASSIVE:
            # massless formulas under-estimate masses of massive objects, by little for tau+lepton
            rel = diff / stored[defined]
            assert (diff <= _rounding_tolerance(cols, name)[defined]).mean() > 0.95, name
            limit = (1e-3, 3e-3) if name == "DER_mass_vis" else (1e-2, 0.2)
            assert abs(np.median(rel)) < limit[0], name
            assert np.quantile(np.abs(rel), 0.98) < limit[1], name
        else:
            assert within.mean() > 0.999, (name, within.mean())


def test_zero_change_gives_back_the_stored_values_bit_for_bit(cols):
    pri = {k: v.copy() for k, v in cols.items() if k.startswith("PRI_")}
    for name, values in propagate(cols, pri).items():  # every recomputable DER_, unchanged
        np.testing.assert_array_equal(values, cols[name], err_msg=name)
    same = propagate(cols, {"PRI_tau_pt": cols["PRI_tau_pt"].copy()})
    for name, values in same.items():
        np.testing.assert_array_equal(values, cols[name], err_msg=name)
    assert set(same) == {n for n, deps in DEPENDS_ON.items() if "PRI_tau_pt" in deps}


def test_tau_energy_scale_physics(cols):
    f = 1.03
    out = tau_energy_scale(cols, cols["PRI_tau_pt"] * f)
    np.testing.assert_array_equal(out["PRI_tau_pt"], cols["PRI_tau_pt"] * f)

    # the missing momentum absorbs the tau's change: tau + MET is conserved
    def vec(pt, phi):
        return pt * np.cos(phi), pt * np.sin(phi)

    tx0, ty0 = vec(cols["PRI_tau_pt"], cols["PRI_tau_phi"])
    mx0, my0 = vec(cols["PRI_met"], cols["PRI_met_phi"])
    tx1, ty1 = vec(out["PRI_tau_pt"], cols["PRI_tau_phi"])
    mx1, my1 = vec(out["PRI_met"], out["PRI_met_phi"])
    np.testing.assert_allclose(tx1 + mx1, tx0 + mx0, atol=1e-9)
    np.testing.assert_allclose(ty1 + my1, ty0 + my0, atol=1e-9)
    # so the visible+invisible sums do not move
    for name in ("DER_pt_h", "DER_pt_tot"):
        np.testing.assert_allclose(out[name], cols[name], atol=1e-9, err_msg=name)
    np.testing.assert_allclose(
        out["DER_sum_pt"], cols["DER_sum_pt"] + 0.03 * cols["PRI_tau_pt"], rtol=1e-12
    )
    np.testing.assert_allclose(
        out["DER_pt_ratio_lep_tau"] - cols["DER_pt_ratio_lep_tau"],
        cols["PRI_lep_pt"] / (f * cols["PRI_tau_pt"]) - cols["PRI_lep_pt"] / cols["PRI_tau_pt"],
        atol=1e-12,
    )
    # massless visible mass scales with sqrt(f): the stored value moves by m (sqrt(f) - 1)
    m0 = derived_features(cols, ("DER_mass_vis",))["DER_mass_vis"]
    np.testing.assert_allclose(
        out["DER_mass_vis"] - cols["DER_mass_vis"], m0 * (np.sqrt(f) - 1), atol=1e-9
    )
    # independent of the tau pT: angles, jets, the MMC mass
    for name in (
        "DER_deltar_tau_lep",
        "DER_mass_MMC",
        "DER_mass_jet_jet",
        "DER_lep_eta_centrality",
    ):
        assert name not in out
    moved = out["DER_mass_transverse_met_lep"] != cols["DER_mass_transverse_met_lep"]
    assert moved.mean() > 0.99  # mT reads the corrected MET


def test_variation_sizes_missing_values_and_data():
    tes = Variation("tes", "PRI_tau_pt", "scale", up=1.03, down=0.97)
    met = Variation(
        "met", "PRI_met", "shift", up=2.0, down=-2.0, datasets=("mc",), processes=("signal",)
    )
    x = np.array([10.0, -999.0, np.nan])
    np.testing.assert_array_equal(tes.vary(x, "Up")[:2], [10.0 * 1.03, -999.0])
    np.testing.assert_array_equal(met.vary(x, "Down")[:2], [8.0, -999.0])
    assert np.isnan(tes.vary(x, "Up")[2])
    with pytest.raises(ValueError, match="Up"):
        tes.size("up")
    assert syst_labels([tes, met]) == ["nominal", "tesUp", "tesDown", "metUp", "metDown"]
    assert is_data({"is_data": True})
    assert is_data({"is_mc": False})
    assert not is_data({"is_mc": True})
    assert not tes.applies_to("run2018", {"is_data": True})
    assert tes.applies_to("anything", {})
    assert not met.applies_to("other", {})
    np.testing.assert_array_equal(
        met.event_mask(np.array(["signal", "background"]), 2), [True, False]
    )
    parsed = variations_from_mapping(
        {
            "met": {
                "feature": "PRI_met",
                "kind": "shift",
                "up": 2,
                "down": -2,
                "datasets": ["mc"],
                "processes": ["signal"],
            }
        }
    )
    assert parsed == [met]


def test_variation_only_where_it_applies(cols):
    tes = Variation("tes", "PRI_tau_pt", "scale", up=1.05, down=0.95, processes=("signal",))
    mask = np.zeros(len(cols["PRI_tau_pt"]), dtype=bool)
    mask[::3] = True
    out = vary_higgs_columns(cols, tes, "Down", mask)
    for name, values in out.items():
        np.testing.assert_array_equal(values[~mask], cols[name][~mask], err_msg=name)
    np.testing.assert_allclose(out["PRI_tau_pt"][mask], 0.95 * cols["PRI_tau_pt"][mask])


def _write_config(tmp_path: Path, systematics: str) -> Path:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"name: t\nworkflow: higgs\nsamples: {REPO / 'samples' / 'higgs.yaml'}\n{systematics}",
        encoding="utf-8",
    )
    return cfg


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ("systematics: {tes: {feature: PRI_tau_pt, up: 1.03, down: 0.97, size: 2}}", "unknown key"),
        ("systematics: {tes: {feature: PRI_tau_pt, up: -1.0, down: 0.97}}", "positive"),
        ("systematics: {tes: {feature: PRI_tau_pt, kind: smear, up: 1, down: 1}}", "kind"),
        ("systematics: {tesUp: {feature: PRI_tau_pt, up: 1.03, down: 0.97}}", "Up/Down"),
        ("systematics: {nominal: {feature: PRI_tau_pt, up: 1.03, down: 0.97}}", "nominal"),
        ("systematics: {tes: {feature: PRI_tau_pt, up: 1.0, down: 1.0}}", "changes nothing"),
    ],
)
def test_config_section_is_strict(tmp_path: Path, block: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        load_config(_write_config(tmp_path, block))
    assert "\n" not in str(err.value)
    assert "c.yaml" in str(err.value)


def test_config_section_loads(tmp_path: Path) -> None:
    cfg = load_config(
        _write_config(
            tmp_path,
            "systematics:\n  tes: {feature: PRI_tau_pt, kind: scale, up: 1.03, down: 0.97}\n"
            "  met_shift: {feature: PRI_met, kind: shift, up: 2.0, down: -2.0, processes: [signal]}\n",
        )
    )
    assert cfg.systematics is not None
    assert list(cfg.systematics) == ["tes", "met_shift"]
    assert cfg.systematics["met_shift"].processes == ["signal"]
    assert load_config(_write_config(tmp_path, "")).systematics is None


def test_templates_in_hists_root_for_combine_and_cabinetry(tmp_path: Path) -> None:
    h = hist.Hist(
        hist.axis.StrCategory(["a", "b"], name="dataset"),
        hist.axis.StrCategory(["signal", "background"], name="process"),
        hist.axis.StrCategory(["0 jets", "2+ jets"], name="njet"),
        hist.axis.StrCategory(["nominal", "tesUp", "tesDown"], name="syst"),
        hist.axis.Regular(4, 0, 1, name="score"),
        storage=hist.storage.Weight(),
    )
    rng = np.random.default_rng(1)
    for syst, shift in (("nominal", 0.0), ("tesUp", 0.1), ("tesDown", -0.1)):
        h.fill(dataset="a", process="signal", njet="2+ jets", syst=syst,
               score=np.clip(rng.uniform(0, 0.8, 100) + shift, 0, 0.999))  # fmt: skip
    band = hist.Hist(hist.axis.Regular(4, 0, 1, name="score"))
    write_root(
        tmp_path / "h.root", {"score_dnn": h}, {"bands/score_dnn/signal/score_dnn_ensembleUp": band}
    )
    with uproot.open(tmp_path / "h.root") as f:
        for syst in ("nominal", "tesUp", "tesDown"):
            got = f[f"score_dnn/signal/{syst}"].values()
            np.testing.assert_array_equal(
                got, h[{"dataset": sum, "njet": sum, "process": "signal", "syst": syst}].values()
            )
            region = f[f"score_dnn_a_2+_jets/signal/{syst}"].values()
            np.testing.assert_array_equal(region, got)
        assert f["score_dnn/background/tesUp"].values().sum() == 0
        assert "bands/score_dnn/signal/score_dnn_ensembleUp" in {k.split(";")[0] for k in f}
        assert not any(k.startswith("score_dnn/a/") for k in f)
    nom = nominal_hists({"score_dnn": h, "other": band})
    assert "syst" not in nom["score_dnn"].axes.name
    assert nom["other"] is band
    plain = {"other": band}
    assert nominal_hists(plain) is plain


def test_jet_energy_scale_physics(cols):
    jes = Variation("jes", "PRI_jet_all_pt", "scale", up=1.05, down=0.95)
    out = vary_higgs_columns(cols, jes, "Up")
    njet = cols["PRI_jet_num"]
    for k, jet in ((1, "leading"), (2, "subleading")):
        has = njet >= k
        np.testing.assert_allclose(
            out[f"PRI_jet_{jet}_pt"][has], 1.05 * cols[f"PRI_jet_{jet}_pt"][has]
        )
        np.testing.assert_array_equal(out[f"PRI_jet_{jet}_pt"][~has], -999.0)
    # tau + lepton + MET + two leading jets is conserved: DER_pt_tot does not move
    np.testing.assert_allclose(out["DER_pt_tot"], cols["DER_pt_tot"], atol=1e-9)
    np.testing.assert_allclose(
        out["DER_sum_pt"] - cols["DER_sum_pt"], 0.05 * cols["PRI_jet_all_pt"], atol=1e-9
    )
    # a uniform scale of both (massless) jets scales their invariant mass
    two = njet >= 2
    mjj = derived_features(cols, ("DER_mass_jet_jet",))["DER_mass_jet_jet"]
    np.testing.assert_allclose(
        (out["DER_mass_jet_jet"] - cols["DER_mass_jet_jet"])[two], 0.05 * mjj[two], rtol=1e-9
    )
    np.testing.assert_array_equal(out["DER_mass_jet_jet"][~two], -999.0)
    # zero-jet events: nothing of theirs moves
    zero = njet == 0
    for name in ("PRI_met", "DER_pt_h", "DER_mass_transverse_met_lep"):
        np.testing.assert_array_equal(out[name][zero], cols[name][zero], err_msg=name)
    assert "PRI_tau_pt" not in out
    assert "DER_deltaeta_jet_jet" not in out
