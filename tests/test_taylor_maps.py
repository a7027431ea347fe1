"""Tagger map figures, the first-order ranking record and the prepared-inputs filter."""

from __future__ import annotations

import json
import warnings

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from hepnn.models import MLP
from hepnn.taylor import (
    TaylorWarning,
    first_order_result,
    image_map_figure,
    mean_abs_taylor,
    prepared_inputs,
    sequence_map_figure,
    write_ranking,
)


def test_image_map_figure_one_panel_per_channel():
    gmap = np.random.default_rng(0).uniform(size=(2, 5, 4))
    fig = image_map_figure(gmap, ["pt", "n"], "cnn2d")
    try:
        axes = [ax for ax in fig.axes if ax.get_title()]
        assert [ax.get_title() for ax in axes] == [
            r"cnn2d: $\langle|\partial y/\partial$pixel$|\rangle$, channel pt",
            r"cnn2d: $\langle|\partial y/\partial$pixel$|\rangle$, channel n",
        ]
        # imshow of the transposed map: phi pixel on the y axis
        assert axes[0].images[0].get_array().shape == (4, 5)
    finally:
        plt.close(fig)


def test_sequence_map_figure_rows_are_features():
    fmap = np.random.default_rng(1).uniform(size=(3, 7))
    fig = sequence_map_figure(fmap, ["pt", "eta", "phi"], "cnn1d")
    try:
        ax = fig.axes[0]
        assert ax.get_title() == r"cnn1d: $\langle|\partial y/\partial x|\rangle$ per feature and constituent"
        assert [t.get_text() for t in ax.get_yticklabels()] == ["pt", "eta", "phi"]
        assert ax.images[0].get_array().shape == (3, 7)
    finally:
        plt.close(fig)


def test_first_order_result_writes_a_ranking(tmp_path):
    result = first_order_result(["a", "b", "c"], [0.1, 0.3, 0.2], 50)
    assert result.terms == [(0,), (1,), (2,)]
    assert result.orders == [1, 1, 1]
    assert result.values.dtype == np.float64
    assert (result.n_events, result.sum_weights, result.weighted) == (50, 50.0, False)
    assert [r.term for r in result.ranked()] == ["b", "c", "a"]
    paths = write_ranking(result, tmp_path, "tagger", formats=())
    doc = json.loads(paths["json"].read_text())
    assert doc["metadata"]["n_events"] == 50
    assert doc["metadata"]["input_names"] == ["a", "b", "c"]


def test_prepared_inputs_silences_only_the_standardisation_warning():
    torch.manual_seed(0)
    net = MLP(2, [8], activation="tanh")
    x = np.random.default_rng(0).normal(loc=10.0, size=(100, 2))
    with pytest.warns(TaylorWarning, match="unstandardised"):
        mean_abs_taylor(net, x, orders=(1,))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with prepared_inputs():
            mean_abs_taylor(net, x, orders=(1,))
