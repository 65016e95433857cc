"""One small training loop for every model of the zoo.

``fit`` calls ``model.loss(batch)`` (a dict of named terms, the total under ``"loss"``), backprops
the total, and takes care of the rest: seeded data order, AMP on CUDA, progress with the loss
terms, TensorBoard, validation and early stopping, atomic safetensors checkpoints with bit-exact
resume, and DistributedDataParallel when launched by ``torchrun``.

Models may define the hooks ``on_train_begin(loader)`` (before the first step of a run that has
epochs left; Deep SVDD sets its centre) and ``on_epoch_end(epoch, loader)`` (after each training
epoch, ``epoch`` from 0; Deep SVDD's radius update). ``loader`` iterates the training set in batches
of ``batch_size`` (unshuffled, this rank's shard, on the CPU). Two more hooks run inside every step,
without arguments: ``on_before_optimizer_step()`` after the backward pass (and after
``GradScaler.unscale_`` when float16 loss scaling is on, so it sees the true gradients), before
gradient clipping and the optimizer step (e.g. projecting out the gradient component along
unit-norm decoder rows), and ``on_after_optimizer_step()`` right after the optimizer step (e.g.
renormalising those rows). All four are optional; ``fit`` looks them up once per run.

A step reads nothing back from the device: the loss terms stay on the device and are read once per
log point (every ``log_every`` steps and at the end of each epoch), where the progress bar, the
TensorBoard step scalars and the non-finite-loss check (which names the exact step) are served.
``sync_debug="error"`` makes any synchronisation inside a step an error (see ``pyaeplus._sync``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import pathlib
import random
import shutil
from collections.abc import Mapping
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from . import _sync
from . import checkpoint as ckpt
from ._validate import choice, integer, not_meta, number
from .data.base import as_dataset
from .runtime import dist as rdist
from .runtime.batches import first, loader, read_batch
from .runtime.devices import resolve_device

__all__ = ["fit", "run", "FitConfig", "FitResult", "OPTIMIZERS"]

OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "sgd": lambda params, lr, **kw: torch.optim.SGD(params, lr=lr, **{"momentum": 0.9, **kw}),
    "rmsprop": torch.optim.RMSprop,
}


@dataclasses.dataclass
class FitResult:
    """What ``fit`` returns.

    Attributes:
        model: the trained model (best validation weights when early stopping restored them).
        history: one dict per epoch: ``{"epoch", "step", "train": {term: mean}, "val": {term: mean} | None}``.
        best_epoch: epoch (0-based) of the lowest validation loss, or None without validation.
        best_val_loss: that loss, or None.
        stopped_early: True when early stopping ended the run before ``epochs``.
        checkpoint: the last checkpoint folder written, or None.
    """

    model: nn.Module
    history: list[dict[str, Any]]
    best_epoch: int | None = None
    best_val_loss: float | None = None
    stopped_early: bool = False
    checkpoint: pathlib.Path | None = None


# ---- batches -------------------------------------------------------------------------------

def _to(batch, device: torch.device, pin: bool = False):
    if isinstance(batch, torch.Tensor):
        if pin and batch.device.type == "cpu":
            batch = batch.pin_memory()
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to(b, device, pin) for b in batch)
    if isinstance(batch, dict):
        return {k: _to(v, device, pin) for k, v in batch.items()}
    return batch


def _epoch_order(n: int, seed: int, epoch: int, shuffle: bool) -> torch.Tensor:
    # The order depends on (seed, epoch) only, not on RNG state: a resumed run sees the same batches.
    if not shuffle:
        return torch.arange(n)
    g = torch.Generator().manual_seed((seed * 1_000_003 + epoch) % (2**63))
    return torch.randperm(n, generator=g)


def _global_batches(n, batch_size, seed, epoch, shuffle, drop_last, batch_sampler) -> list[torch.Tensor]:
    if batch_sampler is not None:
        if hasattr(batch_sampler, "set_epoch"):
            batch_sampler.set_epoch(epoch)
        return [_batch_ids(b, n) for b in batch_sampler]
    order = _epoch_order(n, seed, epoch, shuffle)
    out = list(order.split(batch_size))
    if drop_last and out and out[-1].numel() < batch_size:
        out.pop()
    return out


def _batch_ids(b, n: int) -> torch.Tensor:
    """One batch of a ``batch_sampler`` as int64 row ids, each an integer in [0, n)."""
    t = b if isinstance(b, torch.Tensor) else torch.as_tensor(list(b))
    if t.numel() == 0:
        return t.to(torch.int64).reshape(-1)
    if t.dtype == torch.bool or t.is_floating_point() or t.is_complex():
        raise TypeError(f"batch_sampler must yield integer row ids, got a batch of dtype "
                        f"{str(t.dtype).replace('torch.', '')}: {t.reshape(-1)[:5].tolist()}")
    t = t.to(torch.int64).reshape(-1)
    lo, hi = int(t.min()), int(t.max())
    if lo < 0 or hi >= n:
        raise ValueError(f"batch_sampler yielded row id {lo if lo < 0 else hi}, outside [0, {n}) (the training set "
                         f"has {n} rows)")
    return t


def _shard(batches: list[torch.Tensor], rank: int, world: int) -> list[tuple[torch.Tensor, int]]:
    """This rank's part of each global batch, with the global batch size (for loss rescaling).
    Global batches smaller than ``world`` are dropped (some rank would have nothing to do)."""
    out = []
    for b in batches:
        if b.numel() < world:
            continue
        out.append((torch.tensor_split(b, world)[rank], b.numel()))
    return out


# ---- model wrapper -------------------------------------------------------------------------

class _LossModule(nn.Module):
    """``forward(batch) -> dict of terms``: DDP must see the loss computation as the wrapped
    module's forward to synchronise gradients."""

    def __init__(self, model: nn.Module, loss_fn: Callable | None):
        super().__init__()
        self.model, self.loss_fn = model, loss_fn

    def forward(self, batch):
        out = self.loss_fn(self.model, batch) if self.loss_fn is not None else self.model.loss(batch)
        if isinstance(out, torch.Tensor):
            out = {"loss": out}
        if not isinstance(out, dict) or "loss" not in out:
            raise TypeError("the loss must return a tensor or a dict of tensors with the total under 'loss', got "
                            f"{type(out).__name__}{' with keys ' + str(list(out)) if isinstance(out, dict) else ''}")
        return out


