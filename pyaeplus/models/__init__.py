"""The autoencoder zoo.

Every model is a plain ``nn.Module`` with the same protocol:

* ``encode(x)``, ``decode(z)``, ``forward(x)`` (the reconstruction, or the model's natural output);
* ``loss(batch) -> dict[str, Tensor]``: the total under ``"loss"`` (backpropagate it) and each
  term by name (``"recon"``, ``"kl"``, ...; terms other than ``"loss"`` are detached);
  ``batch`` is a tensor, an ``(x, y)`` / ``(x, idx)`` tuple or a dict with ``"x"``;
* ``loss_terms(x) -> (dict, latents)``: the same for a validated input, plus the latents the loss
  was computed from (wrappers such as ``LaplacianAE`` add terms on them without encoding twice);
* ``score(x) -> (B,)``: anomaly score, higher = more anomalous (reconstruction error under the
  model's loss name; negative ELBO for the VAE; distance to the centre for Deep SVDD; ρ − margin
  for Deep OC-SVM); call ``model.eval()`` first, it runs in the current mode;
* ``config``: JSON-able constructor arguments; ``build(model.model_name, **model.config)``
  rebuilds the model without unpickling code (``MODELS`` maps names to classes).

Training-loop hooks a model may define (``pyaeplus.train.fit`` calls them when present):

* ``model.on_train_begin(loader)``: once, before the first step (Deep SVDD computes its
  centre here);
* ``model.on_epoch_end(epoch, loader)``: after every epoch, ``epoch`` counted from 0 (Deep SVDD's
  soft-boundary radius update);
* ``model.on_before_optimizer_step()``: every step after backward (gradients unscaled), before
  gradient clipping and the optimizer step, and ``model.on_after_optimizer_step()`` right after the
  step (SparseAE's unit-norm decoder rows; every model of the zoo has both, wrappers forward them).

``loader`` is the training data (a DataLoader or any iterable of batches).

Reconstruction losses are chosen by name (``RECON_LOSSES``): ``mse``, ``mae``, ``bce`` (from
logits when the output activation is a sigmoid), and the fused-kernel image losses ``ssim``,
``ms_ssim``, ``l1_ssim`` (``pyaeplus.nn.SSIMLoss`` / ``MS_SSIMLoss`` / ``L1SSIMLoss``, configured
with ``loss_options``).
"""

from __future__ import annotations

from .base import MODELS, RECON_LOSSES, AutoEncoder, build, register
from .dense import DenseAE
from .conv import ConvAE
from .denoising import DenoisingAE
from .contractive import ContractiveAE
from .vae import VAE
from .svdd import DeepSVDD, DeepSVDDAutoEncoder
from .ocsvm import DeepOCSVM
from .sparse import SparseAE
from .laplacian import IndexedDataset, LaplacianAE
from .wrapper import WrapperAE

__all__ = ["MODELS", "RECON_LOSSES", "AutoEncoder", "build", "register", "DenseAE", "ConvAE", "DenoisingAE",
           "ContractiveAE", "VAE", "DeepSVDD", "DeepSVDDAutoEncoder", "DeepOCSVM", "SparseAE", "LaplacianAE",
           "IndexedDataset", "WrapperAE"]
