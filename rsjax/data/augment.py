"""Training augmentation and evaluation preprocessing for scene images, on device in JAX.

The SNCA-CE pipeline (torchvision in the authors' code): resize, ``RandomGrayscale(p=0.2)``,
``ColorJitter(0.4, 0.4, 0.4, 0.4)``, ``RandomHorizontalFlip()``, ImageNet mean/std
normalisation. Here each image draws its own parameters from its own key (``vmap`` over
``jax.random.split``), the whole batch runs in one jitted function, and the key of a training
step is ``augment_key(seed, step)`` = ``fold_in(key(seed), step)``: the same (seed, step)
always gives the same batch, with no host-side RNG state.

The colour operations follow torchvision's tensor semantics on floats in [0, 1]:
brightness blends with black, contrast with the mean grey level of the image, saturation with
the image's grey version (weights 0.2989, 0.587, 0.114), each clamped to [0, 1]; hue rotates
the HSV hue by a factor in [-hue, hue]. Jitter factors are uniform in
[max(0, 1 - s), 1 + s]; as in torchvision the four operations run in a random order per image
(``random_order=True``), and an operation of strength 0 is left out. ``jax.lax.switch`` is
avoided on purpose: under ``vmap`` it evaluates every branch.
"""
from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
GRAY_WEIGHTS = (0.2989, 0.587, 0.114)


# ----------------------------------------------------------------------------- building blocks

def to_unit(images: jax.Array, size: int | None) -> jax.Array:
    """``uint8`` (or float in [0, 1]) NHWC -> float32 in [0, 1], resized to ``size x size``
    with antialiased bilinear interpolation (``jax.image.resize``; torchvision's default)."""
    x = jnp.asarray(images)
    x = x.astype(jnp.float32) / 255.0 if x.dtype == jnp.uint8 else x.astype(jnp.float32)
    if size is not None and x.shape[1:3] != (size, size):
        x = jax.image.resize(x, (x.shape[0], size, size, x.shape[3]), method="bilinear", antialias=True)
    return jnp.clip(x, 0.0, 1.0)


def normalize(x: jax.Array) -> jax.Array:
    """ImageNet mean/std normalisation of float images in [0, 1] (channels last)."""
    return (x - jnp.asarray(IMAGENET_MEAN, x.dtype)) / jnp.asarray(IMAGENET_STD, x.dtype)


def grayscale(img: jax.Array) -> jax.Array:
    """Grey level (..., H, W, 1) of RGB images with torchvision's weights."""
    return jnp.sum(img * jnp.asarray(GRAY_WEIGHTS, img.dtype), axis=-1, keepdims=True)


def _blend(a: jax.Array, b: jax.Array, ratio) -> jax.Array:
    return jnp.clip(ratio * a + (1.0 - ratio) * b, 0.0, 1.0)


def adjust_brightness(img: jax.Array, factor) -> jax.Array:
    """``img * factor`` clamped to [0, 1]."""
    return _blend(img, jnp.zeros_like(img), factor)


def adjust_contrast(img: jax.Array, factor) -> jax.Array:
    """Blend one HWC image with its mean grey level."""
    return _blend(img, jnp.mean(grayscale(img)), factor)


def adjust_saturation(img: jax.Array, factor) -> jax.Array:
    """Blend with the grey version of the image (0 = grey, 1 = unchanged)."""
    return _blend(img, grayscale(img), factor)


def rgb_to_hsv(img: jax.Array) -> jax.Array:
    """RGB in [0, 1] -> HSV in [0, 1] (channels last), as torchvision's ``_rgb2hsv``."""
    r, g, b = img[..., 0], img[..., 1], img[..., 2]
    maxc = jnp.max(img, axis=-1)
    minc = jnp.min(img, axis=-1)
    eqc = maxc == minc
    cr = maxc - minc
    s = cr / jnp.where(eqc, 1.0, maxc)
    div = jnp.where(eqc, 1.0, cr)
    rc, gc, bc = (maxc - r) / div, (maxc - g) / div, (maxc - b) / div
    hr = jnp.where(maxc == r, bc - gc, 0.0)
    hg = jnp.where((maxc == g) & (maxc != r), 2.0 + rc - bc, 0.0)
    hb = jnp.where((maxc != g) & (maxc != r), 4.0 + gc - rc, 0.0)
    h = jnp.mod((hr + hg + hb) / 6.0 + 1.0, 1.0)
    return jnp.stack([h, s, maxc], axis=-1)


def hsv_to_rgb(hsv: jax.Array) -> jax.Array:
    """HSV in [0, 1] -> RGB in [0, 1] (channels last).

    The branch-free form ``c_n = v - v s clip(min(k_n, 4 - k_n), 0, 1)``, ``k_n = (n + 6 h) mod 6``
    for n = 5, 3, 1, which equals torchvision's sector-wise ``_hsv2rgb`` (it compiles faster).
    """
    h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    out = []
    for n in (5.0, 3.0, 1.0):
        k = jnp.mod(n + 6.0 * h, 6.0)
        out.append(v - v * s * jnp.clip(jnp.minimum(k, 4.0 - k), 0.0, 1.0))
    return jnp.clip(jnp.stack(out, axis=-1), 0.0, 1.0)


def adjust_hue(img: jax.Array, factor) -> jax.Array:
    """Rotate the hue by ``factor`` (a fraction of the colour circle, in [-0.5, 0.5])."""
    hsv = rgb_to_hsv(img)
    h = jnp.mod(hsv[..., 0] + factor, 1.0)
    return hsv_to_rgb(jnp.stack([h, hsv[..., 1], hsv[..., 2]], axis=-1))