def _mse_loss(model: nn.Module, batch) -> dict[str, torch.Tensor]:
    x = first(batch)
    r = nn.functional.mse_loss(model(x).float(), x.float())
    return {"loss": r, "recon": r.detach()}


# ---- distributed ---------------------------------------------------------------------------

def _resolve_device(device, world: int) -> torch.device:
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) if world > 1 else torch.cuda.current_device())
        return torch.device("cpu")
    return resolve_device(device)


def _allreduce_terms(sums: dict[str, float], count: float, device: torch.device | None = None) -> dict[str, float]:
    """The means of the terms over every rank's rows (one collective under DDP)."""
    keys = sorted(sums)
    *vals, count = rdist.all_reduce_sum([sums[k] for k in keys] + [count], device)
    return {k: v / max(count, 1.0) for k, v in zip(keys, vals)}


def _amp_dtype(amp, device: torch.device) -> torch.dtype | None:
    if amp is False or amp is None:
        return None
    if amp is True:
        # CPU autocast (bfloat16) is slower than float32 on most CPUs and loses precision: off there.
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}[amp]


# ---- fit -----------------------------------------------------------------------------------

_AMP = (True, False, None, "bf16", "bfloat16", "fp16", "float16")


@dataclasses.dataclass(frozen=True)
class FitConfig:
    """The arguments of :func:`fit` (see there), checked once when the object is made: a bad value
    raises ``ValueError``/``TypeError`` naming the argument before anything runs. ``fit`` builds it
    from its keywords; the training loop reads nothing else."""

    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    optimizer: str = "adam"
    optimizer_kwargs: dict | None = None
    weight_decay: float = 0.0
    loss: Callable | None = None
    amp: bool | str = True
    device: str | torch.device = "auto"
    seed: int = 0
    checkpoint_dir: str | os.PathLike | None = None
    resume: bool | str = False
    log_dir: str | os.PathLike | None = None
    progress: bool = True
    patience: int | None = None
    min_delta: float = 0.0
    restore_best: bool = True
    batch_sampler: Any = None
    shuffle: bool = True
    drop_last: bool = False
    num_workers: int = 0
    grad_clip: float | None = None
    keep_checkpoints: int = 2
    on_step: Callable[[int, Mapping[str, float]], None] | None = None
    metadata: dict[str, Any] | None = None
    log_every: int = 50
    sync_debug: str | None = None

    def __post_init__(self) -> None:
        def put(name, value):
            object.__setattr__(self, name, value)

        if self.loss is not None and not callable(self.loss):
            raise TypeError(f"loss must be callable(model, batch), got {type(self.loss).__name__}")
        for name in ("epochs", "batch_size"):
            put(name, integer(name, getattr(self, name), lo=1))
        put("lr", number("lr", self.lr, positive=True))
        put("weight_decay", number("weight_decay", self.weight_decay, nonnegative=True))
        choice("optimizer", self.optimizer, OPTIMIZERS)
        put("optimizer_kwargs", dict(self.optimizer_kwargs or {}))
        put("seed", integer("seed", self.seed, lo=0))
        put("num_workers", integer("num_workers", self.num_workers, lo=0))
        put("keep_checkpoints", integer("keep_checkpoints", self.keep_checkpoints, lo=1))
        put("log_every", integer("log_every", self.log_every, lo=1))
        choice("sync_debug", self.sync_debug, _sync.MODES)
        if self.amp not in _AMP:
            raise ValueError(f"amp must be True, False, 'bf16' or 'fp16', got {self.amp!r}")
        if self.patience is not None:
            put("patience", integer("patience", self.patience, lo=1))
        put("min_delta", number("min_delta", self.min_delta, nonnegative=True))
        if self.grad_clip is not None:
            put("grad_clip", number("grad_clip", self.grad_clip, positive=True))
        if self.resume not in (True, False, "fallback"):
            raise ValueError(f"resume must be True, False or 'fallback', got {self.resume!r}")
        if self.resume and self.checkpoint_dir is None:
            raise ValueError("resume=True needs checkpoint_dir")
        if self.checkpoint_dir is not None:
            put("checkpoint_dir", pathlib.Path(self.checkpoint_dir))

    def record(self, amp_dtype: torch.dtype | None) -> dict[str, Any]:
        """The arguments a checkpoint records (``config.json`` ``training.fit``)."""
        keys = ("epochs", "batch_size", "lr", "optimizer", "weight_decay", "seed", "shuffle", "drop_last")
        return {**{k: getattr(self, k) for k in keys},
                "amp": None if amp_dtype is None else str(amp_dtype).replace("torch.", ""), "grad_clip": self.grad_clip}


