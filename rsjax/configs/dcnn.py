"""D-CNN baseline (Cheng et al. 2018): CE + lambda * contrastive loss over the pairs of the batch."""
from rsjax.configs.snca_base import get_config as _base


def get_config():
    c = _base()
    c.method = "dcnn"
    return c
