"""Retrieval, kNN and k-means evaluation: vectorised metrics against naive loops and hand cases."""
import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rsjax.metrics.retrieval import (evaluate_embeddings, format_table, kmeans_scores, knn_scores, l2_normalize,
                                     nearest_neighbors, retrieval_scores)


# ----------------------------------------------------------------------------- naive references

def _ranking(sims_row):
    """Archive indices by decreasing similarity, ties by index (a plain Python sort)."""
    return sorted(range(len(sims_row)), key=lambda j: -sims_row[j])


def _naive(query_emb, query_y, archive_emb, archive_y, ks, levels, interpolated, exclude_self=False):
    tot = {"map": 0.0, "map@r": 0.0, "r_precision": 0.0, "p@1": 0.0, **{f"recall@{k}": 0.0 for k in ks}}
    curve = [0.0] * len(levels)
    used = 0
    # the same similarity matrix as the library (exact ties must stay ties); the ranking is a Python sort
    sims = l2_normalize(query_emb) @ l2_normalize(archive_emb).T
    for i in range(len(query_y)):
        order = _ranking([float(v) for v in sims[i]])
        if exclude_self:
            order = [j for j in order if j != i]
        rel = [archive_y[j] == query_y[i] for j in order]
        r = sum(rel)
        if r == 0:
            continue
        used += 1
        hits, precs, recs = 0, [], []
        ap = apr = 0.0
        for n, is_rel in enumerate(rel, start=1):
            hits += is_rel
            precs.append(hits / n)
            recs.append(hits / r)
            if is_rel:
                ap += hits / n
                if n <= r:
                    apr += hits / n
        tot["map"] += ap / r
        tot["map@r"] += apr / r
        tot["r_precision"] += sum(rel[:r]) / r
        tot["p@1"] += rel[0]
        for k in ks:
            tot[f"recall@{k}"] += any(rel[:k])
        for li, level in enumerate(levels):
            if interpolated:
                curve[li] += max(p for p, rc in zip(precs, recs) if rc >= level - 1e-12)
            else:
                first = next(n for n, rc in enumerate(recs) if rc >= max(level, 1e-9) - 1e-12)
                curve[li] += precs[first]
    return {**{k: v / used for k, v in tot.items()}, "curve": [c / used for c in curve], "used": used}


def _random_case(seed, nq=9, na=17, d=4, c=3):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(nq, d)), rng.integers(0, c, nq), rng.normal(size=(na, d)), rng.integers(0, c, na))


# ----------------------------------------------------------------------------- retrieval

@pytest.mark.parametrize("interpolated", [True, False])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_retrieval_matches_naive_loop(seed, interpolated):
    q, qy, a, ay = _random_case(seed)
    qy[0] = 7                                                  # a query with no relevant archive item
    levels = np.linspace(0, 1, 11)
    got = retrieval_scores(q, qy, a, ay, ks=(1, 3, 5), recall_levels=levels, interpolated=interpolated, chunk=4)
    ref = _naive(q, qy, a, ay, (1, 3, 5), levels, interpolated)
    for key in ("map", "map@r", "r_precision", "p@1", "recall@1", "recall@3", "recall@5"):
        assert got[key] == pytest.approx(ref[key], abs=1e-12), key
    np.testing.assert_allclose(got["pr_curve"]["precision"], ref["curve"], atol=1e-12)
    assert got["n_queries"] == ref["used"] == len(qy) - 1 and got["n_skipped"] == 1


@settings(derandomize=True, deadline=None, database=None, max_examples=15)
@given(st.integers(0, 10_000), st.integers(1, 6), st.booleans(), st.sampled_from([5, 1024]))
def test_retrieval_property_with_ties(seed, c, interpolated, chunk):
    """Leave-one-out retrieval of 12 items equals the naive ranking, also when the queries are
    processed in chunks of 5 (each chunk's own rows excluded at its offset)."""
    rng = np.random.default_rng(seed)
    # few distinct directions -> many exact similarity ties
    a = rng.integers(-1, 2, size=(12, 2)).astype(float) + np.array([0.0, 1e-3])
    ay = rng.integers(0, c, 12)
    got = retrieval_scores(a, ay, a, ay, ks=(1, 2), interpolated=interpolated, exclude_self=True, chunk=chunk)
    ref = _naive(a, ay, a, ay, (1, 2), np.linspace(0, 1, 11), interpolated, exclude_self=True)
    assert ref["used"] > 0 and got["n_queries"] == ref["used"]    # 12 items in at most 6 classes
    for key in ("map", "map@r", "r_precision", "p@1", "recall@1", "recall@2"):
        assert got[key] == pytest.approx(ref[key], abs=1e-12), key
    np.testing.assert_allclose(got["pr_curve"]["precision"], ref["curve"], atol=1e-12)


