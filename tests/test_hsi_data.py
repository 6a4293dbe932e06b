"""HSI readers for every format, the registry, and a clear error for every bad input."""
import numpy as np
import pytest
import scipy.io

from rsjax.data.hsi import REGISTRY, load_scene, minmax_scale, read_array, validate
from rsjax.data.paths import DataError


def _cube(h=6, w=5, d=4, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 100, (h, w, d)).astype(np.float32), rng.integers(0, 4, (h, w)).astype(np.uint8)


def test_mat_v5_and_npy_npz(tmp_path):
    cube, gt = _cube()
    scipy.io.savemat(tmp_path / "c.mat", {"data": cube, "other": np.ones(3)})
    np.save(tmp_path / "gt.npy", gt)
    np.savez(tmp_path / "c.npz", cube=cube)
    np.testing.assert_array_equal(read_array(tmp_path / "c.mat", ndim=3)[0], cube)
    np.testing.assert_array_equal(read_array(tmp_path / "c.mat", "data")[0], cube)
    np.testing.assert_array_equal(read_array(tmp_path / "c.npz", ndim=3)[0], cube)
    scene = load_scene(cube=tmp_path / "c.mat", gt=tmp_path / "gt.npy")
    assert scene.cube.shape == (6, 5, 4) and scene.n_classes == len(np.unique(gt[gt > 0]))


def test_mat_v73_via_h5py(tmp_path):
    h5py = pytest.importorskip("h5py")
    cube, _ = _cube()
    with h5py.File(tmp_path / "c.mat", "w", userblock_size=512) as f:
        f["HSI"] = cube.T          # MATLAB stores column-major: h5py sees reversed axes
    with open(tmp_path / "c.mat", "r+b") as f:
        f.write(b"MATLAB 7.3 MAT-file".ljust(116) + b"\x00" * 8 + b"\x00\x02IM")
    np.testing.assert_array_equal(read_array(tmp_path / "c.mat", "HSI")[0], cube)


def test_envi(tmp_path):
    envi = pytest.importorskip("spectral.io.envi")
    cube, _ = _cube()
    envi.save_image(str(tmp_path / "c.hdr"), cube, force=True)
    np.testing.assert_allclose(read_array(tmp_path / "c.hdr", ndim=3)[0], cube)


def test_geotiff_keeps_georeference(tmp_path):
    rasterio = pytest.importorskip("rasterio")
    from rasterio.transform import from_origin
    cube, gt = _cube()
    transform = from_origin(500000, 4200000, 2.5, 2.5)
    with rasterio.open(tmp_path / "c.tif", "w", driver="GTiff", width=5, height=6, count=4, dtype="float32",
                       crs="EPSG:32633", transform=transform) as dst:
        dst.write(np.moveaxis(cube, -1, 0))
    np.save(tmp_path / "gt.npy", gt)
    scene = load_scene(cube=tmp_path / "c.tif", gt=tmp_path / "gt.npy")
    np.testing.assert_allclose(scene.cube, cube)
    assert scene.georef["transform"] == transform


@pytest.mark.parametrize("content,match", [(b"not a mat file", "cannot read"), (None, "no such file")])
def test_unreadable_or_missing_file(tmp_path, content, match):
    path = tmp_path / "bad.mat"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DataError, match=match):
        read_array(path)


def test_unknown_format_and_dataset(tmp_path):
    (tmp_path / "c.xyz").write_text("1")
    with pytest.raises(DataError, match="unknown file type"):
        read_array(tmp_path / "c.xyz")
    with pytest.raises(DataError, match="unknown dataset"):
        load_scene("pavia")
    with pytest.raises(DataError, match="both --cube and --gt"):
        load_scene(cube=tmp_path / "c.xyz")


def _scene(cube, gt):
    from rsjax.data.hsi import Scene
    return Scene("test.mat", cube, gt, ["a", "b"])


