"""Fault tests (issue 18): what survives a SIGKILL at any point of scoring and training (cleanup
included), a second writer, a full disk and a damaged checkpoint.

Kills happen in forked children (no interpreter start-up per kill): a child arms a fault point by
patching one function to SIGKILL itself there (or is killed at a random time), the parent checks
what is on disk and resumes in-process. A disk full is simulated by a write that fails with ENOSPC
at a chosen file (always) and produced for real on a small tmpfs where this machine lets the test
mount one (root), in a child, so that a SIGBUS would be counted instead of killing pytest.
"""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
import pathlib
import pickle
import random
import signal
import subprocess
import threading
import time

import numpy as np
import pytest
import torch

from pyaeplus import checkpoint as ckpt
from pyaeplus import models, scoring, train
from pyaeplus.runtime import LockedError, WriterLock
from pyaeplus.runtime import files as rfiles
from pyaeplus.scoring import ledger as sledger

FORK = multiprocessing.get_context("fork")
X = torch.rand(96, 1, 16, 16, generator=torch.Generator().manual_seed(1))
_DELAY = [0.0]  # per-batch sleep of the score below (a list: not part of the callable's fingerprint)


def _model():
    torch.manual_seed(0)
    return models.build("conv", in_channels=1, channels=[4, 8], latent=6, input_shape=[16, 16]).eval()


def _mse(model, x):
    if _DELAY[0]:
        time.sleep(_DELAY[0])
    return ((model(x) - x) ** 2).flatten(1).mean(1)


def _score(out, maps=False, **kw):
    return scoring.score(_model(), X, score=_mse, batch_size=8, chunk_size=16, out=out, maps=maps, progress=False,
                         **kw)


@pytest.fixture(scope="module")
def ref():
    return scoring.score(_model(), X, score=_mse, batch_size=8, maps=True, progress=False)


def _die():
    os.kill(os.getpid(), signal.SIGKILL)


def _child(target, *args, timeout=120) -> int:
    p = FORK.Process(target=target, args=args)
    p.start()
    p.join(timeout)
    if p.is_alive():
        p.kill()
        p.join()
        raise AssertionError("the child hung")
    return p.exitcode


def _leftovers(folder: pathlib.Path) -> list[str]:
    """Temporaries, lock files and parts folders under folder."""
    return sorted(p.name for p in folder.iterdir() if "pyaeplus-tmp" in p.name or p.name.endswith((".lock", ".parts")))


def _kill_after(obj, name, n=1, before=False):
    """Patch obj.name so that its n-th call SIGKILLs the process (before or after the real call)."""
    real, count = getattr(obj, name), [0]

    def wrapper(*a, **kw):
        count[0] += 1
        if before and count[0] >= n:
            _die()
        r = real(*a, **kw)
        if not before and count[0] >= n:
            _die()
        return r

    setattr(obj, name, wrapper)


# ---- scoring: SIGKILL at every step of the ledger's life ------------------------------------------

def _arm_scoring(fault: str, out: pathlib.Path) -> None:
    if fault == "after_part":          # a chunk on disk, the ledger not yet updated
        _kill_after(sledger, "_save_npy", 3)
    elif fault == "after_ledger":      # a chunk and its ledger entry
        _kill_after(sledger, "_save_json", 3)
    elif fault == "final_not_renamed":  # the final file complete under its temporary name
        real = rfiles.os.replace
        rfiles.os.replace = lambda a, b: _die() if pathlib.Path(b).name == out.name else real(a, b)
    elif fault == "maps_not_renamed":
        real = rfiles.os.replace
        rfiles.os.replace = lambda a, b: _die() if pathlib.Path(b).name.endswith(".maps.npy") else real(a, b)
    elif fault == "after_final":       # final files written, COMPLETE not yet
        _kill_after(sledger, "write_final", 1)
    elif fault == "after_complete":    # COMPLETE written, cleanup not started
        _kill_after(sledger.ScoreLedger, "_cleanup", 1, before=True)
    elif fault == "mid_cleanup":       # some parts removed, the ledger possibly gone
        real_cleanup, real_unlink = sledger.ScoreLedger._cleanup, pathlib.Path.unlink
        count = [0]

        def unlink(self, missing_ok=False):
            count[0] += 1
            if count[0] == 4:
                _die()
            return real_unlink(self, missing_ok=missing_ok)

        def cleanup(self):
            pathlib.Path.unlink = unlink
            return real_cleanup(self)

        sledger.ScoreLedger._cleanup = cleanup
    elif fault == "before_rmdir":      # everything removed but the (empty) parts folder
        _kill_after(sledger.os, "rmdir", 1, before=True)
    else:
        raise AssertionError(fault)


