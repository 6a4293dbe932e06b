"""Converting PyTorch ResNet weights (a ``state_dict`` saved as ``.pth``) into rsjax variables.

Two key layouts are understood:

- torchvision's ``resnet18`` (``conv1.weight``, ``bn1.*``, ``layer1.0.conv1.weight``,
  ``layer1.0.downsample.0.weight``, ..., ``fc.*``), e.g. the ImageNet weights the paper starts
  from, saved by the user with ``torch.save(torchvision.models.resnet18(weights=...).state_dict(), path)``;
- the SNCA-CE authors' ``ResNet18_cls`` (``encoder.0.weight`` = conv1, ``encoder.1.*`` = bn1,
  ``encoder.4`` .. ``encoder.7`` = layer1 .. layer4, ``FC1.*``, ``FC2.*``), including their
  checkpoint files where the weights sit under ``state_dict`` or ``model_state_dict``.

A ``module.`` prefix (``DataParallel``) is stripped. torchvision's ImageNet classifier ``fc``
has no counterpart (the SNCA-CE heads are FC1/FC2) and is skipped, as are BatchNorm's
``num_batches_tracked`` counters. Layouts: convolution ``(O, I, kh, kw)`` -> HWIO
``(kh, kw, I, O)``; linear ``(out, in)`` -> ``(in, out)``; BatchNorm ``weight, bias,
running_mean, running_var`` -> params ``scale, bias`` and batch_stats ``mean, var``.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any, Mapping

import jax
import numpy as np

from rsjax.data.paths import DataError

_AUTHORS_PREFIX = {"encoder.0.": "conv1.", "encoder.1.": "bn1.", "encoder.4.": "layer1.",
                   "encoder.5.": "layer2.", "encoder.6.": "layer3.", "encoder.7.": "layer4.",
                   "FC1.": "fc1.", "FC2.": "fc2."}
_SKIPPED = re.compile(r"^fc\.|num_batches_tracked$")


def _canonical(key: str) -> str:
    """torchvision-style key for either layout (``module.`` stripped, authors' names mapped)."""
    if key.startswith("module."):
        key = key[len("module."):]
    for old, new in _AUTHORS_PREFIX.items():
        if key.startswith(old):
            return new + key[len(old):]
    return key


def _target(key: str) -> tuple[str, tuple[str, ...], str]:
    """(collection, module path, kind) of a canonical torch key; kind says how to convert."""
    parts = key.split(".")
    leaf = parts[-1]
    mods = parts[:-1]
    if mods and re.fullmatch(r"layer\d+", mods[0]):
        block = f"{mods[0]}_{mods[1]}"
        rest = mods[2:]
        if rest[:1] == ["downsample"]:
            rest = ["downsample_conv" if rest[1] == "0" else "downsample_bn"]
        mods = [block] + rest
    name = mods[-1].removeprefix("downsample_") if mods else ""
    if name.startswith("conv"):
        kind = "conv"
    elif name.startswith("bn"):
        kind = "bn"
    elif name.startswith("fc"):
        kind = "linear"
    else:
        raise KeyError(f"{key!r}: not a key of a torchvision ResNet or the authors' ResNet18_cls")
    if kind == "bn" and leaf in ("running_mean", "running_var"):
        return "batch_stats", tuple(mods), {"running_mean": "mean", "running_var": "var"}[leaf]
    if kind == "bn":
        return "params", tuple(mods), {"weight": "scale", "bias": "bias"}[leaf]
    if leaf == "weight":
        return "params", tuple(mods), "kernel"
    return "params", tuple(mods), leaf


def torch_resnet_to_flax(state_dict: Mapping[str, Any]) -> dict:
    """``{'params': ..., 'batch_stats': ...}`` nested dicts of numpy arrays from a ResNet
    ``state_dict`` (values: torch tensors or arrays), named as :class:`rsjax.models.resnet.ResNet`."""
    out: dict = {"params": {}, "batch_stats": {}}
    for key, value in state_dict.items():
        key = _canonical(key)
        if _SKIPPED.search(key):
            continue
        arr = value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)
        arr = arr.astype(np.float32)
        collection, mods, leaf = _target(key)
        if leaf == "kernel" and arr.ndim == 4:
            arr = arr.transpose(2, 3, 1, 0)          # OIHW -> HWIO
        elif leaf == "kernel" and arr.ndim == 2:
            arr = arr.T                               # (out, in) -> (in, out)
        node = out[collection]
        for m in mods:
            node = node.setdefault(m, {})
        node[leaf] = arr
    return out


