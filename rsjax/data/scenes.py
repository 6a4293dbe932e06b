"""Labeled scene images for deep metric learning: readers, a stratified split and fixed-shape batches.

A :class:`SceneImages` holds the whole dataset in host memory as ``uint8`` RGB images of one
size. :func:`load_scene_images` reads

* the arrays shipped in the data directory by name: ``ucmerced`` and ``rsscn7`` (128 x 128,
  see ``MANIFEST.md``), and the original-image subsets ``ucmerced_subset`` and
  ``rsscn7_subset``;
* any ``.npz`` with the keys ``images``, ``labels`` and ``class_names`` (``files`` optional);
* a folder of class folders, the layout of AID, NWPU-RESISC45, RSSCN7 and the UC Merced
  originals (TIFF, JPEG, PNG, BMP), resized with Pillow when the sizes differ or ``size`` asks;
* TensorFlow Datasets builders ``tfds:uc_merced``, ``tfds:eurosat/rgb`` and
  ``tfds:resisc45`` (``pip install 'rsjax[tfds]'``; RESISC45 needs ``manual_dir``).

Batching keeps shapes fixed so that the jitted step compiles once: :func:`train_batches` drops
the remainder of a shuffled epoch, :func:`eval_batches` pads the last batch and returns a mask.
"""
from __future__ import annotations

import collections
import dataclasses
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from rsjax.data.paths import DataError, data_dir, dataset_file

IMAGE_SUFFIXES = (".tif", ".tiff", ".jpg", ".jpeg", ".png", ".bmp")

#: Named arrays in the data directory: name -> path parts below ``data_dir()``.
NPZ_DATASETS = {
    "ucmerced": ("ucmerced_128", "ucmerced_128.npz"),
    "rsscn7": ("rsscn7_128", "rsscn7_128.npz"),
}
#: Named folders of original images in the data directory.
FOLDER_DATASETS = {
    "ucmerced_subset": ("ucmerced_subset", "Images"),
    "rsscn7_subset": ("rsscn7_subset",),
}
#: TFDS builders rsjax knows how to read (all have a single ``train`` split).
TFDS_BUILDERS = ("uc_merced", "eurosat/rgb", "resisc45")