def _scoring_child(out, fault, maps):
    torch.set_num_threads(1)
    _arm_scoring(fault, pathlib.Path(out))
    _score(out, maps=maps)


FAULTS = ["after_part", "after_ledger", "final_not_renamed", "maps_not_renamed", "after_final", "after_complete",
          "mid_cleanup", "before_rmdir"]


@pytest.mark.parametrize("fault", FAULTS)
def test_scoring_sigkill_at_each_step_then_resume(tmp_path, ref, fault, monkeypatch):
    out = tmp_path / "s.npy"
    assert _child(_scoring_child, out, fault, True) == -signal.SIGKILL
    assert not out.exists() or fault in ("after_final", "after_complete", "mid_cleanup", "before_rmdir")
    calls = []
    real = sledger.ScoreLedger.record
    monkeypatch.setattr(sledger.ScoreLedger, "record", lambda *a: calls.append(a) or real(*a))
    s, m = _score(out, maps=True)
    if fault in ("after_complete", "mid_cleanup"):
        assert calls == [], "a finished job must be returned, not scored again"
    assert s.tobytes() == ref[0].tobytes()
    np.testing.assert_array_equal(np.asarray(m), ref[1])
    assert _leftovers(tmp_path) == [], "temporaries, lock or parts left after the resumed run"


def test_leftovers_of_another_finished_job_are_discarded(tmp_path, ref):
    out = tmp_path / "s.npy"
    assert _child(_scoring_child, out, "after_complete", False) == -signal.SIGKILL
    got = scoring.score(_model(), X, score="mae", batch_size=8, chunk_size=32, out=out, progress=False)
    want = scoring.score(_model(), X, score="mae", batch_size=8, progress=False)
    assert got.tobytes() == want.tobytes()
    assert _leftovers(tmp_path) == []


def _slow_scoring_child(out):
    torch.set_num_threads(1)
    _DELAY[0] = 0.05
    _score(out, maps=True)


def test_scoring_random_sigkills_then_resume(tmp_path, ref):
    """Kills at random moments (seeded): each restart resumes; the final file is the uninterrupted one."""
    out, rng = tmp_path / "s.npy", random.Random(18)
    kills = 0
    for _ in range(6):
        p = FORK.Process(target=_slow_scoring_child, args=(out,))
        p.start()
        p.join(rng.uniform(0.05, 0.5))
        if not p.is_alive():
            break
        os.kill(p.pid, signal.SIGKILL)
        p.join()
        kills += 1
    assert kills >= 2
    s, m = _score(out, maps=True)
    assert s.tobytes() == ref[0].tobytes()
    np.testing.assert_array_equal(np.asarray(m), ref[1])
    assert _leftovers(tmp_path) == []


# ---- scoring: the ledger knows its data and its score -----------------------------------------------

