"""Preprocessing presets of gflow validate (docs/theory.md §7): ``pixels`` (the paper's grayscale
values in [0, 1], uncentred) and ``center-unit`` (centred, unit mean squared norm)."""

from __future__ import annotations

import argparse

import numpy as np
import pytest

from gflow import load_dataset
from gflow._cli._common import add_dataset_options, dataset_from_args
from gflow.datasets import PREPROCESS_MODES, preprocess


@pytest.fixture(scope="module")
def mnist_pair():
    return (
        load_dataset("mnist", n_per_class=20, seed=3, preprocess="pixels"),
        load_dataset("mnist", n_per_class=20, seed=3, preprocess="center-unit"),
    )


def test_pixels_are_uncentred_grayscale_and_center_unit_is_their_affine_image(mnist_pair):
    pixels, centred = mnist_pair
    x, xt = np.asarray(pixels.x, np.float64), np.asarray(pixels.x_test, np.float64)
    assert x.min() >= 0.0 and x.max() <= 1.0 and x.max() > 0.5
    assert x.mean() > 0.05  # uncentred: ink is positive
    # center-unit = (pixels − μ)/c with μ, c from the training split (the test split reuses them)
    mu = x.mean(axis=0)
    c = np.sqrt(((x - mu) ** 2).sum(axis=1).mean())
    np.testing.assert_allclose(centred.x, (x - mu) / c, atol=1e-5)
    np.testing.assert_allclose(centred.x_test, (xt - mu) / c, atol=1e-5)
    assert np.mean(np.sum(np.asarray(centred.x, np.float64) ** 2, axis=1)) == pytest.approx(
        1.0, rel=1e-5
    )
    assert "preprocess=pixels" in pixels.provenance


def test_pixels_refuses_values_outside_the_unit_interval():
    assert "pixels" in PREPROCESS_MODES
    xtr, _ = preprocess(np.array([[0.0, 0.5], [1.0, 0.25]]), None, "pixels")
    np.testing.assert_array_equal(xtr, np.array([[0.0, 0.5], [1.0, 0.25]], np.float32))
    with pytest.raises(ValueError, match="pixels.*\\[0, 1\\]"):
        preprocess(np.array([[0.0, 2.0]]), None, "pixels")
    with pytest.raises(ValueError, match="x_test"):
        preprocess(np.array([[0.0, 1.0]]), np.array([[-0.5, 0.0]]), "pixels")
    # 8-bit pixels scaled by pixel_max land in [0, 1]
    xtr, _ = preprocess(np.array([[0.0, 255.0]]), None, "pixels", pixel_max=255.0)
    np.testing.assert_array_equal(xtr, np.array([[0.0, 1.0]], np.float32))


def test_validate_data_options_select_the_preset():
    parser = argparse.ArgumentParser()
    add_dataset_options(parser)
    args = parser.parse_args(["--dataset", "mnist", "--n-per-class", "5", "--preprocess", "pixels"])
    ds = dataset_from_args(args)
    assert np.asarray(ds.x).min() >= 0.0 and np.asarray(ds.x).mean() > 0.05
