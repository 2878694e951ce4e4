"""Deterministic synthetic stand-ins for the course image sets, in the course's folder layouts.

When the real data is not at hand, these sets let the real loaders, models and searches run
end to end. The images are drawn so that the task is a *real* learning problem: the classes
differ in shape and texture, every cue is drawn from overlapping class-conditional ranges and
buried under nuisance variation (position, size, rotation, tone, blur, noise, hair or soft
tissue), so a small CNN's hyperparameters matter and nothing reaches 100%.

Layouts written (``root`` is the folder you pass):

- ``write_skin``:  ``root/Lab2/Skin/{train,validation}/{Mel,Nevi}/*.png``   (0 = Mel, 1 = Nevi)
- ``write_bone``:  ``root/Lab2/Bone/{train,validation}/{AFF,NFF}/*.png``    (0 = AFF, 1 = NFF)
- ``write_xray9``: ``root/Lab1/X_ray/{train,test}/C{k}_{i}.png``            (k = 1..9)
- ``write_lungs``: ``root/Lab3/X_ray/{Image,Mask}/Im{i}.png``               (mask > 0 is lung)

All images are 8-bit grayscale PNG of ``size`` x ``size`` pixels; masks hold only 0 and 255.
Shapes are drawn in resolution-independent coordinates, so a set at another ``size`` shows the
same content. Every image has its own random stream, ``default_rng([seed, set, split, index])``,
so the same seed gives byte-identical files regardless of write order, and no global random
state is touched.

``ensure(name, root, **settings)`` writes a set once, atomically, into a folder whose name spells
out every setting (see ``set_folder``; a study's ``[synthetic.<name>]`` gives them), e.g.
``root/skin-n_train1000-n_val200-size128-seed0-v2/Lab2/Skin``.
"""

from __future__ import annotations

import inspect
import json
import math
import operator
import os
import shutil
import socket
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import psutil
from PIL import Image, ImageDraw

# Bumped whenever a generator's pixels change, so an old set on disk is never taken for a new one.
VERSION = 2
MARKER = ".medtune-synthetic.json"

SKIN_CLASSES = ("Mel", "Nevi")
BONE_CLASSES = ("AFF", "NFF")
XRAY9_CLASSES = tuple(f"C{k}" for k in range(1, 10))

# Where each set lives below the folder passed to its writer (the course layout).
SUBDIRS: dict[str, tuple[str, ...]] = {
    "skin": ("Lab2", "Skin"),
    "bone": ("Lab2", "Bone"),
    "xray9": ("Lab1", "X_ray"),
    "lungs": ("Lab3", "X_ray"),
}
# One random-stream tag per set, so skin image 3 and bone image 3 are unrelated at one seed.
_TAGS = {"skin": 1, "bone": 2, "xray9": 3, "lungs": 4}

# Class separation of the latent "how abnormal" score (class means at -sep and +sep, unit
# spread). This, not label noise, is what keeps the best reachable accuracy below 100%.
_SKIN_SEP = 2.0
_BONE_SEP = 2.0
# How loosely each visible cue follows the latent score (on its 0..1 scale).
_CUE_NOISE = 0.12
# Calibrated by hand at 64x64 (Conv16-Pool-Conv32-Pool-Dense64, Adam 1e-3, batch 32, 10 epochs,
# 1000/200 images): validation accuracy ~0.80-0.90 on skin and bone over init and data seeds,
# ~0.5-0.65 at Adam 1e-2 or 1e-4 on bone; logistic regression on raw pixels ~0.55-0.63, mean
# intensity ~0.5. After changing a separation or a cue, re-check that and bump VERSION.


# --------------------------------------------------------------------------- drawing helpers


@lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in [-1, 1] (x right, y down), cached per size."""
    # float32 throughout: a 128x128 float64 temporary (128 KiB) sits right at malloc's mmap
    # threshold, and the resulting page-fault churn cost more time than the drawing itself.
    c = ((np.arange(size, dtype=np.float32) + 0.5) / size) * 2.0 - 1.0
    xx, yy = np.meshgrid(c, c)
    xx.flags.writeable = False  # shared between images: guard against in-place edits
    yy.flags.writeable = False
    return xx, yy


def _sigmoid(x: np.ndarray | float) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(x)))  # tanh form: no overflow warnings


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Zero-mean, unit-std noise with blobs about size/cells pixels wide (bicubic upsampling)."""
    coarse = rng.standard_normal((cells, cells)).astype(np.float32)
    field = np.asarray(Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC))
    return (field - field.mean()) / (field.std() + 1e-9)  # (PIL's buffer is read-only)


def _blur(a: np.ndarray, sigma_px: float) -> np.ndarray:
    """Separable Gaussian blur in plain numpy (deterministic, no SciPy needed)."""
    if sigma_px < 0.25:
        return a
    r = max(1, min(int(np.ceil(3.0 * sigma_px)), a.shape[0] - 1))
    k = np.exp(-0.5 * (np.arange(-r, r + 1, dtype=a.dtype) / float(sigma_px)) ** 2)
    k /= k.sum()
    p = np.pad(a, r, mode="reflect")
    h, w = a.shape
    rows = sum(k[j] * p[:, j : j + w] for j in range(2 * r + 1))
    return sum(k[j] * rows[j : j + h, :] for j in range(2 * r + 1))


