"""What every model of the zoo shares: the registry, the batch protocol, activations and the
reconstruction losses chosen by name."""

from __future__ import annotations

import copy
import inspect
import math
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .. import _validate
from ..runtime.batches import split_batch  # noqa: F401 (models import it from here)

MODELS: dict[str, type["AutoEncoder"]] = {}

RECON_LOSSES = ("mse", "mae", "bce", "ssim", "ms_ssim", "l1_ssim")
_IMAGE_LOSSES = ("ssim", "ms_ssim", "l1_ssim")

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": lambda: nn.LeakyReLU(0.01),
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "softplus": nn.Softplus,
    "identity": nn.Identity,
}
OUTPUT_ACTIVATIONS = (None, "identity", "sigmoid", "tanh")


def register(name: str):
    """Class decorator: put a model in ``MODELS`` under ``name`` (its checkpoint name)."""

    def deco(cls):
        if name in MODELS and MODELS[name] is not cls:
            raise ValueError(f"model name {name!r} is already registered to {MODELS[name].__name__}")
        MODELS[name] = cls
        cls.model_name = name
        return cls

    return deco


def build(name: str, **config: Any) -> "AutoEncoder":
    """Rebuild a model from its registry name and JSON-able constructor arguments.

    Args:
        name: a key of ``pyaeplus.models.MODELS`` (e.g. ``"dense"``, ``"conv"``, ``"vae"``).
        **config: the constructor arguments, as stored in ``model.config``.

    Returns:
        A freshly initialised model (load a state dict into it to restore weights).
    """
    if name not in MODELS:
        raise ValueError(f"name must be one of {tuple(sorted(MODELS))}, got {name!r}")
    return MODELS[name](**config)


def activation(name: str | None, arg: str = "activation") -> nn.Module:
    if name is None:
        return nn.Identity()
    _validate.choice(arg, name, tuple(ACTIVATIONS))
    return ACTIVATIONS[name]()


def int_list(name: str, v, *, lo: int = 1, allow_empty: bool = True) -> list[int]:
    if isinstance(v, (int, bool)) or not isinstance(v, Sequence):
        raise TypeError(f"{name} must be a list of ints, got {type(v).__name__} {v!r}")
    out = [_validate.integer(f"{name}[{i}]", e, lo=lo) for i, e in enumerate(v)]
    if not allow_empty and not out:
        raise ValueError(f"{name} must not be empty")
    return out


def check_input(name: str, x, feature_shape: tuple[int, ...]) -> torch.Tensor:
    """x must be floating, (B, *feature_shape) or (B, prod(feature_shape)), finite and non-empty."""
    _validate.tensor(name, x, min_ndim=2)
    flat = math.prod(feature_shape)
    # exact per-sample shape, or flattened (B, F); a flat model takes any (B, ...) with F elements
    ok = tuple(x.shape[1:]) == tuple(feature_shape) or (x.dim() == 2 and x.shape[1] == flat) \
        or (len(feature_shape) == 1 and math.prod(x.shape[1:]) == flat)
    if not ok:
        raise ValueError(f"{name} must have shape (B, {', '.join(map(str, feature_shape))})"
                         + (f" or (B, {flat})" if len(feature_shape) > 1 else "")
                         + f", got {tuple(x.shape)}")
    _validate.not_meta(name, x)
    _validate.finite(name, x)
    return x


def check_loss_name(loss: str, image_shape: tuple[int, ...] | None) -> str:
    _validate.choice("loss", loss, RECON_LOSSES)
    if loss in _IMAGE_LOSSES and (image_shape is None or len(image_shape) != 3):
        raise ValueError(f"loss={loss!r} compares images: the model needs an image input_shape (C, H, W), "
                         f"got {image_shape}")
    return loss


def _ssim_loss_module(loss: str, data_range: float, channels: int, options: dict) -> nn.Module:
    """The fused SSIM-family modules of pyaeplus.nn, one value per image (reduction="none")."""
    from .. import nn as pnn

    names = {"ssim": "SSIMLoss", "ms_ssim": "MS_SSIMLoss", "l1_ssim": "L1SSIMLoss"}
    cls = getattr(pnn, names[loss], None)
    if cls is None:  # the SSIM kernels are not part of this build
        raise RuntimeError(f"loss={loss!r} needs pyaeplus.nn.{names[loss]}, which this pyaeplus does not provide")
    params = inspect.signature(cls.__init__).parameters
    bad = sorted(set(options) - set(params) | set(options) & {"reduction", "size_average", "channel"})
    if bad:
        raise ValueError(f"loss_options {bad} are not options of pyaeplus.nn.{names[loss]} here "
                         f"(reduction and channel are set by the model)")
    # pytorch-msssim-style modules build their window for `channel` channels (default 3)
    wanted = {"data_range": data_range, "reduction": "none", "channel": channels, **options}
    return cls(**{k: v for k, v in wanted.items() if k in params})


