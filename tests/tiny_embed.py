"""The tiny embedding-training setting shared by the step and resume tests: a one-block ResNet
with 4 filters and D = 8 on 16 x 16 images, batch 8, a bank of N = 32 rows in C = 4 classes."""
from rsjax import configs

N, B, C, SIZE = 32, 8, 4, 16


def tiny_cfg(method, **over):
    """``method``'s config shrunk to the tiny setting, then ``over`` applied."""
    cfg = configs.get(method)
    cfg.stage_sizes, cfg.num_filters, cfg.dim = (1,), 4, 8
    cfg.image_size, cfg.batch_size, cfg.lr = SIZE, B, 0.05
    for k, v in over.items():
        setattr(cfg, k, v)
    return cfg
