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
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torch.utils.data._utils.collate import default_collate, default_convert

from . import _sync
from . import checkpoint as ckpt
from ._validate import choice, integer, not_meta, number
from .data.base import as_dataset
from .runtime.devices import resolve_device

__all__ = ["fit", "run", "FitResult", "OPTIMIZERS"]

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

class _Batches(Dataset):
    """Item i is batch i, already collated: the DataLoader runs with ``batch_size=None`` so that
    worker processes (``num_workers``) fetch whole batches, through ``get_batch`` when the
    dataset has one."""

    def __init__(self, dataset, batches: list[torch.Tensor]):
        self.dataset, self.batches = dataset, batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int):
        idx = self.batches[i]
        if hasattr(self.dataset, "get_batch"):
            return self.dataset.get_batch(idx)
        return default_collate([self.dataset[int(j)] for j in idx])


def _loader(dataset, batches, num_workers: int, pin: bool) -> DataLoader:
    return DataLoader(_Batches(dataset, batches), batch_size=None, shuffle=False, num_workers=num_workers,
                      pin_memory=pin, persistent_workers=False,
                      generator=torch.Generator())  # own generator: the loader never draws from the global RNG


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


def _first(batch) -> torch.Tensor:
    if isinstance(batch, (list, tuple)):
        return batch[0]
    if isinstance(batch, dict):
        return next(iter(batch.values()))
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
    x = _first(batch)
    r = nn.functional.mse_loss(model(x).float(), x.float())
    return {"loss": r, "recon": r.detach()}


# ---- distributed ---------------------------------------------------------------------------

