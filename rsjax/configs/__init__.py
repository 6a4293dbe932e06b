"""One ``get_config()`` per method; ``rsjax.configs.get(name)`` returns a fresh ConfigDict."""
import importlib


def get(name: str):
    module = name.replace("-", "_")
    return importlib.import_module(f"rsjax.configs.{module}").get_config()
