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
      (latent, F) parameter, as in Makhzani & Frey's k-sparse autoencoder). The encoder is
      :class:`pyaeplus.nn.TopKEncoder` (``pyaeplus.topk_encode``: Linear + top-k whose backward
      touches only the k selected latents), laid out as the ``nn.Linear`` it replaces
      (``encoder.weight`` (latent, F), ``encoder.bias``), so older checkpoints load unchanged.
      **Unit-norm decoder** (``unit_norm``, on by default for untied top-k, as in OpenAI's
      sparse_autoencoder and EleutherAI's sparsify; off by default with ``tied=True``, where the one
      matrix is the encoder too and the constraint cost the MNIST example a point of probe error):
      before each optimizer step the gradient
      component parallel to each decoder row is removed, after it the rows are renormalized
      (``on_before_optimizer_step`` / ``on_after_optimizer_step``, which ``pyaeplus.train.fit``
      calls; a hand-written loop calls them around ``optimizer.step()``). **BatchTopK**
      (``batch_topk=True``, Bussmann et al. 2024): training keeps the top ``k·B`` pre-activations
      of the whole batch (codes in CSR form), and a threshold is learned as SAELens does (an
      exponential moving average, rate ``threshold_lr``, of the smallest positive activation kept
      per batch; the first batch sets it), stored per latent in the ``threshold`` buffer; in eval
      mode a latent fires where its pre-activation exceeds it (a JumpReLU), so inference does not
      depend on the batch.
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
        unit_norm: top-k: keep the decoder rows at unit norm with the parallel gradient removed
            (default: on for untied top-k, off for ``tied=True``).
        batch_topk: top-k: BatchTopK training and a learned inference threshold (no ``k_eval`` /
            ``alpha`` then).
        threshold_lr: BatchTopK: the rate of the threshold's moving average.
        l1: L1 weight (``"l1"``).
        rho, beta: target activation and KL weight (``"kl"``).
        loss: reconstruction loss name (``bce`` needs ``output_activation="sigmoid"``).
        output_activation: ``None``, ``"sigmoid"`` or ``"tanh"``.
        input_shape: per-sample input shape (for image losses and reshaped outputs).
        loss_options: keyword arguments of the SSIM-family loss module (see :class:`DenseAE`).

    Shapes:
        ``encode``: x (B, F) -> top-k: ``TopKResult(values (B, k'), indices (B, k'))``
        (BatchTopK: ``BatchTopKCSR(values (nnz,), crow (B + 1,), cols (nnz,))``), else
        codes (B, latent); ``decode``: back to (B, *input_shape); ``dense_codes``: (B, latent)
        in every mode; ``score``: (B,).
    """

    def __init__(self, in_features: int, latent: int = 512, *, sparsity: str = "topk", k: int = 32,
                 k_eval: int | None = None, alpha: float | None = None, aux_k: int | None = None,
                 aux_coef: float = 1 / 32, dead_steps: int = 100, l1: float = 1e-3, rho: float = 0.05,
                 beta: float = 1.0, loss: str = "mse", output_activation: str | None = None,
                 input_shape: Sequence[int] | None = None, loss_options: dict | None = None,
                 tied: bool = False, unit_norm: bool | None = None, batch_topk: bool = False,
                 threshold_lr: float = 0.01):
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
        unit_norm = sparsity == "topk" and tied is False if unit_norm is None else unit_norm
        for name, flag in (("tied", tied), ("unit_norm", unit_norm), ("batch_topk", batch_topk)):
            if not isinstance(flag, bool):
                raise TypeError(f"{name} must be a bool, got {type(flag).__name__}")
            if flag and sparsity != "topk":
                raise ValueError(f"{name}=True is supported for sparsity='topk' only, got sparsity={sparsity!r}")
        if batch_topk and (k_eval is not None or alpha is not None):
            raise ValueError("batch_topk=True infers with its learned threshold: k_eval and alpha must be None")
        self.threshold_lr = _validate.number("threshold_lr", threshold_lr, positive=True)
        shape = check_image_shape("input_shape", input_shape)
        if shape is not None and math.prod(shape) != in_features:
            raise ValueError(f"input_shape {shape} has {math.prod(shape)} elements but in_features={in_features}")
        self._config = dict(in_features=in_features, latent=latent, sparsity=sparsity, k=k, k_eval=k_eval,
                            alpha=alpha, aux_k=aux_k, aux_coef=self.aux_coef, dead_steps=self.dead_steps,
                            l1=self.l1, rho=self.rho, beta=self.beta, loss=loss,
                            output_activation=output_activation,
                            input_shape=None if shape is None else list(shape), tied=tied, unit_norm=unit_norm,
                            batch_topk=batch_topk, threshold_lr=self.threshold_lr)
        self._config["loss_options"] = self._init_recon(
            loss, shape if shape is not None else (in_features,),
            shape if shape is not None and len(shape) == 3 else None, loss_options)
        self.in_features, self.latent, self.sparsity = in_features, latent, sparsity
        self.k, self.aux_k, self.unit_norm, self.batch_topk = k, aux_k, unit_norm, batch_topk
        self.output_act = make_activation(output_activation, "output_activation")
        if sparsity == "topk":
            from .. import nn as pnn

            self.encoder = pnn.TopKEncoder(in_features, latent, k, relu=True, k_eval=k_eval, alpha=alpha,
                                           batch=batch_topk, sparse_format="csr")
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
            if batch_topk:  # the inference threshold; negative: not learned yet
                self.register_buffer("threshold", torch.full((latent,), -1.0))
        else:
            self.encoder = nn.Linear(in_features, latent)
            self.decoder = nn.Linear(latent, in_features)

    @property
    def topk(self) -> nn.Module:
        """The top-k encoder module (``k``, ``k_eval``, ``alpha`` live there), for code written
        against the former ``TopK`` submodule (top-k only)."""
        if self.sparsity != "topk":
            raise AttributeError("topk exists for sparsity='topk' only")
        return self.encoder

    # ---- codes --------------------------------------------------------------------------------
    def _flat(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], self.in_features)

    def _centered(self, x: torch.Tensor) -> torch.Tensor:
        """The encoder input: flattened, minus the decoder bias for top-k (B, F)."""
        x = self._flat(x)
        return x - self.decoder.bias if self.sparsity == "topk" else x

    def pre_activation(self, x: torch.Tensor) -> torch.Tensor:
        """Dense encoder pre-activations (B, latent); top-k subtracts the decoder bias first."""
        return F.linear(self._centered(x), self.encoder.weight, self.encoder.bias)

    def _threshold_codes(self, x: torch.Tensor):
        """BatchTopK inference: the latents whose pre-activation exceeds the learned threshold
        (a JumpReLU; before any training, every positive one), as ``BatchTopKCSR``."""
        from .. import functional as pF

        pre = self.pre_activation(x)
        rows, cols = (pre > self.threshold.clamp_min(0).to(pre.dtype)).nonzero(as_tuple=True)
        bounds = torch.arange(pre.shape[0] + 1, device=pre.device)
        return pF.BatchTopKCSR(pre[rows, cols], torch.searchsorted(rows, bounds), cols)

    def encode(self, x: torch.Tensor):
        """Sparse codes: ``TopKResult(values, indices)`` (B, k) for top-k (``BatchTopKCSR`` with
        ``batch_topk``), else (B, latent)."""
        if self.sparsity == "topk":
            if self.batch_topk and not self.training:
                return self._threshold_codes(x)
            return self.encoder(self._centered(x))
        pre = self.pre_activation(x)
        return torch.relu(pre) if self.sparsity == "l1" else torch.sigmoid(pre)

    def dense_codes(self, x: torch.Tensor) -> torch.Tensor:
        """Codes as a dense (B, latent) matrix (for latent-space tools, not for training)."""
        from .base import dense_latent

        return dense_latent(self, self.encode(x))

    def _decoder_params(self, dtype: torch.dtype, bias: bool):
        """The decoder's weight and bias in the codes' dtype: under autocast the encoder yields
        half-precision codes, and autocast itself only casts the operands of the ops it knows,
        which the fused decoder is not."""
        w, b = self.decoder.weight, self.decoder.bias if bias else None
        if w.dtype != dtype:
            w, b = w.to(dtype), None if b is None else b.to(dtype)
        return w, b

    def _sparse_decode(self, values: torch.Tensor, indices: torch.Tensor, bias: bool = True) -> torch.Tensor:
        from .. import functional as pF

        return pF.sparse_decode(values, indices, *self._decoder_params(values.dtype, bias))   # (B, F)

    def _csr_decode(self, values: torch.Tensor, crow: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """BatchTopK codes (a variable number per row) through ``F.embedding_bag`` (one bag per row)."""
        w, b = self._decoder_params(values.dtype, True)
        return F.embedding_bag(cols, w, crow, mode="sum", per_sample_weights=values, include_last_offset=True) + b

    def decode_logits(self, codes) -> torch.Tensor:
        """Decoder output before the output activation, (B, *input_shape)."""
        if self.sparsity == "topk":
            if not isinstance(codes, (tuple, list)) or len(codes) not in (2, 3):
                raise TypeError(f"codes must be the (values, indices) pair or the (values, crow, cols) CSR that "
                                f"encode() returns, got {type(codes).__name__}")
            dec = self._sparse_decode if len(codes) == 2 else self._csr_decode
            return self._as_feature_shape(dec(*codes))
        return self._as_feature_shape(self.decoder(codes))

    def decode(self, codes) -> torch.Tensor:
        """Codes (as returned by ``encode``) -> reconstruction (B, *input_shape)."""
        return self.output_act(self.decode_logits(codes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction of x in x's shape."""
        return self.decode(self.encode(x)).reshape(x.shape)

    # ---- training-loop hooks: unit-norm decoder rows ------------------------------------------
    @torch.no_grad()
    def on_before_optimizer_step(self) -> None:
        """``unit_norm``: remove from each decoder row's gradient its component along the row, so
        that the step moves the row (to first order) along the unit sphere."""
        g = self.decoder.weight.grad
        if self.unit_norm and g is not None:
            u = F.normalize(self.decoder.weight.float(), dim=1)
            g.sub_(((g.float() * u).sum(1, keepdim=True) * u).to(g.dtype))

    @torch.no_grad()
    def on_after_optimizer_step(self) -> None:
        """``unit_norm``: renormalize the decoder rows (the optimizer's step leaves the sphere)."""
        if self.unit_norm:
            w = self.decoder.weight
            w.copy_(F.normalize(w.float(), dim=1).to(w.dtype))

    # ---- loss ---------------------------------------------------------------------------------
    def dead_latents(self) -> torch.Tensor:
        """Boolean mask (latent,) of the latents that have not fired for ``dead_steps`` steps (top-k)."""
        if self.sparsity != "topk":
            raise TypeError("dead latents are tracked for sparsity='topk' only")
        return self.steps_since_active >= self.dead_steps

    def _auxk(self, xc: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """AuxK: normalized MSE of the residual's reconstruction by the top aux_k dead latents.

        Their pre-activations come from gathered encoder rows only (``topk_encode`` on them: the
        work is B·m·F, not a second full encoder pass) for a fixed number ``m`` of candidates, the
        latents silent the longest: a static shape, so no step reads the dead count on the host
        (a data-dependent size would synchronise the device). Exact while at most ``m`` latents are
        dead; live candidates get a bias so low that they are picked only when fewer than aux_k
        are dead, and then ReLU zeroes them."""
        if self.aux_k == 0:
            return xc.new_zeros((), dtype=torch.float32)
        from .. import functional as pF

        m = min(self.latent, max(4 * self.aux_k, 256))
        silent, rows = torch.topk(self.steps_since_active, m)               # (m,) the longest silent
        dead = silent >= self.dead_steps
        w = self.encoder.weight.index_select(0, rows)
        b = self.encoder.bias.index_select(0, rows)
        b = torch.where(dead, b, torch.full_like(b, torch.finfo(b.dtype).min / 4))
        v, i = pF.topk_encode(xc, w, b, self.aux_k, relu=True)
        aux = self._sparse_decode(v, rows[i], bias=False).float()           # (B, F)
        residual = residual.float()
        num = (aux - residual).square().mean(1)
        den = residual.square().mean(1).clamp_min(torch.finfo(torch.float32).tiny)
        return (num / den).mean() * dead.any()                              # 0 while none is dead

    @torch.no_grad()
    def _track_activity(self, codes) -> None:
        """Training bookkeeping: steps since each latent fired; BatchTopK's threshold average."""
        values, latents = codes[0], codes[-1]
        # counts by scatter (a boolean-mask index would synchronise the device)
        fired = torch.zeros(self.latent, dtype=torch.int32, device=values.device).index_add_(
            0, latents.reshape(-1), (values > 0).reshape(-1).to(torch.int32))
        self.steps_since_active.add_(1).masked_fill_(fired > 0, 0)
        if self.batch_topk:  # no host sync: an empty batch of positives leaves the threshold alone
            pos = values > 0
            low = torch.where(pos, values, torch.full_like(values, float("inf"))).min().float()
            t = self.threshold
            new = torch.where(t < 0, low, (1 - self.threshold_lr) * t + self.threshold_lr * low)
            t.copy_(torch.where(pos.any(), new, t))

    def loss(self, batch) -> dict[str, torch.Tensor]:
        """Reconstruction plus the sparsity term of the chosen mode.

        Returns:
            dict with ``"loss"``, ``"recon"`` and, for top-k, ``"auxk"``, ``"dead"`` (fraction of
            dead latents) and ``"dead_count"`` (their number; ``train.fit`` averages it per epoch);
            ``"l1"`` for L1, ``"kl"`` for KL.
        """
        x, _ = self._input(batch)
        return self.loss_terms(x)[0]

    def _topk_loss_terms(self, x: torch.Tensor):
        codes = self.encode(x)
        logits = self.decode_logits(codes)
        out = self.output_act(logits)
        recon = self.reconstruction_error(x, out, logits if self.recon_loss == "bce" else None).mean()
        if self.training:
            self._track_activity(codes)
            aux = self._auxk(self._centered(x), (self._flat(x) - self._flat(out)).detach())
        else:
            aux = recon.new_zeros((), dtype=torch.float32)
        dead = self.dead_latents()
        terms = {"recon": recon.detach(), "auxk": aux.detach(), "dead": dead.float().mean(),
                 "dead_count": dead.sum().float()}
        return {"loss": recon + self.aux_coef * aux, **terms}, codes

    def loss_terms(self, x: torch.Tensor):
        """(loss dict, codes: a TopKResult (BatchTopKCSR with ``batch_topk``) for top-k, else (B, latent))."""
        if self.sparsity == "topk":
            return self._topk_loss_terms(x)
        pre = self.pre_activation(x)
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
