"""Hungarian-matched clustering metrics against scikit-learn and hand-computed values."""
import numpy as np
import pytest
from hypothesis import given, strategies as st
from sklearn.metrics import adjusted_rand_score, cohen_kappa_score, normalized_mutual_info_score

from rsjax.metrics.clustering import clustering_scores, hungarian_mapping, kmeans, match_labels, summarize

labels = st.lists(st.integers(1, 5), min_size=2, max_size=60)


@given(y=labels, perm_seed=st.integers(0, 1000))
def test_relabelled_identical_partition_scores_perfectly(y, perm_seed):
    y = np.array(y)
    perm = np.random.default_rng(perm_seed).permutation(10) + 100     # arbitrary cluster ids
    s = clustering_scores(y, perm[y])
    assert s["OA"] == pytest.approx(100.0) and s["AA"] == pytest.approx(100.0)
    assert s["NMI"] == pytest.approx(1.0) and s["ARI"] == pytest.approx(1.0)


def _optimal_matchings(y, pred):
    """All one-to-one cluster -> class assignments with the most matched samples (brute force)."""
    import itertools
    classes, clusters = np.unique(y), np.unique(pred)
    scored = []
    for assigned in itertools.permutations(list(classes) + [-1] * len(clusters), len(clusters)):
        m = dict(zip(clusters, assigned))
        scored.append((int(np.sum(np.array([m[p] for p in pred]) == y)), tuple(assigned)))
    best = max(s for s, _ in scored)
    return best, {a for s, a in scored if s == best}


@given(y=labels, pred=st.lists(st.integers(0, 4), min_size=60, max_size=60), perm_seed=st.integers(0, 1000))
def test_scores_invariant_under_cluster_permutation(y, pred, perm_seed):
    """OA, NMI and ARI never depend on cluster ids; AA and Kappa do not either when the optimal
    matching is unique (with ties, they depend on which optimal matching is taken)."""
    y = np.array(y)
    pred = np.array(pred[: len(y)])
    perm = np.random.default_rng(perm_seed).permutation(5)
    a, b = clustering_scores(y, pred), clustering_scores(y, perm[pred])
    keys = ["OA", "NMI", "ARI"]
    if len(_optimal_matchings(y, pred)[1]) == 1:
        keys += ["AA", "Kappa"]
    for k in keys:
        assert a[k] == pytest.approx(b[k], nan_ok=True)  # Kappa is 0/0 with a single class


@given(y=labels, pred=st.lists(st.integers(0, 6), min_size=60, max_size=60))
def test_oa_is_the_best_one_to_one_matching(y, pred):
    """OA equals the best matching found by brute force over small label sets."""
    y = np.array(y)
    pred = np.array(pred[: len(y)])
    assert clustering_scores(y, pred)["OA"] == pytest.approx(100.0 * _optimal_matchings(y, pred)[0] / len(y))


@given(y=labels, pred=st.lists(st.integers(0, 6), min_size=60, max_size=60))
def test_aa_and_kappa_equal_naive_loops_over_the_matched_labels(y, pred):
    """AA is the mean over classes of the matched accuracy, Kappa Cohen's (po - pe) / (1 - pe) over
    the matched labels (an unmatched cluster is a category of its own), counted in plain loops."""
    y = np.array(y)
    pred = np.array(pred[: len(y)])
    matched = match_labels(y, pred)
    s = clustering_scores(y, pred)
    accs = []
    for c in sorted(set(y.tolist())):
        members = [i for i in range(len(y)) if y[i] == c]
        accs.append(sum(matched[i] == c for i in members) / len(members))
    assert s["AA"] == pytest.approx(100 * sum(accs) / len(accs))
    n = len(y)
    po = sum(int(matched[i] == y[i]) for i in range(n)) / n
    pe = sum((y == k).sum() * (matched == k).sum() for k in set(y.tolist()) | set(matched.tolist())) / n ** 2
    if pe < 1:
        assert s["Kappa"] == pytest.approx(100 * (po - pe) / (1 - pe), abs=1e-9)


def test_hand_computed_case_and_sklearn_agreement():
    y = np.array([1, 1, 1, 2, 2, 3, 3, 3, 3, 3])
    p = np.array([7, 7, 8, 8, 8, 9, 9, 9, 9, 7])
    # matching 7->1, 8->2, 9->3: correct 2 + 2 + 4 = 8 of 10
    s = clustering_scores(y, p)
    assert s["OA"] == pytest.approx(80.0)
    assert s["per_class"] == pytest.approx({1: 200 / 3, 2: 100.0, 3: 80.0})
    assert s["AA"] == pytest.approx((200 / 3 + 100 + 80) / 3)
    matched = match_labels(y, p)
    assert s["Kappa"] == pytest.approx(100 * cohen_kappa_score(y, matched))
    assert s["NMI"] == pytest.approx(normalized_mutual_info_score(y, p))
    assert s["ARI"] == pytest.approx(adjusted_rand_score(y, p))
    # kappa by hand: po = 0.8, pe = sum_c (row_c * col_c) / n^2
    po, pe = 0.8, (3 * 3 + 2 * 3 + 5 * 4) / 100
    assert s["Kappa"] == pytest.approx(100 * (po - pe) / (1 - pe))


def test_more_clusters_than_classes_leave_some_unmatched():
    y = np.array([1, 1, 2, 2])
    p = np.array([0, 1, 2, 3])
    assert sorted(hungarian_mapping(y, p).values()).count(-1) == 2
    assert clustering_scores(y, p)["OA"] == pytest.approx(50.0)


def test_kmeans_and_summary():
    x = np.concatenate([np.zeros((10, 2)), np.ones((10, 2)) * 5])
    lab = kmeans(x, 2)
    assert clustering_scores(np.repeat([1, 2], 10), lab)["OA"] == 100.0
    with pytest.raises(ValueError, match=r"21 clusters requested for 20 samples; ask for at most 20"):
        kmeans(x, 21)
    s = summarize([{"OA": 1.0}, {"OA": 3.0}], keys=("OA",))
    assert s == {"OA": {"mean": 2.0, "std": 1.0}}
    nmi = 0.1 + 0.2                                   # 0.30000000000000004: equal scores summed otherwise
    noisy = summarize([{"NMI": nmi}, {"NMI": 0.3}], keys=("NMI",))["NMI"]
    assert np.std([nmi, 0.3]) > 0 and noisy["std"] == 0.0
    assert summarize([{"NMI": 0.3}, {"NMI": 0.3 + 1e-9}], keys=("NMI",))["NMI"]["std"] > 0


@pytest.mark.parametrize("seed", [1, 3])
def test_kmeans_is_the_authors_kmeans(seed):
    """scikit-learn's KMeans with random_state = seed and n_init = 10 (the former default the authors ran),
    on data without clean clusters, where other settings give other partitions."""
    from sklearn.cluster import KMeans
    x = np.random.default_rng(seed).normal(size=(300, 5))
    np.testing.assert_array_equal(kmeans(x, 6, seed=seed), KMeans(6, random_state=seed, n_init=10).fit_predict(x))
    for other in (dict(random_state=seed, n_init=1), dict(random_state=seed + 1, n_init=10)):
        assert not np.array_equal(kmeans(x, 6, seed=seed), KMeans(6, **other).fit_predict(x))
