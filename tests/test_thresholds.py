"""Thresholds on known distributions, metrics against scikit-learn, normalization and combination."""

import math

import numpy as np
import pytest
import torch
from scipy import stats
from sklearn import metrics as skm

from pyaeplus import scoring


@pytest.fixture
def normal():
    return np.random.default_rng(0).standard_normal(200_000)


def test_mean_std(normal):
    assert scoring.threshold(normal, "mean_std") == pytest.approx(normal.mean() + normal.std())
    assert scoring.threshold(normal, "mean_std", k=3) == pytest.approx(3.0, abs=0.02)


def test_percentile_fpr_contamination(normal):
    assert scoring.threshold(normal, "percentile", q=99) == pytest.approx(stats.norm.ppf(0.99), abs=0.02)
    for rate in (0.01, 0.05, 0.2):
        t = scoring.threshold(normal, "fpr", rate=rate)
        assert (normal > t).mean() <= rate
        assert (normal > t).mean() == pytest.approx(rate, abs=1e-4)
        assert t == pytest.approx(stats.norm.ppf(1 - rate), abs=0.02)
    t = scoring.threshold(normal, "contamination", c=0.1)
    assert (normal > t).sum() == 20_000
    small = np.arange(10.0)
    assert (small > scoring.threshold(small, "contamination", c=0.25)).sum() == 2  # floor(2.5)


def test_pot_on_exponential_tail():
    # exponential scores: the excess distribution is exactly a GPD with gamma=0, so the POT quantile
    # at risk q must match the true quantile -log(q)
    x = np.random.default_rng(1).exponential(size=200_000)
    for q in (1e-3, 1e-4):
        t = scoring.threshold(x, "pot", q=q, init_level=0.98)
        assert t == pytest.approx(-math.log(q), rel=0.05)
    # gaussian: the extrapolated quantile is close to the true one
    g = np.random.default_rng(2).standard_normal(200_000)
    assert scoring.threshold(g, "pot", q=1e-4, init_level=0.99) == pytest.approx(stats.norm.ppf(1 - 1e-4), rel=0.06)
    # heavy-tailed (Pareto, gamma=0.5)
    p = stats.genpareto.rvs(0.5, size=200_000, random_state=3)
    assert scoring.threshold(p, "pot", q=1e-3) == pytest.approx(stats.genpareto.ppf(1 - 1e-3, 0.5), rel=0.12)


def test_threshold_bad_input(normal):
    with pytest.raises(ValueError, match="scores"):
        scoring.threshold(np.array([1.0, np.nan]))
    with pytest.raises(ValueError, match="scores"):
        scoring.threshold(np.array([]))
    with pytest.raises(ValueError, match="scores"):
        scoring.threshold(np.ones((3, 2)))
    with pytest.raises(ValueError, match="method"):
        scoring.threshold(normal, "median")
    with pytest.raises(ValueError, match="rate"):
        scoring.threshold(normal, "fpr", rate=1.5)
    with pytest.raises(ValueError, match="c"):
        scoring.threshold(normal, "contamination", c=0)
    with pytest.raises(ValueError, match="q"):
        scoring.threshold(normal, "percentile", q=101)
    with pytest.raises(ValueError, match="q"):
        scoring.threshold(normal, "pot", q=0.05, init_level=0.98)
    with pytest.raises(TypeError, match="unexpected"):
        scoring.threshold(normal, "mean_std", q=3)
    with pytest.raises(ValueError, match="need more data"):
        scoring.threshold(np.arange(20.0), "pot", q=1e-3, init_level=0.99)


