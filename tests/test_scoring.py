"""pyaeplus.scoring.score: order and values equal a plain loop, chunked resumable output (SIGKILL
mid-run then resume equals an uninterrupted run bit for bit), 2-process gloo equals 1 process, maps,
bad input."""

import importlib.util
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

from pyaeplus import models, scoring
from pyaeplus.data.base import ArrayDataset


def _conv(seed=0):
    torch.manual_seed(seed)
    return models.build("conv", in_channels=1, channels=[4, 8], latent=6, input_shape=[16, 16]).eval()


def _images(n=203, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 16, 16, generator=g)


def _loop(model, x, fn, bs=32):
    with torch.no_grad():
        return torch.cat([fn(model, x[i:i + bs]) for i in range(0, x.shape[0], bs)]).float().numpy()


@pytest.mark.parametrize("name", ["model", "mse", "mae", "ssim"])
def test_order_and_values_equal_plain_loop(name):
    from pyaeplus import functional as F
    m, x = _conv(), _images()
    fns = {
        "model": lambda m, x: m.score(x),
        "mse": lambda m, x: ((m(x) - x) ** 2).flatten(1).mean(1),
        "mae": lambda m, x: (m(x) - x).abs().flatten(1).mean(1),
        "ssim": lambda m, x: 1 - F.ssim(m(x), x, data_range=1.0, reduction="none", padding="same"),
    }
    ref = _loop(m, x, fns[name])
    got = scoring.score(m, x, score=name, batch_size=32, progress=False)
    assert got.dtype == np.float32 and got.shape == (203,)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
    # a permutation of the input permutes the scores: input order is kept
    perm = torch.randperm(203, generator=torch.Generator().manual_seed(3))
    np.testing.assert_allclose(scoring.score(m, x[perm], score=name, batch_size=17, progress=False), ref[perm.numpy()],
                               rtol=1e-5, atol=1e-6)


