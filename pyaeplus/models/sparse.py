"""Sparse autoencoders: k-sparse (top-k with the fused top-k and sparse-decode ops, AuxK for
dead latents), L1 activity penalty, or KL-divergence sparsity."""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .. import _validate
from .base import OUTPUT_ACTIVATIONS, AutoEncoder, register
from .base import activation as make_activation
from .dense import check_image_shape

SPARSITIES = ("topk", "l1", "kl")


@register("sparse")
class SparseAE(AutoEncoder):
    """Single-layer sparse autoencoder (a dictionary of ``latent`` directions).

    * ``sparsity="topk"`` (Makhzani & Frey 2013; Gao et al. 2024, OpenAI sparse_autoencoder):
      ``codes = TopK(W_enc (x − b_dec) + b_enc)`` with ReLU on the kept values, computed by
      :class:`pyaeplus.nn.TopK` as sparse ``(values, indices)`` (B, k) and decoded by
      :class:`pyaeplus.nn.SparseDecoder` (the codes never exist as a (B, latent) matrix). In
      eval mode ``k_eval`` or ``round(alpha·k)`` units are kept. **AuxK**: a latent that has not
      fired for ``dead_steps`` training steps is dead; the loss adds
      ``aux_coef × NMSE(aux, e)`` where ``e = x − x̂`` (detached) and ``aux`` decodes the top
      ``aux_k`` pre-activations among the dead latents (no bias) — this gives dead latents a
      gradient towards what the live ones miss. NMSE is the per-sample squared error divided by
      ‖e‖², averaged; ``aux_coef`` defaults to 1/32 as in Gao et al. Decoder rows start at unit
      norm with the encoder tied to them; ``tied=True`` keeps them tied in training (one shared
      (latent, F) parameter, as in Makhzani & Frey's k-sparse autoencoder).
    * ``sparsity="l1"``: ReLU codes, loss ``recon + l1 · mean_b ‖h_b‖₁``.
    * ``sparsity="kl"``: sigmoid codes, loss ``recon + beta · Σ_j KL(rho ‖ ρ̂_j)`` with ρ̂_j the
      batch-mean activation of unit j (Ng's sparse autoencoder).

    Args:
        in_features: input features F.
        latent: number of latents (dictionary size).
        sparsity: ``"topk"``, ``"l1"`` or ``"kl"``.
        k: top-k: units kept per sample in training.
        k_eval: top-k: units kept at inference (takes precedence over ``alpha``).
        alpha: top-k: keep ``round(alpha·k)`` units at inference.
        aux_k: top-k: dead latents used by AuxK (default ``min(2k, latent)``; 0 disables AuxK).
        aux_coef: top-k: weight of the AuxK term.
        dead_steps: top-k: training steps without firing after which a latent counts as dead.
        tied: top-k: share one (latent, F) weight between the encoder and the decoder rows.
        l1: L1 weight (``"l1"``).
        rho, beta: target activation and KL weight (``"kl"``).
        loss: reconstruction loss name (``bce`` needs ``output_activation="sigmoid"``).
        output_activation: ``None``, ``"sigmoid"`` or ``"tanh"``.
        input_shape: per-sample input shape (for image losses and reshaped outputs).
        loss_options: keyword arguments of the SSIM-family loss module (see :class:`DenseAE`).

    Shapes:
        ``encode``: x (B, F) -> top-k: ``TopKResult(values (B, k'), indices (B, k'))``, else
        codes (B, latent); ``decode``: back to (B, *input_shape); ``dense_codes``: (B, latent)
        in every mode; ``score``: (B,).
    """

    def __init__(self, in_features: int, latent: int = 512, *, sparsity: str = "topk", k: int = 32,
                 k_eval: int | None = None, alpha: float | None = None, aux_k: int | None = None,
                 aux_coef: float = 1 / 32, dead_steps: int = 100, l1: float = 1e-3, rho: float = 0.05,
                 beta: float = 1.0, loss: str = "mse", output_activation: str | None = None,
                 input_shape: Sequence[int] | None = None, loss_options: dict | None = None,
                 tied: bool = False):
        super().__init__()
        in_features = _validate.integer("in_features", in_features, lo=1)
        latent = _validate.integer("latent", latent, lo=1)
        _validate.choice("sparsity", sparsity, SPARSITIES)
        _validate.choice("output_activation", output_activation, OUTPUT_ACTIVATIONS)
        if loss == "bce" and output_activation != "sigmoid":
            raise ValueError("loss='bce' needs output_activation='sigmoid' (outputs must lie in [0, 1])")
        # k matters for top-k only; other modes keep whatever was given (default 32 > small latents)
        k = _validate.integer("k", k, lo=1, hi=latent if sparsity == "topk" else None)
        if k_eval is not None:
            k_eval = _validate.integer("k_eval", k_eval, lo=1, hi=latent)
        if alpha is not None:
            alpha = _validate.number("alpha", alpha, positive=True)
        aux_k = min(2 * k, latent) if aux_k is None else _validate.integer("aux_k", aux_k, lo=0, hi=latent)
        self.aux_coef = _validate.number("aux_coef", aux_coef, nonnegative=True)
        self.dead_steps = _validate.integer("dead_steps", dead_steps, lo=1)
        self.l1 = _validate.number("l1", l1, nonnegative=True)
        self.rho = _validate.number("rho", rho)
        if not 0 < self.rho < 1:
            raise ValueError(f"rho must be in (0, 1), got {rho}")
        self.beta = _validate.number("beta", beta, nonnegative=True)
        if not isinstance(tied, bool):
            raise TypeError(f"tied must be a bool, got {type(tied).__name__}")
        if tied and sparsity != "topk":
            raise ValueError(f"tied=True is supported for sparsity='topk' only, got sparsity={sparsity!r}")
        shape = check_image_shape("input_shape", input_shape)
        if shape is not None and math.prod(shape) != in_features:
            raise ValueError(f"input_shape {shape} has {math.prod(shape)} elements but in_features={in_features}")
        self._config = dict(in_features=in_features, latent=latent, sparsity=sparsity, k=k, k_eval=k_eval,
                            alpha=alpha, aux_k=aux_k, aux_coef=self.aux_coef, dead_steps=self.dead_steps,
                            l1=self.l1, rho=self.rho, beta=self.beta, loss=loss,
                            output_activation=output_activation,
                            input_shape=None if shape is None else list(shape), tied=tied)
        self._config["loss_options"] = self._init_recon(
            loss, shape if shape is not None else (in_features,),
            shape if shape is not None and len(shape) == 3 else None, loss_options)
        self.in_features, self.latent, self.sparsity = in_features, latent, sparsity
        self.k, self.aux_k = k, aux_k
        self.encoder = nn.Linear(in_features, latent)
        self.output_act = make_activation(output_activation, "output_activation")
        if sparsity == "topk":
            from .. import nn as pnn

            self.topk = pnn.TopK(k, relu=True, output="sparse", k_eval=k_eval, alpha=alpha)
            self.decoder = pnn.SparseDecoder(latent, in_features, bias=True)
            with torch.no_grad():
                # unit-norm dictionary rows, encoder tied at init (Gao et al. 2024)
                self.decoder.weight.copy_(F.normalize(self.decoder.weight, dim=1))
                self.encoder.weight.copy_(self.decoder.weight)
                self.encoder.bias.zero_()
                self.decoder.bias.zero_()
            if tied:  # one Parameter: both uses add their gradients into it
                self.encoder.weight = self.decoder.weight
            # steps since each latent last fired (training steps); a buffer so checkpoints keep it
            self.register_buffer("steps_since_active", torch.zeros(latent, dtype=torch.int64))
        else:
            self.decoder = nn.Linear(latent, in_features)

    # ---- codes --------------------------------------------------------------------------------
    def _flat(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], self.in_features)

    def pre_activation(self, x: torch.Tensor) -> torch.Tensor:
        """Encoder pre-activations (B, latent); top-k subtracts the decoder bias first."""
        x = self._flat(x)
        if self.sparsity == "topk":
            x = x - self.decoder.bias
        return self.encoder(x)

    def encode(self, x: torch.Tensor):
        """Sparse codes: ``TopKResult(values, indices)`` (B, k) for top-k, else (B, latent)."""
        pre = self.pre_activation(x)
        if self.sparsity == "topk":
            return self.topk(pre)
        return torch.relu(pre) if self.sparsity == "l1" else torch.sigmoid(pre)

    def dense_codes(self, x: torch.Tensor) -> torch.Tensor:
        """Codes as a dense (B, latent) matrix (for latent-space tools, not for training)."""
        codes = self.encode(x)
        if self.sparsity != "topk":
            return codes
        v, i = codes
        return torch.zeros(v.shape[0], self.latent, dtype=v.dtype, device=v.device).scatter(1, i, v)

    def _sparse_decode(self, values: torch.Tensor, indices: torch.Tensor, bias: bool = True) -> torch.Tensor:
        """sparse_decode with the decoder's weights in the codes' dtype: under autocast the
        encoder (a Linear) yields half-precision codes, and autocast itself only casts the
        operands of the ops it knows, which the fused decoder is not."""
        from .. import functional as pF

        w, b = self.decoder.weight, self.decoder.bias if bias else None
        if w.dtype != values.dtype:
            w, b = w.to(values.dtype), None if b is None else b.to(values.dtype)
        return pF.sparse_decode(values, indices, w, b)                     # (B, F)

    def decode_logits(self, codes) -> torch.Tensor:
        """Decoder output before the output activation, (B, *input_shape)."""
        if self.sparsity == "topk":
            if not isinstance(codes, (tuple, list)) or len(codes) != 2:
                raise TypeError(f"codes must be the (values, indices) pair that encode() returns, got "
                                f"{type(codes).__name__}")
            return self._as_feature_shape(self._sparse_decode(*codes))
        return self._as_feature_shape(self.decoder(codes))

    def decode(self, codes) -> torch.Tensor:
        """Codes (as returned by ``encode``) -> reconstruction (B, *input_shape)."""
        return self.output_act(self.decode_logits(codes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction of x in x's shape."""
        return self.decode(self.encode(x)).reshape(x.shape)

    # ---- loss ---------------------------------------------------------------------------------
    def dead_latents(self) -> torch.Tensor:
        """Boolean mask (latent,) of the latents that have not fired for ``dead_steps`` steps (top-k)."""
        if self.sparsity != "topk":
            raise TypeError("dead latents are tracked for sparsity='topk' only")
        return self.steps_since_active >= self.dead_steps

    def _auxk(self, pre: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """AuxK: normalized MSE of the residual's reconstruction by the top aux_k dead latents."""
        if self.aux_k == 0:
            return pre.new_zeros(())
        from .. import functional as pF

        dead = self.dead_latents()
        # Always aux_k selections (a static shape: counting the dead latents would sync the
        # device every step): live latents are pushed below every dead one and the ReLU of the
        # top-k op zeroes them when fewer than aux_k are dead, so they add nothing.
        low = torch.finfo(pre.dtype).min
        masked = torch.where(dead, pre, torch.full_like(pre, low))
        v, i = pF.topk_activation(masked, self.aux_k, relu=True, output="sparse")
        aux = self._sparse_decode(v, i, bias=False).float()                 # (B, F)
        residual = residual.float()
        num = (aux - residual).square().mean(1)
        den = residual.square().mean(1).clamp_min(torch.finfo(torch.float32).tiny)
        return (num / den).mean() * dead.any()                              # 0 while none is dead

    def loss(self, batch) -> dict[str, torch.Tensor]:
        """Reconstruction plus the sparsity term of the chosen mode.

        Returns:
            dict with ``"loss"``, ``"recon"`` and ``"auxk"`` + ``"dead"`` (fraction of dead
            latents) for top-k, ``"l1"`` for L1, ``"kl"`` for KL.
        """
        x, _ = self._input(batch)
        return self.loss_terms(x)[0]

    def loss_terms(self, x: torch.Tensor):
        """(loss dict, codes: a TopKResult for top-k, else (B, latent))."""
        pre = self.pre_activation(x)
        if self.sparsity == "topk":
            codes = self.topk(pre)
            logits = self.decode_logits(codes)
            out = self.output_act(logits)
            err = self.reconstruction_error(x, out, logits if self.recon_loss == "bce" else None)
            recon = err.mean()
            terms = {"recon": recon.detach()}
            if self.training:
                with torch.no_grad():
                    # counts by scatter (a boolean-mask index would sync the device)
                    fired = torch.zeros(self.latent, dtype=torch.int32, device=pre.device).index_add_(
                        0, codes.indices.reshape(-1), (codes.values > 0).reshape(-1).to(torch.int32))
                    self.steps_since_active.add_(1).masked_fill_(fired > 0, 0)
                residual = (self._flat(x) - self._flat(out)).detach()
                aux = self._auxk(pre, residual)
            else:
                aux = pre.new_zeros(())
            terms.update(auxk=aux.detach(), dead=self.dead_latents().float().mean())
            return {"loss": recon + self.aux_coef * aux, **terms}, codes
        if self.sparsity == "l1":
            h = torch.relu(pre)
            _, err = self._recon_terms(x, h)
            pen = h.abs().sum(1).mean()
            recon = err.mean()
            return {"loss": recon + self.l1 * pen, "recon": recon.detach(), "l1": pen.detach()}, h
        h = torch.sigmoid(pre)
        _, err = self._recon_terms(x, h)
        rho_hat = h.mean(0).clamp(1e-6, 1 - 1e-6)
        r = self.rho
        kl = (r * torch.log(r / rho_hat) + (1 - r) * torch.log((1 - r) / (1 - rho_hat))).sum()
        recon = err.mean()
        return {"loss": recon + self.beta * kl, "recon": recon.detach(), "kl": kl.detach()}, h
