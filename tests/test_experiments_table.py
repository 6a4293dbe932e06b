"""experiments/table_clustering.py: the statistics its notes print."""
import numpy as np
from scipy import stats

from experiments.table_clustering import welch_note


def test_welch_note_matches_hand_computed_statistics():
    """Standard errors, difference and Welch's p-value as computed by hand (t, Welch-Satterthwaite
    degrees of freedom, Student's t tail); identical samples give p = 1; one seed gives no note."""
    a, b = [58.0, 61.5, 55.2, 60.1, 63.0], [52.0, 54.5, 57.1, 50.3]
    va, vb = np.var(a, ddof=1) / len(a), np.var(b, ddof=1) / len(b)
    t = (np.mean(a) - np.mean(b)) / np.sqrt(va + vb)
    dof = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    p = 2 * stats.t.sf(abs(t), dof)
    note = welch_note(a, b)
    assert f"rsjax {np.sqrt(va):.2f}, PyTorch {np.sqrt(vb):.2f}" in note
    assert f"difference {np.mean(a) - np.mean(b):+.2f}" in note and f"p = {p:.2f})" in note
    assert "p = 1.00" in welch_note(a, list(a)) and welch_note([60.0], b) == ""