def test_resume_on_other_data_of_the_same_length_is_refused(tmp_path):
    out = tmp_path / "s.npy"
    other = torch.rand(96, 1, 16, 16, generator=torch.Generator().manual_seed(7))
    # interrupted on X with the callable `_mse`: its ledger records X's rows and _mse's code
    n = [0]

    def stop(ledger, cs, ce, arr, marr):
        n[0] += 1
        if n[0] > 2:
            raise RuntimeError("interrupted")
        real(ledger, cs, ce, arr, marr)

    real = sledger.ScoreLedger.record
    sledger.ScoreLedger.record = stop
    try:
        with pytest.raises(RuntimeError, match="interrupted"):
            _score(out)
    finally:
        sledger.ScoreLedger.record = real
    assert len(json.loads((tmp_path / "s.npy.parts" / "ledger-0.json").read_text())["done"]) == 2
    with pytest.raises(ValueError, match=r"the data .*differ.*resume=False"):
        scoring.score(_model(), other, score=_mse, batch_size=8, chunk_size=16, out=out, progress=False)

    def _mse2(model, x):  # same name, other code
        return ((model(x) - x) ** 2).flatten(1).sum(1)

    _mse2.__qualname__ = _mse.__qualname__
    with pytest.raises(ValueError, match=r"the score .*differ"):
        scoring.score(_model(), X, score=_mse2, batch_size=8, chunk_size=16, out=out, progress=False)
    torch.manual_seed(5)
    other_weights = models.build("conv", in_channels=1, channels=[4, 8], latent=6, input_shape=[16, 16]).eval()
    with pytest.raises(ValueError, match=r"the model"):
        scoring.score(other_weights, X, score=_mse, batch_size=8, chunk_size=16, out=out, progress=False)
    # resume=False starts over: the other data's own scores, not X's chunks
    got = scoring.score(_model(), other, score=_mse, batch_size=8, chunk_size=16, out=out, progress=False,
                        resume=False)
    want = scoring.score(_model(), other, score=_mse, batch_size=8, progress=False)
    assert got.tobytes() == want.tobytes()
    assert _leftovers(tmp_path) == []


def test_data_id_replaces_the_row_hash(tmp_path):
    out = tmp_path / "s.npy"
    real = sledger.ScoreLedger.record
    sledger.ScoreLedger.record = lambda self, *a: (_ for _ in ()).throw(RuntimeError("stop")) \
        if len(self.done) >= 1 else real(self, *a)
    try:
        with pytest.raises(RuntimeError):
            _score(out, data_id="set-v1")
    finally:
        sledger.ScoreLedger.record = real
    with pytest.raises(ValueError, match="the data"):
        _score(out, data_id="set-v2")
    with pytest.raises(TypeError, match="data_id"):
        _score(out, data_id=3)
    assert _score(out, data_id="set-v1").shape == (96,)


def test_a_ledger_listing_missing_chunks_rescores_them(tmp_path, ref):
    out = tmp_path / "s.npy"
    assert _child(_scoring_child, out, "after_ledger", False) == -signal.SIGKILL
    parts = sorted((tmp_path / "s.npy.parts").glob("part-*.npy"))
    parts[0].unlink()                           # a chunk the ledger lists is gone
    parts[1].write_bytes(parts[1].read_bytes()[:40])  # another one is truncated
    s = _score(out)
    assert s.tobytes() == ref[0].tobytes()


# ---- one writer per out --------------------------------------------------------------------------

def _holding_child(out, ready):
    torch.set_num_threads(1)
    _DELAY[0] = 0.2
    real = sledger.ScoreLedger.record

    def record(self, *a):
        real(self, *a)
        ready.set()

    sledger.ScoreLedger.record = record
    _score(out)


def test_second_writer_gets_a_clear_error_and_a_killed_writer_does_not_block(tmp_path, ref):
    out = tmp_path / "s.npy"
    ready = FORK.Event()
    p = FORK.Process(target=_holding_child, args=(out, ready))
    p.start()
    try:
        assert ready.wait(60), "the first writer did not start"
        with pytest.raises(LockedError, match=rf"being written by process {p.pid} .*one writer per output"):
            _score(out)
    finally:
        os.kill(p.pid, signal.SIGKILL)
        p.join()
    assert (tmp_path / "s.npy.lock").exists()  # stale: its writer is dead
    s = _score(out)                              # takes the lock over and resumes the dead writer's chunks
    assert s.tobytes() == ref[0].tobytes()
    assert _leftovers(tmp_path) == []


def test_second_writer_in_the_same_process(tmp_path):
    out = tmp_path / "s.npy"
    with WriterLock(tmp_path / "s.npy.lock", out):
        with pytest.raises(LockedError, match="this process"):
            _score(out)
        errs = []
        t = threading.Thread(target=lambda: errs.append(pytest.raises(LockedError, _score, out)))
        t.start()
        t.join()
        assert errs
    assert _score(out).shape == (96,)