def _dist_setup(device: str | torch.device) -> tuple[int, int, bool]:
    """(rank, world, we_initialized). Under torchrun (WORLD_SIZE > 1) the process group is
    initialized here unless the caller did (NCCL for CUDA, gloo for CPU)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), False
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and "RANK" in os.environ and dist.is_available():
        cuda = str(device).startswith("cuda") or (device == "auto" and torch.cuda.is_available())
        dist.init_process_group("nccl" if cuda else "gloo")
        return dist.get_rank(), dist.get_world_size(), True
    return 0, 1, False


def _resolve_device(device, world: int) -> torch.device:
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) if world > 1 else torch.cuda.current_device())
        return torch.device("cpu")
    return resolve_device(device)


def _allreduce_terms(sums: dict[str, float], count: float, world: int,
                     device: torch.device | None = None) -> dict[str, float]:
    keys = sorted(sums)
    if world > 1:
        # NCCL reduces device tensors only
        t = torch.tensor([sums[k] for k in keys] + [count], dtype=torch.float64,
                         device=device if _nccl() else "cpu")
        dist.all_reduce(t)
        vals, count = t[:-1].tolist(), float(t[-1])
    else:
        vals = [sums[k] for k in keys]
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
    # ---- arguments (all checked before anything runs) ----
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if loss is None and not hasattr(model, "loss"):
        loss = _mse_loss
    if loss is not None and not callable(loss):
        raise TypeError(f"loss must be callable(model, batch), got {type(loss).__name__}")
    epochs = integer("epochs", epochs, lo=1)
    batch_size = integer("batch_size", batch_size, lo=1)
    lr = number("lr", lr, positive=True)
    weight_decay = number("weight_decay", weight_decay, nonnegative=True)
    choice("optimizer", optimizer, OPTIMIZERS)
    seed = integer("seed", seed, lo=0)
    num_workers = integer("num_workers", num_workers, lo=0)
    keep_checkpoints = integer("keep_checkpoints", keep_checkpoints, lo=1)
    log_every = integer("log_every", log_every, lo=1)
    choice("sync_debug", sync_debug, _sync.MODES)
    if amp not in (True, False, None, "bf16", "bfloat16", "fp16", "float16"):
        raise ValueError(f"amp must be True, False, 'bf16' or 'fp16', got {amp!r}")
    if patience is not None:
        patience = integer("patience", patience, lo=1)
        if val_data is None:
            raise ValueError("patience (early stopping) needs val_data")
    min_delta = number("min_delta", min_delta, nonnegative=True)
    if grad_clip is not None:
        grad_clip = number("grad_clip", grad_clip, positive=True)
    if resume not in (True, False, "fallback"):
        raise ValueError(f"resume must be True, False or 'fallback', got {resume!r}")
    if resume and checkpoint_dir is None:
        raise ValueError("resume=True needs checkpoint_dir")
    _check_not_meta(model, train_data, val_data)
    train_ds = as_dataset(train_data)
    val_ds = as_dataset(val_data) if val_data is not None else None
    n_train = len(train_ds)
    if n_train == 0:
        raise ValueError("train_data is empty")
    if val_ds is not None and len(val_ds) == 0:
        raise ValueError("val_data is empty")

    writer_cls = None
    if log_dir is not None:
        try:
            from torch.utils.tensorboard import SummaryWriter as writer_cls
        except ImportError as e:
            raise ModuleNotFoundError(
                "log_dir needs TensorBoard: pip install tensorboard (or pass log_dir=None)") from e

    rank, world, own_pg = _dist_setup(device)
    try:
        dev = _resolve_device(device, world)
        if world > 1 and batch_sampler is None and batch_size % world:
            raise ValueError(f"batch_size ({batch_size}) must be divisible by the world size ({world})")
        return _fit(model, train_ds, val_ds, epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer,
                    optimizer_kwargs=dict(optimizer_kwargs or {}), weight_decay=weight_decay, loss=loss,
                    amp_dtype=_amp_dtype(amp, dev), device=dev, seed=seed, rank=rank, world=world,
                    checkpoint_dir=None if checkpoint_dir is None else pathlib.Path(checkpoint_dir),
                    resume=resume, writer_cls=writer_cls, log_dir=log_dir, progress=progress, patience=patience,
                    min_delta=min_delta, restore_best=restore_best, batch_sampler=batch_sampler,
                    shuffle=shuffle, drop_last=drop_last, num_workers=num_workers, grad_clip=grad_clip,
                    keep_checkpoints=keep_checkpoints, on_step=on_step, metadata=metadata, log_every=log_every,
                    sync_debug=sync_debug)
    finally:
        if own_pg:
            dist.destroy_process_group()


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


def _gather_rng(world: int) -> list[dict[str, torch.Tensor]]:
    mine = ckpt.rng_state()
    if world == 1:
        return [mine]
    out: list[Any] = [None] * world
    dist.all_gather_object(out, mine)
    return out


def _resume_from(start, model, opt, scaler, rank: int, world: int, epochs: int):
    """(start_epoch, step, history, best_val, best_epoch, bad_epochs): from checkpoint ``start``
    (verified by ``checkpoint.resume_point``), or a fresh run's when it is None."""
    if start is None:
        return 0, 0, [], math.inf, None, 0
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
    return start_epoch, tr["step"], tr["history"], best_val, tr["best_epoch"], tr["bad_epochs"]


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


