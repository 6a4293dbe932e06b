"""D-CNN baseline (Cheng et al. 2018): CE + lambda * D-CNN's pairwise metric term over the pairs of
the batch. The SNCA-CE paper sets D-CNN's parameters "the same as in the paper"; the authors' code
(``HingeLoss``) uses tau1 = 0.44 and tau2 = 0.05 (:func:`rsjax.losses.dcnn_loss`).
``dcnn_metric = "contrastive"`` uses the paper's Eq. 1 instead (margin ``contrastive_margin``)."""
from rsjax.configs.snca_base import get_config as _base


def get_config():
    c = _base()
    c.method = "dcnn"
    c.dcnn_metric = "hinge"      # hinge (D-CNN's term, the authors' code) | contrastive (Eq. 1)
    c.dcnn_tau1 = 0.44
    c.dcnn_tau2 = 0.05
    return c