def test_cli_second_writer_prints_one_line_and_exits_2(tmp_path, capsys):
    from pyaeplus.cli import main

    ck = tmp_path / "ck"
    ckpt.save_checkpoint(ck, _model())
    np.save(tmp_path / "x.npy", X.numpy())
    out = tmp_path / "s.npy"
    with WriterLock(tmp_path / "s.npy.lock", out):
        rc = main(["score", "--checkpoint", str(ck), "--data", str(tmp_path / "x.npy"), "--out", str(out),
                   "--score", "mse"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "being written" in err[0]


# ---- a full disk ------------------------------------------------------------------------------------

def _enospc_at(pred):
    """atomic_write that fails like a full disk (after writing some bytes) for paths matching pred."""
    real = rfiles.atomic_write

    def fake(path, write, *, text=False):
        if pred(pathlib.Path(path)):
            def bad(f):
                write(f)
                raise OSError(errno.ENOSPC, "No space left on device")
            return real(path, bad, text=text)
        return real(path, write, text=text)

    return fake


@pytest.mark.parametrize("where", ["part", "ledger", "maps", "final"])
def test_scoring_disk_full_simulated_then_resume(tmp_path, ref, monkeypatch, where):
    out = tmp_path / "s.npy"
    count = [0]

    def pred(p: pathlib.Path) -> bool:
        hit = {"part": p.name.startswith("part-"), "ledger": p.name.startswith("ledger-"),
               "maps": p.name == "s.maps.npy", "final": p.name == "s.npy"}[where]
        count[0] += hit
        return hit and count[0] == (3 if where in ("part", "ledger") else 1)

    monkeypatch.setattr(sledger, "atomic_write", _enospc_at(pred))
    with pytest.raises(OSError) as e:
        _score(out, maps=True)
    assert e.value.errno == errno.ENOSPC and "s." in str(e.value) and str(tmp_path) in str(e.value)
    assert not [p for p in tmp_path.rglob("*") if "pyaeplus-tmp" in p.name], "a temporary file leaked"
    assert not (tmp_path / "s.npy.lock").exists()
    monkeypatch.undo()
    s, m = _score(out, maps=True)
    assert s.tobytes() == ref[0].tobytes()
    np.testing.assert_array_equal(np.asarray(m), ref[1])
    assert _leftovers(tmp_path) == []


@pytest.fixture
def small_tmpfs(tmp_path):
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=160k", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root); the disk-full cases run simulated only")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _full_disk_child(out, result):
    torch.set_num_threads(1)
    try:
        _score(out, maps=True)
        result.put(("ok", None))
    except OSError as e:
        result.put(("oserror", (e.errno, str(e))))


def test_scoring_disk_full_on_a_real_tmpfs(small_tmpfs, ref):
    """Maps (96, 16, 16) float32 are 96 KiB in parts and 96 KiB again in the final file: 160 KiB holds the
    parts but not both. Before the fix the maps memmap took SIGBUS here."""
    out = small_tmpfs / "s.npy"
    q = FORK.Queue()
    code = _child(_full_disk_child, out, q)
    assert code == 0, f"the scoring process died with signal {-code}" if code < 0 else code
    kind, info = q.get(timeout=5)
    assert kind == "oserror" and info[0] == errno.ENOSPC and str(small_tmpfs) in info[1]
    assert not [p for p in small_tmpfs.rglob("*") if "pyaeplus-tmp" in p.name]
    subprocess.run(["mount", "-o", "remount,size=4m", str(small_tmpfs)], check=True)
    s, m = _score(out, maps=True)
    assert s.tobytes() == ref[0].tobytes()
    np.testing.assert_array_equal(np.asarray(m), ref[1])


def test_checkpoint_save_disk_full_on_a_real_tmpfs(small_tmpfs):
    big = torch.nn.Linear(256, 256)  # 257 KiB of weights > 160 KiB
    with pytest.raises(OSError) as e:
        ckpt.save_checkpoint(small_tmpfs / "c", big)
    assert e.value.errno == errno.ENOSPC and str(small_tmpfs / "c") in str(e.value)
    assert list(small_tmpfs.iterdir()) == []


def test_checkpoint_save_disk_full_simulated(tmp_path, monkeypatch):
    from safetensors import SafetensorError

    ckpt.save_checkpoint(tmp_path / "c", _model())
    real = ckpt.save_file

    def fail(tensors, path, metadata=None):
        if "trainer" in path:
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        return real(tensors, path, metadata=metadata)

    monkeypatch.setattr(ckpt, "save_file", fail)
    with pytest.raises(OSError) as e:
        ckpt.save_checkpoint(tmp_path / "c", models.build("dense", in_features=4, hidden=[3], latent=2))
    assert e.value.errno == errno.ENOSPC and "c" in str(e.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]
    ckpt.load_checkpoint(tmp_path / "c", _model())  # the old checkpoint is intact


# ---- training: SIGKILL during checkpointing, resume bit-identical ------------------------------------

XT = torch.rand(64, 12, generator=torch.Generator().manual_seed(3))


def _fit(run_dir, resume=False, **kw):
    torch.manual_seed(0)
    m = models.build("dense", in_features=12, hidden=[8], latent=3)
    return train.fit(m, XT, epochs=3, batch_size=16, checkpoint_dir=run_dir, resume=resume, progress=False,
                     keep_checkpoints=1, device="cpu", **kw)


@pytest.fixture(scope="module")
def fit_ref(tmp_path_factory):
    return {k: v.clone() for k, v in _fit(tmp_path_factory.mktemp("ref")).model.state_dict().items()}


def _fit_child(run_dir, fault):
    torch.set_num_threads(1)
    if fault == "before_rename":      # epoch 2's folder complete under its temporary name
        _kill_after(rfiles, "_replace_folder", 2, before=True)
    elif fault == "mid_save":         # epoch 2's model file written, not its trainer file
        _kill_after(ckpt, "_save_trainer", 2, before=True)
    elif fault == "before_pointer":   # epoch 2 in place, LATEST still on epoch 1
        _kill_after(ckpt, "point", 2, before=True)
    elif fault == "mid_prune":        # epoch 1 half removed by the pruning after epoch 2
        def rmtree(p, ignore_errors=False):
            next(pathlib.Path(p).iterdir()).unlink()
            _die()
        train.shutil.rmtree = rmtree
    elif fault == "random":
        pass
    # the random-kill runs resume each other: every restart continues from the last checkpoint
    _fit(run_dir, resume=fault == "random", on_step=(lambda s, t: time.sleep(0.04)) if fault == "random" else None)


@pytest.mark.parametrize("fault", ["before_rename", "mid_save", "before_pointer", "mid_prune", "random"])
def test_fit_sigkill_during_checkpointing_then_resume(tmp_path, fit_ref, fault):
    run = tmp_path / "run"
    if fault == "random":  # 12 steps of >= 40 ms: killed at seeded random moments, restarted each time
        rng, kills = random.Random(18), 0
        for _ in range(4):
            p = FORK.Process(target=_fit_child, args=(run, fault))
            p.start()
            p.join(rng.uniform(0.05, 0.4))
            if p.is_alive():
                os.kill(p.pid, signal.SIGKILL)
                kills += 1
            p.join()
        assert kills >= 2
    else:
        assert _child(_fit_child, run, fault) == -signal.SIGKILL
    res = _fit(run, resume=True)
    for k, v in res.model.state_dict().items():
        assert torch.equal(v, fit_ref[k]), k
    assert not [p.name for p in run.iterdir() if "pyaeplus-tmp" in p.name]


def _aside_child(path):
    def replace_folder(tmp, dst):  # moves the old folder aside, then dies before the new one lands
        old = rfiles.temp_path(dst.with_name(dst.name + ".old"))
        old.mkdir()
        os.replace(dst, old / dst.name)
        _die()

    rfiles._replace_folder = replace_folder
    ckpt.save_checkpoint(path, models.build("dense", in_features=4, hidden=[3], latent=2))


def test_kill_while_a_checkpoint_is_moved_aside_restores_it(tmp_path):
    path = tmp_path / "c"
    ckpt.save_checkpoint(path, _model())
    assert _child(_aside_child, path) == -signal.SIGKILL
    assert not path.exists()
    m = ckpt.load_model(path)  # the next load moves the old checkpoint back
    for k, v in m.state_dict().items():
        assert torch.equal(v, _model().state_dict()[k])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]