def _segment_distance(
    xx: np.ndarray, yy: np.ndarray, p0: tuple[float, float], p1: tuple[float, float]
) -> np.ndarray:
    x0, y0 = float(p0[0]), float(p0[1])  # plain floats keep the float32 arrays float32
    dx, dy = float(p1[0]) - x0, float(p1[1]) - y0
    t = ((xx - x0) * dx + (yy - y0) * dy) / (dx * dx + dy * dy + 1e-12)
    t = np.clip(t, 0.0, 1.0)
    return np.hypot(xx - (x0 + t * dx), yy - (y0 + t * dy))


def _bezier(p0: np.ndarray, p1: np.ndarray, p2: np.ndarray, n: int = 10) -> np.ndarray:
    t = np.linspace(0.0, 1.0, n)[:, None]
    return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2


def _rib(
    xx: np.ndarray,
    yy: np.ndarray,
    x0: float,
    y0: float,
    side: float,
    reach: float,
    rise: float,
    drop: float,
    half_width: float,
    soft: float,
) -> np.ndarray:
    """Soft band along a rib-like arc from the spine at (x0, y0) out to one side (+-1).

    The centre line is a parabola in u = lateral distance / reach (0..1): it first rises,
    then curves down. A closed form, far cheaper than distances to a sampled curve.
    """
    x0, y0, side, reach = float(x0), float(y0), float(side), float(reach)
    u = side * (xx - x0) / reach
    centre = y0 - rise * u + drop * u * u
    band = _sigmoid((half_width - np.abs(yy - centre)) / soft)
    return band * _sigmoid((0.5 - np.abs(u - 0.5)) * reach / soft)


def _strokes(curves: list[tuple[np.ndarray, float, float]], size: int) -> np.ndarray:
    """Anti-aliased coverage (0..1) of thin polylines, each (points, half width, strength).

    Drawn by PIL at 4x and box-filtered down: as smooth as a distance field, but in C, which
    matters for the long hairs that cross the whole image.
    """
    scale = 4 * size
    canvas = Image.new("L", (scale, scale), 0)
    draw = ImageDraw.Draw(canvas)
    for points, half_width, strength in curves:
        xy = [((x + 1.0) * scale / 2.0, (y + 1.0) * scale / 2.0) for x, y in points]
        width = max(1, round(half_width * scale))  # full width in canvas pixels
        draw.line(xy, fill=round(255 * strength), width=width, joint="curve")
    small = canvas.resize((size, size), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0


def _ellipse(
    xx: np.ndarray,
    yy: np.ndarray,
    cx: float,
    cy: float,
    rx: float,
    ry: float,
    angle: float,
    soft: float,
) -> np.ndarray:
    """Soft-edged filled ellipse; `soft` is the edge width in normalized units."""
    cx, cy, rx, ry, soft = float(cx), float(cy), float(rx), float(ry), float(soft)
    c, s = math.cos(angle), math.sin(angle)
    u = ((xx - cx) * c + (yy - cy) * s) / rx
    v = (-(xx - cx) * s + (yy - cy) * c) / ry
    r = np.hypot(u, v)
    return _sigmoid((1.0 - r) * min(rx, ry) / soft)


def _bar(
    xx: np.ndarray,
    yy: np.ndarray,
    p0: tuple[float, float],
    p1: tuple[float, float],
    half_width: float,
    soft: float,
) -> np.ndarray:
    """Soft-edged capsule (a bone-like rod) from p0 to p1."""
    return _sigmoid((float(half_width) - _segment_distance(xx, yy, p0, p1)) / float(soft))


def _finish(
    rng: np.random.Generator,
    img: np.ndarray,
    size: int,
    blur: tuple[float, float],
    noise: tuple[float, float],
) -> np.ndarray:
    """Optics blur, then sensor noise, then 8 bits (blur in pixels at 128 px, scaled to size)."""
    img = _blur(img, rng.uniform(*blur) * size / 128.0)
    img = img + rng.standard_normal(img.shape, dtype=np.float32) * rng.uniform(*noise)
    return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)


def _rng(name: str, seed: int, split: int, index: int) -> np.random.Generator:
    # Per-image stream: files do not depend on write order or on how many other images exist.
    return np.random.default_rng([seed, _TAGS[name], split, index])


# ------------------------------------------------------------------------------- renderers


def _cues(rng: np.random.Generator, label: int, sep: float, n: int) -> list[float]:
    """n visible-cue strengths in [0, 1] that follow one latent score drawn around +-sep.

    The latent scores of the two classes overlap (normal, unit spread), and each cue adds its
    own jitter, so even a perfect reader of the cues cannot separate every image.
    """
    latent = rng.normal(sep if label == 0 else -sep, 1.0)
    s = float(_sigmoid(latent))
    return np.clip(s + rng.normal(0.0, _CUE_NOISE, n), 0.0, 1.0).tolist()