def test_validation_errors():
    cube, gt = _cube()
    gt = np.where(gt > 0, 1, 0).astype(np.int32)
    with pytest.raises(DataError, match="one class only.*2 or more labels"):
        validate(_scene(cube, gt))
    gt[0, 0] = 2
    with pytest.raises(DataError, match="does not match"):
        validate(_scene(cube, gt[:-1]))
    with pytest.raises(DataError, match=r"looks bands-first \(D x H x W\)"):
        validate(_scene(np.moveaxis(cube, -1, 0).copy(), gt))
    bad = cube.copy(); bad[0, 0, 1] = np.nan
    with pytest.raises(DataError, match="NaN or Inf"):
        validate(_scene(bad, gt))
    bad = cube.copy(); bad[..., 2] = 7.0
    with pytest.raises(DataError, match=r"band \[2\] \(0-based\) is constant"):
        validate(_scene(bad, gt))
    with pytest.raises(DataError, match="no labeled pixels"):
        validate(_scene(cube, np.zeros_like(gt)))
    with pytest.raises(DataError, match="only 30 pixels"):
        validate(_scene(cube, gt), n_clusters=31)
    assert validate(_scene(cube, gt)).name == "test.mat"


def test_minmax_scale_per_band():
    cube, _ = _cube()
    x = minmax_scale(cube)
    np.testing.assert_allclose(x.reshape(-1, 4).min(0), 0, atol=1e-6)
    np.testing.assert_allclose(x.reshape(-1, 4).max(0), 1, atol=1e-6)
    cube[..., 2] = 7.0                                  # no scale: refused, not NaN
    with pytest.raises(DataError, match=r"minmax_scale: band \[2\] \(0-based\) is constant"):
        minmax_scale(cube)


def test_embedded_salinas_a_needs_no_shared_data(monkeypatch):
    monkeypatch.setenv("RSJAX_DATA", "/nonexistent-on-purpose")
    s = load_scene("salinas-a")
    assert s.cube.shape == (83, 86, 204)
    counts = np.bincount(s.gt.ravel())
    assert counts.tolist() == [1790, 391, 1343, 616, 1525, 674, 799]


def test_rsjax_data_must_be_a_directory(monkeypatch):
    monkeypatch.setenv("RSJAX_DATA", "/nonexistent-on-purpose")
    with pytest.raises(DataError, match="RSJAX_DATA"):
        load_scene("samson")


@pytest.mark.datasets("indian_pines_subset", "samson")
def test_shared_scenes(shared_data):
    ip = load_scene("indian-pines-subset")
    assert ip.cube.shape == (85, 70, 200) and np.bincount(ip.gt.ravel()).tolist() == [1559, 1005, 730, 732, 1924]
    sam = load_scene("samson")
    assert sam.cube.shape == (95, 95, 156) and np.bincount(sam.gt.ravel()).tolist() == [0, 3015, 3666, 2344]
    for s in (ip, sam):
        validate(s, s.n_classes)


def test_paper_scene_layout(tmp_path, monkeypatch):
    """Trento / Houston files as the authors' code reads them ('HSI' and 'GT' keys). Houston's full
    scene is cropped to the paper's subset, a file holding the subset is taken as it is, and the
    standard Houston labels present (1, 5, 7, 9, 12, 14) become the paper's classes 1..6."""
    monkeypatch.setenv("RSJAX_DATA", str(tmp_path))
    (tmp_path / "houston2013").mkdir()
    path = tmp_path / "houston2013" / "Houston.mat"
    cube = np.random.default_rng(0).uniform(size=(349, 1905, 2)).astype(np.float32)
    gt = np.zeros((349, 1905), np.uint8)
    gt[0, 0] = 3                                             # outside the subset
    for k, label in enumerate([1, 5, 7, 9, 12, 14]):
        gt[100 + k, 600] = label
    scipy.io.savemat(path, {"HSI": cube, "GT": gt[..., None]})   # a trailing axis of 1 is fine
    s = REGISTRY["houston2013"]()
    np.testing.assert_array_equal(s.cube, cube[40:340, 500:800])
    assert s.gt[60:66, 100].tolist() == [1, 2, 3, 4, 5, 6] and s.gt.sum() == 21 and s.source == str(path)
    scipy.io.savemat(path, {"HSI": cube[40:340, 500:800], "GT": gt[40:340, 500:800]})
    np.testing.assert_array_equal(REGISTRY["houston2013"]().gt, s.gt)
    scipy.io.savemat(path, {"HSI": cube[:300, :700], "GT": gt[:300, :700]})
    with pytest.raises(DataError, match=r"300 x 700 pixels, neither the full 349 x 1905 scene .* nor the paper's 300 x 300"):
        REGISTRY["houston2013"]()
    gt[101, 601] = 2
    scipy.io.savemat(path, {"HSI": cube, "GT": gt})
    with pytest.raises(DataError, match=r"GT holds 7 classes \(1, 2, 5, 7, 9, 12, 14\) where the paper's houston2013 has 6"):
        REGISTRY["houston2013"]()
    scipy.io.savemat(path, {"cube": cube, "labels": gt})
    with pytest.raises(DataError, match=r"no array named 'HSI'.*--cube .*Houston.mat:KEY --gt"):
        REGISTRY["houston2013"]()
    scipy.io.savemat(path, {"HSI": cube, "GT": gt[40:340, 500:800]})
    with pytest.raises(DataError, match=r"Houston.mat: GT is 300 x 300 pixels but HSI 349 x 1905"):
        REGISTRY["houston2013"]()
    with pytest.raises(DataError, match="Trento.mat does not exist"):
        REGISTRY["trento"]()