# ---- damaged checkpoints ------------------------------------------------------------------------------

def _flip_last_byte(f: pathlib.Path) -> None:
    b = bytearray(f.read_bytes())
    b[-1] ^= 0x40
    f.write_bytes(bytes(b))


def test_flipped_byte_in_tensor_data_is_detected(tmp_path):
    path = ckpt.save_checkpoint(tmp_path / "c", _model(), optimizer=torch.optim.Adam(_model().parameters()))
    _flip_last_byte(path / "model.safetensors")
    with pytest.raises(ckpt.CorruptCheckpointError, match=r"model\.safetensors does not match its sha256"):
        ckpt.load_checkpoint(path, _model())
    with pytest.raises(ckpt.CorruptCheckpointError, match=r"model\.safetensors"):
        ckpt.load_model(path)
    with pytest.raises(ckpt.CorruptCheckpointError, match=r"model\.safetensors"):
        ckpt.verify_checkpoint(path)
    ckpt.load_checkpoint(path, _model(), verify=False)  # explicitly unverified: loads


def test_truncated_missing_and_unreadable_files(tmp_path):
    m = _model()
    opt = torch.optim.Adam(m.parameters())
    path = ckpt.save_checkpoint(tmp_path / "c", m, optimizer=opt)
    t = path / "trainer.safetensors"
    t.write_bytes(t.read_bytes()[:-7])
    ckpt.load_checkpoint(path, _model())  # the model file is intact and only it is read
    with pytest.raises(ckpt.CorruptCheckpointError, match=r"trainer\.safetensors has \d+ bytes"):
        ckpt.load_checkpoint(path, _model(), optimizer=opt)
    t.unlink()
    with pytest.raises(ckpt.CorruptCheckpointError, match=r"trainer\.safetensors is missing"):
        ckpt.load_checkpoint(path, _model(), optimizer=opt)
    (path / "config.json").write_text("{not json")
    with pytest.raises(ckpt.CorruptCheckpointError, match=r"config\.json cannot be read"):
        ckpt.load_model(path)