def render_skin(rng: np.random.Generator, label: int, size: int) -> np.ndarray:
    """Dermoscopy-like lesion: label 0 (Mel) tends to be asymmetric, ragged and blotchy,
    label 1 (Nevi) round, smooth and even; all three cues overlap between the classes."""
    xx, yy = _grid(size)
    asym, ragged, blotchy = _cues(rng, label, _SKIN_SEP, 3)

    # Skin: tone and its slow variation are class-free, so brightness says nothing of the class.
    tone = rng.uniform(0.55, 0.9)
    bg = tone * (1.0 + 0.05 * _smooth_noise(rng, size, 4) + 0.02 * _smooth_noise(rng, size, 24))

    # Lesion outline r(theta): ellipse (nuisance) + low harmonics (asymmetry) + high (ragged).
    cx, cy = rng.uniform(-0.22, 0.22, 2).tolist()
    radius = rng.uniform(0.28, 0.5)
    dx, dy = xx - cx, yy - cy
    rho = np.hypot(dx, dy)
    # Harmonic k has amplitude |c[k]|: r(theta) = R * (1 + Re(sum c[k] e^{ik theta})).
    c = np.zeros(13, dtype=np.complex128)
    ell = rng.uniform(0.0, 0.22)
    a1, a3 = 0.22 * asym * rng.uniform(0.6, 1.0, 2)
    amps = rng.uniform(0.3, 1.0, 8) / np.sqrt(np.arange(5, 13))
    amps *= 0.22 * ragged / np.sqrt(0.5 * np.sum(amps**2))  # rms wobble proportional to cue
    c[[1, 2, 3]] = a1, ell, a3
    c[5:] = amps
    c *= np.exp(1j * rng.uniform(0.0, 2 * np.pi, 13))  # random phases = random rotation
    # e^{i theta} straight from the offsets: much cheaper than arctan2 and 10 cosines.
    z = (dx + 1j * dy) / np.maximum(rho, 1e-9)
    shape = 1.0 + np.polyval(c[::-1].astype(np.complex64), z).real
    # Wobble adds area; shrink so lesion area (and so mean intensity) stays class-free.
    radius /= math.sqrt(1.0 + 0.5 * (ell**2 + a1**2 + a3**2 + float(np.sum(amps**2))))
    edge = rng.uniform(0.006, 0.03)
    lesion = _sigmoid((radius * shape - rho) / edge)

    # Pigment: class-free mean depth; blotch contrast follows the cue (zero-mean, so the
    # average darkness stays class-free too). Some texture in every lesion.
    depth = rng.uniform(0.3, 0.65)
    texture = _smooth_noise(rng, size, int(rng.integers(6, 11)))
    contrast = rng.uniform(0.03, 0.12) + 0.8 * blotchy
    pigment = np.clip(depth * (1.0 + contrast * texture), 0.03, 0.95)
    img = bg * (1.0 - pigment * lesion)

    # Hairs: dark thin curves over anything, in both classes.
    hairs = [
        (
            _bezier(*rng.uniform(-1.1, 1.1, (3, 2)), 12),
            rng.uniform(0.006, 0.016),
            rng.uniform(0.3, 0.7),
        )
        for _ in range(int(rng.poisson(1.3)))
    ]
    img = img * (1.0 - _strokes(hairs, size))

    # Dermatoscope vignette in some images.
    if rng.random() < 0.3:
        r0 = rng.uniform(0.95, 1.25)
        img = img * (1.0 - rng.uniform(0.4, 0.9) * np.clip((np.hypot(xx, yy) - r0) / 0.15, 0, 1))
    return _finish(rng, img, size, blur=(0.5, 1.3), noise=(0.01, 0.035))


