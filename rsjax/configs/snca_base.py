"""Shared defaults of the SNCA-CE family (paper values; the authors' code differs where noted).

The per-method files (``snca_ce_mb``, ``snca_ce_mu``, ``snca_mb``, ``snca_mu``, ``dcnn``,
``triplet``, ``ce``) import :func:`get_config` and change a few fields;
``rsjax.configs.get('snca-ce-mb')`` returns a fresh one.
"""
import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.method = "snca-ce-mb"       # snca-ce-mb | snca-ce-mu | snca-mb | snca-mu | dcnn | triplet | ce
    c.dataset = "ucmerced"        # a name or path rsjax.data.scenes.load_scene_images understands
    c.split = (0.7, 0.1, 0.2)     # train / val / test
    c.data_sha1 = ""              # set when rsjax.embedding trains: SceneImages.fingerprint() of the dataset
    c.seed = 0                    # parameters, bank, batch order and augmentation all derive from it

    # Model: ResNet18 (ImageNet layout) + FC1 512 -> D (+ FC2 D -> C for the CE methods).
    c.stage_sizes = (2, 2, 2, 2)
    c.num_filters = 64
    c.dim = 128                   # D
    c.num_classes = 0             # C; 0 = from the training labels
    c.pretrained = ""             # path of a torchvision resnet18 state_dict (.pth); "" = from scratch
    c.dtype = "float32"           # of the convolutions and FC layers: float32 | bfloat16 (mixed precision, for GPUs)

    # Data and optimisation: SGD, Nesterov momentum 0.9, weight decay 1e-4, lr halved every 30 epochs.
    c.image_size = 256
    c.load_size = 0               # hold the dataset resized to load_size x load_size (Pillow) from loading on;
                                  # 0 = as stored. Saves memory for large images (AID: 600 px)
    c.batch_size = 256
    c.epochs = 100                # paper (the code: 130)
    c.lr = 0.01                   # paper (the code: 0.1)
    c.lr_decay_every = 30         # epochs
    c.lr_decay = 0.5
    c.momentum = 0.9
    c.nesterov = True
    c.weight_decay = 1e-4

    # Loss: CE + lambda * metric term (SNCA, contrastive or triplet).
    c.sigma = 0.1                 # SNCA temperature; paper (the code: 0.05)
    c.lam = 1.0                   # lambda
    c.margin = 0.0                # SNCA margin (the code's --margin); positive mass / exp(margin / sigma)
    c.contrastive_margin = 1.0    # Eq. 1 contrastive loss (dcnn_metric "contrastive"): different-class
                                  # pairs pushed beyond this Euclidean distance
    c.triplet_margin = 0.2
    c.triplet_mining = "all"      # all (batch-all) | hard (batch-hard)

    # Memory bank. m is the method's momentum: MB bank momentum (0.5, the paper's) or MU encoder
    # EMA momentum (0.999, set in the MU configs).
    c.m = 0.5
    c.m_schedule_epochs = ()      # MB only: m becomes m_schedule_values[k] from these epochs on; the
    c.m_schedule_values = ()      # paper keeps m fixed, the authors' code: (80, 120) -> (0.8, 0.9)
    c.bank_init_normalise = False # the authors' bank starts uniform in [-s, s] without normalising rows
    c.shuffle_bn = False          # MU: shuffle the batch before the momentum encoder (MoCo). Under jit
                                  # BatchNorm is over the global batch, so it only changes rounding.

    # Loop.
    c.log_every = 10              # steps between host syncs (progress bar, finiteness check)
    c.eval_batch_size = 256
    c.knn_k = 10
    c.keep_checkpoints = 2
    return c