def fit(model: nn.Module, train_data, *, epochs: int = 10, batch_size: int = 128, lr: float = 1e-3,
        optimizer: str = "adam", optimizer_kwargs: dict | None = None, weight_decay: float = 0.0,
        loss: Callable | None = None, val_data=None, amp: bool | str = True, device: str | torch.device = "auto",
        seed: int = 0, checkpoint_dir: str | os.PathLike | None = None, resume: bool | str = False,
        log_dir: str | os.PathLike | None = None, progress: bool = True, patience: int | None = None,
        min_delta: float = 0.0, restore_best: bool = True, batch_sampler=None, shuffle: bool = True,
        drop_last: bool = False, num_workers: int = 0, grad_clip: float | None = None,
        keep_checkpoints: int = 2, on_step: Callable[[int, Mapping[str, float]], None] | None = None,
        metadata: dict[str, Any] | None = None, log_every: int = 50, sync_debug: str | None = None) -> FitResult:
    """Train ``model`` on ``train_data``.

    Args:
        model: an ``nn.Module`` with ``loss(batch) -> dict`` (total under ``"loss"``), or any module
            whose ``forward(x)`` reconstructs ``x`` (MSE is used then), or pass ``loss``.
        train_data: a Dataset (items ``x`` or ``(x, y)`` / ``(x, idx)``; ``get_batch`` used when present)
            or a float tensor/array of samples (N, ...).
        epochs: total number of epochs (a resumed run continues up to this number).
        batch_size: global batch size (split across ranks under ``torchrun``; must divide by the world size).
        lr: learning rate.
        optimizer: ``"adam"``, ``"adamw"``, ``"sgd"`` (momentum 0.9) or ``"rmsprop"``.
        optimizer_kwargs: extra optimizer arguments (betas, momentum ...).
        weight_decay: passed to the optimizer.
        loss: optional ``loss(model, batch) -> dict | Tensor`` replacing ``model.loss``.
        val_data: validation data (same forms as ``train_data``): its mean ``"loss"`` drives early
            stopping and the ``BEST`` checkpoint.
        amp: mixed precision. True: bfloat16 autocast on CUDA (float16 + GradScaler where bf16 is not
            supported), off on CPU; ``"bf16"``/``"fp16"`` force one; False off.
        device: ``"auto"`` (CUDA when present; ``LOCAL_RANK`` under torchrun), or a device.
        seed: seeds torch/numpy/random (rank-offset under DDP) and the per-epoch data order.
        checkpoint_dir: folder for checkpoints (``epoch-NNNN/`` each epoch, ``LATEST``/``BEST`` pointers).
        resume: True: continue from ``checkpoint_dir``'s LATEST checkpoint when there is one (weights,
            optimizer, scaler, RNG states, data position, history, early-stopping state): the result
            is bit-identical to an uninterrupted run. A LATEST checkpoint that cannot be used (missing,
            no ``config.json``, a tensor file not matching its checksum) raises
            ``pyaeplus.checkpoint.CorruptCheckpointError`` saying why, before any training.
            ``"fallback"``: continue from the newest checkpoint of the run that is intact instead
            (warning about those skipped; from scratch when none is). False: start over.
        log_dir: TensorBoard folder (scalars per epoch and step, reconstruction images); needs the
            ``tensorboard`` package (checked before training starts).
        progress: tqdm bar with the running loss terms (rank 0 only).
        patience: stop after this many epochs without a validation improvement > ``min_delta``
            (None: never stop early; needs ``val_data``).
        min_delta: minimum decrease of the validation loss that counts as an improvement.
        restore_best: at the end of a run with validation, load the best epoch's weights.
        batch_sampler: a sampler yielding lists of indices per batch (e.g.
            ``pyaeplus.graph.NeighborBatchSampler``); its ``set_epoch`` is called each epoch. Ids
            must be integers in ``[0, len(train_data))`` (checked each epoch before its first step).
            Replaces ``batch_size``/``shuffle`` for training.
        shuffle: shuffle the training set each epoch (seeded by ``seed`` and the epoch).
        drop_last: drop the last incomplete batch.
        num_workers: DataLoader worker processes fetching whole batches.
        grad_clip: clip the global gradient norm to this value.
        keep_checkpoints: how many ``epoch-NNNN`` folders to keep (the BEST one is always kept).
        on_step: ``on_step(step, terms)`` after each optimizer step (rank 0 and others alike); ``terms``
            maps each term to a float, read from the device when first looked at (a callback that
            does not look costs no synchronisation).
        metadata: JSON-able dict stored in each checkpoint's ``config.json`` under ``"metadata"``
            (e.g. the data spec and the fitted normalization, to score with the same preprocessing).
        log_every: steps between log points, where the loss terms are read from the device (one
            transfer), checked for NaN/Inf, shown in the progress bar and written to TensorBoard;
            the end of each epoch is a log point too. Between log points a step never waits for
            the device.
        sync_debug: ``None``, ``"warn"`` or ``"error"``: check that the steps never synchronise with
            the device (CUDA: ``torch.cuda.set_sync_debug_mode`` around the steps, log points
            excluded; CPU: every host read of a tensor outside the optimizer's step is flagged).

    Returns:
        FitResult (model, per-epoch history, best epoch/loss, whether it stopped early, last checkpoint).

    Raises:
        ValueError / TypeError: bad arguments (named); ModuleNotFoundError: ``log_dir`` without tensorboard;
        FloatingPointError: the loss became NaN/Inf (epoch and step named; raised at the next log point,
            so the weights are those of up to ``log_every - 1`` steps later).
    """
    args = dict(locals())  # the keywords, into FitConfig below (first line: nothing else is local yet)
    del args["model"], args["train_data"], args["val_data"]
    # ---- arguments (all checked before anything runs) ----
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if loss is None and not hasattr(model, "loss"):
        args["loss"] = _mse_loss
    cfg = FitConfig(**args)
    if cfg.patience is not None and val_data is None:
        raise ValueError("patience (early stopping) needs val_data")
    _check_not_meta(model, train_data, val_data)
    train_ds = as_dataset(train_data)
    val_ds = as_dataset(val_data) if val_data is not None else None
    if len(train_ds) == 0:
        raise ValueError("train_data is empty")
    if val_ds is not None and len(val_ds) == 0:
        raise ValueError("val_data is empty")
    _tensorboard(cfg.log_dir)

    rank, world, own_pg = rdist.setup(cfg.device)
    try:
        dev = _resolve_device(cfg.device, world)
        if world > 1 and cfg.batch_sampler is None and cfg.batch_size % world:
            raise ValueError(f"batch_size ({cfg.batch_size}) must be divisible by the world size ({world})")
        return _fit(model, train_ds, val_ds, cfg, rank, world, dev)
    finally:
        if own_pg:
            rdist.destroy()