def elementwise_error(loss: str, target: torch.Tensor, out: torch.Tensor, logits: torch.Tensor | None = None) -> torch.Tensor:
    """Per-element error for the pointwise losses; ``logits`` (pre-sigmoid output) makes BCE stable."""
    if loss == "mse":
        return (out - target).square()
    if loss == "mae":
        return (out - target).abs()
    if loss == "bce":
        if logits is not None:
            return F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        return F.binary_cross_entropy(out, target, reduction="none")
    raise ValueError(f"loss={loss!r} has no per-element error")


class AutoEncoder(nn.Module):
    """Base of the zoo. Subclasses define ``encode``, ``decode`` and set:

    * ``self._config``: the JSON-able constructor arguments (``config`` returns a copy),
    * ``self.feature_shape``: the per-sample input shape, e.g. ``(784,)`` or ``(1, 28, 28)``,
    * ``self.recon_loss``: one of ``RECON_LOSSES``,
    * optionally ``decode_logits(z)`` (pre-sigmoid output) when the output activation is a
      sigmoid, so that BCE is computed from logits.
    """

    model_name = "autoencoder"
    data_range: float = 1.0

    @property
    def config(self) -> dict[str, Any]:
        """JSON-able constructor arguments: ``build(model.model_name, **model.config)`` rebuilds it."""
        return copy.deepcopy(self._config)

    def extra_repr(self) -> str:
        return f"name={self.model_name!r}"

    def _init_recon(self, loss: str, feature_shape: tuple[int, ...], image_shape: tuple[int, ...] | None,
                    options: dict | None = None) -> dict | None:
        """Set the reconstruction loss (validated) and the per-sample input shape; image losses get
        their pyaeplus.nn module (built with ``options``, e.g. win_size, padding, alpha) as a
        submodule so that ``.to(device)`` moves its window. Returns the options for ``config``."""
        self.recon_loss = check_loss_name(loss, image_shape)
        self.feature_shape = tuple(int(s) for s in feature_shape)
        self.image_shape = None if image_shape is None else tuple(int(s) for s in image_shape)
        if options is not None:
            if not isinstance(options, dict) or not all(isinstance(k, str) for k in options):
                raise TypeError(f"loss_options must be a dict of keyword arguments, got {options!r}")
            if loss not in _IMAGE_LOSSES and options:
                raise ValueError(f"loss_options configure the SSIM losses {_IMAGE_LOSSES}, not loss={loss!r}")
            options = copy.deepcopy(options)
        self.ssim_loss = (_ssim_loss_module(loss, self.data_range, self.image_shape[0], options or {})
                          if loss in _IMAGE_LOSSES else None)
        return options

    def _as_image(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], *self.image_shape)

    # ---- protocol -------------------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def decode(self, z: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction of ``x``, same shape as ``x``."""
        return self.decode(self.encode(x))

    def _input(self, batch, name: str = "batch") -> tuple[torch.Tensor, Any]:
        x, extra = split_batch(batch)
        name = name if not isinstance(batch, torch.Tensor) else "x"
        x = check_input(name, x, self.feature_shape)
        p = next(self.parameters(), None)
        if p is not None and not _validate._compiling():
            if p.device != x.device:
                raise ValueError(f"{name} is on {x.device} but the model is on {p.device}; move one of them")
            if (p.dtype != x.dtype and p.is_floating_point()
                    and not torch.is_autocast_enabled(x.device.type)):
                raise TypeError(f"{name} has dtype {str(x.dtype).replace('torch.', '')} but the model's parameters "
                                f"are {str(p.dtype).replace('torch.', '')}; convert one of them (or use autocast)")
        return x, extra

    def _as_feature_shape(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], *self.feature_shape)

    # ---- reconstruction error -------------------------------------------------------------
    def reconstruction_error(self, x: torch.Tensor, out: torch.Tensor, logits: torch.Tensor | None = None,
                             reduce: str = "mean") -> torch.Tensor:
        """Per-sample reconstruction error (B,) under ``self.recon_loss``: mean over features for
        mse/mae/bce, 1 − SSIM (or MS-SSIM, or the L1+SSIM mix) per image for the image losses.
        ``reduce="sum"`` multiplies by the number of features (a per-sample negative
        log-likelihood scale, as the VAE needs)."""
        loss = self.recon_loss
        if reduce == "sum":
            return self.reconstruction_error(x, out, logits) * math.prod(self.feature_shape)
        if loss in _IMAGE_LOSSES:
            mod = self.ssim_loss
            xi, oi = self._as_image(x), self._as_image(out)
            return mod(oi, xi).reshape(x.shape[0])
        x = x.reshape(out.shape) if x.shape != out.shape else x
        err = elementwise_error(loss, x, out, logits)
        return err.reshape(err.shape[0], -1).mean(1)

    def _recon_terms(self, x: torch.Tensor, z: torch.Tensor, reduce: str = "mean") -> tuple[torch.Tensor, torch.Tensor]:
        """(reconstruction, per-sample error) from latents z, using logits for BCE when possible."""
        if self.recon_loss == "bce" and hasattr(self, "decode_logits"):
            logits = self.decode_logits(z)
            out = torch.sigmoid(logits)
            return out, self.reconstruction_error(x, out, logits, reduce)
        out = self.decode(z)
        return out, self.reconstruction_error(x, out, None, reduce)

    def loss(self, batch) -> dict[str, torch.Tensor]:
        """Training objective on a batch (tensor, (x, ...) tuple or {"x": ...} dict).

        Returns:
            dict with ``"loss"`` (scalar total, to backpropagate) and the model's named terms
            (detached scalars), e.g. ``"recon"``.
        """
        x, _ = self._input(batch)
        return self.loss_terms(x)[0]

    def loss_terms(self, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], Any]:
        """The loss dict of a validated input x and the latents it was computed from (so that
        wrappers such as LaplacianAE add terms on them without encoding twice)."""
        z = self.encode(x)
        _, err = self._recon_terms(x, z)
        recon = err.mean()
        return {"loss": recon, "recon": recon.detach()}, z

    # ---- training-loop hooks (pyaeplus.train.fit calls them every step) ---------------------
    def on_before_optimizer_step(self) -> None:
        """After backward (gradients unscaled), before gradient clipping and the optimizer step.
        By default: the same hook of every wrapped model of the zoo."""
        for m in self.children():
            if isinstance(m, AutoEncoder):
                m.on_before_optimizer_step()

    def on_after_optimizer_step(self) -> None:
        """Right after the optimizer step. By default: the same hook of every wrapped model."""
        for m in self.children():
            if isinstance(m, AutoEncoder):
                m.on_after_optimizer_step()

    @torch.no_grad()
    def score(self, x: torch.Tensor) -> torch.Tensor:
        """Anomaly score per sample (B,), higher = more anomalous: the reconstruction error
        under the model's loss name. Runs without gradients in the current train/eval mode."""
        x, _ = self._input(x, "x")
        return self._recon_terms(x, self.encode(x))[1]