def render_bone(rng: np.random.Generator, label: int, size: int) -> np.ndarray:
    """Radiograph of a femoral shaft with a fracture. Label 0 (AFF): transverse, often incomplete
    crack from the lateral cortex with a cortical beak; label 1 (NFF): oblique or spiral line,
    often with extra fragment lines. Obliquity, beak and comminution overlap between classes."""
    xx, yy = _grid(size)
    px = 2.0 / size
    oblique, plain, comminuted = _cues(rng, label, -_BONE_SEP, 3)  # high cue = NFF-like
    beak = 1.0 - plain

    # Soft tissue: dark, mottled; the thigh is a broad brighter band around the bone.
    angle = rng.uniform(-0.3, 0.3)  # shaft angle from vertical
    ux, uy = math.sin(angle), math.cos(angle)  # along the shaft
    cx, cy = rng.uniform(-0.25, 0.25), rng.uniform(-0.2, 0.2)
    along = (xx - cx) * ux + (yy - cy) * uy
    across = (xx - cx) * uy - (yy - cy) * ux
    r_out = rng.uniform(0.18, 0.28)
    r_in = r_out * rng.uniform(0.45, 0.7)
    tissue = rng.uniform(0.08, 0.25) * (1.0 + 0.25 * _smooth_noise(rng, size, 5))
    tissue += rng.uniform(0.05, 0.15) * np.exp(-((across / (r_out * rng.uniform(2.5, 4))) ** 2))

    # Fracture line: along = f0 + tan(beta) * across + curvature * across^2 (spiral-ish bend).
    f0 = rng.uniform(-0.25, 0.25)
    beta = math.radians(rng.uniform(-8, 8) + 62.0 * oblique) * float(rng.choice((-1.0, 1.0)))
    bend = rng.uniform(-2.0, 2.0) * oblique
    g = (along - f0 - math.tan(beta) * across - bend * across**2) * math.cos(beta)
    lateral = float(rng.choice((-1.0, 1.0)))

    # Distal fragment slightly shifted sideways (both classes).
    side = _sigmoid(g / px)
    across_s = across - side * rng.uniform(-0.05, 0.05)

    # Projection of a hollow tube: chord length through the cortex, brightest at the endosteum.
    def chord(a: np.ndarray, r: float) -> np.ndarray:
        return np.sqrt(np.clip(r * r - a * a, 0.0, None))

    proj = (chord(across_s, r_out) - chord(across_s, r_in)) / math.sqrt(r_out**2 - r_in**2)
    marrow = rng.uniform(0.15, 0.3) * chord(across_s, r_in) / r_in
    bone = rng.uniform(0.5, 0.7) * (proj + marrow)

    # Crack: thin dark gap; AFF-like ones may stop part-way from the lateral cortex.
    reach = min(max(0.35 + 0.8 * oblique + rng.normal(0, 0.15), 0.3), 1.0)
    start = lateral * r_out * (1.0 - 2.0 * reach)  # crack runs from the lateral edge to here
    extent = _sigmoid((lateral * (across - start)) / px)
    width = rng.uniform(0.04, 0.06)
    crack = np.exp(-((g / width) ** 2)) * extent
    bone = bone * (1.0 - rng.uniform(0.75, 1.0) * crack)
    # Overriding fragments: a denser (brighter) band beside an oblique line where the fragments
    # slide past each other; it also offsets the line's darkening, so brightness stays class-free.
    overlap = np.exp(-(((g + 2.0 * width) / (1.2 * width)) ** 2)) * extent
    bone = bone * (1.0 + rng.uniform(0.4, 0.7) * oblique * overlap)

    # Extra fragment lines (comminution) branching off the main line.
    for _ in range(int(rng.binomial(3, 0.1 + 0.6 * comminuted))):
        t = rng.uniform(-r_out, r_out)
        p0 = np.array([cx, cy]) + (f0 + np.tan(beta) * t) * np.array([ux, uy])
        p0 += t * np.array([uy, -ux])
        phi = rng.uniform(0, 2 * np.pi)
        length = rng.uniform(0.05, 0.14)
        p1 = p0 + length * np.array([np.cos(phi), np.sin(phi)])
        d = _segment_distance(xx, yy, tuple(p0), tuple(p1))
        bone = bone * (1.0 - rng.uniform(0.5, 0.9) * np.exp(-((d / width) ** 2)))

    # Beak: focal spindle-shaped thickening of the lateral cortex at the fracture site.
    beak_amp = min(max(beak + rng.normal(0, 0.1), 0.0), 1.0) * rng.uniform(0.6, 0.9)
    s_along = rng.uniform(0.04, 0.08)
    s_across = rng.uniform(0.025, 0.045)
    outside = across - lateral * (r_out + 0.5 * s_across)  # centred just outside the cortex
    bump = np.exp(-0.5 * ((along - f0) / s_along) ** 2 - 0.5 * (outside / s_across) ** 2)
    bone = bone + beak_amp * bump

    img = tissue + bone * rng.uniform(0.8, 1.1)
    return _finish(rng, img, size, blur=(0.5, 1.3), noise=(0.01, 0.035))


@dataclass(frozen=True)
class _Frame:
    """What each xray9 template draws with: the image's random stream, the template's
    coordinates and the edge softness."""

    rng: np.random.Generator
    xx: np.ndarray
    yy: np.ndarray
    soft: float

    def j(self, lo: float, hi: float) -> float:
        return float(self.rng.uniform(lo, hi))


# Each template adds to the density map `d` in place, in the order of its random draws, so the
# pixels stay those of the set's VERSION.


def _skull(f: _Frame, d: np.ndarray) -> None:
    """Elliptic ring of variable thickness, sometimes a jaw arc."""
    xx, yy, soft, j = f.xx, f.yy, f.soft, f.j
    rx, ry, t = j(0.45, 0.62), j(0.55, 0.72), j(0.04, 0.12)
    d += _ellipse(xx, yy, 0, 0, rx, ry, 0, soft)
    d -= j(0.6, 0.85) * _ellipse(xx, yy, 0, 0, rx - t, ry - t, 0, soft)
    if f.rng.random() < 0.6:
        d += 0.7 * _bar(xx, yy, (-0.3, ry * 0.85), (0.3, ry * 0.85), j(0.03, 0.05), soft)


def _trunk(f: _Frame, d: np.ndarray) -> None:
    """Chest and abdomen alike: a soft body with a spine down the middle."""
    xx, yy, soft, j = f.xx, f.yy, f.soft, f.j
    d += j(0.25, 0.4) * _ellipse(xx, yy, 0, 0, j(0.65, 0.85), j(0.6, 0.9), 0, soft * 4)
    d += j(0.35, 0.6) * _bar(xx, yy, (0, -0.9), (0, 0.9), j(0.05, 0.1), soft)


def _chest(f: _Frame, d: np.ndarray) -> None:
    """The trunk with dark lung fields crossed by ribs of variable contrast."""
    xx, yy, soft, j = f.xx, f.yy, f.soft, f.j
    _trunk(f, d)
    for side in (-1, 1):
        d -= j(0.15, 0.25) * _ellipse(
            xx, yy, side * 0.33, -0.05, j(0.2, 0.26), j(0.45, 0.55), 0, soft
        )
    rib = j(0.18, 0.35)
    for y in np.linspace(-0.55, 0.45, int(f.rng.integers(4, 8))):
        for side in (-1, 1):
            d += rib * _rib(xx, yy, 0.0, y, side, 0.7, 0.3, 0.4, 0.018, soft)