def _tensorboard(log_dir):
    """TensorBoard's SummaryWriter class when ``log_dir`` is given (checked before training starts)."""
    if log_dir is None:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        raise ModuleNotFoundError("log_dir needs TensorBoard: pip install tensorboard (or pass log_dir=None)") from e
    return SummaryWriter


def _check_not_meta(model: nn.Module, train_data, val_data) -> None:
    not_meta("train_data", train_data)
    not_meta("val_data", val_data)
    meta = next((name for name, p in model.named_parameters() if p.is_meta), None)
    if meta is not None:
        not_meta(f"model parameter {meta!r}", model.get_parameter(meta))


def _seed_all(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))
    random.seed(seed)


def _resume_from(start, model, opt, scaler, rank: int, world: int, epochs: int) -> "_Progress":
    """The progress saved in checkpoint ``start`` (verified by ``checkpoint.resume_point``; weights,
    optimizer, scaler and RNG states loaded), or a fresh run's when it is None."""
    if start is None:
        return _Progress()
    cfg = ckpt.load_checkpoint(start, model, optimizer=opt, scaler=scaler, rank=rank, verify=False)
    tr = cfg.get("training")
    if not isinstance(tr, dict):
        raise ValueError(f"cannot resume from {start}: it holds no training state (saved by save_checkpoint, "
                         "not by fit); pass resume=False to start over")
    if tr["world_size"] != world:
        raise ValueError(f"the checkpoint was written by {tr['world_size']} process(es); resuming with {world} "
                         "would change the data order and RNG streams")
    best_val = math.inf if tr["best_val_loss"] is None else tr["best_val_loss"]
    # a run that had ended by early stopping has nothing left to do
    start_epoch = epochs if tr.get("stopped_early") else tr["epoch"] + 1
    return _Progress(start_epoch=start_epoch, step=tr["step"], history=tr["history"], best_val=best_val,
                     best_epoch=tr["best_epoch"], bad_epochs=tr["bad_epochs"])


@dataclasses.dataclass
class _Loop:
    """What the step loop needs, built once per ``fit`` (the hooks are looked up here, not per step)."""

    model: nn.Module
    net: nn.Module
    opt: torch.optim.Optimizer
    scaler: Any
    device: torch.device
    amp_dtype: torch.dtype | None
    rank: int
    world: int
    grad_clip: float | None
    on_step: Callable | None
    writer: Any
    progress: bool
    log_every: int
    num_workers: int
    guard: _sync.Guard
    before_opt: Callable[[], None] | None = None
    after_opt: Callable[[], None] | None = None

    @property
    def pin(self) -> bool:
        return self.device.type == "cuda"

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)


def _make_optimizer(name: str, model: nn.Module, lr: float, weight_decay: float, kwargs: dict,
                    device: torch.device) -> torch.optim.Optimizer:
    """The optimizer; unless ``kwargs`` choose an implementation, Adam/AdamW run fused (one kernel per
    parameter instead of ~10 Python-issued ops, CPU and CUDA alike) and the others as foreach ops.
    Same update rule: the per-step overhead of a small model is what this removes."""
    kw = dict(kwargs)
    params = list(model.parameters())
    if "fused" not in kw and "foreach" not in kw and params:
        if name in ("adam", "adamw") and device.type in ("cpu", "cuda") and \
                all(p.is_floating_point() and p.device == params[0].device for p in params):
            kw["fused"] = True
        elif name in ("sgd", "rmsprop"):
            kw["foreach"] = True
    try:
        return OPTIMIZERS[name](params, lr=lr, weight_decay=weight_decay, **kw)
    except RuntimeError:
        if "fused" in kwargs or "fused" not in kw:
            raise
        # a torch without this fused kernel: the default implementation, same update rule
        return OPTIMIZERS[name](params, lr=lr, weight_decay=weight_decay, **kwargs)


def _model_hooks(model: nn.Module) -> dict[str, Callable[[], None] | None]:
    hooks = {}
    for key, name in (("before_opt", "on_before_optimizer_step"), ("after_opt", "on_after_optimizer_step")):
        h = getattr(model, name, None)
        hooks[key] = h if callable(h) else None
    return hooks


@dataclasses.dataclass
class _Progress:
    """Where a run stands: what a checkpoint saves and a resumed run continues from."""

    start_epoch: int = 0
    step: int = 0
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    best_val: float = math.inf
    best_epoch: int | None = None
    bad_epochs: int = 0
    stopped_early: bool = False
    best_state: dict[str, torch.Tensor] | None = None
    last_ckpt: pathlib.Path | None = None

    @property
    def best_val_loss(self) -> float | None:
        return None if self.best_val == math.inf else self.best_val

    def training_state(self, epoch: int, world: int, cfg: FitConfig, amp_dtype) -> dict[str, Any]:
        return {"epoch": epoch, "step": self.step, "history": self.history, "world_size": world,
                "best_val_loss": self.best_val_loss, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs,
                "stopped_early": self.stopped_early, "fit": cfg.record(amp_dtype)}


