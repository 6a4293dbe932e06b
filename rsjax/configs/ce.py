"""CE baseline: softmax cross-entropy alone; the embedding is the normalised FC1 output."""
from rsjax.configs.snca_base import get_config as _base


def get_config():
    c = _base()
    c.method = "ce"
    return c
