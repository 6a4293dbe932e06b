"""Scene-image loading, the stratified split and fixed-shape batching."""
import numpy as np
import pytest
from PIL import Image

from rsjax.data.paths import DataError
from rsjax.data.scenes import (SceneImages, eval_batches, load_scene_images, stratified_split,
                               train_batches)


def _write_folder(root, sizes_per_class, suffix=".png"):
    rng = np.random.default_rng(0)
    for c, sizes in sizes_per_class.items():
        (root / c).mkdir(parents=True)
        for i, (h, w) in enumerate(sizes):
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / c / f"{c}{i:02d}{suffix}")
    return root


# ----------------------------------------------------------------------------- loading

def test_folder_odd_sizes_resized(tmp_path):
    root = _write_folder(tmp_path / "scenes", {"b_forest": [(20, 20), (20, 20)], "a_beach": [(20, 20), (19, 21)]})
    (root / "a_beach" / "notes.txt").write_text("not an image")
    d = load_scene_images(root)
    assert d.images.shape == (4, 20, 20, 3) and d.images.dtype == np.uint8
    assert d.class_names == ["a_beach", "b_forest"]
    assert d.labels.tolist() == [0, 0, 1, 1] and d.labels.dtype == np.int32
    assert d.files[0] == "a_beach/a_beach00.png"
    d8 = load_scene_images(root, size=8)
    assert d8.images.shape == (4, 8, 8, 3)


def test_folder_read_in_place_and_refused_when_it_would_not_fit_in_memory(tmp_path, monkeypatch):
    """Every image lands in its own row (read in parallel into one array), and a folder of 256 MiB or
    more is refused before reading when a run (about twice the dataset) would not fit in the memory
    available, naming the size that would."""
    import rsjax.data.scenes as scenes
    root = _write_folder(tmp_path / "s", {"a": [(20, 20)] * 3, "b": [(20, 20)] * 3})
    d = load_scene_images(root)
    for i, f in enumerate(d.files):
        np.testing.assert_array_equal(d.images[i], scenes.read_image(root / f, None))
    monkeypatch.setattr(scenes, "available_memory", lambda: 1)
    assert load_scene_images(root).images.shape == (6, 20, 20, 3)          # under 256 MiB: never refused
    monkeypatch.setattr(scenes, "available_memory", lambda: 2**29)
    monkeypatch.setattr(scenes, "_image_shape", lambda path: (4096, 4096))   # as if 6 images of 4096 px
    with pytest.raises(DataError, match=r"6 images take 0\.3 GiB in memory at 4096 x 4096, and a run about twice "
                                        r"that: more than the 0\.5 GiB available.*--load-size N"):
        load_scene_images(root)
    assert load_scene_images(root, size=8).images.shape == (6, 8, 8, 3)


def test_folder_jpeg_and_grayscale_tiff(tmp_path):
    root = tmp_path / "s"
    (root / "a").mkdir(parents=True)
    Image.fromarray(np.full((10, 10, 3), 200, np.uint8)).save(root / "a" / "x.jpg")
    Image.fromarray(np.full((10, 10), 50, np.uint8)).save(root / "a" / "y.tif")
    d = load_scene_images(root)
    assert d.images.shape == (2, 10, 10, 3)
    assert np.all(d.images[1] == 50)


def test_empty_class_folder(tmp_path):
    root = _write_folder(tmp_path / "s", {"a": [(8, 8)]})
    (root / "empty").mkdir()
    with pytest.raises(DataError, match="holds no images"):
        load_scene_images(root)