def _fit(model: nn.Module, train_ds, val_ds, cfg: FitConfig, rank: int, world: int, device: torch.device) -> FitResult:
    """The loop: set up (or resume), then per epoch train, evaluate, early-stop, checkpoint."""
    lp, st = _setup(model, val_ds, cfg, rank, world, device)
    if st.start_epoch < cfg.epochs:
        _call_hook(model, "on_train_begin", lambda: _hook_loader(lp, train_ds, cfg))
    for epoch in range(st.start_epoch, cfg.epochs):
        train_terms = _epoch(lp, train_ds, cfg, st, epoch)
        val_terms = _evaluate(lp, val_ds, cfg.batch_size) if val_ds is not None else None
        st.history.append({"epoch": epoch, "step": st.step, "train": train_terms, "val": val_terms})
        improved = _early_stopping(st, cfg, model, epoch, val_terms)
        _log_epoch(lp, epoch, cfg.epochs, train_terms, val_terms, val_ds if val_ds is not None else train_ds)
        if cfg.checkpoint_dir is not None:
            st.last_ckpt = _checkpoint(lp, cfg, st, epoch, improved) or st.last_ckpt
        if st.stopped_early:
            break
    if lp.writer is not None:
        lp.writer.close()
    if cfg.restore_best and st.best_state is not None:
        model.load_state_dict(st.best_state)
    return FitResult(model=model, history=st.history, best_epoch=st.best_epoch, best_val_loss=st.best_val_loss,
                     stopped_early=st.stopped_early, checkpoint=st.last_ckpt)


def _setup(model: nn.Module, val_ds, cfg: FitConfig, rank: int, world: int, device: torch.device):
    """(the step loop's context, the run's progress): the optimizer, the scaler, the seeds, the
    checkpoint to resume from (weights, optimizer, RNG states, progress), then the DDP wrapper."""
    model.to(device)
    opt = _make_optimizer(cfg.optimizer, model, cfg.lr, cfg.weight_decay, cfg.optimizer_kwargs, device)
    amp_dtype = _amp_dtype(cfg.amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=True) if amp_dtype == torch.float16 else None
    _seed_all(cfg.seed + rank)
    start = ckpt.resume_point(cfg.checkpoint_dir, fallback=cfg.resume == "fallback") if cfg.resume else None
    st = _resume_from(start, model, opt, scaler, rank, world, cfg.epochs)
    st.last_ckpt = start if start is not None else (
        ckpt.latest_checkpoint(cfg.checkpoint_dir) if cfg.checkpoint_dir is not None else None)
    if cfg.restore_best and val_ds is not None and cfg.checkpoint_dir is not None and st.best_epoch is not None:
        st.best_state = _saved_best(cfg.checkpoint_dir, model)  # a resumed run keeps the best weights it had found

    net: nn.Module = _LossModule(model, cfg.loss)
    if world > 1:
        net = nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    writer_cls = _tensorboard(cfg.log_dir)
    lp = _Loop(model=model, net=net, opt=opt, scaler=scaler, device=device, amp_dtype=amp_dtype, rank=rank,
               world=world, grad_clip=cfg.grad_clip, on_step=cfg.on_step, progress=cfg.progress,
               log_every=cfg.log_every, num_workers=cfg.num_workers, guard=_sync.Guard(cfg.sync_debug, device),
               writer=writer_cls(log_dir=str(cfg.log_dir)) if writer_cls is not None and rank == 0 else None,
               **_model_hooks(model))
    return lp, st


def _call_hook(model: nn.Module, name: str, *args) -> None:
    """``model.<name>(*args)`` when the model has that hook; a callable argument is called first
    (so that a model without the hook costs no loader)."""
    hook = getattr(model, name, None)
    if callable(hook):
        hook(*(a() if callable(a) else a for a in args))  # models guard against re-initialising


def _hook_loader(lp: _Loop, train_ds, cfg: FitConfig):
    """What the model hooks iterate: this rank's shard of the training set, unshuffled, on the CPU."""
    local = rdist.local_rows(len(train_ds), lp.rank, lp.world)
    return loader(train_ds, list(local.split(cfg.batch_size)), num_workers=cfg.num_workers, pin=lp.pin)


def _epoch(lp: _Loop, train_ds, cfg: FitConfig, st: _Progress, epoch: int) -> dict[str, float]:
    """One training epoch (this rank's part of each global batch) and the ``on_epoch_end`` hook."""
    lp.model.train()
    batches = _shard(_global_batches(len(train_ds), cfg.batch_size, cfg.seed, epoch, cfg.shuffle, cfg.drop_last,
                                     cfg.batch_sampler), lp.rank, lp.world)
    terms, st.step = _train_epoch(lp, train_ds, batches, epoch, cfg.epochs, st.step)
    _call_hook(lp.model, "on_epoch_end", epoch, lambda: _hook_loader(lp, train_ds, cfg))
    return terms


def _early_stopping(st: _Progress, cfg: FitConfig, model: nn.Module, epoch: int, val_terms: dict | None) -> bool:
    """Track the best validation loss (and its weights with ``restore_best``); set ``stopped_early``
    after ``patience`` epochs without an improvement. Returns whether this epoch improved."""
    if val_terms is None:
        return False
    improved = val_terms["loss"] < st.best_val - cfg.min_delta
    if improved:
        st.best_val, st.best_epoch, st.bad_epochs = val_terms["loss"], epoch, 0
        if cfg.restore_best:
            st.best_state = {k: t.detach().clone() for k, t in model.state_dict().items()}
    else:
        st.bad_epochs += 1
    if cfg.patience is not None and st.bad_epochs >= cfg.patience:
        st.stopped_early = epoch + 1 < cfg.epochs
    return improved


def _checkpoint(lp: _Loop, cfg: FitConfig, st: _Progress, epoch: int, improved: bool) -> pathlib.Path | None:
    state = {"training": st.training_state(epoch, lp.world, cfg, lp.amp_dtype), "metadata": cfg.metadata}
    return _save_epoch(lp, cfg.checkpoint_dir, epoch, cfg.optimizer, state, improved, cfg.keep_checkpoints)


def _saved_best(checkpoint_dir: pathlib.Path, model: nn.Module) -> dict[str, torch.Tensor] | None:
    bp = ckpt.best_checkpoint(checkpoint_dir)
    if bp is None:
        return None
    tmp = {k: v.clone() for k, v in model.state_dict().items()}
    ckpt.load_checkpoint(bp, model)
    best = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.load_state_dict(tmp)
    return best