def _abdomen(f: _Frame, d: np.ndarray) -> None:
    """The trunk with dark gas bubbles and a faint pelvic rim at the bottom."""
    xx, yy, soft, j = f.xx, f.yy, f.soft, f.j
    _trunk(f, d)
    for _ in range(int(f.rng.integers(2, 7))):
        gx, gy = f.rng.uniform(-0.55, 0.55, 2)
        d -= j(0.1, 0.25) * _ellipse(xx, yy, gx, gy, j(0.05, 0.12), j(0.05, 0.12), 0, soft)
    d += j(0.0, 0.3) * _ellipse(xx, yy, 0, 0.85, 0.6, 0.2, 0, soft * 3)


def _long_bone(f: _Frame, d: np.ndarray) -> None:
    """One thick shaft, ends from plain to knobby."""
    xx, yy, soft, j = f.xx, f.yy, f.soft, f.j
    w = j(0.08, 0.13)
    d += _bar(xx, yy, (0, -0.65), (0, 0.65), w, soft)
    for end in (-1, 1):
        d += j(0.4, 0.9) * _ellipse(xx, yy, 0, end * 0.65, w * j(1.0, 2.0), w * 1.2, 0, soft)


def _forearm(f: _Frame, d: np.ndarray) -> None:
    """Two thinner shafts, from touching to well apart."""
    xx, yy, soft, j = f.xx, f.yy, f.soft, f.j
    gap = j(0.02, 0.12)
    for side in (-1, 1):
        w = j(0.045, 0.075)
        x = side * (gap + w)
        d += _bar(xx, yy, (x, -0.7), (x + side * j(-0.05, 0.05), 0.7), w, soft)


def _hand(f: _Frame, d: np.ndarray) -> None:
    """Palm block with three to five radiating fingers."""
    xx, yy, soft, j = f.xx, f.yy, f.soft, f.j
    d += 0.7 * _ellipse(xx, yy, 0, 0.35, j(0.25, 0.35), j(0.22, 0.32), 0, soft)
    fingers = np.linspace(-0.9, 0.6, 5)
    keep = f.rng.permutation(5)[: int(f.rng.integers(3, 6))]
    for i in keep:
        a = fingers[i] + j(-0.1, 0.1)
        length = j(0.35, 0.65) * (0.7 if i == 0 else 1.0)
        p0 = (0.25 * np.sin(a), 0.3 - 0.25 * np.cos(a))
        p1 = (p0[0] + length * np.sin(a), p0[1] - length * np.cos(a))
        d += _bar(xx, yy, p0, p1, j(0.03, 0.05), soft)


def _spine(f: _Frame, d: np.ndarray) -> None:
    """Vertical stack of vertebral blocks, sometimes in soft tissue."""
    xx, yy, soft, j = f.xx, f.yy, f.soft, f.j
    if f.rng.random() < 0.5:
        d += j(0.15, 0.35) * _ellipse(xx, yy, 0, 0, j(0.6, 0.85), j(0.6, 0.9), 0, soft * 4)
    n = int(f.rng.integers(5, 9))
    h = 1.6 / n
    fill = j(0.32, 0.48)
    for i in range(n):
        y = -0.8 + (i + 0.5) * h
        d += _ellipse(xx, yy, j(-0.03, 0.03), y, j(0.1, 0.2), h * fill, 0, soft)


def _pelvis(f: _Frame, d: np.ndarray) -> None:
    """Two rings (obturator foramina) under broad iliac wings."""
    xx, yy, soft, j = f.xx, f.yy, f.soft, f.j
    for side in (-1, 1):
        cx = side * j(0.2, 0.3)
        r = j(0.12, 0.18)
        d += _ellipse(xx, yy, cx, 0.3, r, r * 0.85, 0, soft)
        d -= _ellipse(xx, yy, cx, 0.3, r * 0.6, r * 0.5, 0, soft)
        d += j(0.4, 0.7) * _ellipse(xx, yy, side * 0.42, -0.25, 0.3, 0.2, side * 0.5, soft)


def _knee(f: _Frame, d: np.ndarray) -> None:
    """Two shafts end to end with a (sometimes thin) joint gap, faint patella."""
    xx, yy, soft, j = f.xx, f.yy, f.soft, f.j
    w = j(0.07, 0.12)
    gap = j(0.015, 0.1)
    d += _bar(xx, yy, (0, -0.8), (0, -gap - w), w, soft)
    d += j(0.6, 1.0) * _ellipse(xx, yy, 0, -gap - 0.05, w * j(1.2, 1.9), 0.08, 0, soft)
    d += _bar(xx, yy, (0, gap + w), (0, 0.8), w * 0.9, soft)
    d += j(0.6, 1.0) * _ellipse(xx, yy, 0, gap + 0.05, w * j(1.2, 1.8), 0.07, 0, soft)
    d += j(0.0, 0.6) * _ellipse(xx, yy, j(0.12, 0.25), -0.05, 0.09, 0.1, 0, soft)