def test_parent_of_the_class_folders_is_named_and_macosx_skipped(tmp_path):
    """UC Merced's archive unpacks to UCMerced_LandUse/Images/<class>/: passing the parent names
    the folder to pass; a zip's __MACOSX folder is not a class."""
    root = _write_folder(tmp_path / "UCMerced_LandUse" / "Images", {"agricultural": [(8, 8)], "beach": [(8, 8)]})
    with pytest.raises(DataError, match=r"class folder 'Images' holds no images .* It holds folders \(agricultural, "
                                        r"beach, \.\.\.\): if those are the classes, pass .*Images itself"):
        load_scene_images(tmp_path / "UCMerced_LandUse")
    (root / "__MACOSX" / "beach").mkdir(parents=True)
    assert load_scene_images(root).class_names == ["agricultural", "beach"]


def test_npz_of_python_objects_names_the_fix(tmp_path):
    np.savez(tmp_path / "o.npz", images=np.zeros((2, 4, 4, 3), np.uint8), labels=np.array([0, 1]),
             class_names=np.array(["a", "b"], dtype=object))
    with pytest.raises(DataError, match=r"holds Python objects.*class_names=numpy.array\(names, dtype=str\)"):
        load_scene_images(tmp_path / "o.npz")


def test_unreadable_image_named(tmp_path):
    root = _write_folder(tmp_path / "s", {"a": [(8, 8)]})
    (root / "a" / "broken.jpg").write_bytes(b"this is not a jpeg")
    with pytest.raises(DataError, match="broken.jpg"):
        load_scene_images(root)


def test_folder_without_classes(tmp_path):
    (tmp_path / "flat").mkdir()
    with pytest.raises(DataError, match="no class folders"):
        load_scene_images(tmp_path / "flat")


def test_npz_roundtrip_and_resize(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 12, 12, 3), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", images=images, labels=np.array([0, 1, 2, 0, 1, 2]),
             class_names=np.array(["x", "y", "z"]))
    d = load_scene_images(tmp_path / "d.npz")
    np.testing.assert_array_equal(d.images, images)
    assert d.class_names == ["x", "y", "z"] and d.files is None and d.n_classes == 3
    assert load_scene_images(str(tmp_path / "d.npz"), size=6).images.shape == (6, 6, 6, 3)
    sub = d.subset(np.array([1, 4]))
    assert sub.labels.tolist() == [1, 1] and sub.class_names == d.class_names


def test_npz_missing_keys(tmp_path):
    np.savez(tmp_path / "bad.npz", images=np.zeros((2, 4, 4, 3), np.uint8), labels=np.zeros(2))
    with pytest.raises(DataError, match="class_names"):
        load_scene_images(tmp_path / "bad.npz")


@pytest.mark.parametrize("labels,names,says", [
    (np.zeros((2, 1), np.int32), ["a"], r"'labels' must be \(N,\) = \(2,\) and 'class_names' \(C,\), got \(2, 1\)"),
    (np.array([1, 2]), ["a", "b"], r"'labels' span \[1, 2\] but must index its 2 'class_names' as 0 \.\. 1"),
    (np.array([0, 0]), "a", r"got \(2,\) and \(\)")])
def test_npz_labels_and_class_names_of_the_wrong_form(tmp_path, labels, names, says):
    np.savez(tmp_path / "bad.npz", images=np.zeros((2, 4, 4, 3), np.uint8), labels=labels, class_names=np.array(names))
    with pytest.raises(DataError, match=r"bad\.npz: .*" + says):
        load_scene_images(tmp_path / "bad.npz")
    (tmp_path / "text.npz").write_text("not an archive")
    with pytest.raises(DataError, match=r"cannot read it as an \.npz archive.*numpy\.savez"):
        load_scene_images(tmp_path / "text.npz")


def test_unknown_name():
    with pytest.raises(DataError, match="unknown scene dataset"):
        load_scene_images("no_such_dataset")


def test_tfds_missing_names_extra():
    try:
        import tensorflow_datasets  # noqa: F401
    except ImportError:
        with pytest.raises(DataError, match=r"pip install 'rsjax\[tfds\]'"):
            load_scene_images("tfds:uc_merced")
    else:
        pytest.skip("tensorflow-datasets is installed; the missing-package message cannot be tested")