def load_torch_state_dict(path: str | Path) -> dict:
    """Read a ``.pth`` file holding a ``state_dict`` (or a checkpoint dict with one under
    ``state_dict`` / ``model_state_dict`` / ``model``) with ``torch.load`` (weights only)."""
    try:
        import torch
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("reading a .pth file needs PyTorch (pip install torch); "
                          "or convert the arrays yourself and call torch_resnet_to_flax") from e
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such weights file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:   # not a torch file, or one holding more than tensors
        raise DataError(f"{path}: not a PyTorch state_dict rsjax can read ({type(e).__name__}: {str(e)[:200]}); "
                        "save the ResNet18's weights with torch.save(model.state_dict(), path).") from e
    for k in ("state_dict", "model_state_dict", "model"):
        if isinstance(obj, Mapping) and k in obj and isinstance(obj[k], Mapping):
            obj = obj[k]
            break
    return dict(obj)


def load_pretrained(variables: Mapping[str, Any], weights: str | Path | Mapping[str, Any]) -> dict:
    """``variables`` (from ``model.init``) with every entry found in ``weights`` replaced.

    ``weights`` is a ``.pth`` path or a ``state_dict``. Entries absent from the weights (the
    FC1/FC2 heads of an ImageNet checkpoint) keep their initial values, and so does FC2 when the
    weights classify another number of classes. A converted array whose module does not exist in
    the model, or whose shape differs otherwise, raises :class:`DataError`.
    """
    where = f"{weights}: " if isinstance(weights, (str, Path)) else "pretrained weights: "
    sd = load_torch_state_dict(weights) if isinstance(weights, (str, Path)) else weights
    try:
        converted = torch_resnet_to_flax(sd)
    except KeyError as e:
        raise DataError(f"{where}{e.args[0]}; pass the state_dict of a torchvision ResNet18.") from e
    result = jax.tree.map(np.asarray, {k: v for k, v in variables.items()})
    fc2_skipped = None          # (classes in the weights, in the model), said once for kernel and bias
    for collection, tree in converted.items():
        flat = _flatten(tree)
        target = result.get(collection, {})
        for path, arr in flat.items():
            node = target
            for m in path[:-1]:
                if not isinstance(node, Mapping) or m not in node:
                    raise DataError(f"{where}{collection}/{'/'.join(path)}: the model has no such entry "
                                    "(a ResNet other than ResNet18, or stage_sizes or num_filters differ?)")
                node = node[m]
            if path[-1] not in node:
                raise DataError(f"{where}{collection}/{'/'.join(path)}: the model has no such entry")
            if np.shape(node[path[-1]]) != arr.shape:
                if path[0] == "fc2":    # the classifier of another label set: this one's starts afresh
                    fc2_skipped = (arr.shape[-1], np.shape(node[path[-1]])[-1])
                    continue
                raise DataError(f"{where}{collection}/{'/'.join(path)}: shape {arr.shape} in the weights, "
                                f"{np.shape(node[path[-1]])} in the model (another dim?)")
            node[path[-1]] = arr
    if fc2_skipped:
        print(f"{where}FC2 classifies {fc2_skipped[0]} classes, this model {fc2_skipped[1]}: FC2 keeps its initial "
              "values.", file=sys.stderr)
    return result


def _flatten(tree: Mapping, prefix: tuple = ()) -> dict:
    flat = {}
    for k, v in tree.items():
        if isinstance(v, Mapping):
            flat.update(_flatten(v, prefix + (k,)))
        else:
            flat[prefix + (k,)] = v
    return flat
