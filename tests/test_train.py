"""pyaeplus.train.fit and pyaeplus.checkpoint: training really trains, checkpoints round-trip
without pickles, resume is bit-exact (also after a crash mid-epoch), early stopping, hooks,
TensorBoard, bad arguments, and 2-process DDP (gloo) equals 1 process on the same global batch."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors import safe_open
from torch import nn

from pyaeplus import checkpoint as ckpt
from pyaeplus.data import ArrayDataset, WithIndex
from pyaeplus.train import FitResult, fit

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _one_thread():
    # Tiny models: intra-op threads only add contention on a shared 2-core machine.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class TinyAE(nn.Module):
    """Follows the zoo protocol; dropout makes the result depend on the RNG stream (resume test)."""

    def __init__(self, dim: int = 12, latent: int = 3, dropout: float = 0.2):
        super().__init__()
        self.config = {"dim": dim, "latent": latent, "dropout": dropout}
        self.enc = nn.Sequential(nn.Dropout(dropout), nn.Linear(dim, 16), nn.Tanh(), nn.Linear(16, latent))
        self.dec = nn.Sequential(nn.Linear(latent, 16), nn.Tanh(), nn.Linear(16, dim))
        self.calls: list = []

    def encode(self, x):
        return self.enc(x)

    def decode(self, z):
        return self.dec(z)

    def forward(self, x):
        return self.decode(self.encode(x))

    def loss(self, batch):
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        r = (self(x) - x).pow(2).mean()
        z = self.encode(x).pow(2).mean()
        return {"loss": r + 0.01 * z, "recon": r.detach(), "latent": z.detach()}


def _data(n=203, dim=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 3, generator=g)
    return z @ torch.randn(3, dim, generator=g) + 0.05 * torch.randn(n, dim, generator=g)


def _same(m1, m2) -> bool:
    s1, s2 = m1.state_dict(), m2.state_dict()
    return s1.keys() == s2.keys() and all(torch.equal(s1[k], s2[k]) for k in s1)


def _model(seed=1, **kw):
    torch.manual_seed(seed)
    return TinyAE(**kw)


# ---- training ------------------------------------------------------------------------------

def test_fit_reduces_loss_and_reports_terms():
    x = _data()
    m = _model()
    r = fit(m, x, epochs=8, batch_size=32, lr=1e-2, val_data=x[:64], progress=False, seed=3)
    assert isinstance(r, FitResult) and len(r.history) == 8
    first, last = r.history[0]["train"], r.history[-1]["train"]
    assert set(first) == {"loss", "recon", "latent"}
    assert last["loss"] < 0.5 * first["loss"]
    assert r.history[-1]["val"]["loss"] < r.history[0]["val"]["loss"]
    assert r.best_epoch is not None and r.best_val_loss == min(h["val"]["loss"] for h in r.history)
    assert r.history[-1]["step"] == 8 * 7


def test_fit_with_a_zoo_model_on_image_data():
    models = pytest.importorskip("pyaeplus.models")
    g = torch.Generator().manual_seed(0)
    imgs = (torch.rand(96, 1, 8, 8, generator=g) > 0.5).to(torch.uint8) * 255
    ds = ArrayDataset(imgs, torch.zeros(96), scale=1 / 255)
    torch.manual_seed(0)
    m = models.DenseAE(64, hidden=[32], latent=8)
    r = fit(m, ds, epochs=4, batch_size=16, lr=3e-3, progress=False)
    assert r.history[-1]["train"]["loss"] < r.history[0]["train"]["loss"]


def test_plain_module_defaults_to_mse():
    m = nn.Sequential(nn.Linear(12, 4), nn.Linear(4, 12))
    r = fit(m, _data(), epochs=3, batch_size=50, lr=1e-2, progress=False)
    assert set(r.history[0]["train"]) == {"loss", "recon"}
    assert r.history[-1]["train"]["loss"] < r.history[0]["train"]["loss"]


def test_custom_loss_and_optimizers():
    x = _data()
    seen = []

    def l1(model, batch):
        seen.append(batch[0].shape[0])
        return (model(batch[0]) - batch[0]).abs().mean()

    for opt in ("adam", "adamw", "sgd", "rmsprop"):
        seen.clear()
        r = fit(_model(dropout=0.0), x, epochs=2, batch_size=64, lr=1e-3, optimizer=opt, loss=l1, progress=False)
        assert seen == [64, 64, 64, 11] * 2
        assert set(r.history[0]["train"]) == {"loss"}
    r = fit(_model(), x, epochs=1, batch_size=64, drop_last=True, progress=False, grad_clip=0.5)
    assert r.history[0]["step"] == 3


def test_hooks_are_called():
    class Hooked(TinyAE):
        def on_train_begin(self, loader):
            self.calls.append(("begin", sum(b[0].shape[0] for b in loader)))

        def on_epoch_end(self, epoch, loader):
            self.calls.append(("end", epoch, len(list(loader))))

    torch.manual_seed(0)
    m = Hooked()
    fit(m, _data(), epochs=2, batch_size=50, progress=False)
    assert m.calls == [("begin", 203), ("end", 0, 5), ("end", 1, 5)]


def test_batch_sampler_and_indices_reach_the_loss():
    x = _data(n=40)
    got = []

    class Sampler:
        def __init__(self):
            self.epoch = None

        def set_epoch(self, e):
            self.epoch = e

        def __iter__(self):
            g = torch.Generator().manual_seed(self.epoch)
            return iter(torch.randperm(40, generator=g).split(8))

        def __len__(self):
            return 5

    def loss(model, batch):
        xb, idx = batch
        got.append(idx.clone())
        torch.testing.assert_close(xb, x[idx])  # (x, index) pairs line up
        return (model(xb) - xb).pow(2).mean()

    fit(_model(), WithIndex(x), epochs=2, batch_sampler=Sampler(), loss=loss, progress=False)
    assert len(got) == 10 and all(g.numel() == 8 for g in got)
    assert sorted(torch.cat(got[:5]).tolist()) == list(range(40))
    assert not torch.equal(torch.cat(got[:5]), torch.cat(got[5:]))  # set_epoch changed the order


def test_nan_loss_raises_with_epoch_and_step():
    x = _data()
    x[150] = float("nan")
    with pytest.raises(FloatingPointError, match="epoch 0, step"):
        fit(_model(), x, epochs=1, batch_size=32, shuffle=False, progress=False)


# ---- checkpoints ---------------------------------------------------------------------------

def test_checkpoint_files_and_round_trip(tmp_path):
    x = _data()
    m = _model()
    r = fit(m, x, epochs=2, batch_size=32, val_data=x[:40], checkpoint_dir=tmp_path, progress=False)
    assert r.checkpoint == tmp_path / "epoch-0002"
    assert (tmp_path / "LATEST").read_text().strip() == "epoch-0002"
    assert sorted(p.name for p in r.checkpoint.iterdir()) == ["config.json", "model.safetensors",
                                                              "trainer.safetensors"]
    cfg = json.loads((r.checkpoint / "config.json").read_text())
    assert cfg["format"] == "pyaeplus-checkpoint" and cfg["model"]["config"] == m.config
    assert cfg["optimizer"] == {"name": "adam", "lr": 1e-3}
    assert cfg["training"]["epoch"] == 1 and cfg["training"]["step"] == 14
    assert len(cfg["training"]["history"]) == 2
    with safe_open(str(r.checkpoint / "trainer.safetensors"), framework="pt") as f:
        keys = set(f.keys())
    assert "rng.0.torch" in keys and any(k.startswith("optim.") and k.endswith("exp_avg") for k in keys)
    # no pickle anywhere: every file is JSON or safetensors
    for p in r.checkpoint.iterdir():
        head = p.read_bytes()[:2]
        assert head != b"\x80\x04" and head != b"PK"
    m2 = TinyAE()
    assert not _same(m, m2)
    out = ckpt.load_checkpoint(tmp_path, m2)
    assert _same(m, m2) and out["path"] == str(r.checkpoint)


def test_load_model_rebuilds_a_zoo_model(tmp_path):
    models = pytest.importorskip("pyaeplus.models")
    torch.manual_seed(0)
    m = models.DenseAE(12, hidden=[8], latent=3)
    fit(m, _data(), epochs=1, batch_size=64, checkpoint_dir=tmp_path, progress=False)
    cfg = json.loads((tmp_path / "epoch-0001" / "config.json").read_text())
    assert cfg["model"]["name"] == m.model_name
    m2 = ckpt.load_model(tmp_path)
    assert type(m2) is type(m) and _same(m, m2) and not m2.training
    x = _data()[:5]
    torch.testing.assert_close(m2(x), m.eval()(x))
    with pytest.raises(ValueError, match="not one of pyaeplus.models"):
        fit(TinyAE(), _data(), epochs=1, checkpoint_dir=tmp_path / "t", progress=False)
        ckpt.load_model(tmp_path / "t")


def test_tied_weights_and_bad_checkpoints(tmp_path):
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 4)
            self.b = nn.Linear(4, 4)
            self.b.weight = self.a.weight

    m = Tied()
    ckpt.save_checkpoint(tmp_path / "c", m)
    m2 = Tied()
    ckpt.load_checkpoint(tmp_path / "c", m2)
    assert _same(m, m2) and m2.b.weight is m2.a.weight
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        ckpt.load_checkpoint(tmp_path / "nothing", m2)
    (tmp_path / "c" / "config.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(ValueError, match="format"):
        ckpt.load_checkpoint(tmp_path / "c", m2)


def test_resume_is_bit_exact(tmp_path):
    x = _data()
    kw = dict(batch_size=32, lr=3e-3, val_data=x[:50], seed=7, progress=False)
    straight = _model()
    fit(straight, x, epochs=3, **kw)
    first = _model()
    fit(first, x, epochs=1, checkpoint_dir=tmp_path, **kw)
    resumed = _model(seed=99)  # different init: everything must come from the checkpoint
    torch.manual_seed(12345)  # and a different RNG state too
    r = fit(resumed, x, epochs=3, checkpoint_dir=tmp_path, resume=True, **kw)
    assert _same(straight, resumed)
    assert [h["epoch"] for h in r.history] == [0, 1, 2]
    # resuming a finished run changes nothing
    again = _model(seed=5)
    fit(again, x, epochs=3, checkpoint_dir=tmp_path, resume=True, **kw)
    assert _same(straight, again)


def test_resume_after_a_crash_mid_epoch(tmp_path):
    x = _data()
    kw = dict(batch_size=32, lr=3e-3, seed=11, progress=False, keep_checkpoints=1)
    straight = _model()
    fit(straight, x, epochs=3, **kw)

    def crash(step, terms):
        if step == 17:  # in the third epoch (7 steps per epoch)
            raise KeyboardInterrupt

    crashed = _model()
    with pytest.raises(KeyboardInterrupt):
        fit(crashed, x, epochs=3, checkpoint_dir=tmp_path, on_step=crash, **kw)
    assert ckpt.latest_checkpoint(tmp_path).name == "epoch-0002"
    assert sorted(p.name for p in tmp_path.glob("epoch-*")) == ["epoch-0002"]  # keep_checkpoints=1
    resumed = _model(seed=3)
    fit(resumed, x, epochs=3, checkpoint_dir=tmp_path, resume=True, **kw)
    assert _same(straight, resumed)


def test_resume_without_checkpoint_starts_fresh(tmp_path):
    x = _data()
    a, b = _model(), _model()
    fit(a, x, epochs=1, checkpoint_dir=tmp_path / "a", resume=True, progress=False)
    fit(b, x, epochs=1, progress=False)
    assert _same(a, b)


def test_early_stopping_restores_best(tmp_path):
    x = _data()
    calls = {"n": 0}

    def loss(model, batch):
        xb = batch[0]
        r = (model(xb) - xb).pow(2).mean()
        if not model.training:  # validation gets worse after the first epoch
            calls["n"] += 1
            return r * 0 + calls["n"]
        return r

    m = _model()
    r = fit(m, x, epochs=10, batch_size=64, val_data=x[:64], loss=loss, patience=2, checkpoint_dir=tmp_path,
            progress=False)
    assert r.stopped_early and len(r.history) == 3 and r.best_epoch == 0
    assert ckpt.best_checkpoint(tmp_path).name == "epoch-0001"
    one = _model()
    fit(one, x, epochs=1, batch_size=64, loss=loss, progress=False)
    assert _same(m, one)  # the weights of the best (first) epoch


# ---- TensorBoard ---------------------------------------------------------------------------

def test_tensorboard_scalars_and_images(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    class ImgAE(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Flatten(), nn.Linear(36, 4), nn.Linear(4, 36), nn.Sigmoid(),
                                     nn.Unflatten(1, (1, 6, 6)))

        def forward(self, x):
            return self.net(x)

    x = torch.rand(40, 1, 6, 6)
    fit(ImgAE(), x, epochs=2, batch_size=20, val_data=x[:10], log_dir=tmp_path, progress=False)
    ea = EventAccumulator(str(tmp_path), size_guidance={"images": 10})
    ea.Reload()
    tags = ea.Tags()
    assert {"train/loss", "val/loss", "step/loss", "lr"} <= set(tags["scalars"])
    assert [e.step for e in ea.Scalars("train/loss")] == [1, 2]
    assert "reconstruction" in tags["images"]


def test_missing_tensorboard_fails_before_training(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    steps = []
    with pytest.raises(ModuleNotFoundError, match="pip install tensorboard"):
        fit(_model(), _data(), epochs=1, log_dir=tmp_path, on_step=lambda s, t: steps.append(s), progress=False)
    assert steps == []


# ---- bad arguments -------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(epochs=0), ValueError, "epochs"),
    (dict(epochs=1.5), TypeError, "epochs"),
    (dict(batch_size=0), ValueError, "batch_size"),
    (dict(lr=-1.0), ValueError, "lr"),
    (dict(lr=float("nan")), ValueError, "lr"),
    (dict(optimizer="lbfgs"), ValueError, "optimizer"),
    (dict(amp="fp8"), ValueError, "amp"),
    (dict(patience=2), ValueError, "patience"),
    (dict(resume=True), ValueError, "resume"),
    (dict(device="cuda:0"), ValueError, "device"),
    (dict(device="tpu"), ValueError, "device"),
    (dict(loss=3), TypeError, "loss"),
    (dict(num_workers=-1), ValueError, "num_workers"),
    (dict(seed=-1), ValueError, "seed"),
])
def test_bad_arguments(kwargs, exc, match):
    if kwargs.get("device") == "cuda:0" and torch.cuda.is_available():
        pytest.skip("CUDA present")
    with pytest.raises(exc, match=match):
        fit(_model(), _data(), **{"epochs": 1, "progress": False, **kwargs})


def test_bad_data():
    with pytest.raises(TypeError, match="model"):
        fit("model", _data(), epochs=1)
    with pytest.raises(TypeError, match="floating"):
        fit(_model(), torch.ones(5, 12, dtype=torch.int64), epochs=1)
    with pytest.raises(TypeError, match="data"):
        fit(_model(), 17, epochs=1)
    with pytest.raises(TypeError, match="'loss'"):
        fit(_model(), _data(), epochs=1, loss=lambda m, b: {"total": b[0].sum()}, progress=False)


# ---- DDP -----------------------------------------------------------------------------------

_DDP_SCRIPT = textwrap.dedent("""
    import sys, torch
    sys.path.insert(0, {tests!r})
    from test_train import TinyAE, _data
    from pyaeplus.train import fit
    torch.set_num_threads(1)
    torch.manual_seed(1)
    m = TinyAE(dropout=0.0)
    fit(m, _data(), epochs=2, batch_size=32, lr=3e-3, seed=4, val_data=_data(n=30, seed=1),
        checkpoint_dir={out!r}, progress=False)