# Template k (1..9, class C1..C9) and its drawer.
_XRAY9_TEMPLATES: dict[int, Callable[[_Frame, np.ndarray], None]] = {
    1: _skull, 2: _chest, 3: _long_bone, 4: _forearm, 5: _hand, 6: _spine, 7: _pelvis,
    8: _knee, 9: _abdomen,
}


def _xray9_density(
    rng: np.random.Generator, k: int, xx: np.ndarray, yy: np.ndarray, px: float
) -> np.ndarray:
    """Bone density map (about 0..1) of organ template k (1..9) in the template's frame.

    Neighbouring templates share parts and overlapping parameter ranges on purpose (one thick
    shaft vs two touching shafts vs two shafts with a thin joint gap; spine column vs abdomen
    with a spine; faint-ribbed chest vs abdomen), so a few images are genuinely ambiguous.
    """
    frame = _Frame(rng, xx, yy, px * rng.uniform(0.8, 1.6))
    d = np.zeros_like(xx)
    _XRAY9_TEMPLATES[k](frame, d)
    return d


def render_xray9(rng: np.random.Generator, label: int, size: int) -> np.ndarray:
    """Nine anatomy-like templates (label 0..8 = C1..C9) under random pose, exposure and noise."""
    px = 2.0 / size
    xx0, yy0 = _grid(size)
    # Random pose: rotate, scale, shift the template's coordinate frame.
    a = rng.uniform(-0.35, 0.35)
    scale = rng.uniform(0.8, 1.2)
    tx, ty = rng.uniform(-0.15, 0.15, 2).tolist()
    c, s = math.cos(a), math.sin(a)
    xx = ((xx0 - tx) * c + (yy0 - ty) * s) / scale
    yy = (-(xx0 - tx) * s + (yy0 - ty) * c) / scale
    density = _xray9_density(rng, label + 1, xx, yy, px / scale)
    # Distractors any class may have: a bright marker and a soft blob.
    if rng.random() < 0.4:
        mx, my = rng.uniform(-0.85, 0.85, 2)
        density += 0.8 * _ellipse(xx0, yy0, mx, my, 0.04, 0.04, 0, px)
    bx, by = rng.uniform(-0.6, 0.6, 2)
    density += rng.uniform(0, 0.3) * _ellipse(xx0, yy0, bx, by, 0.2, 0.15, rng.uniform(0, 3), 0.1)
    img = rng.uniform(0.03, 0.15) + rng.uniform(0.5, 0.85) * density
    img = img * (1.0 + 0.15 * _smooth_noise(rng, size, 6))
    # Collimator shutters in some images: one side cut off, hiding part of the anatomy.
    if rng.random() < 0.3:
        edge = rng.uniform(0.35, 0.75)
        coord = (xx0, -xx0, yy0, -yy0)[int(rng.integers(4))]
        img = np.where(coord > edge, rng.uniform(0.0, 0.05), img)
    return _finish(rng, img, size, blur=(0.6, 1.6), noise=(0.02, 0.06))


