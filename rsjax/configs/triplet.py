"""Triplet baseline: the triplet loss alone (margin 0.2, batch-all over the batch; no FC2)."""
from rsjax.configs.snca_base import get_config as _base


def get_config():
    c = _base()
    c.method = "triplet"
    return c