@dataclasses.dataclass
class SceneImages:
    """A labeled image set held on the host.

    ``images`` is ``(N, H, W, 3)`` uint8 RGB, ``labels`` is ``(N,)`` int32 indexing
    ``class_names``, ``files`` (optional) names the source of each image.
    """
    images: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    files: list[str] | None = None

    def __post_init__(self):
        self.images = np.asarray(self.images)
        labels = np.asarray(self.labels)
        if labels.dtype.kind not in "iub" and not (labels.dtype.kind == "f" and np.all(np.mod(labels, 1) == 0)):
            raise DataError(f"labels must be integer class indices, got {labels.dtype}"
                            + (" with fractions" if labels.dtype.kind == "f" else ""))
        self.labels = labels.astype(np.int32, copy=False)
        self.class_names = [str(c) for c in self.class_names]
        if self.files is not None:
            self.files = [str(f) for f in self.files]
        if self.images.ndim != 4 or self.images.shape[-1] != 3 or self.images.dtype != np.uint8:
            raise DataError(f"images must be (N, H, W, 3) uint8, got {self.images.shape} {self.images.dtype}")
        if self.labels.shape != (self.images.shape[0],):
            raise DataError(f"{self.labels.shape[0] if self.labels.ndim else 0} labels for "
                            f"{self.images.shape[0]} images; need one label per image")
        if self.labels.size and (self.labels.min() < 0 or self.labels.max() >= len(self.class_names)):
            raise DataError(f"labels span [{self.labels.min()}, {self.labels.max()}] but there are "
                            f"{len(self.class_names)} class names")
        if self.files is not None and len(self.files) != self.images.shape[0]:
            raise DataError(f"{len(self.files)} file names for {self.images.shape[0]} images")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W) of the images."""
        return int(self.images.shape[1]), int(self.images.shape[2])

    def fingerprint(self) -> str:
        """sha1 of the images, labels and class names: whether two loads hold the same dataset."""
        import hashlib
        h = hashlib.sha1(np.ascontiguousarray(self.images).tobytes())
        h.update(np.ascontiguousarray(self.labels).tobytes())
        h.update("\n".join(self.class_names).encode())
        return h.hexdigest()

    def subset(self, idx: np.ndarray) -> "SceneImages":
        """The images at ``idx`` (class names kept, so labels keep their meaning)."""
        idx = np.asarray(idx)
        files = None if self.files is None else [self.files[i] for i in idx]
        return SceneImages(self.images[idx], self.labels[idx], list(self.class_names), files)


# ----------------------------------------------------------------------------- image IO

def read_image(path: Path, size: tuple[int, int] | None) -> np.ndarray:
    """One image as RGB uint8, resized with Pillow (LANCZOS) to ``size`` = (H, W) when given."""
    from PIL import Image
    try:
        with Image.open(path) as im:
            im = _to_rgb(im)
            if size is not None and im.size != (size[1], size[0]):
                im = im.resize((size[1], size[0]), Image.LANCZOS)
            return np.asarray(im, dtype=np.uint8)
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise _unreadable(path, e) from e


def _unreadable(path: Path, e: Exception) -> DataError:
    return DataError(f"{path}: cannot read the image ({e}); replace it with a JPEG, PNG or TIFF that opens, "
                     "or remove it.")


def _to_rgb(im):
    """A Pillow image as 8-bit RGB. Single-band 16-bit, 32-bit and float images ("I;16", "I",
    "F") are scaled by their maximum to 0-255 (Pillow's own conversion clips them at 255, which
    turns most of a 16-bit image white)."""
    from PIL import Image
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(im, dtype=np.float64)
        top = a.max()
        a = a * (255.0 / top) if top > 0 else a
        im = Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8))
    return im.convert("RGB")


def _image_shape(path: Path) -> tuple[int, int]:
    from PIL import Image
    try:
        with Image.open(path) as im:
            return im.size[1], im.size[0]
    except (OSError, ValueError) as e:
        raise _unreadable(path, e) from e


def _resize_array(images: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image
    if images.shape[1:3] == (size, size):
        return images
    return np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.LANCZOS)) for im in images])


def load_folder(root: str | Path, size: int | None = None, workers: int = 4) -> SceneImages:
    """Read a folder whose sub-folders are the classes (sorted by name = label order).

    Files with the suffixes in :data:`IMAGE_SUFFIXES` are read (other files and hidden
    entries are ignored) and converted to RGB. With ``size`` every image is resized to
    ``size x size`` with Pillow's LANCZOS filter; without it, images of a size other than the
    most common one are resized to that size (the UC Merced originals have a few 256 x 251).
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: no such folder; pass a folder whose sub-folders are the classes.")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name != "__MACOSX")
    if not class_dirs:
        raise DataError(f"{root}: no class folders inside; pass the folder whose sub-folders are the classes "
                        f"(for UC Merced, the 'Images' folder).")
    files: list[Path] = []
    labels: list[int] = []
    for label, d in enumerate(class_dirs):
        members = sorted(p for p in d.iterdir()
                         if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES)
        if not members:
            inner = [p for p in d.iterdir() if p.is_dir() and not p.name.startswith(".")]
            hint = (f" It holds folders ({', '.join(sorted(p.name for p in inner)[:3])}, ...): if those are the "
                    f"classes, pass {d} itself." if inner else "")
            raise DataError(f"{d}: class folder '{d.name}' holds no images ({', '.join(IMAGE_SUFFIXES)}); "
                            f"add its images or remove the folder.{hint}")
        files += members
        labels += [label] * len(members)
    if size is not None:
        target = (int(size), int(size))
    else:
        with ThreadPoolExecutor(workers) as pool:
            shapes = list(pool.map(_image_shape, files))
        target = collections.Counter(shapes).most_common(1)[0][0]
    need, free = len(files) * target[0] * target[1] * 3, available_memory()
    if free and need >= 2**28 and 2 * need > free:     # a run holds about twice the dataset (its splits copied)
        raise DataError(f"{root}: its {len(files)} images take {need / 2**30:.1f} GiB in memory at {target[0]} x "
                        f"{target[1]}, and a run about twice that: more than the {free / 2**30:.1f} GiB available; "
                        "hold them smaller (rsjax embed train --load-size N, or size=N here), for example at the "
                        "training --image-size.")
    images = np.empty((len(files), *target, 3), np.uint8)     # filled in place: no second copy

    def read_into(i: int) -> None:
        images[i] = read_image(files[i], target)
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(read_into, range(len(files))))
    return SceneImages(images, np.asarray(labels, np.int32), [d.name for d in class_dirs],
                       [str(p.relative_to(root)) for p in files])


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux ``MemAvailable``); None elsewhere."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def load_npz(path: str | Path, size: int | None = None) -> SceneImages:
    """Read an ``.npz`` with ``images`` (N, H, W, 3) uint8, ``labels`` (N,) and ``class_names``
    (``files`` optional); ``size`` resizes with Pillow's LANCZOS filter when it differs."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file; check the path.")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
        if "Object arrays" in str(e):
            raise DataError(f"{path}: an array in it holds Python objects, which rsjax does not unpickle; save the "
                            "class names as a str array: class_names=numpy.array(names, dtype=str).") from e
        raise DataError(f"{path}: cannot read it as an .npz archive ({type(e).__name__}: {str(e)[:120]}); write it "
                        "with numpy.savez(path, images=..., labels=..., class_names=...).") from e
    missing = [k for k in ("images", "labels", "class_names") if k not in arrays]
    if missing:
        raise DataError(f"{path}: missing key(s) {missing}; a scene .npz needs 'images' (N, H, W, 3) uint8, "
                        f"'labels' (N,) int and 'class_names' (C,) str (found {sorted(arrays)}).")
    images, labels, names, files = arrays["images"], arrays["labels"], arrays["class_names"], arrays.get("files")
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{path}: 'labels' must be integers indexing 'class_names', got {labels.dtype}.")
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise DataError(f"{path}: 'images' must be (N, H, W, 3) uint8, got {images.shape} {images.dtype}.")
    if labels.shape != images.shape[:1] or names.ndim != 1:
        raise DataError(f"{path}: 'labels' must be (N,) = ({images.shape[0]},) and 'class_names' (C,), got "
                        f"{labels.shape} and {names.shape}.")
    if labels.size and (labels.min() < 0 or labels.max() >= names.size):
        raise DataError(f"{path}: 'labels' span [{labels.min()}, {labels.max()}] but must index its {names.size} "
                        f"'class_names' as 0 .. {names.size - 1}.")
    if size is not None:
        images = _resize_array(images, int(size))
    return SceneImages(images, labels.astype(np.int32), list(names), None if files is None else list(files))


# ----------------------------------------------------------------------------- TFDS

def _import_tfds():
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise DataError("reading TFDS datasets needs tensorflow-datasets and TensorFlow: "
                        "pip install 'rsjax[tfds]'") from e
    try:  # keep TensorFlow off the accelerators that JAX uses
        import tensorflow as tf
        tf.config.set_visible_devices([], "GPU")
    except Exception:  # noqa: BLE001 - TensorFlow may be absent or already initialised
        pass
    return tfds


def load_tfds(builder: str, size: int | None = None, manual_dir: str | Path | None = None,
              tfds_data_dir: str | Path | None = None, split: str = "train") -> SceneImages:
    """Read a TFDS image-classification builder (``uc_merced``, ``eurosat/rgb``, ``resisc45``).

    ``manual_dir`` is the folder holding the manually downloaded archive (RESISC45 needs it).
    Images of another size than ``size`` are resized with Pillow; without ``size``, the most
    common size is used, as for folders.
    """
    if builder not in TFDS_BUILDERS:
        raise DataError(f"unknown TFDS builder {builder!r}; rsjax reads {', '.join(TFDS_BUILDERS)}.")
    tfds = _import_tfds()
    kwargs = {}
    if manual_dir is not None:
        kwargs["download_and_prepare_kwargs"] = {
            "download_config": tfds.download.DownloadConfig(manual_dir=str(manual_dir))}
    try:
        ds, info = tfds.load(builder, split=split, with_info=True, data_dir=tfds_data_dir, **kwargs)
    except Exception as e:  # noqa: BLE001 - TFDS raises many kinds of errors
        hint = (" (RESISC45 is downloaded by hand: put NWPU-RESISC45.rar in TFDS's manual folder, "
                "~/tensorflow_datasets/downloads/manual/, or pass manual_dir=; or give the extracted "
                "NWPU-RESISC45 folder of class folders as the dataset)") if builder == "resisc45" else ""
        raise DataError(f"TFDS could not load {builder!r}{hint}: {e}") from e
    names = list(info.features["label"].names)
    raw, files = [], []
    for ex in tfds.as_numpy(ds):
        raw.append((np.asarray(ex["image"]), int(ex["label"])))
        name = ex.get("filename", b"")
        files.append(name.decode() if isinstance(name, bytes) else str(name))
    if not raw:
        raise DataError(f"TFDS {builder!r} split {split!r} is empty.")
    target = (size, size) if size is not None else collections.Counter(im.shape[:2] for im, _ in raw).most_common(1)[0][0]
    from PIL import Image
    images = []
    for im, _ in raw:
        if im.shape[-1] != 3:
            im = np.asarray(Image.fromarray(im.squeeze()).convert("RGB"))
        if im.shape[:2] != tuple(target):
            im = np.asarray(Image.fromarray(im).resize((target[1], target[0]), Image.LANCZOS))
        images.append(im.astype(np.uint8))
    return SceneImages(np.stack(images), np.asarray([y for _, y in raw], np.int32), names,
                       files if any(files) else None)


# ----------------------------------------------------------------------------- entry point

def dataset_key(name_or_path: str | Path) -> str:
    """How a run records its dataset: a name :func:`load_scene_images` knows as it is, a path made
    absolute (so that the run's directory can be evaluated or resumed from anywhere)."""
    key = str(name_or_path)
    if not key.strip():
        raise DataError("the dataset is empty: pass a dataset name (ucmerced, rsscn7, ...), an .npz file or a folder.")
    if key in NPZ_DATASETS or key in FOLDER_DATASETS or key.startswith("tfds:") or key in TFDS_BUILDERS:
        return key
    return str(Path(key).expanduser().resolve())


def load_scene_images(name_or_path: str | Path, size: int | None = None, *,
                      manual_dir: str | Path | None = None) -> SceneImages:
    """Load a scene dataset by name or path.

    Names: ``ucmerced`` and ``rsscn7`` (the 128 x 128 arrays in the data directory),
    ``ucmerced_subset`` and ``rsscn7_subset`` (original images), ``tfds:<builder>`` or the bare
    builder names ``uc_merced``, ``eurosat/rgb``, ``resisc45`` (TFDS; ``manual_dir`` for
    RESISC45). Paths: an ``.npz`` file or a folder of class folders. ``size`` resizes every
    image to ``size x size`` with Pillow.
    """
    key = str(name_or_path)
    if key in NPZ_DATASETS:
        return load_npz(dataset_file(*NPZ_DATASETS[key]), size)
    if key in FOLDER_DATASETS:
        return load_folder(dataset_file(*FOLDER_DATASETS[key]), size)
    if key.startswith("tfds:") or key in TFDS_BUILDERS:
        return load_tfds(key.removeprefix("tfds:"), size, manual_dir=manual_dir)
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return load_folder(path, size)
    if path.suffix.lower() == ".npz":
        return load_npz(path, size)
    known = sorted(NPZ_DATASETS) + sorted(FOLDER_DATASETS) + [f"tfds:{b}" for b in TFDS_BUILDERS]
    where = f" (data directory: {data_dir(required=False)})"
    raise DataError(f"unknown scene dataset {key!r}: not a known name ({', '.join(known)}), "
                    f"an existing folder of class folders or an .npz file{where}.")


# ----------------------------------------------------------------------------- splits and batches

def _parts_of(assign: np.ndarray, labels: np.ndarray, c: int, part: int) -> np.ndarray:
    return np.flatnonzero((labels == c) & (assign == part))


def stratified_split(labels: np.ndarray, seed: int, fractions: Sequence[float] = (0.7, 0.1, 0.2)
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Train / val / test index arrays (sorted), stratified by class and deterministic per seed.

    scikit-learn's ``train_test_split(stratify=...)`` draws the test part, then the val part
    from the rest (``fractions`` = train, val, test; val may be 0). Then every class that has
    enough members is given at least one item in each non-empty part, in the order train,
    test, val (a class of two goes to train and test): one item moves from the part holding
    the most items of that class. Classes too small for stratification fall back to a
    plain shuffle followed by the same repair.
    """
    from sklearn.model_selection import train_test_split
    labels = np.asarray(labels).ravel()
    n = labels.size
    fr = np.asarray(fractions, float)
    if fr.shape != (3,) or np.any(fr < 0) or fr[0] <= 0 or abs(fr.sum() - 1) > 1e-6:
        raise ValueError(f"fractions must be (train > 0, val >= 0, test >= 0) summing to 1, got {tuple(fractions)}")
    n_test = int(round(fr[2] * n))
    n_val = int(round(fr[1] * n))
    if n - n_test - n_val < 1:
        raise DataError(f"{n} samples are too few for the fractions {tuple(fractions)}.")
    idx = np.arange(n)

    def draw(pool: np.ndarray, k: int, salt: int) -> tuple[np.ndarray, np.ndarray]:
        if k == 0:
            return pool, pool[:0]
        try:
            rest, part = train_test_split(pool, test_size=k, stratify=labels[pool], random_state=seed + salt)
        except ValueError:  # a class with one member, or fewer test items than classes
            rest, part = train_test_split(pool, test_size=k, random_state=seed + salt)
        return rest, part

    rest, test = draw(idx, n_test, 0)
    train, val = draw(rest, n_val, 7919)
    assign = np.zeros(n, np.int64)                      # 0 train, 1 val, 2 test
    assign[val], assign[test] = 1, 2
    order = [0] + [p for p in (2, 1) if (n_test if p == 2 else n_val) > 0]
    rng = np.random.default_rng(seed)
    for c in np.unique(labels):
        needed = order[:int(np.sum(labels == c))]       # the parts this class can fill
        for part in needed:
            if _parts_of(assign, labels, c, part).size:
                continue
            counts = {p: _parts_of(assign, labels, c, p).size for p in order}
            spare = {p: k - (1 if p in needed else 0) for p, k in counts.items()}
            donor = max(order, key=lambda p: (spare[p], counts[p]))
            if spare[donor] < 1:
                continue
            assign[rng.choice(_parts_of(assign, labels, c, donor))] = part
    return tuple(np.flatnonzero(assign == p) for p in (0, 1, 2))


def train_batches(n: int, batch_size: int, seed: int, epoch: int) -> Iterator[np.ndarray]:
    """Shuffled index arrays of exactly ``batch_size`` for one epoch (the remainder is dropped).

    The permutation depends only on ``(seed, epoch)``, so a resumed run sees the same batches.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if n < batch_size:
        raise DataError(f"the training set has {n} images, fewer than one batch of {batch_size}; "
                        f"lower the batch size to at most {n}.")
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    for b in range(n // batch_size):
        yield perm[b * batch_size:(b + 1) * batch_size]


def eval_batches(n: int, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """In-order index arrays of exactly ``batch_size`` and a boolean mask of the real entries.

    The last batch is padded with index 0 (a valid index whose output the mask discards), so
    every batch has the same shape and the evaluation step compiles once.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if n < 1:
        raise DataError("nothing to evaluate: the set is empty.")
    for start in range(0, n, batch_size):
        idx = np.arange(start, start + batch_size)
        mask = idx < n
        yield np.where(mask, idx, 0), mask
