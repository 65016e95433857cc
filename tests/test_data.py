"""Loaders on the real files in ../shared/data (shapes, label counts, checksums), on corrupt and
truncated copies (clear errors), and on generated series, images and memory maps."""

from __future__ import annotations

import gzip
import pathlib
import shutil

import numpy as np
import pytest
import torch

import pyaeplus.data as D
from pyaeplus.data import idx as idx_mod

MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def _published_md5s(root: pathlib.Path) -> dict[str, str]:
    out = {}
    for line in (root / "MD5SUMS").read_text().splitlines():
        md5, name = line.split()
        out[name] = md5
    return out


# ---- IDX family on the real files ----------------------------------------------------------

def test_md5_table_matches_published_sums(data_root):
    published = _published_md5s(data_root)
    for name in ("mnist", "fashion-mnist"):
        for fname, md5 in D.IDX_DATASETS[name]["md5"].items():
            assert published[f"{name}/{fname}"] == md5
            assert D.md5sum(data_root / name / fname) == md5


def test_mnist_train_and_test(data_root):
    tr = D.mnist(data_root, "train")
    assert len(tr) == 60000 and tr.data.shape == (60000, 28, 28) and tr.data.dtype == torch.uint8
    assert tr.targets.dtype == torch.int64
    assert tr.targets.bincount().tolist() == MNIST_TRAIN_COUNTS
    x, y = tr[0]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and int(y) == 5
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    te = D.mnist(data_root / "mnist", split="test")  # the folder itself works too
    assert te.targets.bincount().tolist() == MNIST_TEST_COUNTS
    xb, yb = te.get_batch(torch.tensor([3, 0, 9999]))
    assert xb.shape == (3, 1, 28, 28)
    torch.testing.assert_close(xb[1], te[0][0], rtol=0, atol=0)
    torch.testing.assert_close(yb, te.targets[[3, 0, 9999]])
    torch.testing.assert_close(xb[0], te.data[3].float().div(255).unsqueeze(0))


def test_fashion_mnist_and_class_filter(data_root):
    te = D.fashion_mnist(data_root, "test")
    assert te.data.shape == (10000, 28, 28) and te.targets.bincount().tolist() == [1000] * 10
    assert te.classes[9] == "Ankle boot"
    one = D.fashion_mnist(data_root, "test", classes=[9, 3])
    assert len(one) == 2000 and set(one.targets.unique().tolist()) == {3, 9}
    with pytest.raises(ValueError, match="selects no sample"):
        D.fashion_mnist(data_root, "test", classes=[42])


def test_idx_bad_arguments(data_root, tmp_path):
    with pytest.raises(ValueError, match="split"):
        D.mnist(data_root, "validation")
    with pytest.raises(ValueError, match="name"):
        D.load_idx_dataset("cifar", data_root)
    with pytest.raises(TypeError, match="root"):
        D.mnist(123)
    with pytest.raises(FileNotFoundError, match="download=True"):
        D.kmnist(tmp_path)


def _copy_split(data_root, dest, split="test"):
    dest.mkdir(parents=True, exist_ok=True)
    for base in idx_mod._FILES[split]:
        shutil.copy(data_root / "mnist" / f"{base}.gz", dest / f"{base}.gz")
        (dest / f"{base}.gz").chmod(0o644)
    return dest


def test_truncated_file_is_rejected_naming_file_and_checksums(data_root, tmp_path):
    d = _copy_split(data_root, tmp_path / "mnist")
    f = d / "t10k-images-idx3-ubyte.gz"
    f.write_bytes(f.read_bytes()[:-1000])
    with pytest.raises(ValueError) as e:
        D.mnist(tmp_path, "test")
    msg = str(e.value)
    assert "t10k-images-idx3-ubyte.gz" in msg and "9fb629c4189551a2d022fa330f9573f3" in msg
    assert D.md5sum(f) in msg


