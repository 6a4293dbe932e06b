"""rsjax: MS2A-Net hyperspectral clustering and SNCA-CE scene embeddings in JAX/Flax."""
from importlib import metadata as _metadata


def _version() -> str:
    """The installed distribution's version; from a checkout that is not installed (on PYTHONPATH),
    the one its setup.cfg declares."""
    try:
        return _metadata.version("rsjax")
    except _metadata.PackageNotFoundError:
        import configparser
        from pathlib import Path
        cfg = configparser.ConfigParser()
        cfg.read(Path(__file__).resolve().parents[1] / "setup.cfg")
        return cfg.get("metadata", "version", fallback="unknown")


__version__ = _version()