def test_metrics_against_sklearn():
    rng = np.random.default_rng(4)
    y = (rng.random(999) < 0.1).astype(int)
    s = rng.standard_normal(999) + 1.5 * y
    t = 1.0
    m = scoring.metrics(torch.tensor(s), torch.tensor(y), t)
    pred = (s > t).astype(int)
    assert m["auroc"] == pytest.approx(skm.roc_auc_score(y, s))
    assert m["ap"] == pytest.approx(skm.average_precision_score(y, s))
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["precision"] == pytest.approx(skm.precision_score(y, pred))
    assert m["recall"] == pytest.approx(skm.recall_score(y, pred))
    assert m["f1"] == pytest.approx(skm.f1_score(y, pred))
    assert "anomaly" in m["positive_class"] and m["n_anomalies"] == y.sum()
    # another label marks the anomalies
    m2 = scoring.metrics(s, np.where(y == 1, -1, 1), t, pos_label=-1)
    assert m2["auroc"] == pytest.approx(m["auroc"]) and m2["f1"] == pytest.approx(m["f1"])
    assert math.isnan(scoring.metrics(s, np.zeros(999), t)["auroc"])
    with pytest.raises(ValueError, match="labels"):
        scoring.metrics(s, y[:-1], t)
    with pytest.raises(ValueError, match="scores"):
        scoring.metrics(np.r_[s[:-1], np.nan], y, t)


def test_normalize():
    rng = np.random.default_rng(5)
    ref, s = rng.normal(3, 2, 5000), rng.normal(3, 2, 100)
    np.testing.assert_allclose(scoring.normalize(s, "zscore", ref), (s - ref.mean()) / ref.std())
    np.testing.assert_allclose(scoring.normalize(s, "minmax", ref), (s - ref.min()) / (ref.max() - ref.min()))
    rk = scoring.normalize(s, "rank", ref)
    np.testing.assert_allclose(rk, [(ref <= v).mean() for v in s])
    pv = scoring.normalize(s, "pvalue", ref)
    np.testing.assert_allclose(pv, [((ref >= v).sum() + 1) / (ref.size + 1) for v in s])
    two = scoring.normalize(np.stack([s, 10 * s], 1), "zscore", np.stack([ref, 10 * ref], 1))
    np.testing.assert_allclose(two[:, 0], two[:, 1])
    with pytest.raises(ValueError, match="method"):
        scoring.normalize(s, "l2")
    with pytest.raises(ValueError, match="reference"):
        scoring.normalize(np.stack([s, s], 1), "zscore", ref)


def test_combine():
    s = np.array([[1.0, 5.0, 2.0, 0.0], [3.0, 3.0, 3.0, 3.0]])
    np.testing.assert_allclose(scoring.combine(s, "mean"), [2.0, 3.0])
    np.testing.assert_allclose(scoring.combine(s, "max"), [5.0, 3.0])
    # one bucket: aom = max, moa = mean; M buckets: aom = mean, moa = max
    np.testing.assert_allclose(scoring.combine(s, "aom", n_buckets=1), [5.0, 3.0])
    np.testing.assert_allclose(scoring.combine(s, "moa", n_buckets=1), [2.0, 3.0])
    np.testing.assert_allclose(scoring.combine(s, "aom", n_buckets=4), [2.0, 3.0])
    np.testing.assert_allclose(scoring.combine(s, "moa", n_buckets=4), [5.0, 3.0])
    perm = np.random.default_rng(0).permutation(4)
    g = np.array_split(perm, 2)
    np.testing.assert_allclose(scoring.combine(s, "aom", n_buckets=2, seed=0),
                               np.mean([s[:, g[0]].max(1), s[:, g[1]].max(1)], 0))
    with pytest.raises(ValueError, match="n_buckets"):
        scoring.combine(s, "aom", n_buckets=5)
    with pytest.raises(ValueError, match="method"):
        scoring.combine(s, "median")
    with pytest.raises(ValueError, match="scores"):
        scoring.combine(s[0], "mean")


def test_feature_subsets():
    subs = scoring.feature_subsets(10, 20, seed=1)
    assert len(subs) == 20
    for s in subs:
        assert 5 <= s.size <= 9 and np.all(np.diff(s) > 0) and s.max() < 10
    assert any(a.size != b.size or (a != b).any() for a, b in zip(subs, subs[1:]))
    with pytest.raises(ValueError, match="n_features"):
        scoring.feature_subsets(1)
