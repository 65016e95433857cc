"""The autoencoder zoo.

Every model is a plain ``nn.Module`` with the same protocol:

* ``encode(x)``, ``decode(z)``, ``forward(x)`` (the reconstruction, or the model's natural output);
* ``loss(batch) -> dict[str, Tensor]``: the total under ``"loss"`` (backpropagate it) and each
  term by name (``"recon"``, ``"kl"``, ...; terms other than ``"loss"`` are detached);
  ``batch`` is a tensor, an ``(x, y)`` / ``(x, idx)`` tuple or a dict with ``"x"``;
* ``score(x) -> (B,)``: anomaly score, higher = more anomalous;
* ``config``: JSON-able constructor arguments; ``build(model.model_name, **model.config)``
  rebuilds the model without unpickling code (``MODELS`` maps names to classes).

Training-loop hooks a model may define (``pyaeplus.train.fit`` calls them when present):

* ``model.on_train_begin(loader)``: once, before the first step (Deep SVDD computes its
  centre here);
* ``model.on_epoch_end(epoch, loader)``: after every epoch, ``epoch`` counted from 0 (Deep SVDD's
  soft-boundary radius update).

``loader`` is the training data (a DataLoader or any iterable of batches).
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

__all__ = ["MODELS", "RECON_LOSSES", "AutoEncoder", "build", "register", "DenseAE", "ConvAE", "DenoisingAE",
           "ContractiveAE", "VAE", "DeepSVDD", "DeepSVDDAutoEncoder", "DeepOCSVM", "SparseAE", "LaplacianAE",
           "IndexedDataset"]
