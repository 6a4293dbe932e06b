"""One ``get_config()`` per method; ``rsjax.configs.get(name)`` returns a fresh ConfigDict."""
import importlib
from collections.abc import Mapping


def get(name: str):
    """The config of a method (``ms2anet`` also serves ``ae``, ``cae`` and ``kmeans``: set ``method``)."""
    module = name.replace("-", "_")
    try:
        return importlib.import_module(f"rsjax.configs.{module}").get_config()
    except ModuleNotFoundError as e:
        if e.name != f"rsjax.configs.{module}":
            raise
        import pkgutil
        known = sorted(m.name.replace("_", "-") for m in pkgutil.iter_modules(__path__) if m.name != "snca_base")
        raise ValueError(f"no config named {name!r}; known: {', '.join(known)} (ae, cae and kmeans are "
                         "get('ms2anet') with method set).") from None


def parse_m_schedule(text: str) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """``'80:0.8,120:0.9'`` (the authors' code) -> ``((80, 120), (0.8, 0.9))``, the MB bank
    momentum's ``m_schedule_epochs`` and ``m_schedule_values``; ``'none'`` -> no schedule (the paper)."""
    if text.strip().lower() in ("", "none"):
        return (), ()
    try:
        pairs = [item.split(":") for item in text.split(",")]
        epochs, values = tuple(int(e) for e, _ in pairs), tuple(float(v) for _, v in pairs)
    except ValueError:
        raise ValueError(f"a bank momentum schedule is EPOCH:M pairs, as 80:0.8,120:0.9, or none; got {text!r}")
    if list(epochs) != sorted(set(epochs)) or min(epochs) < 0 or not all(0 <= v <= 1 for v in values):
        raise ValueError(f"a bank momentum schedule has increasing epochs of 0 or more and momenta in [0, 1]; got {text!r}")
    return epochs, values


def differences(stored: Mapping, wanted: Mapping, prefix: str = "") -> list[str]:
    """``'key: stored -> wanted'`` for every key of ``wanted`` whose value ``stored`` holds
    otherwise (nested mappings compared key by key, as ``parent.key``; keys ``stored`` lacks,
    written before they existed, are not compared)."""
    out = []
    for k, v in wanted.items():
        if k not in stored:
            continue
        if isinstance(v, Mapping) and isinstance(stored[k], Mapping):
            out += differences(stored[k], v, f"{prefix}{k}.")
        elif stored[k] != v:
            out.append(f"{prefix}{k}: {stored[k]!r} -> {v!r}")
    return out