def test_envi_nodata_and_data_file(tmp_path):
    """An ENVI header's 'data ignore value' is the cube's nodata (refused, as a GeoTIFF's) and the
    ground truth's unlabeled value; a missing data file, or the data file passed for the header,
    is named with its fix."""
    envi = pytest.importorskip("spectral.io.envi")
    cube, gt = _cube()
    np.save(tmp_path / "gt.npy", gt)
    cube[2, 3] = -9999
    envi.save_image(str(tmp_path / "c.hdr"), cube, force=True, metadata={"data ignore value": -9999})
    with pytest.raises(DataError, match=r"c.hdr: 1 pixel holds the ENVI header's data ignore value -9999; .*crop the scene"):
        load_scene(cube=tmp_path / "c.hdr", gt=tmp_path / "gt.npy")
    with pytest.raises(DataError, match=r"c.img: an ENVI data file; pass its header .*c.hdr instead"):
        load_scene(cube=tmp_path / "c.img", gt=tmp_path / "gt.npy")
    g = gt.astype(np.int16)
    g[0, 0] = 99
    envi.save_image(str(tmp_path / "g.hdr"), g[..., None], force=True, metadata={"data ignore value": 99})
    cube[2, 3] = 1.0
    np.save(tmp_path / "c.npy", cube)
    scene = load_scene(cube=tmp_path / "c.npy", gt=tmp_path / "g.hdr")
    assert scene.gt[0, 0] == 0 and scene.n_classes == np.unique(gt[gt > 0]).size
    (tmp_path / "c.img").unlink()
    with pytest.raises(DataError, match=r"c.hdr: the ENVI header's data file is missing; put it beside the header"):
        read_array(tmp_path / "c.hdr", ndim=3)
    (tmp_path / "d.IMG").write_bytes(b"")
    (tmp_path / "d.IMG.HDR").write_text("ENVI\n")
    with pytest.raises(DataError, match=r"d.IMG: an ENVI data file; pass its header .*d.IMG.HDR instead"):
        read_array(tmp_path / "d.IMG", ndim=3)
    header = (tmp_path / "g.hdr").read_text()
    (tmp_path / "g.hdr").write_text(header.replace("data ignore value = 99", "data ignore value = {none}"))
    with pytest.raises(DataError, match=r"g.hdr: the header's 'data ignore value' \(\['none'\]\) is not a number"):
        load_scene(cube=tmp_path / "c.npy", gt=tmp_path / "g.hdr")
    (tmp_path / "g.hdr").write_text(header.replace("data ignore value = 99", "data ignore value = {99}"))
    assert load_scene(cube=tmp_path / "c.npy", gt=tmp_path / "g.hdr").gt[0, 0] == 0


def test_hdf5_written_from_numpy_is_named(tmp_path):
    """A .mat written with h5py from numpy (not transposed as MATLAB writes) is read in MATLAB's axis
    order; the shape mismatch names that, not a bands-first cube."""
    h5py = pytest.importorskip("h5py")
    cube, gt = _cube(h=6, w=5, d=4)
    with h5py.File(tmp_path / "c.mat", "w") as f:
        f["HSI"], f["GT"] = cube, gt
    with pytest.raises(DataError, match=r"c.mat is HDF5 \(MATLAB v7.3\), read in MATLAB's axis order.*cube.T"):
        load_scene(cube=f"{tmp_path / 'c.mat'}:HSI", gt=f"{tmp_path / 'c.mat'}:GT")


