"""On-device augmentation: determinism, shapes, identities and torchvision colour semantics."""
import colorsys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rsjax.data import augment as A

STD = np.asarray(A.IMAGENET_STD, np.float32)
MEAN = np.asarray(A.IMAGENET_MEAN, np.float32)


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).integers(0, 256, (6, 10, 12, 3), dtype=np.uint8)


def _unnorm(x):
    return np.asarray(x) * STD + MEAN


def test_shapes_and_determinism(images):
    a = A.augment(images, A.augment_key(0, 5), 8)
    assert a.shape == (6, 8, 8, 3) and a.dtype == jnp.float32
    np.testing.assert_array_equal(a, A.augment(images, A.augment_key(0, 5), 8))
    assert not np.array_equal(a, A.augment(images, A.augment_key(0, 6), 8))
    assert not np.array_equal(a, A.augment(images, A.augment_key(1, 5), 8))
    u = _unnorm(a)
    assert u.min() >= -1e-5 and u.max() <= 1 + 1e-5


def test_identity_equals_preprocess(images):
    plain = A.augment(images, A.augment_key(0, 0), 8, p_gray=0.0, jitter=0.0, p_flip=0.0)
    pre = A.preprocess(images, 8)
    np.testing.assert_array_equal(plain, pre)
    assert pre.shape == (6, 8, 8, 3)
    manual = (jax.image.resize(images / 255.0, (6, 8, 8, 3), "bilinear", antialias=True) - MEAN) / STD
    np.testing.assert_allclose(pre, manual, atol=1e-5)
    np.testing.assert_allclose(A.preprocess(images, None), (images / 255.0 - MEAN) / STD, atol=1e-5)


def test_flip_always(images):
    flipped = A.augment(images, A.augment_key(0, 0), 8, p_gray=0.0, jitter=0.0, p_flip=1.0)
    np.testing.assert_array_equal(flipped, A.preprocess(images, 8)[:, :, ::-1])


def test_grayscale_has_equal_channels(images):
    out = _unnorm(A.augment(images, A.augment_key(3, 0), 8, p_gray=1.0, jitter=0.4))
    np.testing.assert_allclose(out[..., 0], out[..., 1], atol=2e-5)
    np.testing.assert_allclose(out[..., 1], out[..., 2], atol=2e-5)


def test_probabilities_per_image():
    x = np.random.default_rng(1).integers(0, 256, (400, 2, 3, 3), dtype=np.uint8)
    pre = np.asarray(A.preprocess(x, None))
    out = np.asarray(A.augment(x, A.augment_key(0, 0), None, p_gray=0.2, jitter=0.0, p_flip=0.5))
    un = _unnorm(out)
    gray = np.all(np.abs(un - un[..., :1]) < 1e-5, axis=(1, 2, 3))
    assert 0.13 < gray.mean() < 0.27
    colour = ~gray
    same = np.all(out == pre, axis=(1, 2, 3))
    flip = np.all(out == pre[:, :, ::-1], axis=(1, 2, 3))
    assert np.all(same[colour] | flip[colour])
    assert 0.4 < flip[colour].mean() < 0.6


def test_inside_jit_with_traced_step(images):
    step_fn = jax.jit(lambda x, step: A.augment(x, A.augment_key(0, step), 8))
    np.testing.assert_allclose(step_fn(images, 5), A.augment(images, A.augment_key(0, 5), 8), atol=1e-6)


@pytest.mark.parametrize("jitter", [(0.4, 0.4, 0.4, 0.7), (0.4, -0.1, 0.4, 0.1), (0.4, 0.4, 0.4), -0.2])
def test_bad_jitter(images, jitter):
    with pytest.raises(ValueError, match=r"jitter must be one strength or \(brightness, contrast, saturation, hue\), "
                                         r"all >= 0 and hue <= 0.5; got"):
        A.augment(images, A.augment_key(0, 0), 8, jitter=jitter)


# ----------------------------------------------------------------------------- colour operations

