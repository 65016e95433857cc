"""Reproduction examples 1-3 of issue 7, quick versions: each asserts a bound that a model which
did not learn would miss (measured baselines in the comments), and that the figures are PNGs."""

from __future__ import annotations

import json
import math
import pathlib

import pytest
import torch

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def _keep_threads():
    # the examples' --threads sets torch's global thread count; give it back to the other tests
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def _check_outputs(doc: dict, out: pathlib.Path, n_figures: int) -> None:
    assert doc["quick"] is True
    assert len(doc["figures"]) == n_figures
    for name in doc["figures"]:
        f = out / name
        assert f.read_bytes()[:8] == PNG_MAGIC, name
        assert f.stat().st_size < 300_000, name
    stem = f"{doc['name']}-quick"
    on_disk = json.loads((out / f"{stem}.json").read_text())
    assert on_disk["results"].keys() == doc["results"].keys()
    assert (out / f"{stem}.md").read_text().startswith(f"# {doc['name']} (quick)")
    assert doc["protocol"] and doc["differences"]


def test_ecg5000_dense_ae(run_example, tmp_path):
    doc = run_example("ecg5000_dense_ae.py", "--quick", "--threads", "1")
    r = doc["results"]
    # one seed, 100 test beats (58 normal); the tutorial reports 0.944 / 0.992 / 0.907 on the full
    # set. An under-trained model (the tutorial's 20 steps, seed 4) lands at accuracy 0.84.
    assert r["accuracy"]["mean"] >= 0.9
    assert r["precision"]["mean"] >= 0.9
    assert r["recall"]["mean"] >= 0.8
    assert r["auroc"]["mean"] >= 0.9
    assert set(doc["published"]) == {"accuracy", "precision", "recall"}
    _check_outputs(doc, tmp_path, 3)


def test_mnist_conv_ae(run_example, tmp_path):
    doc = run_example("mnist_conv_ae.py", "--quick", "--threads", "1")
    r = doc["results"]
    # the per-pixel mean training image scores BCE ~0.26 / MSE ~0.067 on MNIST test; the quick
    # run (6,000 images, 4 epochs) reaches ~0.19 / ~0.044. A model that learnt nothing about the
    # single image cannot go below the mean image.
    assert r["test_bce"] < 0.85 * r["mean_image_test_bce"]
    assert r["test_mse"] < 0.8 * r["mean_image_test_mse"]
    assert doc["published"] == {"test_bce": 0.094}
    _check_outputs(doc, tmp_path, 2)


def test_fashion_vs_mnist_ssim(run_example, tmp_path):
    doc = run_example("fashion_vs_mnist_ssim.py", "--quick", "--threads", "1")
    r = doc["results"]
    # MNIST vs Fashion-MNIST is separable by image statistics alone (an untrained network scores
    # AUROC ~0.9998), so the AUROC bound only says the pipeline works; what training adds is
    # checked on the reconstructions of the normal split: 1 − SSIM ~0.58 after training vs
    # ~0.92 untrained and ~0.81 for the mean image, and the SSIM-trained model beats the
    # MSE-trained one on SSIM (~0.58 vs ~0.64).
    assert r["auroc_ssim_trained_ssim_scored"] >= 0.9
    assert math.isfinite(r["auroc_mse_trained_mse_scored"])
    assert r["fashion_test_1-ssim_ssim_trained"] < 0.75 * r["fashion_test_1-ssim_untrained"]
    assert r["fashion_test_1-ssim_ssim_trained"] < r["fashion_test_1-ssim_mean_image"]
    assert r["fashion_test_1-ssim_ssim_trained"] < r["fashion_test_1-ssim_mse_trained"]
    # and the MSE-trained model wins on MSE: each loss optimizes what it measures
    assert r["fashion_test_mse_mse_trained"] < r["fashion_test_mse_ssim_trained"]
    _check_outputs(doc, tmp_path, 5)