def dense_latent(model: nn.Module, z) -> torch.Tensor:
    """Latents as a (B, d) matrix: flattened, or for top-k codes ``(values, indices)`` scattered
    into (B, model.latent) with the gradient kept on the values; BatchTopK codes in CSR form
    ``(values, crow, cols)`` likewise."""
    if isinstance(z, (tuple, list)) and len(z) == 3:
        v, crow, cols = z
        B = crow.shape[0] - 1
        rows = torch.repeat_interleave(torch.arange(B, device=v.device), crow.diff(), output_size=v.shape[0])
        return torch.zeros(B, model.latent, dtype=v.dtype, device=v.device).index_put((rows, cols), v)
    if isinstance(z, (tuple, list)):
        v, i = z
        return torch.zeros(v.shape[0], model.latent, dtype=v.dtype, device=v.device).scatter(1, i, v)
    return z.flatten(1)


def as_model(arg: str, base) -> tuple["AutoEncoder", dict]:
    """A wrapped model given as an instance of the zoo or as {"name": ..., "config": {...}}.
    Returns (module, its JSON-able description)."""
    if isinstance(base, AutoEncoder):
        return base, {"name": base.model_name, "config": base.config}
    if isinstance(base, dict) and "name" in base:
        return build(base["name"], **base.get("config", {})), {"name": base["name"], "config": copy.deepcopy(base.get("config", {}))}
    raise TypeError(f"{arg} must be a pyaeplus.models model or a dict {{'name': ..., 'config': {{...}}}}, "
                    f"got {type(base).__name__}")
