"""Example 5 of issue 7: Laplacian AE on one-class MNIST with a HOG/Hellinger k-NN graph
(examples/laplacian_ae_mnist.py), quick version: digit 0, 1500 training images, 5 epochs."""

import pathlib

import torch

PNG = b"\x89PNG\r\n\x1a\n"


def test_laplacian_ae_mnist_quick(run_example, tmp_path):
    threads = torch.get_num_threads()
    try:
        # one thread: the 1500x784 dense AE is too small for a thread team (and CI cores are shared)
        doc = run_example("laplacian_ae_mnist.py", "--quick", "--threads", "1")
    finally:
        torch.set_num_threads(threads)
    r = doc["results"]
    # Measured (seeds 0 and 1, λ = 0.01), preservation of the HOG/Hellinger 10-NN: plain 0.136 / 0.127,
    # scale-invariant 0.151 / 0.141, unnormalized 0.163 / 0.155. A regularizer that does nothing
    # gives +0; a collapsing one (unnormalized λ = 1: latents shrink onto one direction) gave -0.11.
    assert r["preservation_si"] - r["preservation_plain"] >= 0.007, r
    assert r["preservation_un"] - r["preservation_plain"] >= 0.015, r
    # Latent 5-NN AUROC: plain 0.862 / 0.896, scale-invariant 0.929 / 0.925, unnormalized
    # 0.967 / 0.976; collapsed latents score ~0.5.
    assert r["auroc_knn_plain"] >= 0.80, r
    assert r["auroc_knn_si"] >= 0.90 and r["auroc_knn_si"] - r["auroc_knn_plain"] >= 0.015, r
    assert r["auroc_knn_un"] >= 0.93 and r["auroc_knn_un"] - r["auroc_knn_plain"] >= 0.04, r
    # Reconstruction error separates digit 0 from the rest (measured 0.979-0.986).
    for t in ("plain", "si", "un"):
        assert r[f"auroc_mse_{t}"] >= 0.95, r
    # Yardstick: PCA of pixels keeps ~0.29 of the HOG neighbours; a wrong graph would keep ~0.
    assert 0.2 <= r["preservation_pca"] <= 0.5, r
    row = doc["rows"][0]
    assert row["digit"] == 0 and row["n_train"] == 1500
    for t in ("si", "un"):
        assert row[f"{t}_edges_per_batch"] > 100     # neighbour-sampled batches carry graph edges
        assert row[f"{t}_form"] == t and row[f"{t}_lam"] == 0.01
    assert row["plain_lam"] == 0.0
    assert doc["published"]["lam_si"] == "—" and doc["quick"]
    assert len(doc["figures"]) == 3
    for f in doc["figures"]:
        p = pathlib.Path(tmp_path) / f
        assert p.read_bytes()[:8] == PNG, f
    assert (pathlib.Path(tmp_path) / "laplacian_ae_mnist-quick.json").exists()
    assert (pathlib.Path(tmp_path) / "laplacian_ae_mnist-quick.md").exists()
