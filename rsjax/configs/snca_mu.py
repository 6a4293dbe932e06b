"""SNCA(MU): the SNCA loss alone (no FC2), bank rows overwritten by a momentum encoder."""
from rsjax.configs.snca_base import get_config as _base


def get_config():
    c = _base()
    c.method = "snca-mu"
    c.m = 0.999
    return c