""")


def _free_port() -> int:
    import socket

    with socket.socket() as sk:
        sk.bind(("127.0.0.1", 0))
        return sk.getsockname()[1]


def _run_ddp_job(tmp_path, torchrun: bool):
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    script = tmp_path / "ddp_job.py"
    script.write_text(_DDP_SCRIPT.format(tests=str(REPO / "tests"), out=str(tmp_path / "ddp")))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    if torchrun:
        proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                               str(script)], env=env, capture_output=True, text=True, timeout=180)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    else:
        # The environment torchrun gives its workers, without the launcher process (one torch import less).
        port = str(_free_port())
        procs = [subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True, env={**env, "RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": "2",
                                                  "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
                                                  "MASTER_PORT": port}) for r in range(2)]
        try:
            outs = [p.communicate(timeout=180)[0] for p in procs]
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
        assert all(p.returncode == 0 for p in procs), "\n".join(o[-3000:] for o in outs)

    torch.manual_seed(1)
    single = TinyAE(dropout=0.0)
    r = fit(single, _data(), epochs=2, batch_size=32, lr=3e-3, seed=4, val_data=_data(n=30, seed=1),
            progress=False)
    ddp = TinyAE(dropout=0.0)
    cfg = ckpt.load_checkpoint(tmp_path / "ddp", ddp)
    # 203 samples: the last global batch (11) splits 6/5 across ranks and still matches
    assert cfg["training"]["world_size"] == 2 and cfg["training"]["step"] == 14
    for k, v in single.state_dict().items():
        torch.testing.assert_close(ddp.state_dict()[k], v, rtol=1e-5, atol=1e-6)
    # the logged epoch means are global means, equal to the single process's
    for a, b in zip(cfg["training"]["history"], r.history):
        assert a["train"]["loss"] == pytest.approx(b["train"]["loss"], rel=1e-5)
        assert a["val"]["loss"] == pytest.approx(b["val"]["loss"], rel=1e-5)


def test_ddp_two_processes_equal_one(tmp_path):
    _run_ddp_job(tmp_path, torchrun=False)


@pytest.mark.slow
def test_ddp_under_torchrun(tmp_path):
    _run_ddp_job(tmp_path, torchrun=True)


# ---- GPU (skipped without CUDA) ------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("amp", [True, "fp16", False])
def test_cuda_amp_trains_and_resumes_exactly(tmp_path, amp):
    x = _data(n=512)
    kw = dict(batch_size=64, lr=3e-3, seed=2, device="cuda", amp=amp, progress=False)
    straight = _model()
    r = fit(straight, x, epochs=3, **kw)
    assert r.history[-1]["train"]["loss"] < r.history[0]["train"]["loss"]
    assert next(straight.parameters()).device.type == "cuda"
    first = _model()
    fit(first, x, epochs=1, checkpoint_dir=tmp_path, **kw)
    resumed = _model(seed=9)
    fit(resumed, x, epochs=3, checkpoint_dir=tmp_path, resume=True, **kw)
    assert _same(straight, resumed)  # GradScaler state and CUDA RNG come back too


def test_fit_config_checks_once_and_is_frozen():
    import dataclasses

    from pyaeplus import train

    cfg = train.FitConfig(epochs=3, checkpoint_dir="runs/a", optimizer_kwargs={"betas": (0.8, 0.9)})
    assert cfg.checkpoint_dir == pathlib.Path("runs/a") and cfg.optimizer_kwargs == {"betas": (0.8, 0.9)}
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.epochs = 4
    for kw, match in [({"epochs": 0}, "epochs"), ({"lr": -1.0}, "lr"), ({"amp": "fp8"}, "amp"),
                      ({"resume": True}, "checkpoint_dir"), ({"optimizer": "lamb"}, "optimizer"),
                      ({"loss": 3}, "loss")]:
        with pytest.raises((ValueError, TypeError), match=match):
            train.FitConfig(**kw)
    # fit's keywords are exactly FitConfig's fields, and run() accepts the JSON-able ones
    import inspect

    fit_kw = [p for p in inspect.signature(train.fit).parameters if p not in ("model", "train_data", "val_data")]
    assert fit_kw == [f.name for f in dataclasses.fields(train.FitConfig)]
    assert set(train.RUN_FIT_KEYS) < set(fit_kw) and "on_step" not in train.RUN_KEYS
    assert train.RUN_KEYS[:9] == ("model", "model_config", "data", "data_options", "split", "val_data", "val_split",
                                  "normalize", "graph")
