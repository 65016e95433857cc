"""Features: HOG equal to scikit-image, raw pixels / PCA, encoder latents."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch

from pyaeplus.graph import features


def _idx_images(path, n):
    with gzip.open(path) as f:
        data = f.read()
    count, rows, cols = (int.from_bytes(data[i:i + 4], "big") for i in (4, 8, 12))
    assert int.from_bytes(data[:4], "big") == 2051
    return np.frombuffer(data, np.uint8, offset=16).reshape(count, rows, cols)[:n]


@pytest.fixture
def fmnist(data_root):
    p = data_root / "fashion-mnist" / "t10k-images-idx3-ubyte.gz"
    if not p.exists():
        pytest.skip(f"{p} not found")
    return _idx_images(p, 40)


PARAMS = [dict(), dict(orientations=8, pixels_per_cell=(4, 4), cells_per_block=(2, 2)),
          dict(orientations=7, pixels_per_cell=(7, 5), cells_per_block=(2, 1))]


@pytest.mark.parametrize("block_norm", ["L1", "L1-sqrt", "L2", "L2-Hys"])
@pytest.mark.parametrize("params", PARAMS)
def test_hog_matches_skimage_on_fashion_mnist(fmnist, block_norm, params):
    skf = pytest.importorskip("skimage.feature")
    ours = features.hog(fmnist, block_norm=block_norm, **params)
    ref = np.stack([skf.hog(im, block_norm=block_norm, **params) for im in fmnist])
    assert ours.shape == ref.shape and ours.dtype == torch.float32
    np.testing.assert_allclose(ours.numpy(), ref, atol=1e-6, rtol=0)
    assert ours.shape[1] == features.hog_output_dim((28, 28), **params)


def test_hog_float_inputs_sqrt_and_color():
    skf = pytest.importorskip("skimage.feature")
    rng = np.random.default_rng(0)
    f32 = rng.random((6, 33, 29), dtype=np.float32)
    ours = features.hog(torch.from_numpy(f32), transform_sqrt=True, pixels_per_cell=(6, 6), cells_per_block=(2, 2))
    ref = np.stack([skf.hog(im, transform_sqrt=True, pixels_per_cell=(6, 6), cells_per_block=(2, 2)) for im in f32])
    np.testing.assert_allclose(ours.numpy(), ref, atol=1e-6, rtol=0)
    f64 = rng.random((4, 3, 30, 26))
    ours = features.hog(f64, pixels_per_cell=(6, 6), cells_per_block=(2, 2), block_norm="L1-sqrt", chunk_size=3)
    ref = np.stack([skf.hog(im.transpose(1, 2, 0), pixels_per_cell=(6, 6), cells_per_block=(2, 2),
                            block_norm="L1-sqrt", channel_axis=-1) for im in f64])
    assert ours.dtype == torch.float64
    np.testing.assert_allclose(ours.numpy(), ref, atol=1e-6, rtol=0)  # skimage sums cells in float32


def test_hog_l1_sqrt_rows_feed_hellinger_graph():
    from pyaeplus.graph import knn_graph
    imgs = np.random.default_rng(1).integers(0, 255, (30, 16, 16), dtype=np.uint8)
    h = features.hog(imgs, pixels_per_cell=(4, 4), cells_per_block=(2, 2), block_norm="L1-sqrt")
    g = knn_graph(h, 3, progress=False)
    assert g.indices.shape == (30, 3)


def test_hog_bad_input():
    with pytest.raises(ValueError, match="images must be"):
        features.hog(np.zeros((28, 28)))
    with pytest.raises(TypeError, match="images must be a torch.Tensor"):
        features.hog([[0.0]])
    with pytest.raises(ValueError, match="too small"):
        features.hog(np.zeros((2, 10, 10)))
    with pytest.raises(ValueError, match="block_norm"):
        features.hog(np.zeros((2, 28, 28)), block_norm="L3")
    with pytest.raises(ValueError, match="orientations"):
        features.hog(np.zeros((2, 28, 28)), orientations=0)
    with pytest.raises(TypeError, match="pixels_per_cell"):
        features.hog(np.zeros((2, 28, 28)), pixels_per_cell="8")
    with pytest.raises(ValueError, match="NaN"):
        features.hog(np.full((2, 28, 28), np.nan))
    with pytest.raises(ValueError, match="non-negative"):
        features.hog(-np.ones((2, 28, 28)), transform_sqrt=True)
    with pytest.raises(ValueError, match="empty"):
        features.hog(np.zeros((0, 28, 28)))
    with pytest.raises(TypeError, match="pixels"):
        features.hog(np.zeros((2, 28, 28), dtype=bool))


def test_raw_pixels_and_pca():
    rng = np.random.default_rng(2)
    imgs = rng.integers(0, 256, (57, 5, 7), dtype=np.uint8)
    raw = features.raw_pixels(imgs, scale=1 / 255)
    np.testing.assert_allclose(raw.numpy(), imgs.reshape(57, -1).astype(np.float32) / 255, rtol=1e-6)
    z = features.raw_pixels(imgs, pca=4, chunk_size=10)
    assert z.shape == (57, 4)
    x = imgs.reshape(57, -1).astype(np.float64)
    xc = x - x.mean(0)
    _, s, vt = np.linalg.svd(xc, full_matrices=False)
    ref = xc @ vt[:4].T
    # components are defined up to sign: compare |projection| and explained variance
    np.testing.assert_allclose(np.abs(z.numpy()), np.abs(ref), rtol=1e-3, atol=1e-2)
    p = features.PCA(4, chunk_size=9).fit(raw)
    np.testing.assert_allclose(p.explained_variance_.numpy(), (s[:4] / 255) ** 2 / 56, rtol=1e-4)
    # deterministic sign: largest-magnitude entry of each component is positive
    c = p.components_
    assert (c.gather(1, c.abs().argmax(1, keepdim=True)) > 0).all()
    # a fitted PCA applies to other data (train -> test)
    assert features.raw_pixels(imgs[:5], pca=p, scale=1 / 255).shape == (5, 4)
    w = features.PCA(3, whiten=True).fit_transform(raw)
    np.testing.assert_allclose(w.var(0, unbiased=True).numpy(), 1.0, rtol=1e-3)


def test_raw_pixels_pca_bad_input():
    with pytest.raises(ValueError, match="pca must be <="):
        features.raw_pixels(np.zeros((5, 2, 2)), pca=10)
    with pytest.raises(TypeError, match="images must hold"):
        features.raw_pixels(np.zeros((5, 2), dtype=object))
    with pytest.raises(ValueError, match="n_components"):
        features.PCA(9).fit(torch.randn(5, 4))
    with pytest.raises(RuntimeError, match="before fit"):
        features.PCA(2).transform(torch.randn(5, 4))
    with pytest.raises(ValueError, match="columns"):
        features.PCA(2).fit(torch.randn(10, 4)).transform(torch.randn(3, 5))


class _Enc(torch.nn.Module):
    def __init__(self, tuple_out=False):
        super().__init__()
        self.lin = torch.nn.Linear(12, 3)
        self.drop = torch.nn.Dropout(0.5)
        self.tuple_out = tuple_out

    def forward(self, x):
        z = self.drop(self.lin(x.reshape(x.shape[0], -1).float()))
        return (z, z * 0) if self.tuple_out else z


def test_encoder_features_batches_modes_and_inputs():
    enc = _Enc()
    x = torch.randn(23, 3, 4)
    z = features.encoder_features(enc, x, batch_size=5)
    assert enc.training  # mode restored
    enc.eval()
    with torch.no_grad():
        ref = enc(x)
    torch.testing.assert_close(z, ref)
    ds = torch.utils.data.TensorDataset(x, torch.zeros(23))
    torch.testing.assert_close(features.encoder_features(enc, ds, batch_size=7), ref)
    dl = torch.utils.data.DataLoader(ds, batch_size=4)
    torch.testing.assert_close(features.encoder_features(enc, dl), ref)
    enc2 = _Enc(tuple_out=True)
    enc2.load_state_dict(enc.state_dict())
    torch.testing.assert_close(features.encoder_features(enc2, x.numpy()), ref)
    zb = features.encoder_features(enc, x, amp=True)
    torch.testing.assert_close(zb, ref, atol=5e-2, rtol=5e-2)


def test_encoder_features_bad_input():
    with pytest.raises(TypeError, match="encoder must be callable"):
        features.encoder_features(3, torch.randn(2, 12))
    with pytest.raises(ValueError, match="batch_size"):
        features.encoder_features(_Enc(), torch.randn(2, 12), batch_size=0)
    with pytest.raises(ValueError, match="data must not be empty"):
        features.encoder_features(_Enc(), torch.randn(0, 12))
    with pytest.raises(TypeError, match="encoder must return a tensor"):
        features.encoder_features(lambda x: "z", torch.randn(2, 12))
    with pytest.raises(TypeError, match="data must be"):
        features.encoder_features(_Enc(), 5)