def test_blends_hand_computed():
    img = jnp.asarray([[[0.2, 0.4, 0.6], [0.8, 0.6, 0.4]]], jnp.float32)          # 1 x 2 pixels
    gray = 0.2989 * img[..., 0] + 0.587 * img[..., 1] + 0.114 * img[..., 2]
    np.testing.assert_allclose(A.adjust_brightness(img, 2.0), np.clip(2 * np.asarray(img), 0, 1), atol=1e-6)
    np.testing.assert_allclose(A.adjust_contrast(img, 0.0), np.full((1, 2, 3), float(gray.mean())), atol=1e-6)
    np.testing.assert_allclose(A.adjust_saturation(img, 0.0), np.repeat(np.asarray(gray)[..., None], 3, -1), atol=1e-6)
    c = 1.5
    expected = np.clip(c * np.asarray(img) + (1 - c) * float(gray.mean()), 0, 1)
    np.testing.assert_allclose(A.adjust_contrast(img, c), expected, atol=1e-6)


def test_hsv_against_colorsys():
    px = np.random.default_rng(2).random((200, 3)).astype(np.float32)
    px[:3] = [[0.5, 0.5, 0.5], [1, 0, 0], [0, 0, 0]]                                  # grey, red, black
    ref = np.array([colorsys.rgb_to_hsv(*p) for p in px])
    np.testing.assert_allclose(A.rgb_to_hsv(jnp.asarray(px)), ref, atol=1e-6)
    np.testing.assert_allclose(A.hsv_to_rgb(jnp.asarray(ref, jnp.float32)), px, atol=1e-6)


def test_hue_third_turn():
    red = jnp.asarray([[[1.0, 0.0, 0.0]]])
    np.testing.assert_allclose(A.adjust_hue(red, 1 / 3), [[[0.0, 1.0, 0.0]]], atol=1e-6)
    np.testing.assert_allclose(A.adjust_hue(red, -1 / 3), [[[0.0, 0.0, 1.0]]], atol=1e-6)


@settings(derandomize=True, deadline=None, database=None, max_examples=15)
@given(st.floats(-0.5, 0.5), st.integers(0, 2 ** 16))
def test_hue_round_trip(h, seed):
    img = jnp.asarray(np.random.default_rng(seed).random((3, 4, 3)), jnp.float32)
    back = A.adjust_hue(A.adjust_hue(img, h), -h)
    np.testing.assert_allclose(back, img, atol=1e-5)


@pytest.mark.parametrize("strengths", [(0.4, 0.4, 0.4, 0.4), (0.4, 0.0, 0.4, 0.4), (0.0, 0.3, 0.0, 0.2),
                                       (0.4, 0.4, 0.4, 0.0), (0.0, 0.0, 0.0, 0.3)])
def test_color_jitter_order_matches_explicit_composition(strengths):
    """The active operations (strength > 0) in a uniform random order, drawn as the blends' order
    (argsort of u[5:]) and the hue rotation's position among them (floor(u[4] (blends + 1))), or in
    torchvision's fixed order; inactive ones skipped."""
    img = jnp.asarray(np.random.default_rng(3).random((4, 4, 3)), jnp.float32)
    ops = (A.adjust_brightness, A.adjust_contrast, A.adjust_saturation, A.adjust_hue)
    kinds = [i for i in range(3) if strengths[i] > 0]
    for trial in range(6):
        u = np.random.default_rng(trial).random(8).astype(np.float32)
        factors = [max(0.0, 1 - s) + (1 + s - max(0.0, 1 - s)) * u[i] for i, s in enumerate(strengths[:3])]
        factors.append(-strengths[3] + 2 * strengths[3] * u[3])
        blends = [kinds[j] for j in np.argsort(u[5:5 + len(kinds)])]
        pos = int(np.floor(u[4] * (len(kinds) + 1)))
        order = blends[:pos] + [3] + blends[pos:] if strengths[3] > 0 else blends
        expected = img
        for i in order:
            expected = ops[i](expected, factors[i])
        got = A._color_jitter(img, jnp.asarray(u), strengths, random_order=True)
        np.testing.assert_allclose(got, expected, atol=1e-5)
        fixed = img
        for i in kinds + ([3] if strengths[3] > 0 else []):
            fixed = ops[i](fixed, factors[i])
        np.testing.assert_allclose(A._color_jitter(img, jnp.asarray(u), strengths, random_order=False),
                                   fixed, atol=1e-5)