def test_retrieval_without_relevant_items_is_nan():
    """Every item alone in its class: left out of its own results, no query has a relevant item."""
    a = np.eye(4)
    got = retrieval_scores(a, np.arange(4), a, np.arange(4), ks=(1,), exclude_self=True, chunk=3)
    assert got["n_queries"] == 0 and math.isnan(got["map"])


def test_retrieval_hand_computed():
    # archive on the unit circle at angles 0, 10, 20, 30 degrees; query at 0 degrees, class 0
    ang = np.deg2rad([0, 10, 20, 30])
    archive = np.stack([np.cos(ang), np.sin(ang)], 1)
    ay = np.array([0, 1, 0, 1])                               # ranking: rel, non, rel, non
    out = retrieval_scores(np.array([[1.0, 0.0]]), np.array([0]), archive, ay, ks=(1, 2),
                           recall_levels=[0.0, 0.5, 1.0], interpolated=False)
    assert out["p@1"] == 1.0 and out["recall@1"] == 1.0
    assert out["map"] == pytest.approx((1 / 1 + 2 / 3) / 2)
    assert out["map@r"] == pytest.approx((1 / 1) / 2)         # R = 2: only rank 1 counts
    assert out["r_precision"] == pytest.approx(0.5)
    assert out["pr_curve"]["precision"] == pytest.approx([1.0, 1.0, 2 / 3])
    # query of class 1: ranking non, rel, non, rel
    out = retrieval_scores(np.array([[1.0, 0.0]]), np.array([1]), archive, ay, ks=(1, 2))
    assert out["p@1"] == 0.0 and out["recall@1"] == 0.0 and out["recall@2"] == 1.0
    assert out["map"] == pytest.approx((1 / 2 + 2 / 4) / 2)
    assert out["map@r"] == pytest.approx((1 / 2) / 2)


def test_perfect_embedding_scores_one():
    y = np.repeat(np.arange(3), 4)
    emb = np.eye(3)[y] + 0.01 * np.random.default_rng(0).normal(size=(12, 3))
    out = retrieval_scores(emb, y, emb, y, ks=(1, 3), exclude_self=True)
    for key in ("map", "map@r", "r_precision", "p@1", "recall@1", "recall@3"):
        assert out[key] == pytest.approx(1.0)
    assert out["pr_curve"]["precision"] == pytest.approx([1.0] * 11)


def test_nearest_neighbors():
    a = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    idx, sims = nearest_neighbors(np.array([[2.0, 0.1]]), a, k=2)
    assert idx.tolist() == [[0, 2]] and sims[0, 0] > sims[0, 1]
    idx, _ = nearest_neighbors(a, a, k=1, exclude_self=True)
    assert idx[:, 0].tolist() == [2, 2, 0]


def test_retrieval_errors():
    q, qy, a, ay = _random_case(0)
    with pytest.raises(ValueError, match="Recall@100 needs at least 100 archive items"):
        retrieval_scores(q, qy, a, ay, ks=(100,))
    with pytest.raises(ValueError, match="need \\(N, D\\) embeddings and N labels"):
        retrieval_scores(q, qy[:-1], a, ay)
    bad = q.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="embeddings contain NaN or inf"):
        retrieval_scores(bad, qy, a, ay)
    with pytest.raises(ValueError, match=r"recall levels must lie in \[0, 1\]"):
        retrieval_scores(q, qy, a, ay, recall_levels=np.array([0.0, 1.5]))


def test_class_labels_must_index_the_classes():
    q, qy, a, ay = _random_case(0)
    c = int(max(qy.max(), ay.max())) + 1
    with pytest.raises(ValueError, match=r"test: labels must be class indices, integers 0 \.\. C - 1; got float64"):
        knn_scores(a, ay, q, qy.astype(np.float64))
    with pytest.raises(ValueError, match=rf"train: labels must be class indices, integers 0 \.\. {c - 1}; got int64 "
                                         rf"\[1, {c}\]"):
        evaluate_embeddings(a, ay.astype(np.int64) + 1, q, qy, c)


