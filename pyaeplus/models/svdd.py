"""Deep SVDD (Ruff et al., "Deep One-Class Classification", ICML 2018): a bias-free network
that maps normal data close to a fixed centre c; one-class and soft-boundary objectives."""

from __future__ import annotations

import math
import warnings
from typing import Any, Iterable, Sequence

import torch
from torch import nn

from .. import _validate
from .base import OUTPUT_ACTIVATIONS, AutoEncoder, check_input, int_list, register, split_batch
from .base import activation as make_activation
from .dense import check_image_shape

OBJECTIVES = ("one-class", "soft-boundary")


def _bn2d(c: int) -> nn.BatchNorm2d:
    # affine=False: a BN shift is a bias, and any bias lets the net reach the trivial solution φ ≡ c
    return nn.BatchNorm2d(c, eps=1e-4, affine=False)


def _bn1d(c: int) -> nn.BatchNorm1d:
    return nn.BatchNorm1d(c, eps=1e-4, affine=False)


class _SVDDNet(nn.Module):
    """The bias-free feature map φ shared by DeepSVDD and its pre-training autoencoder."""

    def __init__(self, feature_shape: tuple[int, ...], arch: str, channels: list[int], kernel_size: int,
                 hidden: list[int], rep_dim: int, slope: float):
        super().__init__()
        self.arch, self.rep_dim = arch, rep_dim
        if arch == "lenet":
            c, h, w = feature_shape
            self.sizes = [(h, w)]
            layers: list[nn.Module] = []
            for i, ch in enumerate(channels):
                hh, ww = self.sizes[-1]
                if hh < 2 or ww < 2:
                    raise ValueError(f"input_shape {feature_shape} cannot be pooled {len(channels)} times: "
                                     f"level {i} has size {hh}x{ww}; use fewer channels")
                layers += [nn.Conv2d(c, ch, kernel_size, padding=kernel_size // 2, bias=False), _bn2d(ch),
                           nn.LeakyReLU(slope), nn.MaxPool2d(2, 2)]
                self.sizes.append((hh // 2, ww // 2))
                c = ch
            self.code_shape = (c, *self.sizes[-1])
            self.features = nn.Sequential(*layers, nn.Flatten(1))
            self.fc = nn.Linear(math.prod(self.code_shape), rep_dim, bias=False)
        else:
            f = math.prod(feature_shape)
            layers = []
            for hdim in hidden:
                layers += [nn.Linear(f, hdim, bias=False), _bn1d(hdim), nn.LeakyReLU(slope)]
                f = hdim
            self.features = nn.Sequential(nn.Flatten(1), *layers)
            self.fc = nn.Linear(f, rep_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def _svdd_args(input_shape, arch, channels, kernel_size, hidden, rep_dim, leaky_slope):
    shape = check_image_shape("input_shape", input_shape)
    if shape is None:
        raise ValueError("input_shape must be given: (F,), (H, W) or (C, H, W)")
    _validate.choice("arch", arch, ("lenet", "dense"))
    if arch == "lenet" and len(shape) != 3:
        raise ValueError(f"arch='lenet' needs an image input_shape (C, H, W), got {shape}")
    channels = int_list("channels", channels, allow_empty=False)
    kernel_size = _validate.integer("kernel_size", kernel_size, lo=1)
    if kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be odd, got {kernel_size}")
    hidden = int_list("hidden", hidden)
    rep_dim = _validate.integer("rep_dim", rep_dim, lo=1)
    slope = _validate.number("leaky_slope", leaky_slope, nonnegative=True)
    return shape, channels, kernel_size, hidden, rep_dim, slope


def _batches(data) -> Iterable[torch.Tensor]:
    if isinstance(data, torch.Tensor):
        yield data
        return
    for batch in data:
        yield split_batch(batch)[0]


@register("deep_svdd")
class DeepSVDD(AutoEncoder):
    """Deep SVDD: a bias-free network φ (LeNet-style conv net or dense net, leaky ReLU, BatchNorm
    without affine parameters) trained so that φ(x) of normal data lies close to a centre c.

    * one-class objective: ``mean ‖φ(x) − c‖²`` (weight decay comes from the optimizer, as in
      the paper: use ``weight_decay`` in Adam/SGD);
    * soft-boundary objective: ``R² + 1/ν · mean max(0, ‖φ(x) − c‖² − R²)`` with the radius R
      set (not trained) to the (1 − ν)-quantile of the training distances by
      ``update_radius`` — called by the ``on_epoch_end`` hook from ``warm_up_epochs`` on.

    The centre is the mean of φ over an initial pass (``init_center``, or the ``on_train_begin``
    hook), with coordinates closer than ``eps`` to zero pushed to ±eps (a centre coordinate at
    0 can be matched by the all-zero output a network can always produce).
    ``pretrain_autoencoder()`` returns a matching autoencoder whose encoder *is* this network,
    so training it (with any reconstruction loss of the zoo) initialises Deep SVDD in place.

    Args:
        input_shape: per-sample input shape, (C, H, W) for ``arch="lenet"``, anything for dense.
        arch: ``"lenet"`` (conv 5x5 → BN → leaky ReLU → max-pool per entry of ``channels``, then a
            linear map to ``rep_dim``) or ``"dense"`` (linear → BN → leaky ReLU per ``hidden``).
        channels: conv channels per level (lenet); default ``[8, 4]`` as in the paper's MNIST net.
        kernel_size: odd conv kernel size (lenet).
        hidden: hidden widths (dense).
        rep_dim: output dimension of φ.
        objective: ``"one-class"`` or ``"soft-boundary"``.
        nu: ν in (0, 1]: for soft-boundary, the fraction of training points allowed outside R.
        eps: minimum magnitude of the centre's coordinates.
        warm_up_epochs: soft-boundary: epochs trained before R is first updated.
        radius_every: soft-boundary: update R every this many epochs after the warm-up.
        leaky_slope: negative slope of the leaky ReLUs.

    Shapes:
        ``encode``/``forward``: (B, *input_shape) -> φ(x) (B, rep_dim); ``score``: (B,)
        ``‖φ(x) − c‖²`` (minus R² for soft-boundary).
    """

    def __init__(self, input_shape: Sequence[int], *, arch: str = "lenet", channels: Sequence[int] = (8, 4),
                 kernel_size: int = 5, hidden: Sequence[int] = (128, 64), rep_dim: int = 32,
                 objective: str = "one-class", nu: float = 0.1, eps: float = 0.1, warm_up_epochs: int = 10,
                 radius_every: int = 1, leaky_slope: float = 0.01):
        super().__init__()
        shape, channels, kernel_size, hidden, rep_dim, slope = _svdd_args(
            input_shape, arch, channels, kernel_size, hidden, rep_dim, leaky_slope)
        _validate.choice("objective", objective, OBJECTIVES)
        nu = _validate.number("nu", nu)
        if not 0 < nu <= 1:
            raise ValueError(f"nu must be in (0, 1], got {nu}")
        self.eps = _validate.number("eps", eps, positive=True)
        self.warm_up_epochs = _validate.integer("warm_up_epochs", warm_up_epochs, lo=0)
        self.radius_every = _validate.integer("radius_every", radius_every, lo=1)
        self.objective, self.nu = objective, nu
        self._net_args = dict(input_shape=list(shape), arch=arch, channels=channels, kernel_size=kernel_size,
                              hidden=hidden, rep_dim=rep_dim, leaky_slope=slope)
        self._config = dict(self._net_args, objective=objective, nu=nu, eps=self.eps,
                            warm_up_epochs=self.warm_up_epochs, radius_every=self.radius_every)
        self.feature_shape, self.recon_loss = shape, "mse"
        self.net = _SVDDNet(shape, arch, channels, kernel_size, hidden, rep_dim, slope)
        self.register_buffer("c", torch.zeros(rep_dim))
        self.register_buffer("R", torch.zeros(()))
        self.register_buffer("center_ready", torch.zeros((), dtype=torch.bool))
        # host copy of center_ready (None: read the buffer once), so that a training step does not
        # read a device buffer; a loaded state dict makes it unknown again
        self._center_set: bool | None = False
        self.register_load_state_dict_post_hook(DeepSVDD._forget_center_state)

    @staticmethod
    def _forget_center_state(module, incompatible_keys) -> None:
        module._center_set = None

    def _center_ready(self) -> bool:
        if self._center_set is None:
            self._center_set = bool(self.center_ready)
        return self._center_set

    # ---- protocol -------------------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """φ(x), (B, rep_dim)."""
        return self.net(x.reshape(x.shape[0], *self.feature_shape))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        raise TypeError("DeepSVDD has no decoder; pretrain_autoencoder() returns the autoencoder that has one")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """φ(x), (B, rep_dim)."""
        return self.encode(x)

    def distance(self, x: torch.Tensor) -> torch.Tensor:
        """‖φ(x) − c‖² per sample, (B,)."""
        return (self.encode(x) - self.c).square().sum(1)

    def loss(self, batch) -> dict[str, torch.Tensor]:
        """The Deep SVDD objective on a batch.

        Returns:
            dict with ``"loss"``, ``"dist"`` (mean squared distance to c) and, for
            soft-boundary, ``"radius"`` (R) and ``"outside"`` (fraction of the batch beyond R).
        """
        x, _ = self._input(batch)
        return self.loss_terms(x)[0]

    def loss_terms(self, x: torch.Tensor):
        """(loss dict, φ(x))."""
        # (under torch.compile the centre is assumed set: the check would break the graph)
        if not _validate._compiling() and not self._center_ready():
            warnings.warn("DeepSVDD: the centre c was not initialised (call init_center(train_data) or train "
                          "with pyaeplus.train.fit, which calls on_train_begin); using this first batch",
                          RuntimeWarning, stacklevel=2)
            self.init_center(x)
        phi = self.encode(x)
        dist = (phi - self.c).square().sum(1)
        out = {"dist": dist.mean().detach()}
        if self.objective == "one-class":
            out["loss"] = dist.mean()
        else:
            r2 = self.R.square()
            out["loss"] = r2 + torch.relu(dist - r2).mean() / self.nu
            out["radius"] = self.R.detach().clone()
            out["outside"] = (dist > r2).float().mean().detach()
        return out, phi

    @torch.no_grad()
    def score(self, x: torch.Tensor) -> torch.Tensor:
        """‖φ(x) − c‖² (one-class) or ‖φ(x) − c‖² − R² (soft-boundary), (B,)."""
        x, _ = self._input(x, "x")
        d = self.distance(x)
        return d - self.R.square() if self.objective == "soft-boundary" else d

    # ---- centre and radius ----------------------------------------------------------------
    @torch.no_grad()
    def _distances(self, data, mode: str = "eval") -> torch.Tensor:
        """Distances over ``data`` with the network in ``mode``; "train" uses batch statistics in
        BatchNorm (as the loss sees them) and restores the running statistics afterwards."""
        was = self.training
        bn = [m for m in self.net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        saved = [{k: v.clone() for k, v in m.state_dict().items()} for m in bn] if mode == "train" else None
        self.train(mode == "train")
        try:
            return torch.cat([self.distance(x.to(self.c.device)) for x in _batches(data)])
        finally:
            self.train(was)
            if saved is not None:
                for m, st in zip(bn, saved):
                    m.load_state_dict(st)

    @torch.no_grad()
    def init_center(self, data, eps: float | None = None) -> torch.Tensor:
        """Set c to the mean of φ over ``data`` (eval mode), coordinates with |c_i| < eps pushed
        to ±eps.

        Args:
            data: a tensor of inputs, or an iterable of batches (tensors or (x, ...) tuples).
            eps: overrides the model's ``eps``.

        Returns:
            the centre (rep_dim,).
        """
        eps = self.eps if eps is None else _validate.number("eps", eps, positive=True)
        was = self.training
        self.eval()
        try:
            total, n = torch.zeros_like(self.c), 0
            for x in _batches(data):
                x = check_input("data", x, self.feature_shape)
                total += self.encode(x.to(self.c.device)).sum(0).to(total.dtype)
                n += x.shape[0]
        finally:
            self.train(was)
        if n == 0:
            raise ValueError("data must contain at least one sample to compute the centre")
        c = total / n
        small = c.abs() < eps
        c = torch.where(small & (c < 0), torch.full_like(c, -eps), c)
        c = torch.where(small & (c >= 0), torch.full_like(c, eps), c)
        self.c.copy_(c)
        self.center_ready.fill_(True)
        self._center_set = True
        return self.c.clone()

    @torch.no_grad()
    def update_radius(self, data, mode: str = "train") -> float:
        """Set R to the (1 − ν)-quantile of ‖φ(x) − c‖ over ``data`` (Ruff et al.'s update).

        Args:
            data: a tensor of inputs or an iterable of batches.
            mode: ``"train"`` (default): distances as the training loss sees them (BatchNorm on
                batch statistics, as Ruff et al. take R from the training batches; running
                statistics are left untouched), or ``"eval"``.

        Returns:
            the new R.
        """
        _validate.choice("mode", mode, ("train", "eval"))
        d = self._distances(data, mode)
        if d.numel() == 0:
            raise ValueError("data must contain at least one sample to update the radius")
        r = torch.quantile(d.sqrt().double(), 1.0 - self.nu)
        self.R.fill_(float(r))
        return float(r)

    # ---- training-loop hooks --------------------------------------------------------------
    def on_train_begin(self, loader) -> None:
        """Hook: computes the centre from the training data unless it is already set."""
        if not self._center_ready():
            self.init_center(loader)

    def on_epoch_end(self, epoch: int, loader) -> None:
        """Hook: soft-boundary radius update once ``epoch + 1 >= warm_up_epochs``, every
        ``radius_every`` epochs (``epoch`` counts from 0)."""
        if self.objective != "soft-boundary":
            return
        done = epoch + 1
        if done >= self.warm_up_epochs and (done - self.warm_up_epochs) % self.radius_every == 0:
            self.update_radius(loader)

    # ---- autoencoder pre-training ---------------------------------------------------------
    def pretrain_autoencoder(self, *, output_activation: str | None = "sigmoid", loss: str = "mse",
                             loss_options: dict | None = None) -> "DeepSVDDAutoEncoder":
        """An autoencoder whose encoder is this model's network φ (shared, not copied) and whose
        decoder mirrors it (bias-free too). Training it initialises Deep SVDD in place; an
        autoencoder restored separately can be loaded with ``load_pretrained``.

        Args:
            output_activation: decoder output activation (``"sigmoid"`` for data in [0, 1]).
            loss: reconstruction loss name.
            loss_options: options of the SSIM-family loss module.

        Returns:
            the :class:`DeepSVDDAutoEncoder`.
        """
        return DeepSVDDAutoEncoder(**self._net_args, output_activation=output_activation, loss=loss,
                                   loss_options=loss_options, _net=self.net)

    @torch.no_grad()
    def load_pretrained(self, ae: "DeepSVDDAutoEncoder") -> None:
        """Copy the encoder weights of a pre-trained :class:`DeepSVDDAutoEncoder` into φ and mark
        the centre for recomputation."""
        if not isinstance(ae, DeepSVDDAutoEncoder):
            raise TypeError(f"ae must be a DeepSVDDAutoEncoder, got {type(ae).__name__}")
        if ae.net is not self.net:
            self.net.load_state_dict(ae.net.state_dict())
        self.center_ready.fill_(False)
        self._center_set = False


@register("deep_svdd_ae")
class DeepSVDDAutoEncoder(AutoEncoder):
    """Deep SVDD's pre-training autoencoder: the bias-free network φ as encoder and a mirrored,
    bias-free decoder (lenet: linear → BN → leaky ReLU, then per level resize to the encoder's
    size and conv → BN → leaky ReLU; the last conv maps to the input channels).

    Args:
        input_shape, arch, channels, kernel_size, hidden, rep_dim, leaky_slope: as :class:`DeepSVDD`.
        output_activation: ``None``, ``"sigmoid"`` or ``"tanh"``.
        loss: reconstruction loss name.
        loss_options: options of the SSIM-family loss module.

    Shapes: ``encode``: (B, *input_shape) -> (B, rep_dim); ``decode``: back; ``score``: (B,).
    """

    def __init__(self, input_shape: Sequence[int], *, arch: str = "lenet", channels: Sequence[int] = (8, 4),
                 kernel_size: int = 5, hidden: Sequence[int] = (128, 64), rep_dim: int = 32,
                 leaky_slope: float = 0.01, output_activation: str | None = "sigmoid", loss: str = "mse",
                 loss_options: dict | None = None, _net: Any = None):
        super().__init__()
        shape, channels, kernel_size, hidden, rep_dim, slope = _svdd_args(
            input_shape, arch, channels, kernel_size, hidden, rep_dim, leaky_slope)
        _validate.choice("output_activation", output_activation, OUTPUT_ACTIVATIONS)
        if loss == "bce" and output_activation != "sigmoid":
            raise ValueError("loss='bce' needs output_activation='sigmoid' (outputs must lie in [0, 1])")
        self._config = dict(input_shape=list(shape), arch=arch, channels=channels, kernel_size=kernel_size,
                            hidden=hidden, rep_dim=rep_dim, leaky_slope=slope,
                            output_activation=output_activation, loss=loss)
        self._config["loss_options"] = self._init_recon(loss, shape, shape if len(shape) == 3 else None, loss_options)
        self.net = _net if _net is not None else _SVDDNet(shape, arch, channels, kernel_size, hidden, rep_dim, slope)
        pad = kernel_size // 2
        if arch == "lenet":
            self.code_shape = self.net.code_shape
            self.fc = nn.Linear(rep_dim, math.prod(self.code_shape), bias=False)
            layers: list[nn.Module] = [_bn2d(self.code_shape[0]), nn.LeakyReLU(slope)]
            for i in reversed(range(len(channels))):
                cout = channels[i - 1] if i > 0 else shape[0]
                layers += [nn.Upsample(size=self.net.sizes[i], mode="nearest"),
                           nn.Conv2d(channels[i], cout, kernel_size, padding=pad, bias=False)]
                if i > 0:
                    layers += [_bn2d(cout), nn.LeakyReLU(slope)]
            self.decoder = nn.Sequential(*layers)
        else:
            sizes = [rep_dim, *hidden[::-1]]
            self.fc = nn.Identity()
            layers = []
            for a, b in zip(sizes[:-1], sizes[1:]):
                layers += [nn.Linear(a, b, bias=False), _bn1d(b), nn.LeakyReLU(slope)]
            layers.append(nn.Linear(sizes[-1], math.prod(shape), bias=False))
            self.decoder = nn.Sequential(*layers)
        self.output_act = make_activation(output_activation, "output_activation")

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """φ(x), (B, rep_dim)."""
        return self.net(x.reshape(x.shape[0], *self.feature_shape))

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        """Decoder output before the output activation, (B, *input_shape)."""
        h = self.fc(z)
        if self.net.arch == "lenet":
            h = h.reshape(z.shape[0], *self.code_shape)
        return self._as_feature_shape(self.decoder(h))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(B, rep_dim) -> reconstruction (B, *input_shape)."""
        return self.output_act(self.decode_logits(z))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction of x in x's shape."""
        return self.decode(self.encode(x)).reshape(x.shape)
