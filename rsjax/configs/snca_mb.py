"""SNCA(MB): the SNCA loss alone (no FC2), bank rows updated by momentum."""
from rsjax.configs.snca_base import get_config as _base


def get_config():
    c = _base()
    c.method = "snca-mb"
    return c