def test_workers_datasets_and_memmap(tmp_path):
    m, x = _conv(), _images(97)
    ref = scoring.score(m, x, batch_size=16, progress=False)
    u8 = (x * 255).round().to(torch.uint8)
    ds = ArrayDataset(u8, scale=1 / 255)
    xr = u8.float() / 255
    ref8 = _loop(m, xr, lambda m, x: m.score(x), 16)
    np.testing.assert_allclose(scoring.score(m, ds, batch_size=16, num_workers=2, progress=False), ref8, rtol=1e-5, atol=1e-6)
    np.save(tmp_path / "x.npy", x.numpy())
    from pyaeplus.data.arrays import MemmapDataset
    mm = MemmapDataset(tmp_path / "x.npy")
    np.testing.assert_allclose(scoring.score(m, mm, batch_size=16, progress=False), ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(scoring.score(m, x.numpy(), batch_size=16, progress=False), ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("ext", ["npy", "csv", "parquet"])
def test_chunked_output_equals_memory(tmp_path, ext):
    if ext == "parquet":
        pytest.importorskip("pyarrow")
    m, x = _conv(), _images(150)
    ref = scoring.score(m, x, batch_size=16, progress=False)
    out = tmp_path / f"s.{ext}"
    got = scoring.score(m, x, batch_size=16, chunk_size=40, out=out, progress=False)
    np.testing.assert_array_equal(got, ref)
    np.testing.assert_array_equal(scoring.read_scores(out), ref)
    assert not (tmp_path / f"s.{ext}.parts").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"s.{ext}"]


def test_parquet_without_pyarrow_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    with pytest.raises(ValueError, match="pyarrow"):
        scoring.score(_conv(), _images(8), out=tmp_path / "s.parquet", progress=False)


def test_maps(tmp_path):
    m, x = _conv(), _images(40)
    s, mp = scoring.score(m, x, score="mse", maps=True, batch_size=16, progress=False)
    assert mp.shape == (40, 16, 16)
    with torch.no_grad():
        ref = ((m(x) - x) ** 2).mean(1).numpy()
    np.testing.assert_allclose(mp, ref, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(mp.mean((1, 2)), s, rtol=1e-5)
    s2, mp2 = scoring.score(m, x, score="ssim", maps=True, batch_size=16, out=tmp_path / "s.npy", chunk_size=16,
                            progress=False)
    assert (tmp_path / "s.maps.npy").exists() and mp2.shape == (40, 16, 16)
    # the mean of the 1 - SSIM map is the 1 - SSIM score (same padding)
    np.testing.assert_allclose(np.asarray(mp2).mean((1, 2)), s2, rtol=1e-4, atol=1e-5)


def test_latent_knn_matches_brute_force():
    m, x = _conv(), _images(60)
    train = _images(80, seed=5)
    got = scoring.score(m, x, score="latent_knn", knn_reference=train, k=3, batch_size=16, progress=False)
    with torch.no_grad():
        zt, zx = m.encode(train), m.encode(x)
    d = ((zx[:, None] - zt[None]) ** 2).sum(-1).sqrt()
    ref = d.sort(1).values[:, :3].mean(1).numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)
    # every k-NN backend gives the same exact neighbours; cosine latents too
    for backend in ("torch", "faiss") if importlib.util.find_spec("faiss") else ("torch",):  # no faiss on the GPU image
        other = scoring.score(m, x, score="latent_knn", knn_reference=train, k=3, batch_size=16, progress=False,
                              knn_backend=backend)
        np.testing.assert_array_equal(other, got)
    cos = scoring.score(m, x, score="latent_knn", knn_reference=train, k=3, batch_size=16, progress=False,
                        knn_metric="cosine")
    zn, tn = torch.nn.functional.normalize(zx, dim=1), torch.nn.functional.normalize(zt, dim=1)
    ref_cos = (1 - zn @ tn.T).clamp_min(0).sort(1).values[:, :3].mean(1).numpy()
    np.testing.assert_allclose(cos, ref_cos, rtol=1e-4, atol=1e-5)


def test_latent_knn_exclude_self_on_training_scores():
    m, train = _conv(), _images(50, seed=5)
    got = scoring.score(m, train, score="latent_knn", knn_reference=train, k=2, batch_size=16, progress=False,
                        knn_exclude_self=True)
    with torch.no_grad():
        zt = m.encode(train)
    d = ((zt[:, None] - zt[None]) ** 2).sum(-1).sqrt()
    d.fill_diagonal_(float("inf"))
    np.testing.assert_allclose(got, d.sort(1).values[:, :2].mean(1).numpy(), rtol=1e-4, atol=1e-5)
    assert got.min() > 0
    with pytest.raises(ValueError, match="knn_exclude_self"):
        scoring.score(m, train[:10], score="latent_knn", knn_reference=train, progress=False, knn_exclude_self=True)
    with pytest.raises(ValueError, match="metric"):
        scoring.score(m, train, score="latent_knn", knn_reference=train, progress=False, knn_metric="l7")


def test_resume_refuses_other_settings(tmp_path):
    m, x = _conv(), _images(64)
    out = tmp_path / "s.npy"
    parts = tmp_path / "s.npy.parts"
    parts.mkdir()
    json.dump({"fingerprint": "not-this-run", "done": []}, open(parts / "ledger-0.json", "w"))
    with pytest.raises(ValueError, match="other settings"):
        scoring.score(m, x, out=out, progress=False)
    assert not out.exists()


JOB = textwrap.dedent("""
    import os, sys, time, torch
    from pyaeplus import models, scoring

    def sc(model, x):
        if os.environ.get("SLOW"):
            time.sleep(0.15)
        return ((model(x) - x) ** 2).flatten(1).mean(1)

    if __name__ == "__main__":
        torch.set_num_threads(1)
        torch.manual_seed(0)
        m = models.build("conv", in_channels=1, channels=[4, 8], latent=6, input_shape=[16, 16]).eval()
        x = torch.rand(400, 1, 16, 16, generator=torch.Generator().manual_seed(1))
        scoring.score(m, x, score=sc, batch_size=10, chunk_size=20, out=sys.argv[1], progress=False)
""")


def test_sigkill_then_resume_equals_uninterrupted(tmp_path):
    job = tmp_path / "job.py"
    job.write_text(JOB)
    env = {**os.environ, "SLOW": "1", "OMP_NUM_THREADS": "1"}
    out = tmp_path / "killed.npy"
    ledger = tmp_path / "killed.npy.parts" / "ledger-0.json"
    p = subprocess.Popen([sys.executable, str(job), str(out)], env=env, cwd=tmp_path)
    t0 = time.time()
    try:
        while time.time() - t0 < 60:
            if ledger.exists():
                try:
                    if len(json.loads(ledger.read_text())["done"]) >= 2:
                        break
                except (json.JSONDecodeError, KeyError):
                    pass
            if p.poll() is not None:
                break
            time.sleep(0.05)
        os.kill(p.pid, signal.SIGKILL)
    finally:
        p.wait()
    assert p.returncode == -signal.SIGKILL, "the job ended before it could be killed"
    assert not out.exists()  # no final file looking complete
    done_before = len(json.loads(ledger.read_text())["done"])
    assert 2 <= done_before < 20
    env.pop("SLOW")
    subprocess.run([sys.executable, str(job), str(out)], env=env, cwd=tmp_path, check=True)
    ref = tmp_path / "ref.npy"
    subprocess.run([sys.executable, str(job), str(ref)], env=env, cwd=tmp_path, check=True)
    a, b = np.load(out), np.load(ref)
    assert a.shape == (400,)
    assert a.tobytes() == b.tobytes()
    assert not (tmp_path / "killed.npy.parts").exists()


def _dist_worker(rank, world, init, outdir):
    import torch.distributed as dist
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        m, x = _conv(), _images(101)
        s = scoring.score(m, x, batch_size=8, chunk_size=16, progress=False)
        s2 = scoring.score(m, x, batch_size=8, chunk_size=16, out=os.path.join(outdir, "d.npy"), progress=False)
        np.save(os.path.join(outdir, f"mem-{rank}.npy"), s)
        np.save(os.path.join(outdir, f"file-{rank}.npy"), s2)
    finally:
        dist.destroy_process_group()


def test_two_process_gloo_equals_one_process(tmp_path):
    import torch.multiprocessing as mp
    init = f"file://{tmp_path / 'store'}"
    mp.spawn(_dist_worker, args=(2, init, str(tmp_path)), nprocs=2, join=True)
    ref = scoring.score(_conv(), _images(101), batch_size=8, progress=False)
    for r in range(2):
        np.testing.assert_array_equal(np.load(tmp_path / f"mem-{r}.npy"), ref)
        np.testing.assert_array_equal(np.load(tmp_path / f"file-{r}.npy"), ref)
    np.testing.assert_array_equal(np.load(tmp_path / "d.npy"), ref)


def test_bad_input(tmp_path):
    m, x = _conv(), _images(10)
    with pytest.raises(ValueError, match="data"):
        scoring.score(m, torch.zeros(0, 1, 16, 16), progress=False)
    bad = x.clone()
    bad[3, 0, 2, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        scoring.score(m, bad, progress=False)
    with pytest.raises(TypeError, match="floating"):
        scoring.score(m, torch.zeros(4, 1, 16, 16, dtype=torch.int64), progress=False)
    with pytest.raises(ValueError, match="out"):
        scoring.score(m, x, out=tmp_path / "missing" / "s.npy", progress=False)
    assert not (tmp_path / "missing").exists()
    with pytest.raises(ValueError, match="out"):
        scoring.score(m, x, out=tmp_path / "s.txt", progress=False)
    with pytest.raises(ValueError, match="score"):
        scoring.score(m, x, score="nope", progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        scoring.score(m, x, batch_size=0, progress=False)
    with pytest.raises(ValueError, match="knn_reference"):
        scoring.score(m, x, score="latent_knn", progress=False)
    with pytest.raises(ValueError, match="svdd"):
        scoring.score(m, x, score="svdd", progress=False)
    with pytest.raises(TypeError, match="model"):
        scoring.score("conv", x, progress=False)
    with pytest.raises(ValueError, match="x"):  # wrong per-sample shape: named by the model's check
        scoring.score(m, torch.rand(4, 1, 15, 16), progress=False)
    assert list(tmp_path.iterdir()) == []


def test_failure_before_first_chunk_leaves_nothing(tmp_path):
    with pytest.raises(ValueError):
        scoring.score(_conv(), torch.rand(20, 1, 15, 16), out=tmp_path / "s.npy", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_cli_score(tmp_path, capsys):
    from pyaeplus.checkpoint import save_checkpoint
    from pyaeplus.cli import main
    m = _conv()
    save_checkpoint(tmp_path / "ck", m)
    x = _images(90).numpy()
    y = (np.arange(90) % 6 == 0).astype(np.int64)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    out = tmp_path / "res" / "s.csv"
    out.parent.mkdir()
    rc = main(["score", "--checkpoint", str(tmp_path / "ck"), "--data", str(tmp_path / "x.npy"), "--out", str(out),
               "--labels", str(tmp_path / "y.npy"), "--threshold", "contamination:c=0.2", "--maps",
               str(tmp_path / "maps"), "--batch-size", "32"])
    text = capsys.readouterr().out
    assert rc == 0 and "samples/s" in text and "AUROC" in text and "F1" in text
    ref = scoring.score(m, torch.from_numpy(x), batch_size=32, progress=False)
    np.testing.assert_allclose(scoring.read_scores(out), ref, rtol=1e-6)
    summary = json.loads((out.parent / "s_summary.json").read_text())
    assert summary["metrics"]["auroc"] == pytest.approx(scoring.metrics(ref, y)["auroc"])
    for k in ("histogram", "roc_pr", "reconstructions", "overlay"):
        assert (out.parent / os.path.basename(summary["plots"][k])).read_bytes()[:4] == b"\x89PNG"
    assert np.load(tmp_path / "maps" / "maps.npy").shape == (90, 16, 16)
    # a checkpoint of another model, labels of the wrong length, a missing out directory: exit 2, no file
    args = ["score", "--checkpoint", str(tmp_path / "ck"), "--data", str(tmp_path / "x.npy")]
    assert main(args + ["--out", str(tmp_path / "o.npy"), "--model", "dense"]) == 2
    np.save(tmp_path / "y2.npy", y[:-1])
    assert main(args + ["--out", str(tmp_path / "o.npy"), "--labels", str(tmp_path / "y2.npy")]) == 2
    assert main(args + ["--out", str(tmp_path / "nope" / "o.npy")]) == 2
    err = capsys.readouterr().err
    assert "--model" in err and "--labels" in err and "out" in err
    assert not (tmp_path / "o.npy").exists()


def test_cli_score_latent_knn_parquet(tmp_path, capsys):
    pytest.importorskip("pyarrow")
    from pyaeplus.checkpoint import save_checkpoint
    from pyaeplus.cli import main
    m = _conv()
    save_checkpoint(tmp_path / "ck", m)
    x, train = _images(50).numpy(), _images(70, seed=5).numpy()
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "train.npy", train)
    out = tmp_path / "s.parquet"
    args = ["score", "--checkpoint", str(tmp_path / "ck"), "--data", str(tmp_path / "x.npy"), "--out", str(out),
            "--score", "latent_knn", "--knn-reference", str(tmp_path / "train.npy"), "--k", "3",
            "--threshold", "percentile:q=95", "--threshold-data", str(tmp_path / "train.npy")]
    assert main(args) == 0
    ref = scoring.score(m, torch.from_numpy(x), score="latent_knn", knn_reference=torch.from_numpy(train), k=3,
                        progress=False)
    np.testing.assert_array_equal(scoring.read_scores(out), ref)
    train_scores = scoring.score(m, torch.from_numpy(train), score="latent_knn", knn_reference=torch.from_numpy(train),
                                 k=3, progress=False, knn_exclude_self=True)
    summary = json.loads((tmp_path / "s_summary.json").read_text())
    assert summary["threshold"] == pytest.approx(np.percentile(train_scores, 95), rel=1e-6)
    out.unlink()
    assert main(args[:9]) == 2 and "--knn-reference" in capsys.readouterr().err
    assert not out.exists()
