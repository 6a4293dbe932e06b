"""Where rsjax finds datasets that are not embedded in the package.

One setting: the ``RSJAX_DATA`` environment variable names a directory. When it is
unset, rsjax uses ``../shared/data`` next to the current directory or next to the
source checkout, when such a folder exists.
"""
from __future__ import annotations

import os
from pathlib import Path

EMBEDDED = Path(__file__).resolve().parent / "embedded"


class DataError(ValueError):
    """A dataset or file that rsjax cannot use; the message names the problem and the fix."""


_UNSET = "unset, ../shared/data beside the working directory or the rsjax checkout is used"


def data_dir(required: bool = True) -> Path | None:
    """The directory holding the non-embedded datasets (``RSJAX_DATA``)."""
    env = os.environ.get("RSJAX_DATA")
    if env:
        path = Path(env).expanduser()
        if not path.is_dir():
            raise DataError(f"RSJAX_DATA={env!r} is not a directory; point it at the folder that holds the datasets.")
        return path
    checkout = Path(__file__).resolve().parents[2]
    for candidate in (Path.cwd() / ".." / "shared" / "data", checkout / ".." / "shared" / "data"):
        if candidate.is_dir():
            return candidate.resolve()
    if required:
        raise DataError(
            "no data directory: set RSJAX_DATA to the folder that holds the datasets "
            f"(for example RSJAX_DATA=/data/rs; {_UNSET}), or pass the files by path.")
    return None


def dataset_file(*parts: str) -> Path:
    """A file inside the data directory, with an error naming the missing file."""
    root = data_dir(required=False)
    if root is None:
        raise DataError(f"{'/'.join(parts)} is read from the data directory, and there is none: set RSJAX_DATA to "
                        f"the folder that holds {parts[0]}/ ({_UNSET}), or pass the files by path.")
    path = root.joinpath(*parts)
    if not path.exists():
        raise DataError(f"{path} does not exist; put the file there or set RSJAX_DATA to the folder that holds it.")
    return path