def render_lungs(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Chest radiograph and its lung mask (uint8 0/255); the mask is exactly the drawn lobes."""
    xx, yy = _grid(size)
    px = 2.0 / size
    sx = rng.uniform(0.9, 1.1)  # patient width
    ox, oy = rng.uniform(-0.06, 0.06, 2).tolist()

    # Lobes: polar outlines around each lobe centre, wobbly, flattened towards the mediastinum;
    # the left lung (image right) loses a heart-shaped bite.
    lobes = np.full_like(xx, -10.0)  # signed "inside" field; > 0 is lung
    hx, hy, hr = ox + rng.uniform(0.0, 0.08), oy + rng.uniform(0.25, 0.38), rng.uniform(0.17, 0.24)
    for side in (-1.0, 1.0):
        lx, ly = ox + side * sx * rng.uniform(0.3, 0.38), oy + rng.uniform(-0.08, 0.02)
        rx, ry = sx * rng.uniform(0.19, 0.26), rng.uniform(0.48, 0.6)
        dx, dy = (xx - lx) / rx, (yy - ly) / ry
        theta = np.arctan2(dy, dx)
        shape = 1.0 + sum(
            rng.uniform(-0.06, 0.06) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
            for k in (2, 3, 4)
        )
        # Medial flattening: the side facing the spine is straighter.
        shape -= 0.12 * np.clip(-side * np.cos(theta), 0, None) ** 2
        field = shape - np.hypot(dx, dy)
        if side > 0:  # heart bite from the lower medial corner
            field = np.minimum(field, (np.hypot(xx - hx, yy - hy) - hr) / rx)
        lobes = np.maximum(lobes, field)
    mask = lobes > 0.0
    edge = _sigmoid(lobes * rng.uniform(0.2, 0.26) / px)  # soft-edged lobes for the image

    body = _ellipse(xx, yy, ox, oy + 0.1, sx * rng.uniform(0.78, 0.9), 1.05, 0, 0.06)
    img = rng.uniform(0.02, 0.1) + rng.uniform(0.5, 0.62) * body
    img += rng.uniform(0.1, 0.2) * _bar(xx, yy, (ox, -1.0), (ox, 1.0), 0.08, 0.03)  # spine
    img += rng.uniform(0.05, 0.12) * _ellipse(xx, yy, hx, hy, hr * 1.1, hr, 0, 0.05)  # heart
    img -= rng.uniform(0.28, 0.42) * edge * (1.0 + 0.1 * _smooth_noise(rng, size, 8))
    # Ribs: bright curved bands across both lung fields, and clavicles on top.
    for y in np.linspace(-0.5, 0.5, int(rng.integers(6, 9))) + rng.uniform(-0.05, 0.05):
        for side in (-1.0, 1.0):
            rib = _rib(xx, yy, ox, oy + y - 0.12, side, 0.85, 0.25, 0.55, 0.022, 0.01)
            img += rng.uniform(0.06, 0.12) * rib * body
    for side in (-1.0, 1.0):
        p0 = (ox + side * 0.08, oy - 0.62)
        p1 = (ox + side * 0.55, oy - 0.72)
        img += 0.15 * _bar(xx, yy, p0, p1, 0.025, 0.01)
    img = _finish(rng, img, size, blur=(0.6, 1.4), noise=(0.015, 0.04))
    return img, (mask.astype(np.uint8) * 255)


# --------------------------------------------------------------------------------- writers


def _save(path: Path, pixels: np.ndarray) -> None:
    # No metadata (no timestamps), so equal pixels give equal bytes.
    Image.fromarray(pixels).save(path, format="PNG")


def _check(n: int, what: str, minimum: int) -> int:
    n = operator.index(n)
    if n < minimum:
        raise ValueError(f"{what} must be at least {minimum}, got {n}")
    return n


def _fresh(out: Path) -> Path:
    # Writing over an older set would leave its surplus files behind: a silently mixed set.
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} already holds files; remove it or write somewhere else")
    return out


def _parallel(task: Callable[[int], None], n: int) -> None:
    """Run task(0), ..., task(n - 1) on a few threads.

    numpy and zlib release the GIL for much of the work (about 1.6x on 2 cores), and every
    image has its own random stream, so the files do not depend on thread timing.
    """
    workers = max(1, min(4, os.cpu_count() or 1))
    if workers == 1 or n < 32:
        for i in range(n):
            task(i)
        return
    with ThreadPoolExecutor(workers) as pool:
        for _ in pool.map(task, range(n)):  # consuming re-raises the first error
            pass


def _write_class_folders(
    name: str,
    out: Path,
    splits: dict[str, int],
    classes: tuple[str, ...],
    size: int,
    seed: int,
    render: Callable[[np.random.Generator, int, int], np.ndarray],
) -> Path:
    """Lab2 layout: out/<split>/<class>/<class>_<i>.png, classes round-robin (balanced)."""
    _fresh(out)
    for split_id, (split, n) in enumerate(splits.items()):
        for cls in classes:
            (out / split / cls).mkdir(parents=True, exist_ok=True)

        def one(i: int, split: str = split, split_id: int = split_id) -> None:
            label = i % len(classes)  # every class gets n // k images, the first n % k one more
            pixels = render(_rng(name, seed, split_id, i), label, size)
            _save(out / split / classes[label] / f"{classes[label]}_{i:05d}.png", pixels)

        _parallel(one, n)
    return out


def write_skin(root: Path, *, n_train: int, n_val: int, size: int, seed: int) -> Path:
    """Write the synthetic skin-lesion set (Mel / Nevi); returns ``root/Lab2/Skin``."""
    splits = {"train": _check(n_train, "n_train", 2), "validation": _check(n_val, "n_val", 2)}
    size, seed = _check(size, "size", 16), _check(seed, "seed", 0)
    out = Path(root).joinpath(*SUBDIRS["skin"])
    return _write_class_folders("skin", out, splits, SKIN_CLASSES, size, seed, render_skin)


def write_bone(root: Path, *, n_train: int, n_val: int, size: int, seed: int) -> Path:
    """Write the synthetic femur-fracture set (AFF / NFF); returns ``root/Lab2/Bone``."""
    splits = {"train": _check(n_train, "n_train", 2), "validation": _check(n_val, "n_val", 2)}
    size, seed = _check(size, "size", 16), _check(seed, "seed", 0)
    out = Path(root).joinpath(*SUBDIRS["bone"])
    return _write_class_folders("bone", out, splits, BONE_CLASSES, size, seed, render_bone)


def write_xray9(root: Path, *, n_train: int, n_test: int, size: int, seed: int) -> Path:
    """Write the synthetic nine-organ X-ray set; returns ``root/Lab1/X_ray``.

    Files are ``{train,test}/C{k}_{i}.png``, classes round-robin (balanced); ``i`` runs on
    across both splits, so every file name is unique, as in the course data.
    """
    splits = {"train": _check(n_train, "n_train", 9), "test": _check(n_test, "n_test", 9)}
    size, seed = _check(size, "size", 16), _check(seed, "seed", 0)
    out = _fresh(Path(root).joinpath(*SUBDIRS["xray9"]))
    first = 0
    for split_id, (split, n) in enumerate(splits.items()):
        (out / split).mkdir(parents=True, exist_ok=True)

        def one(i: int, split: str = split, split_id: int = split_id, first: int = first) -> None:
            label = i % 9
            pixels = render_xray9(_rng("xray9", seed, split_id, i), label, size)
            _save(out / split / f"{XRAY9_CLASSES[label]}_{first + i}.png", pixels)

        _parallel(one, n)
        first += n
    return out


def write_lungs(root: Path, *, n_pairs: int, size: int, seed: int) -> Path:
    """Write synthetic chest X-rays with lung masks; returns ``root/Lab3/X_ray``.

    ``Image/Im{i}.png`` and ``Mask/Im{i}.png`` (i = 1..n_pairs) share their file name.
    """
    n_pairs, size = _check(n_pairs, "n_pairs", 1), _check(size, "size", 16)
    seed = _check(seed, "seed", 0)
    out = _fresh(Path(root).joinpath(*SUBDIRS["lungs"]))
    (out / "Image").mkdir(parents=True, exist_ok=True)
    (out / "Mask").mkdir(parents=True, exist_ok=True)

    def one(i: int) -> None:
        image, mask = render_lungs(_rng("lungs", seed, 0, i + 1), size)
        _save(out / "Image" / f"Im{i + 1}.png", image)
        _save(out / "Mask" / f"Im{i + 1}.png", mask)

    _parallel(one, n_pairs)
    return out


GENERATORS: dict[str, Callable[..., Path]] = {
    "skin": write_skin,
    "bone": write_bone,
    "xray9": write_xray9,
    "lungs": write_lungs,
}


# ---------------------------------------------------------------------------------- ensure


def setting_names(name: str) -> tuple[str, ...]:
    """The settings generator `name` takes (its keyword arguments), in folder-name order; their
    values are a study's `[synthetic.<name>]` (studies/_defaults.toml)."""
    if name not in GENERATORS:
        raise ValueError(f"unknown synthetic set {name!r}; known: {', '.join(GENERATORS)}")
    parameters = inspect.signature(GENERATORS[name]).parameters.values()
    return tuple(p.name for p in parameters if p.kind == p.KEYWORD_ONLY)


def settings(name: str, **kwargs: int) -> dict[str, int]:
    """Every setting of generator `name`, in folder-name order; a missing or unknown one raises
    (TypeError)."""
    names = setting_names(name)
    signature = inspect.signature(GENERATORS[name])
    bound = signature.bind(Path("."), **kwargs)  # TypeError on a setting the set doesn't have
    return {k: operator.index(bound.arguments[k]) for k in names}


def set_folder(name: str, **kwargs: int) -> str:
    """Folder name below `root` that spells out every setting, so sets never get mixed up.

    e.g. ``skin-n_train1000-n_val200-size128-seed0-v2``.
    """
    parts = [f"{k}{v}" for k, v in settings(name, **kwargs).items()]
    return "-".join([name, *parts, f"v{VERSION}"])


def _count_files(folder: Path) -> int:
    return sum(1 for p in folder.rglob("*.png") if p.is_file())


def _is_complete(dest: Path, name: str, params: dict[str, int]) -> bool:
    try:
        marker = json.loads((dest / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return (
        isinstance(marker, dict)
        and marker.get("name") == name
        and marker.get("params") == params
        and marker.get("version") == VERSION
        and marker.get("n_files") == _count_files(dest)
    )


def _remove_stale_temps(root: Path, folder: str) -> None:
    """Delete temp folders of `folder` left by dead writers on this host (crash left-overs)."""
    host = socket.gethostname()
    for temp in root.glob(f".{folder}.tmp-*"):
        owner = temp.name[len(f".{folder}.tmp-") :].rsplit("-", 2)
        dead = len(owner) == 3 and owner[0] == host and owner[1].isdigit()
        if dead and not psutil.pid_exists(int(owner[1])):
            shutil.rmtree(temp, ignore_errors=True)


def ensure(name: str, root: Path, **kwargs: int) -> Path:
    """Make sure synthetic set `name` with these settings exists under `root`; return its folder.

    The set lives in ``root/<set_folder(name, **kwargs)>/<course layout>``, e.g.
    ``root/skin-n_train1000-n_val200-size128-seed0-v2/Lab2/Skin``, so other settings never reuse
    it. It is written into a hidden temporary sibling and renamed into place only when whole,
    with a marker file ``.medtune-synthetic.json`` (name, settings, version, file count) in the
    returned folder; a set counts as present only with a matching marker and file count. So an
    interrupted write never looks complete, and calling again with the same settings is a no-op.
    """
    params = settings(name, **kwargs)
    root = Path(root)
    folder = set_folder(name, **params)
    final = root / folder
    dest = final.joinpath(*SUBDIRS[name])
    if _is_complete(dest, name, params):
        return dest

    root.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(root, folder)
    temp = root / f".{folder}.tmp-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        out = GENERATORS[name](temp, **params)
        n_files = _count_files(out)
        marker = {"name": name, "params": params, "version": VERSION, "n_files": n_files}
        (out / MARKER).write_text(json.dumps(marker, indent=1, sort_keys=True) + "\n")
        try:
            os.rename(temp, final)
        except OSError:
            # Someone else finished first (fine), or a broken set sits there (replace it).
            if _is_complete(dest, name, params):
                return dest
            trash = root / f".{folder}.old-{uuid.uuid4().hex[:8]}"
            os.rename(final, trash)
            os.rename(temp, final)
            shutil.rmtree(trash, ignore_errors=True)
    finally:
        if temp.exists():
            shutil.rmtree(temp, ignore_errors=True)
    return dest
