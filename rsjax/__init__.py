"""rsjax: MS2A-Net hyperspectral clustering and SNCA-CE scene embeddings in JAX/Flax."""
from importlib import metadata as _metadata

try:
    __version__ = _metadata.version("rsjax")
except _metadata.PackageNotFoundError:   # run from a checkout that is not installed
    __version__ = "unknown"