def _save_epoch(lp: _Loop, checkpoint_dir: pathlib.Path, epoch: int, optimizer: str, state: dict, improved: bool,
                keep: int) -> pathlib.Path | None:
    """Rank 0 writes ``epoch-NNNN/`` and moves the pointers; every rank takes part in the RNG gather."""
    rng = rdist.all_gather_object(ckpt.rng_state(), lp.world)  # collective: every rank takes part
    path = None
    if lp.rank == 0:
        path = ckpt.save_checkpoint(checkpoint_dir / f"epoch-{epoch + 1:04d}", lp.model, optimizer=lp.opt,
                                    optimizer_name=optimizer, scaler=lp.scaler, rng=rng, state=state)
        ckpt.point(checkpoint_dir, "LATEST", path)
        if improved:
            ckpt.point(checkpoint_dir, "BEST", path)
        _prune(checkpoint_dir, keep)
    rdist.barrier()
    return path


def _log_epoch(lp: _Loop, epoch: int, epochs: int, train_terms: dict, val_terms: dict | None, image_ds) -> None:
    """The end-of-epoch line (rank 0, with ``progress``) and the TensorBoard epoch scalars and images."""
    from tqdm.auto import tqdm

    if lp.rank == 0 and lp.progress:
        msg = " ".join(f"{k}={v:.4g}" for k, v in train_terms.items())
        if val_terms is not None:
            msg += " | val " + " ".join(f"{k}={v:.4g}" for k, v in val_terms.items())
        tqdm.write(f"epoch {epoch + 1}/{epochs}: {msg}")
    w = lp.writer
    if w is not None:
        for k, v in train_terms.items():
            w.add_scalar(f"train/{k}", v, epoch + 1)
        for k, v in (val_terms or {}).items():
            w.add_scalar(f"val/{k}", v, epoch + 1)
        w.add_scalar("lr", lp.opt.param_groups[0]["lr"], epoch + 1)
        _log_images(w, lp.model, image_ds, lp.device, epoch + 1)
        w.flush()


# ---- the step loop -------------------------------------------------------------------------

class _Terms(Mapping):
    """``on_step``'s view of one step's terms: term -> float, read from the device on first access
    (one transfer for all terms), so a callback that does not look costs no synchronisation."""

    def __init__(self, keys: tuple[str, ...], row: torch.Tensor):
        self._keys, self._row, self._vals = keys, row, None

    def _values(self) -> dict[str, float]:
        if self._vals is None:
            self._vals = dict(zip(self._keys, self._row.tolist()))
        return self._vals

    def __getitem__(self, k: str) -> float:
        return self._values()[k]

    def __iter__(self):
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:
        return repr(self._values())


class _TermLog:
    """The loss terms of one pass, kept on the device: one stacked row per step, read in one
    transfer at each log point. The read is the loop's only device-to-host copy; it checks the
    total of every step since the previous read and names the first non-finite one."""

    def __init__(self, epoch: int, step: int, n_batches: int, check: bool = True):
        self.epoch, self.step, self.n_batches, self.check = epoch, step, n_batches, check
        self.keys: tuple[str, ...] | None = None
        self.rows: list[torch.Tensor] = []
        self.weights: list[int] = []
        self.done = 0  # batches read so far
        self.sums: dict[str, float] = {}
        self.count = 0.0

    def record(self, terms: dict, n: int) -> torch.Tensor:
        keys = tuple(k for k, v in terms.items() if isinstance(v, torch.Tensor))
        if self.keys is None:
            self.keys = keys
        elif keys != self.keys:
            raise TypeError(f"the loss returned the terms {list(keys)} at epoch {self.epoch}, batch "
                            f"{self.done + len(self.rows) + 1}, but {list(self.keys)} before; return the same terms "
                            "every step")
        dev = terms["loss"].device if isinstance(terms.get("loss"), torch.Tensor) else None
        row = torch.stack([(v.detach() if v.dim() == 0 else v.detach().float().mean()).to(dev or v.device)
                           for v in (terms[k] for k in keys)])
        self.rows.append(row)
        self.weights.append(n)
        return row

    @property
    def pending(self) -> int:
        return len(self.rows)

    def read(self, writer=None) -> None:
        """Fold the pending rows into the sums (float64, in step order), write the step scalars."""
        if not self.rows:
            return
        vals = torch.stack(self.rows).double().cpu().tolist()  # the one synchronisation
        li = self.keys.index("loss") if self.check and "loss" in self.keys else None
        for j, (row, n) in enumerate(zip(vals, self.weights)):
            if li is not None and not math.isfinite(row[li]):
                b = self.done + j + 1
                raise FloatingPointError(
                    f"the loss is {row[li]} at epoch {self.epoch}, step {self.step + b} (batch {b} of "
                    f"{self.n_batches} of the epoch); lower lr, enable grad_clip or check the data for NaN")
            for k, v in zip(self.keys, row):
                self.sums[k] = self.sums.get(k, 0.0) + v * n
            self.count += n
            if writer is not None:
                for k, v in zip(self.keys, row):
                    writer.add_scalar(f"step/{k}", v, self.step + self.done + j + 1)
        self.done += len(self.rows)
        self.rows, self.weights = [], []

    def means(self) -> dict[str, float]:
        return {k: self.sums[k] / self.count for k in sorted(self.sums)}