def _fit(model, train_ds, val_ds, *, epochs, batch_size, lr, optimizer, optimizer_kwargs, weight_decay, loss,
         amp_dtype, device, seed, rank, world, checkpoint_dir, resume, writer_cls, log_dir, progress, patience,
         min_delta, restore_best, batch_sampler, shuffle, drop_last, num_workers, grad_clip, keep_checkpoints,
         on_step, metadata, log_every, sync_debug) -> FitResult:
    model.to(device)
    opt = _make_optimizer(optimizer, model, lr, weight_decay, optimizer_kwargs, device)
    use_scaler = amp_dtype == torch.float16
    scaler = torch.amp.GradScaler(device.type, enabled=use_scaler) if use_scaler else None
    _seed_all(seed + rank)

    start = ckpt.resume_point(checkpoint_dir, fallback=resume == "fallback") if resume else None
    start_epoch, step, history, best_val, best_epoch, bad_epochs = _resume_from(start, model, opt, scaler, rank,
                                                                                world, epochs)

    net: nn.Module = _LossModule(model, loss)
    if world > 1:
        net = nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    lp = _Loop(model=model, net=net, opt=opt, scaler=scaler, device=device, amp_dtype=amp_dtype, rank=rank,
               world=world, grad_clip=grad_clip, on_step=on_step, progress=progress, log_every=log_every,
               writer=writer_cls(log_dir=str(log_dir)) if writer_cls is not None and rank == 0 else None,
               num_workers=num_workers, guard=_sync.Guard(sync_debug, device), **_model_hooks(model))
    best_state = None
    if restore_best and val_ds is not None and checkpoint_dir is not None and best_epoch is not None:
        best_state = _saved_best(checkpoint_dir, model)  # a resumed run keeps the best weights it had found

    def hook_loader():
        local = torch.tensor_split(torch.arange(len(train_ds)), world)[rank]
        return _loader(train_ds, list(local.split(batch_size)), num_workers, lp.pin)

    begin = getattr(model, "on_train_begin", None)
    if callable(begin) and start_epoch < epochs:
        begin(hook_loader())  # models guard against re-initialising (Deep SVDD keeps a set centre)

    last_ckpt = start if start is not None else (
        ckpt.latest_checkpoint(checkpoint_dir) if checkpoint_dir is not None else None)
    stopped_early = False
    for epoch in range(start_epoch, epochs):
        model.train()
        batches = _shard(_global_batches(len(train_ds), batch_size, seed, epoch, shuffle, drop_last, batch_sampler),
                         rank, world)
        train_terms, step = _train_epoch(lp, train_ds, batches, epoch, epochs, step)
        hook = getattr(model, "on_epoch_end", None)
        if callable(hook):
            hook(epoch, hook_loader())
        val_terms = _evaluate(lp, val_ds, batch_size) if val_ds is not None else None
        history.append({"epoch": epoch, "step": step, "train": train_terms, "val": val_terms})

        improved = False
        if val_terms is not None:
            if val_terms["loss"] < best_val - min_delta:
                best_val, best_epoch, bad_epochs, improved = val_terms["loss"], epoch, 0, True
                if restore_best:
                    best_state = {k: t.detach().clone() for k, t in model.state_dict().items()}
            else:
                bad_epochs += 1
            if patience is not None and bad_epochs >= patience:
                stopped_early = epoch + 1 < epochs
        _log_epoch(lp, epoch, epochs, train_terms, val_terms, val_ds if val_ds is not None else train_ds)
        if checkpoint_dir is not None:
            state = {"training": {
                "epoch": epoch, "step": step, "history": history, "world_size": world,
                "best_val_loss": None if best_val == math.inf else best_val, "best_epoch": best_epoch,
                "bad_epochs": bad_epochs, "stopped_early": stopped_early,
                "fit": {"epochs": epochs, "batch_size": batch_size, "lr": lr, "optimizer": optimizer,
                        "weight_decay": weight_decay, "seed": seed, "shuffle": shuffle, "drop_last": drop_last,
                        "amp": None if amp_dtype is None else str(amp_dtype).replace("torch.", ""),
                        "grad_clip": grad_clip}},
                "metadata": metadata}
            last_ckpt = _save_epoch(lp, checkpoint_dir, epoch, optimizer, state, improved, keep_checkpoints) or last_ckpt
        if stopped_early:
            break

    if lp.writer is not None:
        lp.writer.close()
    if restore_best and best_state is not None:
        model.load_state_dict(best_state)
    return FitResult(model=model, history=history, best_epoch=best_epoch,
                     best_val_loss=None if best_val == math.inf else best_val, stopped_early=stopped_early,
                     checkpoint=last_ckpt)


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
    rng = _gather_rng(lp.world)  # collective: every rank takes part
    path = None
    if lp.rank == 0:
        path = ckpt.save_checkpoint(checkpoint_dir / f"epoch-{epoch + 1:04d}", lp.model, optimizer=lp.opt,
                                    optimizer_name=optimizer, scaler=lp.scaler, rng=rng, state=state)
        ckpt.point(checkpoint_dir, "LATEST", path)
        if improved:
            ckpt.point(checkpoint_dir, "BEST", path)
        _prune(checkpoint_dir, keep)
    if lp.world > 1:
        dist.barrier()
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
        source = iter(_loader(ds, batches, lp.num_workers, lp.pin))  # the loader pins
    else:
        source = (_read_batch(ds, idx) for idx in batches)
    if lp.device.type == "cpu":
        return source
    pin = lp.pin and lp.num_workers == 0
    return (_to(b, lp.device, pin) for b in source)