def _jitter_strengths(jitter: float | Sequence[float]) -> tuple[float, float, float, float]:
    vals = (float(jitter),) * 4 if not isinstance(jitter, (tuple, list)) else tuple(float(v) for v in jitter)
    if len(vals) != 4 or min(vals) < 0 or vals[3] > 0.5:
        raise ValueError(f"jitter must be one strength or (brightness, contrast, saturation, hue), all >= 0 "
                         f"and hue <= 0.5; got {jitter}")
    return vals


# ----------------------------------------------------------------------------- one image

def _blend_kind(img: jax.Array, kind: jax.Array, factor: jax.Array) -> jax.Array:
    """Brightness (kind 0), contrast (1) or saturation (2) with a traced kind: all three blend
    the image with a target (black, mean grey, grey image). Factor 1 returns ``img`` exactly."""
    g = grayscale(img)
    target = jnp.where(kind == 0, 0.0, jnp.where(kind == 1, jnp.mean(g), g))
    return _blend(img, target, factor)


def _color_jitter(img: jax.Array, u: jax.Array, strengths: tuple[float, ...], random_order: bool) -> jax.Array:
    """torchvision ``ColorJitter`` on one HWC image in [0, 1], driven by 8 uniforms ``u``.

    ``u[0:4]`` give the brightness, contrast, saturation and hue factors, ``u[4]`` the position
    of the hue rotation and ``u[5:8]`` (argsort) the order of the blends. In random order a
    uniform permutation of the active operations is drawn as a uniform position of the hue
    rotation among them and a uniform order of the blends. The blends run in slots before and
    after the single hue rotation, inactive slots with factor 1 (exact identity), so the costly
    HSV round trip is computed once per image rather than once per position (a ``lax.switch``
    under ``vmap`` would evaluate every branch in every slot).
    """
    kinds = [i for i in range(3) if strengths[i] > 0]
    lo = jnp.asarray([max(0.0, 1.0 - s) for s in strengths[:3]] + [-strengths[3]], jnp.float32)
    hi = jnp.asarray([1.0 + s for s in strengths[:3]] + [strengths[3]], jnp.float32)
    factors = lo + (hi - lo) * u[:4]
    hue = strengths[3] > 0
    if not random_order:
        for i in kinds:
            img = _blend_kind(img, jnp.int32(i), factors[i])
        return adjust_hue(img, factors[3]) if hue else img
    kinds_arr = jnp.asarray(kinds, jnp.int32)
    order = kinds_arr[jnp.argsort(u[5:5 + len(kinds)])] if kinds else kinds_arr
    if not hue:
        for slot in range(len(kinds)):
            img = _blend_kind(img, order[slot], factors[order[slot]])
        return img
    pos = jnp.floor(u[4] * (len(kinds) + 1))               # number of blends before the hue rotation
    for slot in range(len(kinds)):
        img = _blend_kind(img, order[slot], jnp.where(slot < pos, factors[order[slot]], 1.0))
    img = adjust_hue(img, factors[3])
    for slot in range(len(kinds)):
        img = _blend_kind(img, order[slot], jnp.where(slot >= pos, factors[order[slot]], 1.0))
    return img


def _augment_one(img: jax.Array, key: jax.Array, p_gray: float, strengths: tuple[float, ...],
                 p_flip: float, random_order: bool) -> jax.Array:
    """Grayscale, colour jitter and flip of one HWC float image in [0, 1].

    All random numbers of the image come from one draw of 10 uniforms (one counter-based RNG
    call instead of ten keeps compilation short): ``u[0]`` grayscale, ``u[1]`` flip, the rest
    the colour jitter.
    """
    u = jax.random.uniform(key, (10,))
    if p_gray > 0:
        img = jnp.where(u[0] < p_gray, jnp.broadcast_to(grayscale(img), img.shape), img)
    if any(s > 0 for s in strengths):
        img = _color_jitter(img, u[2:], strengths, random_order)
    if p_flip > 0:
        img = jnp.where(u[1] < p_flip, img[:, ::-1], img)
    return img


# ----------------------------------------------------------------------------- batches

@functools.partial(jax.jit, static_argnames=("size",))
def preprocess(images: jax.Array, size: int | None) -> jax.Array:
    """Evaluation preprocessing: ``uint8`` NHWC -> float32 NHWC, resized to ``size`` (None keeps
    the size) and ImageNet-normalised."""
    return normalize(to_unit(images, size))


@functools.partial(jax.jit, static_argnames=("size", "p_gray", "jitter", "p_flip", "random_order"))
def augment(images: jax.Array, key: jax.Array, size: int | None, *, p_gray: float = 0.2,
            jitter: float | tuple[float, float, float, float] = 0.4, p_flip: float = 0.5,
            random_order: bool = True) -> jax.Array:
    """Training augmentation of a batch: ``uint8`` NHWC -> float32 NHWC (``size x size``).

    Resize, random grayscale (``p_gray``), colour jitter (``jitter``: one strength for all four
    or a (brightness, contrast, saturation, hue) tuple), horizontal flip (``p_flip``), then
    ImageNet normalisation. Each image gets its own key from ``jax.random.split(key, N)``.
    With ``p_gray=0, jitter=0, p_flip=0`` the result equals :func:`preprocess`.
    """
    strengths = _jitter_strengths(jitter)
    x = to_unit(images, size)
    keys = jax.random.split(key, x.shape[0])
    x = jax.vmap(lambda im, k: _augment_one(im, k, p_gray, strengths, p_flip, random_order))(x, keys)
    return normalize(x)


def augment_key(seed: int, step) -> jax.Array:
    """The augmentation key of training step ``step``: ``fold_in(PRNGKey(seed), step)``
    (``step`` may be a traced integer inside a jitted step)."""
    return jax.random.fold_in(jax.random.PRNGKey(seed), step)
