"""Reproduction example 6 of issue 7 (top-k sparse AE on MNIST), quick version: the linear probe on
its codes must beat raw pixels and an untrained model, and the one-class AUROC must beat what the
pixel count alone gives (measured baselines in the comments); the figures must be PNGs."""

from __future__ import annotations

import json
import math

import pytest
import torch

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def _keep_threads():
    # the examples' --threads sets torch's global thread count; give it back to the other tests
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_topk_sparse_ae_mnist(run_example, tmp_path):
    doc = run_example("topk_sparse_ae_mnist.py", "--quick", "--threads", "1")
    r = doc["results"]
    # 5,000 training / 2,000 test images. Probe error: raw pixels 12.2 %, codes of an untrained
    # (randomly initialised) k=25 model 12.6 %, the quick-trained (tied) model ~7.5 %.
    assert r["probe_error_k25_pct"] < 10.0
    assert r["probe_error_k25_pct"] < r["probe_error_raw_pixels_pct"] - 2.0
    assert 5.0 < r["probe_error_raw_pixels_pct"] < 20.0
    # one-class (digits 0 and 1 normal): an untrained model scores AUROC 0.25 / 0.91 (the MSE of
    # an untrained model mostly counts ink: digit 1 has little); trained, ~0.86 / ~0.998 with k units
    assert r["oneclass_auroc_digit0_k"] >= 0.8
    assert r["oneclass_auroc_k"]["mean"] >= 0.88
    assert all(0.0 <= v <= 1.0 for v in r["oneclass_auroc_alpha_k"]["values"])
    assert doc["published"]["probe_error_k25_pct"] == 1.35
    assert set(doc["published"]) <= set(r)

    assert doc["quick"] is True and doc["protocol"] and doc["differences"]
    assert len(doc["figures"]) == 4
    for name in doc["figures"]:
        f = tmp_path / name
        assert f.read_bytes()[:8] == PNG_MAGIC, name
        assert f.stat().st_size < 300_000, name
    on_disk = json.loads((tmp_path / "topk_sparse_ae_mnist-quick.json").read_text())
    assert on_disk["results"].keys() == r.keys()
    assert all(math.isfinite(v) for v in r.values() if isinstance(v, float))
