"""Hyperspectral scenes: file readers, the registry of named scenes, validation and scaling.

A :class:`Scene` holds the cube as ``H x W x D`` float32, the ground truth as ``H x W``
integers (0 = unlabeled, classes 1..C), the class names and, for GeoTIFF input, the
georeference needed to write the cluster map back as a GeoTIFF.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

import numpy as np

from rsjax.data.paths import EMBEDDED, DataError, dataset_file


@dataclasses.dataclass
class Scene:
    name: str
    cube: np.ndarray            # (H, W, D) float32, raw values
    gt: np.ndarray              # (H, W) int32, 0 = unlabeled, 1..C classes
    class_names: list[str]
    georef: dict[str, Any] | None = None   # rasterio profile of a GeoTIFF input
    source: str | None = None              # the files it came from, for error messages

    @property
    def n_classes(self) -> int:
        return len(self.class_names)


# ----------------------------------------------------------------------------- readers

def _read_mat(path: Path) -> dict[str, np.ndarray]:
    import scipy.io
    import h5py
    try:
        raw = scipy.io.loadmat(path)
    except (NotImplementedError, ValueError):  # MATLAB v7.3 is HDF5 (also without MATLAB's header)
        if not h5py.is_hdf5(path):
            raise
        with h5py.File(path, "r") as f:
            # h5py sees MATLAB arrays with their axes reversed.
            return {k: np.asarray(v).T for k, v in f.items() if isinstance(v, h5py.Dataset)}
    return {k: v for k, v in raw.items() if not k.startswith("__")}


ENVI_DATA_SUFFIXES = (".img", ".dat", ".raw", ".bin", ".sli", ".hyspex", ".bsq", ".bil", ".bip")  # as spectral looks


def _envi(path: Path):
    try:
        import spectral.io.envi as envi
    except ImportError as e:
        raise DataError(f"{path}: reading ENVI files needs the 'spectral' package: pip install 'rsjax[geo]'") from e
    return envi


def _read_envi(path: Path) -> np.ndarray:
    envi = _envi(path)
    try:
        image = envi.open(str(path))
    except envi.EnviDataFileNotFoundError as e:
        raise DataError(f"{path}: the ENVI header's data file is missing; put it beside the header, named as the "
                        f"header without .hdr or with one of {', '.join(ENVI_DATA_SUFFIXES)}.") from e
    return np.asarray(image.load())


def nodata_value(path: str | Path, georef: dict | None) -> float | None:
    """The value that marks pixels without data: a GeoTIFF's nodata, an ENVI header's
    ``data ignore value``; None when the file names none."""
    if georef is not None:
        return georef.get("nodata")
    path = Path(path)
    if path.suffix.lower() != ".hdr" or not path.exists():
        return None
    value = _envi(path).read_envi_header(str(path)).get("data ignore value")
    if value is None:
        return None
    try:
        return float(value[0] if isinstance(value, list) and len(value) == 1 else value)
    except (TypeError, ValueError) as e:
        raise DataError(f"{path}: the header's 'data ignore value' ({value!r}) is not a number; write one number "
                        "there, or remove the line.") from e


def _envi_header_of(data_file: Path) -> Path | None:
    """The ENVI header beside a data file (``a.img``: ``a.hdr`` or ``a.img.hdr``, any letter case)."""
    stems = {data_file.stem.lower(), data_file.name.lower()}
    return next((p for p in sorted(data_file.parent.iterdir())
                 if p.suffix.lower() == ".hdr" and p.stem.lower() in stems), None)


def _read_geotiff(path: Path) -> tuple[np.ndarray, dict[str, Any]]:
    try:
        import rasterio
    except ImportError as e:
        raise DataError(f"{path}: reading GeoTIFF files needs 'rasterio': pip install 'rsjax[geo]'") from e
    with rasterio.open(path) as src:
        data = src.read()  # (bands, H, W)
        profile = dict(src.profile)
    return np.moveaxis(data, 0, -1), profile


def _file_and_key(path: str | Path) -> tuple[Path, str | None]:
    """``file.mat:KEY`` -> (``file.mat``, ``KEY``); a path that exists as written has no key."""
    path = Path(path)
    if not path.exists() and ":" in path.name:
        name, _, key = path.name.rpartition(":")
        return path.with_name(name), key
    return path, None


def read_array(path: str | Path, key: str | None = None, ndim: int | None = None,
               spatial: tuple[int, int] | None = None) -> tuple[np.ndarray, dict | None]:
    """Read one array from ``.mat``, ``.npy``, ``.npz``, ENVI ``.hdr`` or GeoTIFF.

    For containers with several arrays, ``key`` picks one (or the path names it: ``file.mat:KEY``);
    without it the one numeric array with ``ndim`` dimensions is taken (an ``ndim = 2`` ground truth
    may carry a trailing axis of 1; MATLAB's scalars, 1 x 1 arrays, are not candidates; with
    ``spatial``, only arrays whose first two sides are those), and several such arrays are an error
    naming them. Returns the array and a georeference (GeoTIFF only).
    """
    path, key = _file_and_key(path) if key is None else (Path(path), key)
    if not path.exists():
        raise DataError(f"{path}: no such file; check the path.")
    suffix = path.suffix.lower()
    georef = None
    try:
        if suffix == ".mat":
            arrays = _read_mat(path)
        elif suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        elif suffix == ".npy":
            arrays = {"array": np.load(path, allow_pickle=False)}
        elif suffix == ".hdr":
            arrays = {"array": _read_envi(path)}
        elif suffix in (".tif", ".tiff"):
            data, georef = _read_geotiff(path)
            arrays = {"array": data if data.shape[-1] > 1 or ndim != 2 else data[..., 0]}
        elif suffix in ENVI_DATA_SUFFIXES and (header := _envi_header_of(path)) is not None:
            raise DataError(f"{path}: an ENVI data file; pass its header {header} instead.")
        else:
            raise DataError(f"{path}: unknown file type {suffix!r}; use .mat, .npy, .npz, .hdr (ENVI) or .tif (GeoTIFF).")
    except DataError:
        raise
    except Exception as e:  # corrupt or unreadable files
        raise DataError(f"{path}: cannot read the file ({type(e).__name__}: {e}); check that it is a valid {suffix} file.") from e
    def fit(v):          # v with ndim dimensions, or None
        v = np.asarray(v)
        if ndim == 2 and v.ndim == 3 and v.shape[-1] == 1:
            v = v[..., 0]
        return v if ndim is None or v.ndim == ndim else None

    held = ", ".join(f"{k} {np.shape(v)}" for k, v in arrays.items())
    shapes = "a cube must be H x W x D (rows, columns, bands) and a ground truth H x W"
    if key is not None:
        if key not in arrays:
            raise DataError(f"{path}: no array named {key!r}; it holds {held}.")
        if fit(arrays[key]) is None:
            raise DataError(f"{path}: array {key!r} has shape {np.shape(arrays[key])}, not {ndim}-D; {shapes}.")
        return fit(arrays[key]), georef
    candidates = {k: fit(v) for k, v in arrays.items()
                  if isinstance(v, np.ndarray) and v.dtype.kind in "biuf" and v.size > 1 and fit(v) is not None
                  and (spatial is None or fit(v).shape[:2] == tuple(spatial))}
    if not candidates:
        raise DataError(f"{path}: no numeric {ndim or ''}-D array inside (it holds {held}); {shapes}.")
    if len(candidates) > 1:
        raise DataError(f"{path}: holds {len(candidates)} numeric {ndim or ''}-D arrays ({held}); name the one "
                        f"to use as {path}:KEY, for example {path}:{next(iter(candidates))}.")
    return next(iter(candidates.values())), georef


# ----------------------------------------------------------------------------- validation

def validate(scene: Scene, n_clusters: int | None = None) -> Scene:
    """Check a scene before training; every failure names the files (or the scene) and the fix."""
    cube, gt = scene.cube, scene.gt
    where = scene.source or scene.name
    if cube.ndim != 3:
        raise DataError(f"{where}: the cube must be H x W x D, got shape {cube.shape}.")
    if gt.shape != cube.shape[:2]:
        hint = (" The cube looks bands-first (D x H x W): move its bands last, e.g. numpy.moveaxis(cube, 0, -1)."
                if gt.shape == cube.shape[1:] else "")
        raise DataError(f"{where}: the ground truth's shape {gt.shape} does not match the cube's spatial shape "
                        f"{cube.shape[:2]}; pass the ground truth that belongs to this cube.{hint}")
    bad = ~np.isfinite(cube)
    if bad.any():
        n = int(bad.sum())
        raise DataError(f"{where}: the cube holds {n} NaN or Inf value{'s' if n > 1 else ''}; fill or mask them first "
                        "(for example with numpy.nan_to_num).")
    _check_not_constant(cube.reshape(-1, cube.shape[-1]).min(0), cube.reshape(-1, cube.shape[-1]).max(0), where)
    if gt.dtype.kind not in "iu":
        raise DataError(f"{where}: the ground truth must hold integers (0 = unlabeled, 1..C classes), got {gt.dtype}.")
    if (gt < 0).any():
        raise DataError(f"{where}: the ground truth holds negative values ({int(gt.min())}); use 0 for unlabeled "
                        "pixels and 1..C for classes.")
    if not (gt > 0).any():
        raise DataError(f"{where}: the ground truth has no labeled pixels (all 0); metrics need labels 1..C.")
    present = np.unique(gt[gt > 0])
    if present.size < 2:
        raise DataError(f"{where}: the ground truth has one class only; clustering metrics (Kappa, NMI) need two "
                        "or more: pass a ground truth with 2 or more labels.")
    if present.tolist() != list(range(1, len(scene.class_names) + 1)):
        raise DataError(f"{where}: the ground truth's labels ({', '.join(map(str, present[:10].tolist()))}"
                        f"{', ...' if present.size > 10 else ''}) are not 1..{len(scene.class_names)}, one per class "
                        f"name ({len(scene.class_names)}); number the classes 1..C in the order of the names "
                        "(load_scene does this for files).")
    if n_clusters is not None and n_clusters > gt.size:
        raise DataError(f"{where}: {n_clusters} clusters requested but the scene has only {gt.size} pixels; "
                        "ask for fewer clusters.")
    return scene


def minmax_scale(cube: np.ndarray) -> np.ndarray:
    """Scale each band to [0, 1] over all pixels (as the authors' MinMaxScaler does); a constant
    band, which has no scale, is refused (:class:`DataError`) rather than turned into NaN."""
    flat = cube.reshape(-1, cube.shape[-1]).astype(np.float64)
    lo, hi = flat.min(0), flat.max(0)
    _check_not_constant(lo, hi, "minmax_scale")
    return ((cube - lo) / (hi - lo)).astype(np.float32)


def _check_not_constant(lo: np.ndarray, hi: np.ndarray, where: str) -> None:
    flat = np.flatnonzero(hi == lo)
    if flat.size:
        raise DataError(f"{where}: band{'s' if flat.size > 1 else ''} {flat.tolist()[:10]} (0-based) "
                        f"{'are' if flat.size > 1 else 'is'} constant (zero min-max range) and cannot be scaled; "
                        "drop the constant bands from the cube and pass it again.")


def _check_hdf5_shapes(cube: np.ndarray, gt: np.ndarray, cube_path, gt_path, where: str) -> None:
    """On a cube / ground-truth shape mismatch when either came from an HDF5 .mat, say how those
    are read (validate names other mismatches)."""
    hdf5 = list(dict.fromkeys(str(f) for f in map(_hdf5_mat, (cube_path, gt_path)) if f))
    if gt.shape != cube.shape[:2] and hdf5:
        raise DataError(f"{where}: the ground truth's shape {gt.shape} does not match the cube's spatial shape "
                        f"{cube.shape[:2]}. {' and '.join(hdf5)} {'is' if len(hdf5) == 1 else 'are'} HDF5 (MATLAB "
                        "v7.3), read in MATLAB's axis order (h5py shows it reversed): an array written from numpy "
                        "with h5py must be written transposed (cube.T), or saved as .npy/.npz.")


def _hdf5_mat(path: str | Path) -> Path | None:
    """The file of ``path`` (``file.mat:KEY`` too) when it is an HDF5 (MATLAB v7.3) .mat file."""
    import h5py
    path = _file_and_key(path)[0]
    return path if path.suffix.lower() == ".mat" and path.is_file() and h5py.is_hdf5(path) else None


def _relabel(gt: np.ndarray, values: list[int]) -> np.ndarray:
    """Map label ``values[i]`` to ``i + 1``; everything else to 0."""
    out = np.zeros(gt.shape, np.int32)
    for i, v in enumerate(values):
        out[gt == v] = i + 1
    return out


# ----------------------------------------------------------------------------- named scenes

SALINAS_A_CLASSES = ["Brocoli_green_weeds_1", "Corn_senesced_green_weeds", "Lettuce_romaine_4wk",
                     "Lettuce_romaine_5wk", "Lettuce_romaine_6wk", "Lettuce_romaine_7wk"]


def _salinas_a() -> Scene:
    folder = EMBEDDED / "salinas_a"
    cube, _ = read_array(folder / "SalinasA_corrected.mat", "salinasA_corrected")
    gt, _ = read_array(folder / "SalinasA_gt.mat", "salinasA_gt")
    return Scene("salinas-a", cube.astype(np.float32), _relabel(gt, [1, 10, 11, 12, 13, 14]), SALINAS_A_CLASSES)


def _indian_pines_subset() -> Scene:
    path = dataset_file("indian_pines_subset", "Indian_part.mat")
    cube, _ = read_array(path, "X")
    gt, _ = read_array(path, "grd")
    return Scene("indian-pines-subset", cube.astype(np.float32), gt.astype(np.int32),
                 ["Corn-notill", "Grass-trees", "Soybean-notill", "Soybean-mintill"], source=str(path))


def _samson() -> Scene:
    path = dataset_file("samson", "Samson.mat")
    y, _ = read_array(path, "Y")                      # (bands, pixels), column-major pixel order
    s_gt, _ = read_array(path, "S_GT")                # (95, 95, 3) abundances
    h, w = s_gt.shape[:2]
    cube = y.T.reshape(w, h, -1).transpose(1, 0, 2)    # pixel p is (p % h, p // h)
    gt = s_gt.argmax(-1).astype(np.int32) + 1
    return Scene("samson", cube.astype(np.float32), gt, ["Soil", "Tree", "Water"], source=str(path))


def _paper_scene(folder: str, filename: str, name: str, classes: list[str],
                 crop: tuple[slice, slice] | None = None, full: tuple[int, int] | None = None) -> Callable[[], Scene]:
    """The layout of the paper's files: one .mat with keys 'HSI' and 'GT' (the authors' code).
    ``crop`` is the paper's subset of the ``full`` scene; a file that already holds the subset is
    taken as it is. The labels present are numbered 1..C in ascending order and must be as many as
    ``classes`` (the paper's, in the order of its standard numbering)."""
    def load() -> Scene:
        path = dataset_file(folder, filename)
        try:
            cube, _ = read_array(path, "HSI", ndim=3)
            gt, _ = read_array(path, "GT", ndim=2)
        except DataError as e:
            raise DataError(f"{e} The scene {name!r} reads the keys HSI and GT, as the authors' code does; for a "
                            f"file of other keys pass --cube {path}:KEY --gt {path}:KEY.") from e
        _check_hdf5_shapes(cube, gt, path, path, str(path))
        if gt.shape != cube.shape[:2]:
            raise DataError(f"{path}: GT is {gt.shape[0]} x {gt.shape[1]} pixels but HSI {cube.shape[0]} x "
                            f"{cube.shape[1]}; the file must hold the ground truth of its cube.")
        if crop is not None:
            sub = tuple(s.stop - s.start for s in crop)
            if cube.shape[:2] == tuple(full):
                cube, gt = cube[crop], gt[crop]
            elif cube.shape[:2] != sub:
                raise DataError(f"{path}: HSI is {cube.shape[0]} x {cube.shape[1]} pixels, neither the full "
                                f"{full[0]} x {full[1]} scene (cropped to rows {crop[0].start}:{crop[0].stop}, "
                                f"columns {crop[1].start}:{crop[1].stop}) nor the paper's {sub[0]} x {sub[1]} subset; "
                                "pass your file with --cube and --gt instead.")
        values = sorted(int(v) for v in np.unique(gt) if v > 0)
        if len(values) != len(classes):
            raise DataError(f"{path}: GT holds {len(values)} classes ({', '.join(map(str, values[:20]))}) where the "
                            f"paper's {name} has {len(classes)} ({', '.join(classes)}); pass your file with --cube "
                            "and --gt (and --class-names) instead.")
        return Scene(name, cube.astype(np.float32), _relabel(gt, values), classes, source=str(path))
    return load


REGISTRY: dict[str, Callable[[], Scene]] = {
    "salinas-a": _salinas_a,
    "indian-pines-subset": _indian_pines_subset,
    "samson": _samson,
    "trento": _paper_scene("trento", "Trento.mat", "trento",
                           ["Apple trees", "Buildings", "Ground", "Wood", "Vineyard", "Roads"]),
    "houston2013": _paper_scene("houston2013", "Houston.mat", "houston2013",
                                ["Healthy grass", "Soil", "Residential", "Road", "Parking lot", "Tennis court"],
                                crop=(slice(40, 340), slice(500, 800)), full=(349, 1905)),
}


def load_scene(name: str | None = None, cube: str | Path | None = None, gt: str | Path | None = None,
               class_names: list[str] | None = None) -> Scene:
    """A registered scene by name, or a user's cube and ground truth by path (``class_names``: one
    per label of the ground truth, in ascending label order; default ``class <label>``)."""
    if cube is not None or gt is not None:
        if cube is None or gt is None:
            raise DataError("pass both --cube and --gt (the ground truth is needed for the metrics).")
        x, georef = read_array(cube, ndim=3)
        try:
            y, gt_georef = read_array(gt, ndim=2, spatial=x.shape[:2])
        except DataError:     # none of the cube's size: name what there is (validate names the mismatch)
            y, gt_georef = read_array(gt, ndim=2)
        _check_hdf5_shapes(x, y, cube, gt, f"{cube} (ground truth {gt})")
        nodata = nodata_value(cube, georef)
        if nodata is not None and (x == nodata).any():
            n = int((x == nodata).any(-1).sum())
            what = "GeoTIFF's nodata value" if georef is not None else "ENVI header's data ignore value"
            raise DataError(f"{cube}: {n} pixel{'s hold' if n > 1 else ' holds'} the {what} "
                            f"{nodata:g}; the whole scene is trained on, so crop the scene to its valid "
                            "pixels or fill them first.")
        if (gt_nodata := nodata_value(gt, gt_georef)) is not None:   # no label there: unlabeled
            y = np.where((y == gt_nodata) | (np.isnan(gt_nodata) & (y != y)), 0, y)
        if y.dtype.kind == "f" and not np.all(np.isfinite(y)):
            raise DataError(f"{gt}: the ground truth holds NaN or Inf; use 0 for unlabeled pixels, 1..C for classes.")
        if y.dtype.kind == "f" and not np.all(np.mod(y, 1) == 0):
            raise DataError(f"{gt}: ground truth must hold integer class labels (0 = unlabeled).")
        if y.dtype.kind in "if" and (y < 0).any():
            raise DataError(f"{gt}: the ground truth holds negative values ({int(y.min())}); use 0 for unlabeled "
                            "pixels and 1..C for classes.")
        y = y.astype(np.int64)
        values = sorted(int(v) for v in np.unique(y) if v > 0)
        if class_names is not None and len(class_names) != len(values):
            raise DataError(f"{gt}: {len(values)} labels ({', '.join(map(str, values[:10]))}) but {len(class_names)} "
                            "class names; pass one name per label, in ascending label order.")
        if class_names is not None and (any(not n.strip() for n in class_names) or len(set(class_names)) < len(values)):
            raise DataError(f"class names {list(class_names)}: each must be non-empty and different from the others.")
        names = list(class_names) if class_names is not None else [f"class {v}" for v in values]
        scene = Scene(Path(cube).stem, x.astype(np.float32), _relabel(y, values), names, georef,
                      source=f"{cube} (ground truth {gt})")
        return scene
    name = name or "salinas-a"
    if name not in REGISTRY:
        alike = name.lower().replace("_", "-").replace(" ", "-")
        hint = f"did you mean {alike!r}? " if alike in REGISTRY else ""
        raise DataError(f"unknown dataset {name!r}; {hint}known: {', '.join(REGISTRY)} (or pass --cube and --gt).")
    return REGISTRY[name]()
