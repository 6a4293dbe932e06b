"""SNCA-CE(MU): CE + lambda * SNCA, bank rows overwritten by a momentum encoder (EMA m = 0.999)."""
from rsjax.configs.snca_base import get_config as _base


def get_config():
    c = _base()
    c.method = "snca-ce-mu"
    c.m = 0.999                   # the code's moment_update(model, model_ema, 0.999)
    return c
