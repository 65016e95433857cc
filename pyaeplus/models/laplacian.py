"""Laplacian autoencoder: any model of the zoo plus the graph-Laplacian regularizer on its
latents over a k-NN graph of the training set, trained on neighbour-sampled batches."""

from __future__ import annotations

from typing import Any

import torch

from .. import _validate
from ..data.base import WithIndex
from .base import dense_latent, register
from .wrapper import WrapperAE


# Item i is ``(x_i, i)``: the node index the Laplacian loss needs;
# ``DataLoader(IndexedDataset(x), batch_sampler=NeighborBatchSampler(...))`` yields ``(x (B, ...), idx (B,))``.
IndexedDataset = WithIndex


@register("laplacian")
class LaplacianAE(WrapperAE):
    """Autoencoder + graph-Laplacian regularizer ``lam · Σ_ij W_ij ‖z_i − z_j‖²`` over the batch's
    induced subgraph (:class:`pyaeplus.nn.LaplacianRegularizer`, fused kernels).

    Batches must carry the node index of every sample, ``(x, idx)``; the loss extracts
    ``graph.subgraph(idx)``. A random batch of a large graph contains almost no edges, so train
    with :class:`pyaeplus.graph.NeighborBatchSampler` (``sampler()`` builds one) over an
    :class:`pyaeplus.data.WithIndex` (alias ``IndexedDataset``). The graph is data, not configuration: give it to the constructor
    or ``set_graph`` (it is not part of ``config`` nor of the state dict); ``knn_graph_of``
    builds one from features with :func:`pyaeplus.graph.knn_graph`.

    Args:
        base: the autoencoder, a model of the zoo or ``{"name": ..., "config": {...}}``.
        lam: weight λ ≥ 0 of the regularizer.
        normalization: ``None``, ``"sym"`` or ``"rw"`` (see :func:`pyaeplus.laplacian_loss`).
        reduction: ``"sum"`` or ``"mean"`` (per stored edge of the subgraph) — ``"mean"`` keeps
            λ independent of the batch size.
        graph: the :class:`pyaeplus.graph.Graph` over the training set (optional here).
        scale_invariant: divide the regularizer by the batch's mean squared distance between two
            latents (``2 · Σ_d Var_batch(z_d)``), so it measures how close neighbours are relative
            to the spread of the batch. Without it the cheapest way to shrink the penalty is to
            shrink every latent (the decoder scales them back up): on MNIST λ = 1 cut the latent
            std 50x and made neighbourhoods worse, not better. With it λ is dimensionless. It does
            not stop a collapse onto one direction at large λ (the ratio favours 1-d latents). In
            ``examples/laplacian_ae_mnist.py`` both forms at λ = 0.01 helped on the digit the sweep
            ran on, but only the scale-invariant one carried over to the other nine digits (better
            latent k-NN AUROC and neighbourhood preservation on all ten; the plain form's best λ
            depends on the latent scale each digit's AE ends up with).

    Shapes: as the wrapped model; ``loss`` takes ``(x (B, ...), idx (B,))``.
    """

    def __init__(self, base: Any, *, lam: float = 1.0, normalization: str | None = None,
                 reduction: str = "mean", graph=None, scale_invariant: bool = False):
        super().__init__(base)
        from .. import nn as pnn

        self.lam = _validate.number("lam", lam, nonnegative=True)
        _validate.choice("normalization", normalization, (None, "sym", "rw"))
        _validate.choice("reduction", reduction, ("sum", "mean"))
        if not isinstance(scale_invariant, bool):
            raise TypeError(f"scale_invariant must be a bool, got {type(scale_invariant).__name__}")
        self.scale_invariant = scale_invariant
        self.regularizer = pnn.LaplacianRegularizer(lam=self.lam, normalization=normalization, reduction=reduction)
        self._config = dict(base=self._base_desc, lam=self.lam, normalization=normalization, reduction=reduction,
                            scale_invariant=scale_invariant)
        self.graph = None
        if graph is not None:
            self.set_graph(graph)

    # ---- graph ----------------------------------------------------------------------------
    def set_graph(self, graph) -> "LaplacianAE":
        """Attach the training set's graph (a :class:`pyaeplus.graph.Graph`). Returns self."""
        from ..graph import Graph

        if not isinstance(graph, Graph):
            raise TypeError(f"graph must be a pyaeplus.graph.Graph, got {type(graph).__name__}")
        self.graph = graph
        self._graph_on = {graph.device: graph}
        return self

    @staticmethod
    def knn_graph_of(features, k: int = 10, *, metric: str = "l2", weighting: str = "heat",
                     sigma: float | None = None, symmetrize: str | None = "max", **knn_kwargs):
        """A weighted k-NN graph of ``features`` (N, D) (raw inputs are flattened).

        Args:
            features: (N, ...) tensor or array.
            k: neighbours per node.
            metric: see :func:`pyaeplus.graph.knn_graph`.
            weighting: ``"heat"`` (exp(−d²/σ²), σ = median k-th distance unless given) or ``"binary"``.
            sigma: heat-kernel bandwidth.
            symmetrize: ``"max"``, ``"mean"`` or ``None``.
            **knn_kwargs: passed to :func:`pyaeplus.graph.knn_graph` (backend, index, ...).

        Returns:
            :class:`pyaeplus.graph.Graph` over the N rows.
        """
        from ..graph import Graph, knn_graph

        if isinstance(features, torch.Tensor) and features.dim() > 2:
            features = features.reshape(features.shape[0], -1)
        knn_kwargs.setdefault("progress", False)
        knn = knn_graph(features, k, metric=metric, **knn_kwargs)
        return Graph.from_knn(knn, weighting=weighting, sigma=sigma, symmetrize=symmetrize)

    def sampler(self, batch_size: int, neighbors: int = 5, *, shuffle: bool = True, seed: int = 0,
                drop_last: bool = False):
        """A :class:`pyaeplus.graph.NeighborBatchSampler` over the attached graph."""
        from ..graph import NeighborBatchSampler

        return NeighborBatchSampler(self._require_graph(), batch_size, neighbors=neighbors, shuffle=shuffle,
                                    seed=seed, drop_last=drop_last)

    def _require_graph(self):
        if self.graph is None:
            raise RuntimeError("LaplacianAE has no graph: pass graph= or call set_graph(graph) "
                               "(LaplacianAE.knn_graph_of(train_x, k) builds one)")
        return self.graph

    def _graph_for(self, device: torch.device):
        g = self._require_graph()
        cache = self._graph_on
        if device not in cache:
            cache[device] = g.to(device)
        return cache[device]

    # ---- protocol -------------------------------------------------------------------------
    def loss(self, batch) -> dict[str, torch.Tensor]:
        """Reconstruction + λ · Laplacian of the latents over the batch's subgraph.

        Args:
            batch: ``(x, idx)`` with idx (B,) the samples' node indices in the graph.

        Returns:
            dict with ``"loss"`` (the wrapped model's total + the regularizer), the wrapped
            model's terms (``"recon"``, ...), ``"laplacian"`` (λ-weighted; divided by the batch
            spread when ``scale_invariant``) and ``"edges"``
            (stored edges inside the batch).
        """
        x, idx = self.base._input(batch)
        if isinstance(batch, dict):             # {"x", "y"} carries labels, not node indices
            idx = batch.get("idx")
        if idx is None or not isinstance(idx, torch.Tensor) and not isinstance(idx, (list, tuple)):
            raise ValueError("batch must be (x, idx) with idx the node indices of the samples (use "
                             "pyaeplus.data.WithIndex and NeighborBatchSampler); got no indices")
        idx = torch.as_tensor(idx)
        if idx.dim() != 1 or idx.shape[0] != x.shape[0] or idx.is_floating_point():
            raise ValueError(f"batch idx must be an integer tensor of shape ({x.shape[0]},), "
                             f"got {tuple(idx.shape)} {idx.dtype}")
        g = self._graph_for(x.device)
        sub = g.subgraph(idx.to(g.device))
        terms, z = self.base.loss_terms(x)       # the wrapped model's whole objective (KL, AuxK, ...)
        zd = dense_latent(self.base, z)
        zd = zd.float() if zd.dtype in (torch.float16, torch.bfloat16) else zd
        lap = self.regularizer(zd, sub)
        if self.scale_invariant:
            # mean ||z_i - z_j||^2 over all ordered pairs of the batch = 2 * total variance
            lap = lap / (2.0 * zd.var(0, unbiased=False).sum()).clamp_min(1e-12)
        out = {k: v for k, v in terms.items() if k != "loss"}
        out.update(loss=terms["loss"] + lap, laplacian=lap.detach(), edges=torch.tensor(float(sub.nnz), device=lap.device))
        return out