# ----------------------------------------------------------------------------- kNN and k-means

def test_knn_matches_naive_weighted_vote():
    rng = np.random.default_rng(4)
    tr, ty = rng.normal(size=(30, 3)), rng.integers(0, 3, 30)
    te, yy = rng.normal(size=(10, 3)), rng.integers(0, 3, 10)
    res = knn_scores(tr, ty, te, yy, ks=(1, 5), n_classes=4)
    for k in (1, 5):
        pred = []
        for x in te:
            d = np.linalg.norm(tr - x, axis=1)
            nn = np.argsort(d, kind="stable")[:k]
            votes = np.zeros(3)
            np.add.at(votes, ty[nn], 1 / d[nn])
            pred.append(int(np.argmax(votes)))
        np.testing.assert_array_equal(res[k]["pred"], pred)
        assert res[k]["oa"] == pytest.approx(np.mean(np.array(pred) == yy))
        assert res[k]["f1"].shape == (4,) and res[k]["f1"][3] == 0.0
        # per-class F1 by hand
        for c in range(3):
            tp = np.sum((np.array(pred) == c) & (yy == c))
            denom = np.sum(np.array(pred) == c) + np.sum(yy == c)
            assert res[k]["f1"][c] == pytest.approx(0.0 if denom == 0 else 2 * tp / denom)


def test_kmeans_scores_separated_clusters():
    y = np.repeat(np.arange(3), 5)
    emb = np.eye(3)[y] * 5 + 0.01 * np.random.default_rng(0).normal(size=(15, 3))
    perm = np.array([2, 0, 1])[y]                              # label ids unrelated to cluster ids
    out = kmeans_scores(emb, perm, 3)
    assert out["nmi"] == pytest.approx(1.0) and out["acc"] == pytest.approx(1.0)


# ----------------------------------------------------------------------------- the table

def test_evaluate_embeddings_table_and_json():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 8))
    ty, yy = np.repeat(np.arange(3), 12), np.repeat(np.arange(3), 4)
    tr = centres[ty] + 0.3 * rng.normal(size=(36, 8))
    te = centres[yy] + 0.3 * rng.normal(size=(12, 8))
    res = evaluate_embeddings(tr, ty, te, yy, n_classes=3, class_names=["a", "b", "c"], threads=1)
    for key in ("knn_oa@1", "knn_oa@5", "knn_oa@10", "knn_f1@10", "kmeans_nmi", "kmeans_acc", "map", "map@r",
                "p@1", "recall@1", "recall@5", "recall@10"):
        assert 0.0 <= res[key] <= 100.0, key
    assert res["knn_oa@10"] > 90 and res["kmeans_acc"] > 90
    assert set(res["per_class_f1"]["10"]) == {"a", "b", "c"}
    assert len(res["pr_curve"]["recall"]) == len(res["pr_curve"]["precision"]) == 11
    assert res["n_train"] == 36 and res["n_test"] == 12 and res["n_queries"] == 12
    json.dumps(res)
    direct = retrieval_scores(l2_normalize(te), yy, l2_normalize(tr), ty)
    assert res["map"] == pytest.approx(100 * direct["map"])
    table = format_table(res)
    assert "knn_oa@10" in table and "per_class_f1" not in table
    both = format_table({"SNCA": res, "CE": res})
    assert "SNCA" in both.splitlines()[0] and "CE" in both.splitlines()[0]


def test_macro_f1_averages_over_the_classes_the_queries_hold():
    """Queries of two of four classes, all right: macro F1 is 1 (the absent classes' F1 of 0 stay in
    the per-class array but not in the mean)."""
    tr = np.repeat(np.eye(4), 5, axis=0)
    ty = np.repeat(np.arange(4), 5)
    te, yy = np.eye(4)[[1, 1, 3]], np.array([1, 1, 3])
    res = knn_scores(tr, ty, te, yy, ks=(1,), n_classes=4)[1]
    assert res["oa"] == 1.0 and res["f1_macro"] == 1.0 and res["f1"].tolist() == [0.0, 1.0, 0.0, 1.0]