def test_tfds_path_with_a_stand_in_module(monkeypatch, tmp_path):
    """The TFDS reader against a minimal stand-in for tensorflow_datasets (the real one needs TensorFlow)."""
    import sys
    import types
    calls = {}
    rng = np.random.default_rng(0)
    examples = [{"image": rng.integers(0, 256, (h, 6, 3), dtype=np.uint8), "label": np.int64(i % 2),
                 "filename": f"img{i}.tif".encode()} for i, h in enumerate([6, 6, 5])]

    def load(name, split, with_info, data_dir, **kwargs):
        calls.update(name=name, split=split, kwargs=kwargs)
        info = types.SimpleNamespace(features={"label": types.SimpleNamespace(names=["forest", "river"])})
        return examples, info

    fake = types.ModuleType("tensorflow_datasets")
    fake.load, fake.as_numpy = load, iter
    fake.download = types.SimpleNamespace(DownloadConfig=lambda manual_dir: {"manual_dir": manual_dir})
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", fake)
    d = load_scene_images("resisc45", manual_dir=tmp_path)
    assert calls["name"] == "resisc45" and calls["split"] == "train"
    assert calls["kwargs"]["download_and_prepare_kwargs"]["download_config"] == {"manual_dir": str(tmp_path)}
    assert d.images.shape == (3, 6, 6, 3) and d.labels.tolist() == [0, 1, 0]
    assert d.class_names == ["forest", "river"] and d.files == ["img0.tif", "img1.tif", "img2.tif"]
    np.testing.assert_array_equal(d.images[0], examples[0]["image"])   # read as they are, at their size
    assert load_scene_images("tfds:eurosat/rgb", size=4).images.shape == (3, 4, 4, 3)

    def fails(*a, **kw):
        raise AssertionError("Manual directory does not exist")            # one of TFDS's many errors
    fake.load = fails
    with pytest.raises(DataError, match=r"TFDS could not load 'resisc45' \(RESISC45 is downloaded by hand: "
                                        r"put NWPU-RESISC45.rar in TFDS's manual folder"):
        load_scene_images("resisc45")
    with pytest.raises(DataError, match="unknown TFDS builder 'mnist'"):
        load_scene_images("tfds:mnist")


def test_scene_images_validation():
    with pytest.raises(DataError, match="1 labels for"):
        SceneImages(np.zeros((2, 4, 4, 3), np.uint8), np.array([0]), ["a"])
    with pytest.raises(DataError, match=r"labels span \[0, 3\] but there are"):
        SceneImages(np.zeros((2, 4, 4, 3), np.uint8), np.array([0, 3]), ["a"])
    with pytest.raises(DataError, match="labels must be integer class indices, got float64 with fractions"):
        SceneImages(np.zeros((2, 4, 4, 3), np.uint8), np.array([0.0, 0.7]), ["a"])
    assert SceneImages(np.zeros((2, 4, 4, 3), np.uint8), np.array([0.0, 1.0]), ["a", "b"]).labels.tolist() == [0, 1]


@pytest.mark.datasets("ucmerced_subset")
def test_real_ucmerced_subset_folder(shared_data):
    d = load_scene_images(shared_data / "ucmerced_subset" / "Images", size=32)
    assert d.images.shape == (105, 32, 32, 3)
    assert d.n_classes == 21 and np.all(np.bincount(d.labels) == 5)
    assert d.class_names[0] == "agricultural" and d.class_names[-1] == "tenniscourt"
    full = load_scene_images("ucmerced_subset")       # odd sizes (256 x 251) resized to 256 x 256
    assert full.images.shape == (105, 256, 256, 3)


@pytest.mark.datasets("rsscn7_128")
def test_real_named_arrays(shared_data):
    d = load_scene_images("rsscn7")
    assert d.images.shape == (1400, 128, 128, 3) and d.n_classes == 7
    assert d.files[0].startswith("aGrass/")