def test_data_errors_name_what_is_missing(tmp_path, monkeypatch):
    """A 2-D cube names the shape it needs; a registered scene without a data directory names the
    folder the data directory must hold."""
    from rsjax.data import paths
    from rsjax.data.hsi import read_array
    np.save(tmp_path / "flat.npy", np.zeros((4, 5), np.float32))
    with pytest.raises(DataError, match=r"flat.npy: no numeric 3-D array inside \(it holds array \(4, 5\)\); "
                                        r"a cube must be H x W x D"):
        read_array(tmp_path / "flat.npy", ndim=3)
    monkeypatch.setattr(paths, "data_dir", lambda required=True: None)
    with pytest.raises(DataError, match="set RSJAX_DATA to the folder that holds indian_pines_subset/"):
        load_scene("indian-pines-subset")


def test_a_container_with_several_arrays_names_them_and_takes_file_colon_key(tmp_path):
    """A file holding several candidate arrays is refused, naming them; ``file.mat:KEY`` picks one
    (the case of Samson.mat, whose only 3-D array is the abundances, is the registry's to read)."""
    cube, gt = _cube()
    scipy.io.savemat(tmp_path / "two.mat", {"cube": cube, "other": cube[:3]})
    np.save(tmp_path / "gt.npy", gt)
    with pytest.raises(DataError, match=r"holds 2 numeric 3-D arrays \(cube \(6, 5, 4\), other \(3, 5, 4\)\).*two\.mat:KEY"):
        load_scene(cube=tmp_path / "two.mat", gt=tmp_path / "gt.npy")
    scene = load_scene(cube=f"{tmp_path / 'two.mat'}:cube", gt=tmp_path / "gt.npy")
    np.testing.assert_array_equal(scene.cube, cube)
    assert scene.name == "two"
    with pytest.raises(DataError, match=r"no array named 'nope'; it holds cube \(6, 5, 4\)"):
        read_array(f"{tmp_path / 'two.mat'}:nope", ndim=3)
    with pytest.raises(DataError, match=r"array 'cube' has shape \(6, 5, 4\), not 2-D"):
        read_array(tmp_path / "two.mat", "cube", ndim=2)


@pytest.mark.parametrize("shape", [(1, 12, 5), (7, 1, 5), (6, 5, 1)])
def test_thin_scenes_and_one_band_cubes_are_read_as_they_are(tmp_path, shape):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "c.npy", rng.uniform(0, 1, shape).astype(np.float32))
    np.save(tmp_path / "g.npy", (np.arange(shape[0] * shape[1]) % 2 + 1).reshape(shape[:2]))
    scene = load_scene(cube=tmp_path / "c.npy", gt=tmp_path / "g.npy")
    assert scene.cube.shape == shape and scene.gt.shape == shape[:2]


def test_ground_truth_values_and_class_names_are_checked(tmp_path):
    cube, gt = _cube()
    np.save(tmp_path / "c.npy", cube)
    for values, match in ((np.where(gt > 2, -1, gt.astype(np.int16)), r"negative values \(-1\)"),
                          (np.where(gt > 2, np.nan, gt.astype(float)), "holds NaN or Inf")):
        np.save(tmp_path / "g.npy", values)
        with pytest.raises(DataError, match=match):
            load_scene(cube=tmp_path / "c.npy", gt=tmp_path / "g.npy")
    np.save(tmp_path / "g.npy", gt)
    n = len(np.unique(gt[gt > 0]))
    for names in (["a"] * n, ["a", ""] + ["x"] * (n - 2)):
        with pytest.raises(DataError, match="non-empty and different"):
            load_scene(cube=tmp_path / "c.npy", gt=tmp_path / "g.npy", class_names=names)
    with pytest.raises(DataError, match="did you mean 'indian-pines-subset'"):
        load_scene("indian_pines_subset")