def _read_batch(ds, idx: torch.Tensor):
    if hasattr(ds, "get_batch"):
        b = ds.get_batch(idx)
        if isinstance(b, torch.Tensor) or (isinstance(b, (tuple, list)) and
                                           all(isinstance(e, torch.Tensor) for e in b)):
            return b
        return default_convert(b)  # what the DataLoader would have done
    return default_collate([ds[int(j)] for j in idx])


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
    return _allreduce_terms(log.sums, log.count, lp.world, lp.device), step + len(batches)


def _read_log(lp: _Loop, log: _TermLog, bar) -> None:
    """A log point: read the pending terms; under DDP every rank learns of a non-finite loss on any
    rank here (so none is left waiting in a collective), and raises the same error."""
    err = None
    try:
        log.read(lp.writer)
    except FloatingPointError as e:
        err = e
    if lp.world > 1:
        flag = torch.tensor([0.0 if err is None else 1.0], device=lp.device if _nccl() else "cpu")
        dist.all_reduce(flag)
        if err is None and flag.item() > 0:
            err = FloatingPointError(f"the loss became non-finite on another rank at epoch {log.epoch} "
                                     f"(by step {log.step + log.done + log.pending})")
    if err is not None:
        raise err
    if not bar.disable and log.count:
        bar.set_postfix({k: f"{v:.4g}" for k, v in log.means().items()}, refresh=False)


def _nccl() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_backend() == "nccl"


@torch.no_grad()
def _evaluate(lp: _Loop, ds, batch_size: int) -> dict[str, float]:
    """Mean terms over ``ds`` (this rank's shard, then all-reduced), read from the device once."""
    inner = lp.net.module if isinstance(lp.net, nn.parallel.DistributedDataParallel) else lp.net
    was = inner.model.training
    inner.model.eval()
    local = torch.tensor_split(torch.arange(len(ds)), lp.world)[lp.rank]
    batches = list(local.split(batch_size))
    log = _TermLog(-1, 0, len(batches), check=False)
    try:
        for idx, batch in zip(batches, _iter_batches(ds, batches, lp)):
            with lp.autocast():
                log.record(inner(batch), idx.numel())  # the unwrapped module: no DDP sync in eval
        log.read()
    finally:
        inner.model.train(was)
    return _allreduce_terms(log.sums, log.count, lp.world, lp.device)


@torch.no_grad()
def _log_images(writer, model, ds, device, epoch: int, n: int = 8) -> None:
    """Inputs (top row) and reconstructions (bottom row) of the first ``n`` samples, for image data."""
    idx = torch.arange(min(n, len(ds)))
    batch = ds.get_batch(idx) if hasattr(ds, "get_batch") else default_collate([ds[int(i)] for i in idx])
    x = _first(batch).to(device)
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

RUN_KEYS = ("model", "model_config", "data", "data_options", "split", "val_data", "val_split", "normalize",
            "graph", "epochs", "batch_size", "lr", "optimizer", "optimizer_kwargs", "weight_decay", "amp", "device", "seed",
            "checkpoint_dir", "resume", "log_dir", "progress", "patience", "min_delta", "num_workers", "grad_clip",
            "keep_checkpoints", "shuffle", "drop_last")


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
    kw = {k: config[k] for k in RUN_KEYS[9:] if k in config}
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
