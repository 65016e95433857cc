"""k-NN graphs (FAISS / own GPU brute force), features, weights, CSR graphs, Laplacian
normalizations and neighbour-sampled batches."""

__all__: list[str] = []

# ---- CSR graph, weights, sampler (graph/csr.py, graph/weights.py, graph/sampler.py) -----

from . import weights  # noqa: E402
from .csr import Graph  # noqa: E402
from .sampler import NeighborBatchSampler  # noqa: E402
from .weights import heat_kernel, symmetrize  # noqa: E402

__all__ += ["Graph", "NeighborBatchSampler", "heat_kernel", "symmetrize", "weights"]

# ---- k-NN graph and features (graph/knn.py, graph/features.py) ---------------------------
from . import features  # noqa: E402
from .knn import KnnGraph, KnnIndex, knn_graph, knn_search  # noqa: E402

__all__ += ["KnnGraph", "KnnIndex", "knn_graph", "knn_search", "features"]
