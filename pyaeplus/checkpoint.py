"""Checkpoints that never unpickle code: tensors in safetensors, everything else in JSON.

A checkpoint is a folder:

- ``model.safetensors``: the model's ``state_dict`` (parameters and persistent buffers; tied
  tensors are stored once and re-tied on load through an alias table in the metadata);
- ``trainer.safetensors``: optimizer state tensors, the RNG states of every rank (torch CPU,
  CUDA, numpy, Python ``random``) as tensors; its metadata holds the non-tensor parts as JSON;
- ``config.json``: the model's registry name and JSON config (``pyaeplus.models.build(name,
  **config)`` rebuilds it), the optimizer's name and hyper-parameters, epoch, step, history and
  the ``fit`` arguments.

A folder is written under a temporary name and renamed into place (``os.replace``); the
``LATEST``/``BEST`` pointer files of a training run are replaced atomically too, so a job
killed at any moment leaves the previous checkpoint intact and pointed to. The temporaries a
killed save leaves (named after the writer's host and pid) are removed by the next save or load
in that folder; a full disk raises ``OSError`` naming the checkpoint, with nothing left behind.

``config.json`` records the sha256 and size of each tensor file (``"files"``); loading checks
them and raises :class:`CorruptCheckpointError` naming the file that does not match. The format
version stays 1 (older pyaeplus ignores the new key and still reads these checkpoints);
checkpoints written before checksums were recorded load unverified.
"""

from __future__ import annotations

import json
import os
import pathlib
import random
import re
import warnings
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .runtime import atomic_write, clean_stale_temps, file_sha256
from .runtime.files import atomic_path, restore_aside, write_error

__all__ = ["save_checkpoint", "load_checkpoint", "load_model", "latest_checkpoint", "best_checkpoint",
           "model_spec", "rng_state", "set_rng_state", "verify_checkpoint", "resume_point", "CorruptCheckpointError"]

FORMAT = "pyaeplus-checkpoint"
VERSION = 1
TENSOR_FILES = ("model.safetensors", "trainer.safetensors")


class CorruptCheckpointError(ValueError):
    """A checkpoint that cannot be used: a file missing, unreadable, or not matching its checksum."""


# ---- helpers -------------------------------------------------------------------------------

def _atomic_write_text(path: pathlib.Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text), text=True)


def _clean_folder(folder: pathlib.Path) -> None:
    """Remove what killed saves left in ``folder``: temporary checkpoint folders and pointer files
    of writers that no longer run. A checkpoint moved aside to be replaced (``.<name>.old...``)
    whose replacement never arrived is moved back first."""
    restore_aside(folder, lambda src: (src / "config.json").exists())
    clean_stale_temps(folder)


def _save_error(e: BaseException, path: pathlib.Path) -> BaseException:
    """I/O failures of a save (safetensors reports them as SafetensorError) as OSError naming ``path``."""
    if isinstance(e, OSError):
        return write_error(e, path)
    m = re.search(r"os error (\d+)", str(e)) if isinstance(e, SafetensorError) else None
    if m is not None:
        return write_error(OSError(int(m[1]), os.strerror(int(m[1]))), path)
    return e


def _plain_state(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """CPU, contiguous, unshared copies; a tensor that views the same memory as an earlier one
    (tied weights) is recorded as an alias instead of stored twice."""
    out, aliases, seen = {}, {}, {}
    for k, v in state.items():
        if not isinstance(v, torch.Tensor):
            raise TypeError(f"state entry {k!r} is a {type(v).__name__}, not a tensor; checkpoints store tensors only")
        key = (v.device, v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape), tuple(v.stride()),
               v.dtype) if v.numel() else None
        if key is not None and key in seen:
            aliases[k] = seen[key]
            continue
        if key is not None:
            seen[key] = k
        out[k] = v.detach().to("cpu", copy=True).contiguous()
    return out, aliases


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, torch.Tensor) and o.numel() == 1:
        return o.item()
    if isinstance(o, (set, tuple)):
        return list(o)
    if isinstance(o, pathlib.Path):
        return str(o)
    raise TypeError(f"{type(o).__name__} is not JSON serializable")