def test_checkpoints_without_checksums_still_load(tmp_path):
    path = ckpt.save_checkpoint(tmp_path / "c", _model())
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["version"] == 1  # readable by pyaeplus versions that do not know "files"
    cfg.pop("files")
    (path / "config.json").write_text(json.dumps(cfg))
    ckpt.load_model(path)


@pytest.mark.parametrize("damage", ["no_config", "flipped_byte", "missing_folder"])
def test_fit_resume_with_an_unusable_latest_stops_unless_fallback(tmp_path, fit_ref, damage):
    run = tmp_path / "run"
    # two epochs, then damage epoch 2 (LATEST); keep_checkpoints=2 keeps epoch 1 to fall back to
    torch.manual_seed(0)
    m = models.build("dense", in_features=12, hidden=[8], latent=3)
    train.fit(m, XT, epochs=2, batch_size=16, checkpoint_dir=run, progress=False, keep_checkpoints=2, device="cpu")
    latest = ckpt.latest_checkpoint(run)
    assert latest.name == "epoch-0002"
    if damage == "no_config":
        (latest / "config.json").unlink()
        why = "no config.json"
    elif damage == "flipped_byte":
        _flip_last_byte(latest / "model.safetensors")
        why = "does not match its sha256"
    else:
        import shutil
        shutil.rmtree(latest)
        why = "does not exist"
    before = sorted(p.name for p in run.iterdir())
    with pytest.raises(ckpt.CorruptCheckpointError, match=rf"epoch-0002.*{why}.*resume='fallback'"):
        _fit(run, resume=True)
    assert sorted(p.name for p in run.iterdir()) == before  # nothing trained, nothing overwritten
    with pytest.warns(RuntimeWarning, match="epoch-0002 cannot be used"):
        res = _fit(run, resume="fallback")  # from epoch 1: epochs 2 and 3 again, bit-identical
    for k, v in res.model.state_dict().items():
        assert torch.equal(v, fit_ref[k]), k
    with pytest.raises(ValueError, match="resume"):
        _fit(run, resume="yes")


def test_no_pickle_is_ever_loaded(tmp_path, monkeypatch):
    run = tmp_path / "run"
    _fit(run)

    def boom(*a, **k):
        raise AssertionError("pickle/torch.load must never run on a checkpoint")

    for mod, name in ((pickle, "load"), (pickle, "loads"), (torch, "load")):
        monkeypatch.setattr(mod, name, boom)
    ckpt.load_model(run)
    _fit(run, resume=True)
    assert not [p for p in run.rglob("*") if p.suffix in (".pt", ".pth", ".pkl", ".bin")]
