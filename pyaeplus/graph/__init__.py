"""k-NN graphs (FAISS / own GPU brute force), features, weights, CSR graphs, Laplacian
normalizations and neighbour-sampled batches."""

__all__: list[str] = []

# ---- CSR graph, weights, sampler (graph/csr.py, graph/weights.py, graph/sampler.py) -----

# ---- k-NN graph and features (graph/knn.py, graph/features.py) ---------------------------