# ----------------------------------------------------------------------------- split

def test_split_fractions_and_determinism():
    y = np.repeat(np.arange(7), 60)
    tr, va, te = stratified_split(y, seed=3)
    assert (len(tr), len(va), len(te)) == (294, 42, 84)
    assert np.all(np.bincount(y[tr]) == 42) and np.all(np.bincount(y[va]) == 6) and np.all(np.bincount(y[te]) == 12)
    assert len(np.unique(np.concatenate([tr, va, te]))) == y.size
    again = stratified_split(y, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip((tr, va, te), again))
    other = stratified_split(y, seed=4)
    assert not np.array_equal(te, other[2])


def test_split_every_class_when_possible():
    y = np.array([0] * 20 + [1] + [2] * 2 + [3] * 3)
    for seed in range(5):
        tr, va, te = stratified_split(y, seed)
        assert np.sort(np.concatenate([tr, va, te])).tolist() == list(range(y.size))
        assert set(y[tr]) == {0, 1, 2, 3}           # every class trains
        assert {0, 2, 3} <= set(y[te])              # two members: train and test
        assert {0, 3} <= set(y[va])                 # three members: all parts


def test_split_small_balanced():
    y = np.repeat(np.arange(21), 5)                 # the shape of the UC Merced subset
    parts = stratified_split(y, seed=0)
    for part in parts:
        assert np.all(np.bincount(y[part], minlength=21) >= 1)


@pytest.mark.parametrize("fractions", [(0.5, 0.1, 0.1), (0.0, 0.5, 0.5), (1.2, -0.1, -0.1)])
def test_split_bad_fractions(fractions):
    with pytest.raises(ValueError, match=r"fractions must be \(train > 0, val >= 0, test >= 0\) summing to 1, got"):
        stratified_split(np.zeros(10), 0, fractions=fractions)


# ----------------------------------------------------------------------------- batches

def test_train_batches():
    batches = list(train_batches(10, 3, seed=0, epoch=0))
    assert len(batches) == 3 and all(b.shape == (3,) for b in batches)
    assert len(np.unique(np.concatenate(batches))) == 9
    again = list(train_batches(10, 3, seed=0, epoch=0))
    assert all(np.array_equal(a, b) for a, b in zip(batches, again))
    nxt = list(train_batches(10, 3, seed=0, epoch=1))
    assert not all(np.array_equal(a, b) for a, b in zip(batches, nxt))
    with pytest.raises(DataError, match="fewer than one batch"):
        next(train_batches(2, 3, seed=0, epoch=0))


def test_eval_batches():
    out = list(eval_batches(7, 3))
    assert [idx.shape for idx, _ in out] == [(3,)] * 3
    idx = np.concatenate([i[m] for i, m in out])
    np.testing.assert_array_equal(idx, np.arange(7))
    assert out[-1][1].tolist() == [True, False, False]
    assert out[-1][0].tolist() == [6, 0, 0]
    with pytest.raises(DataError, match="nothing to evaluate: the set is empty"):
        next(eval_batches(0, 3))
    with pytest.raises(ValueError, match="batch_size must be positive, got 0"):
        next(eval_batches(7, 0))


def test_sixteen_bit_images_are_scaled_not_clipped(tmp_path):
    """A single-band 16-bit TIFF (values 0..4000): scaled by its maximum, where Pillow's own RGB
    conversion would clip nearly every pixel at 255."""
    from PIL import Image

    from rsjax.data.scenes import read_image
    values = np.linspace(0, 4000, 64 * 64).reshape(64, 64).astype(np.uint16)
    Image.fromarray(values).save(tmp_path / "a.tif")
    with Image.open(tmp_path / "a.tif") as im:
        assert im.mode.startswith("I;16")
    rgb = read_image(tmp_path / "a.tif", None)
    assert rgb.shape == (64, 64, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb[..., 0], np.rint(values * (255 / 4000)).astype(np.uint8))
