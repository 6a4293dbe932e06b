"""SNCA-CE(MB): CE + lambda * SNCA, bank rows updated by momentum (m = 0.5, fixed as in the paper;
``m_schedule_epochs=(80, 120), m_schedule_values=(0.8, 0.9)`` raises it as the authors' code does)."""
from rsjax.configs.snca_base import get_config as _base


def get_config():
    c = _base()
    c.method = "snca-ce-mb"
    return c
