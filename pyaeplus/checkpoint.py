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
killed at any moment leaves the previous checkpoint intact and pointed to.
"""

from __future__ import annotations

import json
import os
import pathlib
import random
import shutil
import tempfile
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

__all__ = ["save_checkpoint", "load_checkpoint", "load_model", "latest_checkpoint", "best_checkpoint",
           "model_spec", "rng_state", "set_rng_state"]

FORMAT = "pyaeplus-checkpoint"
VERSION = 1


# ---- helpers -------------------------------------------------------------------------------

def _atomic_write_text(path: pathlib.Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


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
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        weights, aliases = _plain_state(model.state_dict())
        save_file(weights, str(tmp / "model.safetensors"),
                  metadata={"format": FORMAT, "version": str(VERSION), "aliases": json.dumps(aliases)})

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
        save_file(tensors, str(tmp / "trainer.safetensors"),
                  metadata={"format": FORMAT, "version": str(VERSION),
                            "trainer": json.dumps(meta, default=_json_default)})

        config = {"format": FORMAT, "version": VERSION, "model": model_spec(model),
                  "optimizer": None if optimizer is None else {
                      "name": optimizer_name or type(optimizer).__name__.lower(),
                      "lr": optimizer.param_groups[0]["lr"]},
                  **(state or {})}
        (tmp / "config.json").write_text(json.dumps(config, indent=2, default=_json_default))
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        if path.exists():
            # Move the old folder aside first: os.replace cannot overwrite a non-empty directory.
            old = pathlib.Path(tempfile.mkdtemp(prefix=f".{path.name}.old.", dir=path.parent))
            os.replace(path, old / path.name)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return path


def _read_config(path: pathlib.Path) -> dict[str, Any]:
    cfg_path = path / "config.json"
    if not cfg_path.exists():
        raise FileNotFoundError(f"{path} is not a pyaeplus checkpoint (no config.json)")
    cfg = json.loads(cfg_path.read_text())
    if cfg.get("format") != FORMAT:
        raise ValueError(f"{cfg_path}: format is {cfg.get('format')!r}, expected {FORMAT!r}")
    if int(cfg.get("version", 0)) > VERSION:
        raise ValueError(f"{cfg_path}: checkpoint version {cfg['version']} is newer than this pyaeplus reads ({VERSION})")
    return cfg


def _resolve(path: str | os.PathLike) -> pathlib.Path:
    """A checkpoint folder, or a training run's ``checkpoint_dir`` (then its LATEST checkpoint)."""
    path = pathlib.Path(path).expanduser()
    if (path / "config.json").exists():
        return path
    latest = latest_checkpoint(path)
    if latest is None:
        raise FileNotFoundError(f"no checkpoint at {path} (neither config.json nor a LATEST pointer)")
    return latest


def load_checkpoint(path: str | os.PathLike, model: torch.nn.Module | None = None, *,
                    optimizer: torch.optim.Optimizer | None = None, scaler=None, strict: bool = True,
                    rank: int | None = None) -> dict[str, Any]:
    """Load a checkpoint into existing objects.

    Args:
        path: a checkpoint folder, or a run's ``checkpoint_dir`` (its LATEST checkpoint).
        model: receives the weights (``load_state_dict(strict=strict)``); None skips them.
        optimizer: receives the optimizer state (same parameter order as when saved).
        scaler: receives the GradScaler state.
        strict: passed to ``load_state_dict``.
        rank: restore the RNG states saved for this rank (None: leave the RNGs alone).

    Returns:
        The ``config.json`` dict, with ``"path"`` set to the folder read.
    """
    path = _resolve(path)
    cfg = _read_config(path)
    if model is not None:
        from safetensors import safe_open

        weights = load_file(str(path / "model.safetensors"))
        with safe_open(str(path / "model.safetensors"), framework="pt") as f:
            aliases = json.loads((f.metadata() or {}).get("aliases", "{}"))
        for k, src in aliases.items():
            weights[k] = weights[src]
        model.load_state_dict(weights, strict=strict)
    if optimizer is not None or scaler is not None or rank is not None:
        from safetensors import safe_open

        tp = path / "trainer.safetensors"
        tensors = load_file(str(tp))
        with safe_open(str(tp), framework="pt") as f:
            meta = json.loads(f.metadata()["trainer"])
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
    cfg["path"] = str(path)
    return cfg


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


def point(run_dir: str | os.PathLike, name: str, target: pathlib.Path) -> None:
    """Atomically set pointer ``name`` (``LATEST``/``BEST``) of a run to ``target``."""
    _atomic_write_text(pathlib.Path(run_dir) / name, target.name + "\n")
