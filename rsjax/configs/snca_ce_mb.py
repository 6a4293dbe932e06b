"""SNCA-CE(MB): CE + lambda * SNCA, bank rows updated by momentum (m = 0.5, 0.8 at 80, 0.9 at 120)."""
from rsjax.configs.snca_base import get_config as _base


def get_config():
    c = _base()
    c.method = "snca-ce-mb"
    return c
