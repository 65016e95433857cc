"""Deep one-class SVM: autoencoder latents -> fixed random Fourier features -> a linear
one-class SVM trained on its primal objective."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from .. import _validate
from .._amp import autocast_off
from .base import dense_latent, register, split_batch
from .wrapper import WrapperAE


@register("deep_ocsvm")
class DeepOCSVM(WrapperAE):
    """One-class SVM with an RBF kernel on the latents of an autoencoder.

    The RBF kernel ``exp(−γ‖z − z'‖²)`` is approximated by ``n_features`` random Fourier
    features ``φ(z) = sqrt(2/D) cos(zΩ + b)``, Ω ~ N(0, 2γ), b ~ U(0, 2π) (Rahimi & Recht 2007),
    drawn once from ``seed`` and kept as buffers (not trained). On top sits the linear one-class
    SVM (Schölkopf et al. 2001) in its primal form, with the batch as the sample:

        ½‖w‖² + 1/(ν·n) Σ_i max(0, ρ − ⟨w, φ(z_i)⟩) − ρ

    At its optimum at most a fraction ν of the training points lie outside the boundary
    (``⟨w, φ⟩ < ρ``) and at least ν on or outside it. The total loss adds
    ``recon_weight × reconstruction``. With ``detach_latent=True`` (default) the SVM trains on the
    latents without moving the encoder, which the reconstruction shapes: trained jointly, the
    SVM term alone is minimised by collapsing every latent to one point.

    Args:
        base: the autoencoder, a model of the zoo or ``{"name": ..., "config": {...}}``.
        nu: ν in (0, 1].
        gamma: RBF kernel width γ > 0, or ``"scale"`` (default): 1 / (d · Var(z)) from the
            latents of the first training batch (or ``init_gamma(data)``), scikit-learn's rule.
        n_features: number D of random Fourier features.
        seed: seed of Ω and b.
        recon_weight: weight of the reconstruction term (0 trains the SVM only).
        detach_latent: stop the SVM gradient at the latents.

    Shapes:
        ``encode``: x -> latents (B, d); ``decode``: back; ``forward``: the reconstruction;
        ``features``: (B, d) -> (B, D); ``margin``: x -> ⟨w, φ(z)⟩ − ρ (B,); ``score``: (B,) ρ − ⟨w, φ(z)⟩.
    """

    def __init__(self, base: Any, *, nu: float = 0.1, gamma: float | str = "scale", n_features: int = 512,
                 seed: int = 0, recon_weight: float = 1.0, detach_latent: bool = True):
        super().__init__(base)
        nu = _validate.number("nu", nu)
        if not 0 < nu <= 1:
            raise ValueError(f"nu must be in (0, 1], got {nu}")
        n_features = _validate.integer("n_features", n_features, lo=1)
        seed = _validate.integer("seed", seed)
        self.recon_weight = _validate.number("recon_weight", recon_weight, nonnegative=True)
        self.nu, self.detach_latent = nu, bool(detach_latent)
        self.latent_dim = self._latent_dim()
        if gamma != "scale":
            gamma = _validate.number("gamma", gamma, positive=True)
        self._config = dict(base=self._base_desc, nu=nu, gamma=gamma, n_features=n_features, seed=seed,
                            recon_weight=self.recon_weight, detach_latent=self.detach_latent)
        g = torch.Generator().manual_seed(seed)
        # buffers: saved with the model and moved by .to(), never trained. Ω = sqrt(2γ)·omega,
        # with γ a buffer too: 0 until gamma="scale" is resolved from data
        self.register_buffer("omega", torch.randn(self.latent_dim, n_features, generator=g))
        self.register_buffer("phase", torch.rand(n_features, generator=g) * (2 * math.pi))
        self.register_buffer("gamma", torch.tensor(0.0 if gamma == "scale" else gamma))
        self.w = nn.Parameter(torch.zeros(n_features))
        self.rho = nn.Parameter(torch.zeros(()))

    @torch.no_grad()
    def _latent_dim(self) -> int:
        was = self.base.training
        self.base.eval()  # BatchNorm in training mode rejects a single-sample dry run
        try:
            p = next(self.base.parameters(), None)
            x = torch.zeros(1, *self.feature_shape, device=None if p is None else p.device,
                            dtype=None if p is None else p.dtype)
            return dense_latent(self.base, self.base.encode(x)).shape[1]
        finally:
            self.base.train(was)

    @torch.no_grad()
    def init_gamma(self, data) -> float:
        """Resolve ``gamma="scale"``: γ = 1 / (d · Var(z)) over the latents of ``data`` (a tensor or
        an iterable of batches), scikit-learn's ``"scale"`` rule on the SVM's inputs. The loss does
        this on the first training batch when γ is still unset.

        Returns:
            the new γ.
        """
        was = self.base.training
        self.base.eval()
        try:
            batches = [data] if isinstance(data, torch.Tensor) else [split_batch(b)[0] for b in data]
            z = torch.cat([dense_latent(self.base, self.base.encode(self.base._input(b, "data")[0])).float()
                           for b in batches])
        finally:
            self.base.train(was)
        return self._gamma_from(z)

    def _gamma_from(self, z: torch.Tensor) -> float:
        var = float(z.detach().float().var(unbiased=False))
        if not var > 0:
            raise ValueError("the latents have zero variance, so gamma='scale' is undefined; pass a number")
        self.gamma.fill_(1.0 / (z.shape[1] * var))
        self._gamma_known = True
        return float(self.gamma)

    def on_train_begin(self, loader) -> None:
        """Hook: resolves ``gamma="scale"`` from the first training batch before the first step, so the
        step itself never reads the device (``train.fit(sync_debug="error")`` holds from step 1)."""
        hook = self.base_hook("on_train_begin")
        if hook is not None:
            hook(loader)
        if not self._gamma_ready():
            self.init_gamma([next(iter(loader))])

    def _gamma_ready(self) -> bool:
        # reads the buffer (a device sync) only until it is known to be set
        if not getattr(self, "_gamma_known", False) and float(self.gamma) > 0:
            self._gamma_known = True
        return getattr(self, "_gamma_known", False)

    def features(self, z) -> torch.Tensor:
        """Random Fourier features φ(z), (B, d) -> (B, D) (top-k codes are taken densely)."""
        z = dense_latent(self.base, z)
        if not _validate._compiling() and not self._gamma_ready():
            raise RuntimeError("gamma='scale' is not resolved yet: train (the first batch sets it) or call "
                               "init_gamma(train_data)")
        # float32 at least, autocast off: cos of a bfloat16 argument would lose the phase
        dt = torch.promote_types(z.dtype, self.omega.dtype)
        with autocast_off(z.device):
            z = z.to(dt)
            omega = self.omega.to(dt) * torch.sqrt(2 * self.gamma).to(dt)
            return math.sqrt(2.0 / self.omega.shape[1]) * torch.cos(z @ omega + self.phase.to(dt))

    def _margin_from_latent(self, z: torch.Tensor) -> torch.Tensor:
        f = self.features(z)
        with autocast_off(f.device):
            return f @ self.w.to(f.dtype) - self.rho.to(f.dtype)

    def margin(self, x: torch.Tensor) -> torch.Tensor:
        """Signed SVM margin ⟨w, φ(z)⟩ − ρ per sample (B,): negative outside the boundary."""
        return self._margin_from_latent(self.encode(x))

    def loss_terms(self, x: torch.Tensor):
        """Primal OC-SVM objective (+ recon_weight × reconstruction) and the latents: dict with
        ``"loss"``, ``"svm"`` (the primal objective), ``"recon"``, ``"rho"`` and ``"outside"``
        (fraction of the batch with negative margin)."""
        z = self.base.encode(x)
        zs = dense_latent(self.base, z)
        if not _validate._compiling() and not self._gamma_ready():      # gamma="scale": first batch
            self._gamma_from(zs)
        m = self._margin_from_latent(zs.detach() if self.detach_latent else zs)  # (B,) ⟨w,φ⟩ − ρ
        svm = 0.5 * self.w.square().sum() + torch.relu(-m).mean() / self.nu - self.rho
        out = {"svm": svm.detach(), "rho": self.rho.detach().clone(), "outside": (m < 0).float().mean().detach()}
        if self.recon_weight > 0:
            recon = self.base._recon_terms(x, z)[1].mean()
            out["recon"] = recon.detach()
            out["loss"] = svm + self.recon_weight * recon
        else:
            out["loss"] = svm
        return out, z

    @torch.no_grad()
    def score(self, x: torch.Tensor) -> torch.Tensor:
        """ρ − ⟨w, φ(z)⟩ per sample (B,): positive outside the learnt boundary."""
        x, _ = self.base._input(x, "x")
        return -self.margin(x)