def test_flipped_byte_is_rejected(data_root, tmp_path):
    d = _copy_split(data_root, tmp_path / "mnist")
    f = d / "t10k-labels-idx1-ubyte.gz"
    b = bytearray(f.read_bytes())
    b[len(b) // 2] ^= 0xFF
    f.write_bytes(bytes(b))
    with pytest.raises(ValueError, match="checksum mismatch.*t10k-labels"):
        D.mnist(tmp_path, "test")


def test_read_idx_structure_checks(tmp_path):
    imgs = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    good = tmp_path / "img-idx3-ubyte"
    good.write_bytes(np.array([2051, 2, 3, 4], ">u4").tobytes() + imgs.tobytes())
    np.testing.assert_array_equal(D.read_idx(good), imgs)
    gz = tmp_path / "img-idx3-ubyte.gz"
    gz.write_bytes(gzip.compress(good.read_bytes()))
    np.testing.assert_array_equal(D.read_idx(gz), imgs)
    labels = tmp_path / "lab-idx1-ubyte"
    labels.write_bytes(np.array([2049, 3], ">u4").tobytes() + bytes([7, 8, 9]))
    assert D.read_idx(labels).tolist() == [7, 8, 9]
    short = tmp_path / "short"
    short.write_bytes(good.read_bytes()[:-1])
    with pytest.raises(ValueError, match="truncated"):
        D.read_idx(short)
    bad = tmp_path / "bad"
    bad.write_bytes(np.array([1234, 1], ">u4").tobytes() + b"\x00")
    with pytest.raises(ValueError, match="magic"):
        D.read_idx(bad)
    broken_gz = tmp_path / "broken.gz"
    broken_gz.write_bytes(gz.read_bytes()[:20])
    with pytest.raises(ValueError, match="broken.gz"):
        D.read_idx(broken_gz)


def test_uncompressed_files_are_structure_checked_with_a_warning(data_root, tmp_path):
    d = tmp_path / "mnist"
    d.mkdir()
    for base in idx_mod._FILES["test"]:
        (d / base).write_bytes(gzip.decompress((data_root / "mnist" / f"{base}.gz").read_bytes()))
    with pytest.warns(UserWarning, match="no published checksum"):
        ds = D.mnist(tmp_path, "test")
    assert ds.targets.bincount().tolist() == MNIST_TEST_COUNTS


def test_download_verifies_before_use(data_root, tmp_path, monkeypatch):
    # file:// mirrors: the download path runs without any network access.
    spec = dict(D.IDX_DATASETS["mnist"])
    spec["mirrors"] = [f"file://{tmp_path}/missing/", f"file://{data_root}/mnist/"]
    monkeypatch.setitem(D.IDX_DATASETS, "mnist", spec)
    ds = D.mnist(tmp_path / "dl", "test", download=True)
    assert ds.targets.bincount().tolist() == MNIST_TEST_COUNTS
    assert (tmp_path / "dl" / "mnist" / "t10k-images-idx3-ubyte.gz").exists()
    # a mirror serving a corrupt file: refused, nothing left at the destination
    bad = _copy_split(data_root, tmp_path / "badmirror")
    (bad / "t10k-images-idx3-ubyte.gz").write_bytes(b"not the file")
    spec2 = dict(spec, mirrors=[f"file://{bad}/"])
    monkeypatch.setitem(D.IDX_DATASETS, "mnist", spec2)
    with pytest.raises(RuntimeError, match="MD5"):
        D.mnist(tmp_path / "dl2", "test", download=True)
    assert not (tmp_path / "dl2" / "mnist" / "t10k-images-idx3-ubyte.gz").exists()
    assert not [p.name for p in (tmp_path / "dl2" / "mnist").iterdir() if "pyaeplus-tmp" in p.name or p.name.endswith(".part")]


# ---- time series ---------------------------------------------------------------------------

def test_ecg5000_real_file(data_root):
    ds = D.ecg5000(data_root)
    assert ds.data.shape == (500, 140) and ds.data.dtype == torch.float32
    assert ds.targets.bincount().tolist() == [0, 292, 177, 10, 19, 2]
    assert int(ds.normal.sum()) == 292
    x, y = ds[0]
    assert x.shape == (140,) and int(y) in range(1, 6)
    values, labels = D.read_ucr(data_root / "ecg5000" / "ECG5000_TRAIN.txt")
    np.testing.assert_array_equal(values, ds.data.numpy())
    with pytest.raises(FileNotFoundError, match="ECG5000_TEST"):
        D.ecg5000(data_root, "test")


def test_ecg5000_corrupt_copy(data_root, tmp_path, monkeypatch):
    src = (data_root / "ecg5000" / "ECG5000_TRAIN.txt").read_text().splitlines()
    (tmp_path / "ECG5000_TRAIN.txt").write_text("\n".join(src[:-3]) + "\n")
    with pytest.raises(ValueError, match="checksum mismatch.*ECG5000_TRAIN"):
        D.ecg5000(tmp_path)
    # without a known checksum the structural check still refuses the truncated file
    monkeypatch.setitem(D.series._ECG5000, "train", ("ECG5000_TRAIN.txt", 500, None))
    with pytest.raises(ValueError, match="expected 500 rows"):
        D.ecg5000(tmp_path)
    assert len(D.ecg5000(tmp_path, verify=False)) == 497


def test_ucr_and_csv_series(tmp_path):
    rng = np.random.default_rng(0)
    vals = rng.normal(size=(7, 13)).astype(np.float32)
    labels = np.array([1, 2, 1, 3, 1, 2, 2])
    (tmp_path / "a.txt").write_text("\n".join(f"  {l:.7e} " + "  ".join(f"{v:.8e}" for v in r)
                                              for l, r in zip(labels, vals)) + "\n\n")
    (tmp_path / "b.tsv").write_text("\n".join(f"{l}\t" + "\t".join(f"{v!r}" for v in r.tolist())
                                              for l, r in zip(labels, vals)))
    for f in ("a.txt", "b.tsv"):
        ds = D.ucr(tmp_path / f)
        np.testing.assert_allclose(ds.data.numpy(), vals, rtol=1e-6)
        assert ds.targets.tolist() == labels.tolist()
    # CSV with header, label by name in the last column, ecg.csv-style
    rows = ["," .join([f"t{i}" for i in range(13)] + ["target"])]
    rows += [",".join(f"{v!r}" for v in r.tolist()) + f",{l}" for l, r in zip(labels, vals)]
    (tmp_path / "c.csv").write_text("\n".join(rows))
    ds = D.csv_series(tmp_path / "c.csv", label_column="target")
    np.testing.assert_allclose(ds.data.numpy(), vals, rtol=1e-6)
    assert ds.targets.tolist() == labels.tolist()
    ds2 = D.csv_series(tmp_path / "c.csv", label_column=-1)
    assert ds2.targets.tolist() == labels.tolist()
    ds3 = D.csv_series(tmp_path / "c.csv", label_column=None)
    assert ds3.data.shape == (7, 14) and (ds3.targets == -1).all()
    with pytest.raises(ValueError, match="label_column"):
        D.csv_series(tmp_path / "c.csv", label_column="nope")
    with pytest.raises(ValueError, match="label_column"):
        D.csv_series(tmp_path / "c.csv", label_column=20)


def test_series_errors(tmp_path):
    (tmp_path / "ragged.txt").write_text("1 0.5 0.25\n2 0.1\n")
    with pytest.raises(ValueError, match="line 2"):
        D.read_ucr(tmp_path / "ragged.txt")
    (tmp_path / "word.txt").write_text("1 0.5 abc\n")
    with pytest.raises(ValueError, match="line 1"):
        D.read_ucr(tmp_path / "word.txt")
    (tmp_path / "frac.txt").write_text("1.5 0.5 1\n")
    with pytest.raises(ValueError, match="integers"):
        D.read_ucr(tmp_path / "frac.txt")
    (tmp_path / "nan.txt").write_text("1 0.5 nan\n")
    with pytest.raises(ValueError, match="non-finite"):
        D.read_ucr(tmp_path / "nan.txt")
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(ValueError, match="no data"):
        D.read_ucr(tmp_path / "empty.txt")


# ---- image folders -------------------------------------------------------------------------

def _write_images(root: pathlib.Path):
    from PIL import Image

    rng = np.random.default_rng(1)
    arrays = {}
    for cls, n in (("good", 3), ("bad", 2)):
        (root / cls).mkdir(parents=True)
        for i in range(n):
            a = rng.integers(0, 256, size=(9, 11, 3), dtype=np.uint8)
            p = root / cls / f"{i}.png"
            Image.fromarray(a).save(p)
            arrays[p] = a
    Image.fromarray(rng.integers(0, 256, size=(9, 11, 3), dtype=np.uint8)).save(root / "good" / "x.jpg", quality=95)
    (root / "good" / "notes.txt").write_text("not an image")
    return arrays


def test_image_folder(tmp_path):
    from PIL import Image

    arrays = _write_images(tmp_path)
    ds = D.ImageFolder(tmp_path, mode="RGB")
    assert ds.classes == ["bad", "good"] and len(ds) == 6
    assert ds.targets.tolist() == [0, 0, 1, 1, 1, 1]
    x, y = ds[0]
    assert x.shape == (3, 9, 11) and x.dtype == torch.float32
    np.testing.assert_allclose(x.numpy(), arrays[ds.files[0]].transpose(2, 0, 1) / 255.0, atol=1e-7)
    g = D.ImageFolder(tmp_path, mode="L", size=(6, 5))
    xg, _ = g[2]
    assert xg.shape == (1, 6, 5)
    ref = np.asarray(Image.open(g.files[2]).convert("L").resize((5, 6), Image.BILINEAR), dtype=np.float32) / 255
    np.testing.assert_allclose(xg[0].numpy(), ref, atol=1e-7)
    flat = tmp_path / "flat"
    flat.mkdir()
    shutil.copy(ds.files[0], flat / "a.png")
    f = D.ImageFolder(flat, size=4, cache=True)
    assert f.targets.tolist() == [-1] and f[0][0].shape == (1, 4, 4)
    torch.testing.assert_close(f[0][0], f[0][0])  # second read from the cache


def test_image_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        D.ImageFolder(tmp_path / "nope")
    (tmp_path / "e").mkdir()
    with pytest.raises(ValueError, match="no images"):
        D.ImageFolder(tmp_path / "e")
    with pytest.raises(ValueError, match="mode"):
        D.ImageFolder(tmp_path, mode="CMYK")
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    ds = D.ImageFolder(tmp_path / "c")
    with pytest.raises(ValueError, match="broken.png"):
        ds[0]
    with pytest.raises(ValueError, match="size"):
        D.ImageFolder(tmp_path / "c", size=(0, 3))


# ---- memory maps ---------------------------------------------------------------------------

def test_memmap_npy_chunks_and_batches(tmp_path):
    rng = np.random.default_rng(2)
    full = rng.integers(0, 256, size=(1001, 4, 5), dtype=np.uint8)
    path = D.write_npy(tmp_path / "x.npy", (full[i:i + 128] for i in range(0, 1001, 128)), shape=full.shape,
                       dtype=np.uint8)
    labels = rng.integers(0, 3, size=1001)
    ds = D.MemmapDataset(path, labels, scale=1 / 255, sample_shape=(1, 4, 5))
    assert isinstance(ds.data, np.memmap) or isinstance(ds.data.base, np.memmap)
    idx = torch.tensor([999, 3, 500, 3, 0])
    x, y = ds.get_batch(idx)
    assert x.shape == (5, 1, 4, 5)
    np.testing.assert_allclose(x.numpy(), full[idx.numpy()][:, None].astype(np.float32) / 255, rtol=1e-6)
    assert y.tolist() == labels[idx.numpy()].tolist()
    xi, yi = ds[500]
    torch.testing.assert_close(xi, x[2])
    with pytest.raises(ValueError, match="rows"):
        D.write_npy(tmp_path / "y.npy", [full[:10]], shape=full.shape, dtype=np.uint8)
    assert not (tmp_path / "y.npy").exists()


def test_memmap_raw_file(tmp_path):
    a = np.random.default_rng(3).normal(size=(37, 6)).astype(np.float32)
    raw = tmp_path / "x.f32"
    raw.write_bytes(b"HDR!" + a.tobytes())
    ds = D.MemmapDataset(raw, shape=(37, 6), dtype="float32", offset=4)
    x, _ = ds.get_batch(np.arange(37)[::-1].copy())
    np.testing.assert_array_equal(x.numpy(), a[::-1])
    with pytest.raises(ValueError, match="shape and dtype"):
        D.MemmapDataset(raw)
    with pytest.raises(ValueError, match="truncated"):
        D.MemmapDataset(raw, shape=(38, 6), dtype="float32", offset=4)
    with pytest.raises(ValueError, match="one label per row"):
        D.MemmapDataset(raw, np.zeros(5), shape=(37, 6), dtype="float32", offset=4)
    bad = tmp_path / "bad.npy"
    bad.write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(ValueError, match="bad.npy"):
        D.MemmapDataset(bad)


# ---- normalizations and wrappers -----------------------------------------------------------

def test_minmax_scaler_fitted_on_train_only():
    g = torch.Generator().manual_seed(0)
    train = torch.rand(50, 7, generator=g) * 4 - 1
    test = torch.rand(20, 7, generator=g) * 8 - 3
    s = D.MinMaxScaler().fit(train)
    lo, hi = train.min(), train.max()
    torch.testing.assert_close(s(test), (test - lo) / (hi - lo))
    assert float(s(train).min()) == 0.0 and float(s(train).max()) == 1.0
    assert float(s(test).min()) < 0.0  # test data may leave [0, 1]: statistics are the training set's
    assert float(D.MinMaxScaler(clip=True).fit(train)(test).min()) == 0.0
    pf = D.MinMaxScaler(per_feature=True).fit(train)
    torch.testing.assert_close(pf(train).amin(0), torch.zeros(7))
    torch.testing.assert_close(pf(train).amax(0), torch.ones(7))
    torch.testing.assert_close(pf.inverse(pf(test)), test, atol=1e-5, rtol=1e-5)
    s2 = D.MinMaxScaler().load_state_dict(s.state_dict())
    torch.testing.assert_close(s2(test), s(test))
    with pytest.raises(RuntimeError, match="not fitted"):
        D.MinMaxScaler()(test)
    with pytest.raises(ValueError, match="NaN"):
        D.MinMaxScaler().fit(torch.tensor([[0.0, float("nan")]]))
    with pytest.raises(ValueError, match="feature shape"):
        pf(torch.rand(3, 5))


def test_minmax_as_dataset_transform(data_root):
    tr = D.ecg5000(data_root)
    scaler = D.MinMaxScaler().fit(tr)
    tr.transform = scaler
    x, _ = tr.get_batch(torch.arange(len(tr)))
    assert float(x.min()) == pytest.approx(0.0, abs=1e-6) and float(x.max()) == pytest.approx(1.0, abs=1e-6)


def test_global_contrast_normalization():
    x = torch.rand(5, 1, 6, 7, dtype=torch.float64) * 3 + 2
    for scale in ("l1", "l2"):
        y = D.global_contrast_normalization(x, scale)
        flat = y.reshape(5, -1)
        torch.testing.assert_close(flat.mean(1), torch.zeros(5, dtype=torch.float64), atol=1e-12, rtol=0)
        norm = flat.abs().mean(1) if scale == "l1" else flat.pow(2).mean(1).sqrt()
        torch.testing.assert_close(norm, torch.ones(5, dtype=torch.float64))
    assert D.GlobalContrast("l2")(x).shape == x.shape
    torch.testing.assert_close(D.global_contrast_normalization(torch.ones(2, 3)), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="scale"):
        D.global_contrast_normalization(x, "l3")
    with pytest.raises(TypeError, match="x"):
        D.global_contrast_normalization(torch.ones(2, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="x"):
        D.global_contrast_normalization(torch.ones(3))


def test_array_dataset_and_with_index():
    data = torch.randint(0, 256, (10, 4, 4), dtype=torch.uint8)
    ds = D.ArrayDataset(data, torch.arange(10) % 2, scale=1 / 255, sample_shape=(1, 4, 4))
    x, y = ds.get_batch([7, 2])
    torch.testing.assert_close(x, data[[7, 2]].float().div(255).unsqueeze(1))
    sub = ds.subset(ds.targets == 1)
    assert len(sub) == 5 and (sub.targets == 1).all()
    wi = D.WithIndex(ds)
    xb, ib = wi.get_batch(torch.tensor([4, 1]))
    assert ib.tolist() == [4, 1]
    torch.testing.assert_close(xb, ds.get_batch([4, 1])[0])
    x1, i1 = wi[3]
    assert int(i1) == 3 and x1.shape == (1, 4, 4)
    wt = D.WithIndex(torch.randn(6, 3))
    assert wt.get_batch([5])[1].tolist() == [5]
    with pytest.raises(ValueError, match="targets"):
        D.ArrayDataset(data, torch.arange(3))
    with pytest.raises(ValueError, match="sample_shape"):
        D.ArrayDataset(data, sample_shape=(3, 3))
    with pytest.raises(ValueError, match="data"):
        D.ArrayDataset(torch.empty(0, 3))
    with pytest.raises(TypeError, match="floating"):
        D.as_dataset(torch.ones(3, 2, dtype=torch.int64))
    with pytest.raises(TypeError, match="data"):
        D.as_dataset(42)


# ---- generated anomalies and datasets by name ----------------------------------------------

def test_synthetic_anomalies():
    ds = D.synthetic_anomalies(200, anomaly_fraction=0.25, seed=3)
    x, y = ds.tensors()
    assert x.shape == (200, 1, 28, 28) and x.dtype == torch.float32
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert int(y.sum()) == 50 and ((ds.kinds >= 0) == (y == 1)).all()
    assert set(ds.kinds[y == 1].tolist()) == {0, 1, 2}
    again = D.synthetic_anomalies(200, anomaly_fraction=0.25, seed=3)
    torch.testing.assert_close(again.tensors()[0], x, rtol=0, atol=0)
    assert not torch.equal(D.synthetic_anomalies(200, anomaly_fraction=0.25, seed=4).tensors()[0], x)
    # a defect changes a small area, not the whole image
    normal = D.synthetic_anomalies(200, anomaly_fraction=0.0, seed=3).tensors()[0]
    diff = (normal - x).abs().flatten(1).gt(0.05).sum(1)
    assert int(diff[y == 0].max()) == 0
    assert 5 <= float(diff[y == 1].float().median()) <= 80
    only = D.synthetic_anomalies(40, anomaly_fraction=1.0, kinds=("ring",), size=20, seed=0)
    assert (only.kinds == 2).all() and only.tensors()[0].shape == (40, 1, 20, 20)
    for kw, match in ((dict(n=0), "n"), (dict(n=5, anomaly_fraction=1.5), "anomaly_fraction"),
                      (dict(n=5, size=8), "size"), (dict(n=5, kinds=("hole",)), "kinds")):
        with pytest.raises(ValueError, match=match):
            D.synthetic_anomalies(**kw)


def test_open_dataset_and_normalize(data_root, tmp_path):
    ds = D.open_dataset(f"fashion-mnist:{data_root}", split="test", classes=[0])
    assert len(ds) == 1000
    ecg = D.open_dataset(f"ecg5000:{data_root}")
    assert len(ecg) == 500
    np.save(tmp_path / "a.npy", np.ones((3, 2), np.float32))
    assert len(D.open_dataset(f"npy:{tmp_path / 'a.npy'}")) == 3
    with pytest.raises(ValueError, match="kind"):
        D.open_dataset("cifar:/x")
    with pytest.raises(ValueError, match="<kind>:<path>"):
        D.open_dataset("mnist")
    tr, te = D.ecg5000(data_root), D.ecg5000(data_root)
    t = D.normalize("minmax", tr, te)
    assert te.transform is t and float(tr.tensors()[0].max()) == pytest.approx(1.0)
    gm = D.ecg5000(data_root)
    D.normalize("gcn+minmax", gm)
    xg = gm.tensors()[0]
    assert float(xg.min()) == pytest.approx(0.0, abs=1e-6) and float(xg.max()) == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ValueError, match="normalize"):
        D.normalize("zscore", tr)
    (tmp_path / "imgs").mkdir()
    from PIL import Image

    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "imgs" / "a.png")
    with pytest.raises(TypeError, match="normalize"):
        D.normalize("minmax", D.ImageFolder(tmp_path / "imgs"))