def _iter_batches(ds, batches: list[torch.Tensor], lp: _Loop):
    """The batches of ``ds`` on ``lp.device``. Without workers they are read in this process, without a
    DataLoader around them (``get_batch`` when the dataset has it); on CUDA through pinned memory with
    non-blocking copies (a copy from pageable memory would wait for the device). A DataLoader's
    iterator is created here, before the steps (it draws its base seed with ``.item()``)."""
    if lp.num_workers > 0:
        source = iter(loader(ds, batches, num_workers=lp.num_workers, pin=lp.pin))  # the loader pins
    else:
        source = (read_batch(ds, idx) for idx in batches)
    if lp.device.type == "cpu":
        return source
    pin = lp.pin and lp.num_workers == 0
    return (_to(b, lp.device, pin) for b in source)


def _step(lp: _Loop, batch, n_local: int, n_global: int) -> dict:
    """One optimizer step on ``batch``; returns the loss terms (on the device, nothing read)."""
    with lp.autocast():
        terms = lp.net(batch)
    total = terms["loss"]
    # DDP averages gradients over ranks; weighting each rank's mean by its share of the
    # global batch makes that average the global batch mean even when shards differ in size.
    scaled = total.float() * (lp.world * n_local / n_global) if lp.world > 1 else total.float()
    if lp.scaler is not None:
        lp.scaler.scale(scaled).backward()
        if lp.grad_clip is not None or lp.before_opt is not None:
            lp.scaler.unscale_(lp.opt)  # hooks and clipping see the true gradients
    else:
        scaled.backward()
    if lp.before_opt is not None:
        lp.before_opt()
    if lp.grad_clip is not None:
        nn.utils.clip_grad_norm_(lp.model.parameters(), lp.grad_clip)
    with lp.guard.optimizer_step():
        if lp.scaler is not None:
            lp.scaler.step(lp.opt)
            lp.scaler.update()
        else:
            lp.opt.step()
    if lp.after_opt is not None:
        lp.after_opt()
    lp.opt.zero_grad(set_to_none=True)
    return terms


def _train_epoch(lp: _Loop, ds, batches: list[tuple[torch.Tensor, int]], epoch: int, epochs: int,
                 step: int) -> tuple[dict[str, float], int]:
    """One epoch of steps. Nothing is read from the device between log points (every ``log_every``
    steps and the epoch's end): there the terms are read once, the loss checked, the progress bar
    and the TensorBoard step scalars updated. Returns (epoch means of the terms, global step)."""
    from tqdm.auto import tqdm

    log = _TermLog(epoch, step, len(batches))
    bar = tqdm(total=len(batches), desc=f"epoch {epoch + 1}/{epochs}", disable=not lp.progress or lp.rank != 0,
               leave=False, dynamic_ncols=True)
    it = _iter_batches(ds, [b for b, _ in batches], lp)
    try:
        with lp.guard:
            for i, ((idx, n_global), batch) in enumerate(zip(batches, it)):
                terms = _step(lp, batch, idx.numel(), n_global)
                row = log.record(terms, idx.numel())
                if lp.on_step is not None:
                    with lp.guard.paused():
                        lp.on_step(step + i + 1, _Terms(log.keys, row))
                bar.update(1)
                if log.pending >= lp.log_every or i + 1 == len(batches):
                    with lp.guard.paused():
                        _read_log(lp, log, bar)
    finally:
        bar.close()
    return _allreduce_terms(log.sums, log.count, lp.device), step + len(batches)


def _read_log(lp: _Loop, log: _TermLog, bar) -> None:
    """A log point: read the pending terms; under DDP every rank learns of a non-finite loss on any
    rank here (so none is left waiting in a collective), and raises the same error."""
    err = None
    try:
        log.read(lp.writer)
    except FloatingPointError as e:
        err = e
    if lp.world > 1 and rdist.any_rank(err is not None, lp.device):
        if err is None:
            err = FloatingPointError(f"the loss became non-finite on another rank at epoch {log.epoch} "
                                     f"(by step {log.step + log.done + log.pending})")
    if err is not None:
        raise err
    if not bar.disable and log.count:
        bar.set_postfix({k: f"{v:.4g}" for k, v in log.means().items()}, refresh=False)


@torch.no_grad()
def _evaluate(lp: _Loop, ds, batch_size: int) -> dict[str, float]:
    """Mean terms over ``ds`` (this rank's shard, then all-reduced), read from the device once."""
    inner = lp.net.module if isinstance(lp.net, nn.parallel.DistributedDataParallel) else lp.net
    was = inner.model.training
    inner.model.eval()
    batches = list(rdist.local_rows(len(ds), lp.rank, lp.world).split(batch_size))
    log = _TermLog(-1, 0, len(batches), check=False)
    try:
        for idx, batch in zip(batches, _iter_batches(ds, batches, lp)):
            with lp.autocast():
                log.record(inner(batch), idx.numel())  # the unwrapped module: no DDP sync in eval
        log.read()
    finally:
        inner.model.train(was)
    return _allreduce_terms(log.sums, log.count, lp.device)


@torch.no_grad()
def _log_images(writer, model, ds, device, epoch: int, n: int = 8) -> None:
    """Inputs (top row) and reconstructions (bottom row) of the first ``n`` samples, for image data."""
    idx = torch.arange(min(n, len(ds)))
    x = first(read_batch(ds, idx)).to(device)
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        return
    was = model.training
    model.eval()
    try:
        r = model(x)
    finally:
        model.train(was)
    if isinstance(r, (tuple, list)):
        r = r[0]
    if not isinstance(r, torch.Tensor) or r.shape != x.shape:
        return
    writer.add_images("reconstruction", torch.cat([x, r.float()]).clamp(0, 1).cpu(), epoch)


def _prune(run_dir: pathlib.Path, keep: int) -> None:
    protect = {p.name for p in (ckpt.latest_checkpoint(run_dir), ckpt.best_checkpoint(run_dir)) if p is not None}
    folders = sorted(p for p in run_dir.glob("epoch-[0-9]*") if p.is_dir())
    for p in folders[:-keep]:
        if p.name not in protect:
            shutil.rmtree(p, ignore_errors=True)