def model_spec(model: torch.nn.Module) -> dict[str, Any]:
    """``{"name", "config", "class"}`` of a model: its registry name in ``pyaeplus.models`` (when it
    is one of the zoo) and its JSON-able ``config``; None fields when unknown."""
    name = getattr(model, "name", None)
    if not isinstance(name, str):
        name = None
        try:
            from . import models as _models

            registry = getattr(_models, "MODELS", {})
            name = next((k for k, v in registry.items() if type(model) is v), None)
        except ImportError:
            pass
    config = getattr(model, "config", None)
    try:
        json.dumps(config, default=_json_default)
    except (TypeError, ValueError):
        config = None
    return {"name": name, "config": config, "class": f"{type(model).__module__}.{type(model).__qualname__}"}


def rng_state() -> dict[str, torch.Tensor]:
    """This process's RNG states (torch CPU and CUDA, numpy, Python) as tensors."""
    out = {"torch": torch.get_rng_state().clone()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            out[f"cuda.{i}"] = s.clone()
    kind, key, pos, has_gauss, cached = np.random.get_state()
    assert kind == "MT19937"
    out["numpy"] = torch.from_numpy(np.concatenate([key.astype(np.int64), [pos, has_gauss]]).astype(np.int64))
    out["numpy_gauss"] = torch.tensor([cached], dtype=torch.float64)
    version, internal, gauss = random.getstate()
    out["python"] = torch.tensor([version, *internal], dtype=torch.int64)
    out["python_gauss"] = torch.tensor([float("nan") if gauss is None else gauss], dtype=torch.float64)
    return out


def set_rng_state(state: dict[str, torch.Tensor]) -> None:
    """Restore what ``rng_state`` returned."""
    torch.set_rng_state(state["torch"])
    cuda = sorted((int(k.split(".")[1]), v) for k, v in state.items() if k.startswith("cuda."))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([v for _, v in cuda][: torch.cuda.device_count()])
    n = state["numpy"].numpy()
    np.random.set_state(("MT19937", n[:-2].astype(np.uint32), int(n[-2]), int(n[-1]),
                         float(state["numpy_gauss"][0])))
    p = state["python"].tolist()
    g = float(state["python_gauss"][0])
    random.setstate((int(p[0]), tuple(int(v) for v in p[1:]), None if g != g else g))


# ---- save / load ---------------------------------------------------------------------------

def save_checkpoint(path: str | os.PathLike, model: torch.nn.Module, *, optimizer: torch.optim.Optimizer | None = None,
                    optimizer_name: str | None = None, scaler: "torch.amp.GradScaler | None" = None,
                    rng: list[dict[str, torch.Tensor]] | None = None, state: dict[str, Any] | None = None
                    ) -> pathlib.Path:
    """Write a checkpoint folder at ``path`` atomically (an existing folder there is replaced).

    Args:
        path: the checkpoint folder.
        model: the model (not a DDP wrapper).
        optimizer: its state goes into ``trainer.safetensors``.
        optimizer_name: recorded in ``config.json`` (e.g. ``"adam"``).
        scaler: a GradScaler whose state is stored (JSON).
        rng: one ``rng_state()`` dict per rank (index = rank).
        state: JSON-able training state (epoch, step, history, fit arguments ...), into ``config.json``.

    Returns:
        The folder written.
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _clean_folder(path.parent)
    try:
        with atomic_path(path) as tmp:
            tmp.mkdir()
            _save_model(tmp, model)
            _save_trainer(tmp, optimizer, scaler, rng)
            config = {"format": FORMAT, "version": VERSION, "model": model_spec(model),
                      "optimizer": None if optimizer is None else {
                          "name": optimizer_name or type(optimizer).__name__.lower(),
                          "lr": optimizer.param_groups[0]["lr"]},
                      "files": {f: {"sha256": file_sha256(tmp / f), "bytes": (tmp / f).stat().st_size}
                                for f in TENSOR_FILES},
                      **(state or {})}
            (tmp / "config.json").write_text(json.dumps(config, indent=2, default=_json_default))
    except SafetensorError as e:
        err = _save_error(e, path)
        if err is not e:
            raise err from e
        raise
    return path


def _save_model(folder: pathlib.Path, model: torch.nn.Module) -> None:
    weights, aliases = _plain_state(model.state_dict())
    save_file(weights, str(folder / "model.safetensors"),
              metadata={"format": FORMAT, "version": str(VERSION), "aliases": json.dumps(aliases)})


def _save_trainer(folder: pathlib.Path, optimizer, scaler, rng) -> None:
    tensors: dict[str, torch.Tensor] = {}
    meta: dict[str, Any] = {}
    if optimizer is not None:
        sd = optimizer.state_dict()
        scalars: dict[str, dict[str, Any]] = {}
        for pid, st in sd["state"].items():
            for name, v in st.items():
                if isinstance(v, torch.Tensor):
                    tensors[f"optim.{pid}.{name}"] = v.detach().to("cpu", copy=True).contiguous()
                else:
                    scalars.setdefault(str(pid), {})[name] = v
        meta["optimizer"] = {"param_groups": sd["param_groups"], "scalars": scalars,
                             "state_ids": [str(k) for k in sd["state"]]}
    if scaler is not None:
        meta["scaler"] = scaler.state_dict()
    for r, st in enumerate(rng or []):
        for k, v in st.items():
            tensors[f"rng.{r}.{k}"] = v.detach().to("cpu").contiguous()
    meta["ranks"] = len(rng or [])
    save_file(tensors, str(folder / "trainer.safetensors"),
              metadata={"format": FORMAT, "version": str(VERSION), "trainer": json.dumps(meta, default=_json_default)})


def _read_config(path: pathlib.Path) -> dict[str, Any]:
    cfg_path = path / "config.json"
    if not cfg_path.exists():
        raise FileNotFoundError(f"{path} is not a pyaeplus checkpoint (no config.json)")
    try:
        cfg = json.loads(cfg_path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise CorruptCheckpointError(f"{cfg_path} cannot be read ({e})") from e
    if not isinstance(cfg, dict) or cfg.get("format") != FORMAT:
        fmt = cfg.get("format") if isinstance(cfg, dict) else type(cfg).__name__
        raise ValueError(f"{cfg_path}: format is {fmt!r}, expected {FORMAT!r}")
    if int(cfg.get("version", 0)) > VERSION:
        raise ValueError(f"{cfg_path}: checkpoint version {cfg['version']} is newer than this pyaeplus reads ({VERSION})")
    return cfg


def _verify_files(path: pathlib.Path, cfg: dict[str, Any], names) -> None:
    """Each tensor file in ``names`` against the size and sha256 recorded in ``config.json``."""
    files = cfg.get("files")
    if not isinstance(files, dict):
        return  # written before checksums were recorded
    for name in names:
        f = path / name
        want = files.get(name)
        if not isinstance(want, dict):
            raise CorruptCheckpointError(f"{f}: config.json records no checksum for it")
        if not f.is_file():
            raise CorruptCheckpointError(f"{f} is missing")
        size = f.stat().st_size
        if size != want.get("bytes"):
            raise CorruptCheckpointError(f"{f} has {size} bytes, config.json records {want.get('bytes')}: "
                                         "the file is truncated or was replaced")
        got = file_sha256(f)
        if got != want.get("sha256"):
            raise CorruptCheckpointError(f"{f} does not match its sha256 in config.json (stored "
                                         f"{str(want.get('sha256'))[:12]}..., file {got[:12]}...): the file is corrupted")


def _load_tensors(f: pathlib.Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a safetensors file; a damaged file is a CorruptCheckpointError naming it."""
    from safetensors import safe_open

    try:
        tensors = load_file(str(f))
        with safe_open(str(f), framework="pt") as h:
            meta = h.metadata() or {}
    except FileNotFoundError as e:
        raise CorruptCheckpointError(f"{f} is missing") from e
    except (SafetensorError, OSError, ValueError) as e:
        raise CorruptCheckpointError(f"{f} cannot be read ({e})") from e
    return tensors, meta


def verify_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Check that a checkpoint folder can be loaded: ``config.json`` readable, every tensor file
    present with the size and sha256 it records (when it records them).

    Returns:
        The ``config.json`` dict.

    Raises:
        FileNotFoundError: no ``config.json``. CorruptCheckpointError: a file is missing, damaged or
        does not match its checksum (the message names it). ValueError: not a pyaeplus checkpoint.
    """
    path = pathlib.Path(path)
    cfg = _read_config(path)
    _verify_files(path, cfg, TENSOR_FILES)
    return cfg


def _resolve(path: str | os.PathLike) -> pathlib.Path:
    """A checkpoint folder, or a training run's ``checkpoint_dir`` (then its LATEST checkpoint)."""
    path = pathlib.Path(path).expanduser()
    _clean_folder(path.parent)  # may move back a checkpoint a killed save had moved aside
    if (path / "config.json").exists():
        return path
    _clean_folder(path)
    latest = latest_checkpoint(path)
    if latest is None:
        raise FileNotFoundError(f"no checkpoint at {path} (neither config.json nor a LATEST pointer)")
    return latest


def load_checkpoint(path: str | os.PathLike, model: torch.nn.Module | None = None, *,
                    optimizer: torch.optim.Optimizer | None = None, scaler=None, strict: bool = True,
                    rank: int | None = None, verify: bool = True) -> dict[str, Any]:
    """Load a checkpoint into existing objects.

    Args:
        path: a checkpoint folder, or a run's ``checkpoint_dir`` (its LATEST checkpoint).
        model: receives the weights (``load_state_dict(strict=strict)``); None skips them.
        optimizer: receives the optimizer state (same parameter order as when saved).
        scaler: receives the GradScaler state.
        strict: passed to ``load_state_dict``.
        rank: restore the RNG states saved for this rank (None: leave the RNGs alone).
        verify: check the sha256 of each tensor file read against ``config.json`` first.

    Returns:
        The ``config.json`` dict, with ``"path"`` set to the folder read.

    Raises:
        CorruptCheckpointError: a file read is missing, damaged or does not match its checksum.
    """
    path = _resolve(path)
    cfg = _read_config(path)
    trainer = optimizer is not None or scaler is not None or rank is not None
    if verify:
        _verify_files(path, cfg, [n for n, use in zip(TENSOR_FILES, (model is not None, trainer)) if use])
    if model is not None:
        weights, meta = _load_tensors(path / "model.safetensors")
        for k, src in json.loads(meta.get("aliases", "{}")).items():
            weights[k] = weights[src]
        model.load_state_dict(weights, strict=strict)
    if trainer:
        tensors, meta = _load_tensors(path / "trainer.safetensors")
        _restore_trainer(path, json.loads(meta["trainer"]), tensors, optimizer, scaler, rank)
    cfg["path"] = str(path)
    return cfg


def _restore_trainer(path, meta, tensors, optimizer, scaler, rank) -> None:
    if optimizer is not None:
        if "optimizer" not in meta:
            raise ValueError(f"{path} holds no optimizer state")
        om = meta["optimizer"]
        state: dict[int, dict[str, Any]] = {int(i): {} for i in om["state_ids"]}
        for k, v in tensors.items():
            if k.startswith("optim."):
                _, pid, name = k.split(".", 2)
                state[int(pid)][name] = v
        for pid, sc in om["scalars"].items():
            state[int(pid)].update(sc)
        optimizer.load_state_dict({"state": state, "param_groups": om["param_groups"]})
    if scaler is not None and meta.get("scaler") is not None:
        scaler.load_state_dict(meta["scaler"])
    if rank is not None:
        prefix = f"rng.{rank}."
        st = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        if not st:
            raise ValueError(f"{path} holds no RNG state for rank {rank} (saved by {meta.get('ranks', 0)} rank(s))")
        set_rng_state(st)


def load_model(path: str | os.PathLike, *, device: str | torch.device = "cpu") -> torch.nn.Module:
    """Rebuild a model of the zoo from a checkpoint (``pyaeplus.models.build(name, **config)``) and
    load its weights; no pickled code is read.

    Args:
        path: a checkpoint folder or a run's ``checkpoint_dir``.
        device: where the model goes.

    Returns:
        The model in eval mode.
    """
    path = _resolve(path)
    cfg = _read_config(path)
    spec = cfg.get("model") or {}
    if not spec.get("name") or spec.get("config") is None:
        raise ValueError(f"{path}: the model ({spec.get('class')}) is not one of pyaeplus.models with a JSON "
                         "config; build it yourself and call load_checkpoint(path, model)")
    from . import models

    model = models.build(spec["name"], **spec["config"])
    load_checkpoint(path, model)
    return model.to(device).eval()


def _pointer(run_dir: str | os.PathLike, name: str) -> pathlib.Path | None:
    p = pathlib.Path(run_dir) / name
    if not p.exists():
        return None
    target = pathlib.Path(run_dir) / p.read_text().strip()
    return target if (target / "config.json").exists() else None


def latest_checkpoint(run_dir: str | os.PathLike) -> pathlib.Path | None:
    """The checkpoint a run's ``LATEST`` pointer names, or None."""
    return _pointer(run_dir, "LATEST")


def best_checkpoint(run_dir: str | os.PathLike) -> pathlib.Path | None:
    """The checkpoint with the best validation loss (``BEST`` pointer), or None."""
    return _pointer(run_dir, "BEST")


def _unusable(path: pathlib.Path) -> str | None:
    """Why checkpoint folder ``path`` cannot be resumed from, or None when it can."""
    if not path.is_dir():
        return "the folder does not exist"
    try:
        verify_checkpoint(path)
    except (FileNotFoundError, ValueError) as e:
        return str(e)
    return None


def resume_point(run_dir: str | os.PathLike, *, fallback: bool = False) -> pathlib.Path | None:
    """The checkpoint a training run resumes from: its ``LATEST`` one, verified.

    Args:
        run_dir: the run's ``checkpoint_dir``.
        fallback: when LATEST cannot be used, take the newest checkpoint folder of the run that can
            (a warning names each one skipped and why); None when there is none.

    Returns:
        The checkpoint folder, or None when the run has no LATEST pointer (nothing to resume; with
        ``fallback``, nor any usable checkpoint).

    Raises:
        CorruptCheckpointError: (without ``fallback``) LATEST names a checkpoint that is missing,
        incomplete (no ``config.json``) or damaged; the message says which and why.
    """
    run_dir = pathlib.Path(run_dir)
    _clean_folder(run_dir)
    ptr = run_dir / "LATEST"
    if ptr.exists():
        target = run_dir / ptr.read_text().strip()
        why = _unusable(target)
        if why is None:
            return target
        if not fallback:
            raise CorruptCheckpointError(
                f"cannot resume from {target}, the LATEST checkpoint of {run_dir}: {why}. Pass resume='fallback' "
                "(pyaeplus train --resume fallback) to continue from the newest checkpoint that is intact, or "
                "resume=False to start over (the run's checkpoints are then overwritten)")
        warnings.warn(f"LATEST checkpoint {target} cannot be used ({why}); looking for an older one",
                      RuntimeWarning, stacklevel=2)
    elif not fallback:
        return None
    if not run_dir.is_dir():
        return None
    for d in sorted((d for d in run_dir.iterdir() if d.is_dir() and not d.name.startswith(".")), reverse=True):
        why = _unusable(d)
        if why is None:
            return d
        warnings.warn(f"checkpoint {d} cannot be used ({why}); skipped", RuntimeWarning, stacklevel=2)
    return None


def point(run_dir: str | os.PathLike, name: str, target: pathlib.Path) -> None:
    """Atomically set pointer ``name`` (``LATEST``/``BEST``) of a run to ``target``."""
    _atomic_write_text(pathlib.Path(run_dir) / name, target.name + "\n")
