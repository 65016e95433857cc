"""`pyaeplus knn-graph`: features of a dataset -> pyaeplus.graph.knn_graph -> a KnnGraph file that
KnnGraph.load reads back and Graph.from_knn turns into the LaplacianAE's graph (in-process, cli.main)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pyaeplus.cli import main
from pyaeplus.graph import Graph, KnnGraph, knn_graph
from pyaeplus.graph.features import hog


def test_knn_graph_of_npy_equals_the_library(tmp_path, capsys):
    x = np.random.default_rng(0).random((97, 1, 12, 12), dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "g.npz"
    assert main(["knn-graph", "--data", str(tmp_path / "x.npy"), "--k", "7", "--backend", "torch", "--out", str(out),
                 "--no-progress"]) == 0
    assert "97 rows" in capsys.readouterr().out
    g = KnnGraph.load(out)
    want = knn_graph(torch.from_numpy(x).reshape(97, -1), 7, backend="torch", progress=False)
    assert torch.equal(g.indices, want.indices) and g.k == 7 and g.metric == "l2"
    torch.testing.assert_close(g.distances, want.distances)
    lap = Graph.from_knn(g)  # what LaplacianAE.set_graph takes
    assert lap.num_nodes == 97 and lap.is_symmetric()


def test_knn_graph_hog_cosine_on_mnist(data_root, tmp_path):
    out = tmp_path / "g.npz"
    assert main(["knn-graph", "--data", f"mnist:{data_root}", "--split", "test", "--data-option", "classes=[3]",
                 "--features", "hog", "--metric", "cosine", "--k", "5", "--backend", "torch", "--out", str(out),
                 "--no-progress"]) == 0
    g = KnnGraph.load(out)
    from pyaeplus.data import open_dataset
    ds = open_dataset(f"mnist:{data_root}", split="test", classes=[3])
    feats = hog(ds.get_batch(torch.arange(len(ds)))[0].float())
    want = knn_graph(feats, 5, metric="cosine", backend="torch", progress=False)
    assert g.num_nodes == len(ds) and g.metric == "cosine"
    # exact search: the same neighbours (distance ties may be ordered by index either way within 1e-6)
    assert (g.indices == want.indices).float().mean() > 0.999


@pytest.mark.parametrize("argv, needle", [
    (["--k", "0"], "--k"),
    (["--metric", "nope"], "--metric"),
    (["--features", "sift"], "--features"),
])
def test_knn_graph_bad_flags_exit_2(tmp_path, capsys, argv, needle):
    np.save(tmp_path / "x.npy", np.zeros((5, 3), dtype=np.float32))
    with pytest.raises(SystemExit) as e:
        main(["knn-graph", "--data", str(tmp_path / "x.npy"), "--out", str(tmp_path / "g.npz"), *argv])
    assert e.value.code == 2 and needle in capsys.readouterr().err


def test_knn_graph_k_too_large_is_a_user_error(tmp_path, capsys):
    np.save(tmp_path / "x.npy", np.zeros((5, 3), dtype=np.float32))
    assert main(["knn-graph", "--data", str(tmp_path / "x.npy"), "--k", "9", "--out", str(tmp_path / "g.npz")]) == 2
    assert "k" in capsys.readouterr().err
    assert not (tmp_path / "g.npz").exists()