# ---- config-driven runs (``pyaeplus train``) ----------------------------------------------

# ``run``'s own keys, then the ``fit`` arguments a JSON config may carry (FitConfig's fields but the
# callables, objects and loop internals).
_RUN_ONLY = ("model", "model_config", "data", "data_options", "split", "val_data", "val_split", "normalize", "graph")
_NOT_IN_RUN = ("loss", "on_step", "batch_sampler", "metadata", "restore_best", "log_every", "sync_debug")
RUN_FIT_KEYS = tuple(f.name for f in dataclasses.fields(FitConfig) if f.name not in _NOT_IN_RUN)
RUN_KEYS = _RUN_ONLY + RUN_FIT_KEYS


def _zoo():
    from . import models

    return models


def _infer_model_config(cls, cfg: dict, sample_shape: tuple[int, ...]) -> dict:
    """Fill the input-size arguments a model needs from the data: ``in_features`` (features per
    sample), ``in_channels`` and ``input_shape`` (image data); given values are kept."""
    import inspect

    cfg = dict(cfg)
    base = cfg.get("base")
    if isinstance(base, dict) and base.get("name") in _zoo().MODELS:  # wrappers: fill the wrapped model's size
        sub = _zoo().MODELS[base["name"]]
        cfg["base"] = {**base, "config": _infer_model_config(sub, base.get("config") or {}, sample_shape)}
    params = inspect.signature(cls).parameters
    free = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    conv = cfg.get("arch") == "conv"
    image = len(sample_shape) == 3

    def wants(name):
        return name not in cfg and (name in params or free)

    if wants("in_features") and ("in_features" in params or (free and not conv)):
        cfg["in_features"] = int(np.prod(sample_shape))
    if image and wants("in_channels") and ("in_channels" in params or conv):
        cfg["in_channels"] = int(sample_shape[0])
    if wants("input_shape") and (image or "input_shape" in params and params["input_shape"].default is
                                 inspect.Parameter.empty):
        cfg["input_shape"] = list(sample_shape)
    return cfg


def run(config: dict[str, Any]) -> FitResult:
    """Train a model of the zoo on a named dataset from one JSON-able dict (what ``pyaeplus train``
    reads from ``--config`` and flags).

    Args:
        config: ``model`` (a name in ``pyaeplus.models.MODELS``), ``model_config`` (constructor
            arguments; the input size is filled in from the data when missing), ``data``
            (``"<kind>:<path>"``, see ``pyaeplus.data.open_dataset``), ``data_options``, ``split``
            (default ``"train"``), ``val_data`` (a spec) or ``val_split`` (another split of ``data``),
            ``normalize`` (``"minmax"``, ``"gcn"``, ``"gcn+minmax"``; fitted on the training data),
            ``graph`` (model ``"laplacian"`` only: ``knn_graph_of`` arguments such as ``k``, ``metric``,
            plus ``neighbors`` per anchor for the ``NeighborBatchSampler``), ``checkpoint_dir``, and any ``fit`` keyword (``epochs``, ``batch_size``, ``lr`` ...).

    Returns:
        FitResult of ``fit``.
    """
    from . import data as D
    from . import models

    unknown = sorted(set(config) - set(RUN_KEYS))
    if unknown:
        raise ValueError(f"unknown config key(s) {unknown}; known: {list(RUN_KEYS)}")
    for key in ("model", "data"):
        if not config.get(key):
            raise ValueError(f"config needs {key!r}")
    if config["model"] not in models.MODELS:
        raise ValueError(f"model must be one of {tuple(sorted(models.MODELS))}, got {config['model']!r}")
    opts = dict(config.get("data_options") or {})
    train_ds = D.open_dataset(config["data"], split=config.get("split", "train"), **opts)
    val_ds = None
    if config.get("val_data"):
        val_ds = D.open_dataset(config["val_data"], split=config.get("val_split") or "test", **opts)
    elif config.get("val_split"):
        val_ds = D.open_dataset(config["data"], split=config["val_split"], **opts)
    D.normalize(config.get("normalize"), train_ds, *([val_ds] if val_ds is not None else []))
    sample = train_ds[0][0]
    cls = models.MODELS[config["model"]]
    model = cls(**_infer_model_config(cls, config.get("model_config") or {}, tuple(sample.shape)))
    kw = {k: config[k] for k in RUN_FIT_KEYS if k in config}
    meta = {"run": config, "normalization": _describe_transform(getattr(train_ds, "transform", None))}
    if config["model"] == "laplacian":
        # The regularizer needs a graph over the training rows and batches that hold its edges.
        if val_ds is not None:
            raise ValueError("val_data/val_split cannot be used with model 'laplacian': validation samples are "
                             "not nodes of the training graph")
        g = dict(config.get("graph") or {})
        neighbors = int(g.pop("neighbors", 5))
        feats = train_ds.get_batch(torch.arange(len(train_ds)))[0] if hasattr(train_ds, "get_batch") else \
            torch.stack([train_ds[i][0] for i in range(len(train_ds))])
        model.set_graph(model.knn_graph_of(feats, **{"k": 10, **g}))
        sampler = model.sampler(kw.get("batch_size", 128), neighbors=neighbors, seed=kw.get("seed", 0))
        return fit(model, D.WithIndex(train_ds), batch_sampler=sampler, metadata=meta, **kw)
    return fit(model, train_ds, val_data=val_ds, metadata=meta, **kw)


def _describe_transform(t) -> dict | None:
    if t is None:
        return None
    if hasattr(t, "state_dict"):
        return {"type": type(t).__name__, **t.state_dict()}
    fs = getattr(t, "fs", None)
    if fs is not None:
        return {"type": "chain", "steps": [_describe_transform(f) for f in fs]}
    return {"type": type(t).__name__, **{k: v for k, v in vars(t).items() if isinstance(v, (str, int, float))}}
