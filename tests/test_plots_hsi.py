"""The class map: clusters shown in the colour of their matched class, whatever pixels they cover."""
import numpy as np
from PIL import Image

from rsjax.plots.hsi import class_map_figure, matched_map


def test_matched_map_gives_matched_clusters_their_class_and_others_ids_of_their_own():
    gt = np.array([[1, 1, 2, 2, 0, 0],
                   [1, 1, 2, 2, 0, 0]])
    clusters = np.array([[7, 7, 3, 3, 5, 9],     # 7 -> class 1, 3 -> class 2; 5 and 9 only on unlabeled
                         [7, 7, 3, 4, 5, 9]])    # 4: one labeled pixel, but class 2 went to cluster 3
    shown = matched_map(gt, clusters, n_classes=2)
    assert shown[0, 0] == 1 and shown[0, 2] == 2
    others = {int(shown[1, 3]), int(shown[0, 4]), int(shown[0, 5])}
    assert others == {3, 4, 5}                     # distinct ids after the two classes
    assert (shown[clusters == 5] == shown[0, 4]).all()


def test_class_map_is_written_when_a_cluster_covers_only_unlabeled_pixels(tmp_path):
    """The case that once raised StopIteration: more clusters without a class than matched ones."""
    gt = np.zeros((8, 8), dtype=np.int64)
    gt[:2] = 1
    clusters = np.repeat(np.arange(4), 16).reshape(8, 8)      # clusters 1..3 lie on unlabeled rows only
    path = class_map_figure(gt, clusters, ["water"], tmp_path / "map.png", title="t")
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] > 100
