"""MS2A-Net on one hyperspectral scene, paper defaults (REFERENCE_NOTES.md)."""
import json

import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.method = "ms2anet"          # ms2anet | ae | cae | kmeans
    c.dataset = "salinas-a"
    c.iters = 800
    c.chunk = 50                  # iterations per compiled lax.scan chunk (one host sync each)
    c.lr = 1e-3
    c.lam = 0.1                   # lambda of the spectral mean constraint
    c.d1 = 12                     # filters per dilated stream; M' has len(dilations) * d1 channels
    c.d2 = 3                      # SPF channels
    c.d3 = 3                      # SAF channels
    c.dilations = (1, 2, 4)
    c.kernel_size = 5
    c.ablation = "A3"             # A1 spectral only, A2 spatial only, A3 both
    c.spf_odd = "crop"            # odd H or W: SPF's x2 upsampling "crop"ped, or "resize"d to H x W
    c.dtype = "float32"           # of the convolutions: float32 | bfloat16 (mixed precision, for GPUs)
    c.latent = 36                 # AE / CAE code size
    c.keep = "updated"            # lowest loss keeps the parameters after its update (authors' code) | "evaluated"
    c.seeds = (0,)
    c.kmeans_seed = 0             # scikit-learn KMeans random_state, as in the authors' code
    return c


# The fields that shape each method's training (the rest: which scene, which seeds, k-means, and
# ``chunk``, how many iterations run between host syncs, which does not change what is computed).
TRAINING_FIELDS = {
    "ms2anet": ("iters", "lr", "lam", "d1", "d2", "d3", "dilations", "kernel_size", "ablation",
                "spf_odd", "dtype", "keep"),
    "ae": ("iters", "lr", "latent", "keep"),
    "cae": ("iters", "lr", "latent", "keep"),
    "kmeans": (),
}


def training_settings(cfg) -> dict:
    """``cfg.method`` and the :data:`TRAINING_FIELDS` that act for it, as JSON values (tuples as
    lists), so that settings stored with a run compare equal to the same settings asked again."""
    fields = TRAINING_FIELDS.get(cfg.method)
    if fields is None:
        raise ValueError(f"unknown method {cfg.method!r}; use one of {', '.join(TRAINING_FIELDS)}.")
    return json.loads(json.dumps({"method": cfg.method, **{k: cfg[k] for k in fields}}, default=list))