def test_headerless_hdf5_mat_is_read_with_h5py(tmp_path):
    h5py = pytest.importorskip("h5py")
    cube, _ = _cube()
    with h5py.File(tmp_path / "c.mat", "w") as f:          # no MATLAB header: scipy cannot tell its version
        f["HSI"] = cube.T
    np.testing.assert_array_equal(read_array(tmp_path / "c.mat", "HSI")[0], cube)


def test_geotiff_nodata_pixels_are_refused(tmp_path):
    rasterio = pytest.importorskip("rasterio")
    from rasterio.transform import from_origin
    cube, gt = _cube()
    cube[0, :2] = -9999.0
    with rasterio.open(tmp_path / "c.tif", "w", driver="GTiff", width=5, height=6, count=4, dtype="float32",
                       crs="EPSG:32633", transform=from_origin(500000, 4200000, 2.5, 2.5), nodata=-9999.0) as dst:
        dst.write(np.moveaxis(cube, -1, 0))
    np.save(tmp_path / "gt.npy", gt)
    with pytest.raises(DataError, match="2 pixels hold the GeoTIFF's nodata value -9999"):
        load_scene(cube=tmp_path / "c.tif", gt=tmp_path / "gt.npy")


def test_matlab_scalars_beside_the_ground_truth_are_not_candidates(tmp_path):
    cube, gt = _cube()
    np.save(tmp_path / "c.npy", cube)
    scipy.io.savemat(tmp_path / "g.mat", {"gt": gt, "nclasses": 3, "lines": 6, "mask": np.ones((2, 2))})
    scene = load_scene(cube=tmp_path / "c.npy", gt=tmp_path / "g.mat")      # mask is not 6 x 5: left out
    assert scene.gt.shape == (6, 5)


def test_geotiff_ground_truth_nodata_is_unlabeled(tmp_path):
    rasterio = pytest.importorskip("rasterio")
    from rasterio.transform import from_origin
    cube, gt = _cube()
    gt[0, :3] = 255
    np.save(tmp_path / "c.npy", cube)
    with rasterio.open(tmp_path / "g.tif", "w", driver="GTiff", width=5, height=6, count=1, dtype="uint8",
                       crs="EPSG:32633", transform=from_origin(500000, 4200000, 2.5, 2.5), nodata=255) as dst:
        dst.write(gt[None])
    scene = load_scene(cube=tmp_path / "c.npy", gt=tmp_path / "g.tif")
    assert (scene.gt[0, :3] == 0).all() and scene.n_classes == len(np.unique(gt[(gt > 0) & (gt < 255)]))
    g = np.where(gt == 255, np.nan, gt).astype(np.float32)           # a float ground truth, nodata NaN
    with rasterio.open(tmp_path / "f.tif", "w", driver="GTiff", width=5, height=6, count=1, dtype="float32",
                       crs="EPSG:32633", transform=from_origin(500000, 4200000, 2.5, 2.5), nodata=np.nan) as dst:
        dst.write(g[None])
    np.testing.assert_array_equal(load_scene(cube=tmp_path / "c.npy", gt=tmp_path / "f.tif").gt, scene.gt)


@pytest.mark.parametrize("gt_of,names,says", [
    (lambda g: g, ["a", "b", "c"], r"labels \(1, 2, 3, 4, 5, 6\) are not 1\.\.3, one per class name \(3\)"),
    (lambda g: g - 1, list("abcdef"), r"labels \(1, 2, 3, 4, 5\) are not 1\.\.6"),
    (lambda g: g - 2, list("abcdef"), r"holds negative values \(-1\)"),
    (lambda g: g.astype(np.float32), list("abcdef"), r"must hold integers .* got float32")])
def test_validate_checks_a_hand_built_scene_s_labels(gt_of, names, says):
    """A Scene built by hand (not by load_scene, which numbers the labels) must hold 1..C, one per
    class name, before clustering: k-means takes k from the names and the table indexes 1..C."""
    from rsjax.data.hsi import Scene
    gt = np.repeat(np.arange(1, 7), 4).reshape(4, 6).astype(np.int32)
    cube = np.random.default_rng(0).uniform(size=(4, 6, 3)).astype(np.float32)
    with pytest.raises(DataError, match=says):
        validate(Scene("mine", cube, gt_of(gt), names))
    validate(Scene("mine", cube, gt, list("abcdef")))
