"""ToyWorld: hpnb's built-in dataset of procedural, labelled outdoor scenes (no download, seconds to generate).

Each scene is painted back to front (sky, buildings, ground, water, road, then trees, cars and balls sorted by
depth). Every class draws its surface from one shared pool of materials: any colour, and one of the same textures
(the photos bundled with scikit-image, `brick`, `grass`, `gravel`, `moon`, and procedural noise). Colour and
texture therefore do not identify a class; shape and context do: blocks with windows standing on the horizon, a
crown on a trunk, a box on wheels, a shaded disc, a band narrowing to a vanishing point, a flat pond lying on the
ground, the region above the horizon. `hpnb.baseline.toyworld_colour_kmeans` measures how far colour-and-edge
statistics get (near the majority class; tests/test_toyworld.py checks it, and that a ViT gets much further).
"""

from __future__ import annotations

import colorsys
import time
from functools import lru_cache
from typing import Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from hpnb.data.transforms import normalize
from hpnb.utils import HpnbError

CLASSES: list[str] = ["sky", "building", "tree", "grass", "road", "water", "car", "ball"]
STUFF: list[str] = ["sky", "building", "grass", "road", "water"]
THINGS: list[str] = ["tree", "car", "ball"]
PALETTE: list[tuple[int, int, int]] = [
    (70, 130, 180),  # sky: steel blue
    (178, 34, 34),  # building: brick red
    (34, 120, 34),  # tree: dark green
    (152, 251, 152),  # grass: pale green
    (128, 64, 128),  # road: purple (Cityscapes road)
    (0, 0, 230),  # water: deep blue
    (255, 200, 0),  # car: amber
    (255, 105, 180),  # ball: pink
]
SKY, BUILDING, TREE, GRASS, ROAD, WATER, CAR, BALL = range(len(CLASSES))
N_CLASSES = len(CLASSES)
VERSION = 2  # bump when scenes change, so cached features are recomputed (2: shared materials)

SPLITS: dict[str, tuple[int, int]] = {"train": (0, 300), "val": (100_000, 100), "test": (200_000, 100)}
SPLIT_SIZE = 100_000  # scene indices of one split lie in [offset, offset + SPLIT_SIZE)
_REF = 224  # resolution at which texture scales are defined; other resolutions show the same scene


# ----------------------------------------------------------------------------------------------------------
# Textures: bundled photos (no network) and procedural noise, normalised to zero mean and unit std
# ----------------------------------------------------------------------------------------------------------


def _normalise(tex: np.ndarray) -> np.ndarray:
    """A float32 copy of `tex` with zero mean and unit standard deviation."""
    tex = tex.astype(np.float32)
    return (tex - tex.mean()) / (tex.std() + 1e-6)


def _fractal_noise(size: int, octaves: int, seed: int, persistence: float = 0.55, cells: int = 4) -> np.ndarray:
    """Sum of bilinearly upsampled random grids (value noise), size × size, from a fixed seed."""
    rng = np.random.default_rng([seed, 12345])
    out = torch.zeros(1, 1, size, size)
    amp = 1.0
    for octave in range(octaves):
        n = cells * 2**octave
        grid = torch.from_numpy(rng.standard_normal((1, 1, n, n)).astype(np.float32))
        out += amp * torch.nn.functional.interpolate(grid, size=(size, size), mode="bicubic", align_corners=False)
        amp *= persistence
    return out[0, 0].numpy()


def load_skimage_textures() -> dict[str, np.ndarray]:
    """The grey-level photos bundled with scikit-image (read from its data folder, never downloaded)."""
    import skimage.data

    try:
        return {
            "brick": np.ascontiguousarray(np.rot90(skimage.data.brick())),  # rows of bricks, not columns
            "grass": skimage.data.grass(),
            "gravel": skimage.data.gravel(),
            "moon": skimage.data.moon(),
        }
    except Exception as err:  # pragma: no cover - only on a broken scikit-image install
        raise HpnbError(
            f"ToyWorld needs the textures bundled with scikit-image (brick, grass, gravel, moon); loading failed "
            f"with {type(err).__name__}: {err}. Reinstall the pinned scikit-image: pip install -r requirements.txt"
        ) from err


@lru_cache(maxsize=1)
def textures() -> dict[str, np.ndarray]:
    """All ToyWorld textures (float32, zero mean, unit std), built once per process."""
    tex = {name: _normalise(img) for name, img in load_skimage_textures().items()}
    tex["clouds"] = _normalise(_fractal_noise(512, 5, seed=1, persistence=0.6))
    foliage = _fractal_noise(512, 3, seed=2, persistence=0.7, cells=48)
    tex["foliage"] = _normalise(np.tanh(2.0 * foliage / foliage.std()))  # clumpy leaves with sharp edges
    tex["blotch"] = _normalise(_fractal_noise(512, 3, seed=3, persistence=0.5))
    return tex


def _reflect(idx: np.ndarray, n: int) -> np.ndarray:
    """Mirror-wrap integer indices into [0, n) so textures tile without seams."""
    idx = np.mod(idx, 2 * n)
    return np.where(idx < n, idx, 2 * n - 1 - idx)


def _sample_texture(
    rng: np.random.Generator, name: str, h: int, w: int, res: int, scale: tuple[float, float], stretch: float = 1.0
) -> np.ndarray:
    """An h × w crop of a texture at a random offset and zoom (nearest neighbour; `stretch` squashes rows)."""
    tex = textures()[name]
    n_rows, n_cols = tex.shape
    step = rng.uniform(*scale) * _REF / res  # texture pixels per image pixel
    span_y, span_x = int(h * step * stretch) + 1, int(w * step) + 1  # avoid mirror seams when the crop fits
    y0, x0 = rng.integers(0, max(1, n_rows - span_y)), rng.integers(0, max(1, n_cols - span_x))
    flip = rng.random() < 0.5
    rows = _reflect((y0 + np.arange(h) * step * stretch).astype(np.int64), n_rows)
    cols = _reflect((x0 + np.arange(w) * step).astype(np.int64), n_cols)
    out = tex[np.ix_(rows, cols)]
    return out[:, ::-1] if flip else out


# ----------------------------------------------------------------------------------------------------------
# Colours
# ----------------------------------------------------------------------------------------------------------


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    """An RGB colour in [0, 1] (float32) from hue, saturation, value (hue wraps)."""
    return np.array(colorsys.hsv_to_rgb(h % 1.0, float(np.clip(s, 0, 1)), float(np.clip(v, 0, 1))), np.float32)


def _jitter(rng: np.random.Generator, rgb: np.ndarray, amount: float = 0.06) -> np.ndarray:
    """`rgb` with small independent per-channel changes."""
    return np.clip(rgb + rng.uniform(-amount, amount, 3).astype(np.float32), 0, 1)


def _shade(base: np.ndarray, tex: np.ndarray, contrast: float) -> np.ndarray:
    """Colour image (h, w, 3): `base` modulated by a zero-mean texture with the given contrast."""
    return base[None, None, :] * np.clip(1.0 + contrast * tex, 0.05, 3.0)[..., None]


# Every class draws its surface from the same pool of materials: a colour from the whole colour wheel (or a grey)
# and one of the shared textures. Colour and texture therefore say nothing about the class; what tells the classes
# apart is their shape (rectangles with windows, a crown on a trunk, a box on wheels, a shaded disc, a band that
# narrows to a vanishing point) and their context (above or below the horizon, standing on the ground).
SHARED_TEXTURES = ("brick", "grass", "gravel", "moon", "clouds", "foliage", "blotch")


# `link` (ToyWorld's `link`, the config's `toy_link`): the share of regions that instead wear their class's own
# material, as in photos, where sky is mostly blue and smooth and road grey and gravelly. 0 (the shipped world) draws
# no extra random number, so its scenes are the same as before the knob existed.
SIGNATURES: dict[int, tuple[tuple[float, float] | None, tuple[float, float], tuple[float, float], str]] = {
    # class: (hue range or None for any hue, saturation range, value range, texture)
    SKY: ((0.55, 0.62), (0.3, 0.6), (0.7, 0.9), "clouds"),
    BUILDING: ((0.0, 0.08), (0.4, 0.7), (0.4, 0.7), "brick"),
    TREE: ((0.25, 0.38), (0.5, 0.8), (0.25, 0.5), "foliage"),
    GRASS: ((0.2, 0.3), (0.4, 0.7), (0.5, 0.8), "grass"),
    ROAD: ((0.0, 1.0), (0.0, 0.08), (0.3, 0.5), "gravel"),
    WATER: ((0.58, 0.68), (0.6, 0.85), (0.35, 0.6), "blotch"),
    CAR: (None, (0.7, 0.85), (0.6, 0.9), "moon"),
    BALL: (None, (0.75, 0.9), (0.75, 0.9), "moon"),
}


def _material(
    rng: np.random.Generator, cls: int, link: float = 0.0
) -> tuple[np.ndarray, str, tuple[float, float], float]:
    """(colour, texture name, texture zoom range, contrast): with probability `link` the class's own material
    (`SIGNATURES`), otherwise drawn from the pool shared by every class."""
    if link > 0 and rng.random() < link:
        hue, sat, val, texture = SIGNATURES[cls]
        h = rng.random() if hue is None else rng.uniform(*hue)
        zoom = rng.uniform(0.8, 1.2)
        return _hsv(h, rng.uniform(*sat), rng.uniform(*val)), texture, (zoom, zoom * 1.3), float(rng.uniform(0.15, 0.3))
    if rng.random() < 0.25:
        colour = _hsv(0.0, 0.0, rng.uniform(0.2, 0.9))
    else:
        colour = _hsv(rng.random(), rng.uniform(0.25, 0.85), rng.uniform(0.35, 0.9))
    zoom = rng.uniform(0.5, 1.6)
    return colour, str(rng.choice(SHARED_TEXTURES)), (zoom, zoom * 1.3), float(rng.uniform(0.12, 0.35))


def _surface(rng: np.random.Generator, material, h: int, w: int, res: int) -> np.ndarray:
    """An (h, w, 3) patch of a material: its colour modulated by its texture at a random offset."""
    colour, texture, zoom, contrast = material
    return _shade(_jitter(rng, colour, 0.04), _sample_texture(rng, texture, h, w, res, zoom), contrast)


# ----------------------------------------------------------------------------------------------------------
# Painting helpers
# ----------------------------------------------------------------------------------------------------------


class _Canvas:
    """An image (h, w, 3 float32 in [0, 1]) and its label map (h, w int64), painted in place."""

    def __init__(self, res: int, link: float = 0.0):
        self.res, self.link = res, link
        self.img = np.zeros((res, res, 3), np.float32)
        self.lab = np.zeros((res, res), np.int64)

    def box(self, y0: float, y1: float, x0: float, x1: float) -> tuple[slice, slice] | None:
        """Pixel slices of a box given in fractions of the image side, clipped; None when empty."""
        r = self.res
        ys, ye = max(0, int(round(y0 * r))), min(r, int(round(y1 * r)))
        xs, xe = max(0, int(round(x0 * r))), min(r, int(round(x1 * r)))
        return (slice(ys, ye), slice(xs, xe)) if ye > ys and xe > xs else None

    def paint(self, where: tuple[slice, slice], mask: np.ndarray | None, colour: np.ndarray, cls: int | None) -> None:
        """Copy `colour` (h, w, 3) into the box where `mask` is True and set the label (None keeps labels)."""
        if mask is None:
            self.img[where] = colour
            if cls is not None:
                self.lab[where] = cls
            return
        self.img[where][mask] = colour[mask]
        if cls is not None:
            self.lab[where][mask] = cls


def _grid(where: tuple[slice, slice], res: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (column vector y, row vector x) of a box, in fractions of the image side."""
    ys = (np.arange(where[0].start, where[0].stop, dtype=np.float32)[:, None] + 0.5) / res
    xs = (np.arange(where[1].start, where[1].stop, dtype=np.float32)[None, :] + 0.5) / res
    return ys, xs


def _ellipse(cy: float, cx: float, ry: float, rx: float, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Boolean mask of an axis-aligned ellipse."""
    return ((ys - cy) / ry) ** 2 + ((xs - cx) / rx) ** 2 <= 1.0


# ----------------------------------------------------------------------------------------------------------
# Scene layers (fractions of the image side; `horizon` is the y of the horizon line)
# ----------------------------------------------------------------------------------------------------------


def _paint_sky(c: _Canvas, rng: np.random.Generator, horizon: float) -> None:
    """Everything above the horizon, lighter towards it (the light comes from the sky)."""
    where = c.box(0.0, horizon + 0.02, 0.0, 1.0)
    h, w = where[0].stop, c.res
    t = np.linspace(0, 1, h, dtype=np.float32)[:, None, None] ** rng.uniform(0.6, 1.5)
    c.paint(where, None, _surface(rng, _material(rng, SKY, c.link), h, w, c.res) * (0.8 + 0.4 * t), SKY)


def _paint_buildings(c: _Canvas, rng: np.random.Generator, horizon: float) -> None:
    """One to five upright blocks standing on the horizon, most with a grid of dark windows."""
    material = _material(rng, BUILDING, c.link)
    for _ in range(rng.integers(1, 6)):
        width, height = rng.uniform(0.12, 0.45), rng.uniform(0.25, 0.9) * horizon
        x0 = rng.uniform(-0.1, 1.0 - width * 0.5)
        where = c.box(horizon - height, horizon + 0.03, x0, x0 + width)
        if where is None:
            continue
        h, w = where[0].stop - where[0].start, where[1].stop - where[1].start
        col = _surface(rng, material, h, w, c.res)
        if rng.random() < 0.8:
            ys, xs = _grid(where, c.res)
            py, px = rng.uniform(0.05, 0.1), rng.uniform(0.05, 0.1)
            wy, wx = ys - where[0].start / c.res, xs - where[1].start / c.res
            win = (np.mod(wy, py) < py * 0.5) & (np.mod(wx, px) < px * 0.5)
            win &= ys < horizon - 0.03
            col = np.where(win[..., None], col * rng.uniform(0.25, 0.6), col)
        c.paint(where, None, col, BUILDING)


def _paint_grass(c: _Canvas, rng: np.random.Generator, horizon: float) -> None:
    """The ground: everything below the horizon, darker towards the horizon."""
    where = c.box(horizon, 1.0, 0.0, 1.0)
    if where is None:
        return
    h, w = where[0].stop - where[0].start, c.res
    fade = np.linspace(rng.uniform(0.75, 1.0), 1.0, h, dtype=np.float32)[:, None, None]
    c.paint(where, None, _surface(rng, _material(rng, GRASS, c.link), h, w, c.res) * fade, GRASS)


def _paint_water(c: _Canvas, rng: np.random.Generator, horizon: float) -> None:
    """A flat pond lying on the ground (a wide ellipse) or a sea band along the horizon, with a mirrored, rippled
    sheen: the reflection of a bright sky streaked along the horizontal."""
    if rng.random() < 0.5:  # sea from the horizon down
        y1 = horizon + rng.uniform(0.15, 0.6) * (1 - horizon)
        where = c.box(horizon, y1, 0.0, 1.0)
        if where is None:
            return
        mask = None
    else:  # pond
        cy, cx = rng.uniform(horizon + 0.1, 0.95), rng.uniform(0.1, 0.9)
        ry, rx = rng.uniform(0.05, 0.15), rng.uniform(0.15, 0.4)
        where = c.box(max(cy - ry, horizon), cy + ry, cx - rx, cx + rx)
        if where is None:
            return
        ys, xs = _grid(where, c.res)
        mask = _ellipse(cy, cx, ry, rx, ys, xs)
    ys, xs = _grid(where, c.res)
    h, w = ys.shape[0], xs.shape[1]
    col = _surface(rng, _material(rng, WATER, c.link), h, w, c.res)
    ripple = np.sin(2 * np.pi * rng.uniform(60, 140) * ys * (1 + 0.5 * ys))
    streak = np.clip(ripple - 0.6, 0, 1)[..., None] * rng.uniform(0.2, 0.5)  # horizontal glints
    c.paint(where, mask, np.clip(col * (0.85 + 0.1 * ripple[..., None]) + streak, 0, 1), WATER)


def _paint_road(c: _Canvas, rng: np.random.Generator, horizon: float) -> tuple[float, float] | None:
    """A road narrowing to a vanishing point, or a band across the bottom, with a dashed centre line; returns its
    (y0, y1) span."""
    if rng.random() < 0.6:  # perspective road
        vx, half = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.6)
        bx = vx + rng.uniform(-0.4, 0.4)
        where = c.box(horizon, 1.0, 0.0, 1.0)
        if where is None:
            return None
        ys, xs = _grid(where, c.res)
        depth = (ys - horizon) / (1 - horizon)  # 0 at the horizon, 1 at the bottom edge
        centre = vx + (bx - vx) * depth
        mask = np.abs(xs - centre) <= 0.004 + half * depth
        y0, y1 = horizon + 0.15 * (1 - horizon), 1.0
    else:  # band
        y0 = rng.uniform(horizon + 0.05, 0.85)
        y1 = min(1.0, y0 + rng.uniform(0.08, 0.25))
        where = c.box(y0, y1, 0.0, 1.0)
        if where is None:
            return None
        ys, xs = _grid(where, c.res)
        mask, centre = None, None
    h, w = ys.shape[0], xs.shape[1]
    col = _surface(rng, _material(rng, ROAD, c.link), h, w, c.res)
    if rng.random() < 0.8:  # dashed centre line, part of the road
        paint = _hsv(rng.random(), rng.uniform(0.0, 0.8), 0.95)
        if centre is None:
            line = (np.abs(ys - (y0 + y1) / 2) < 0.006) & (np.mod(xs, 0.12) < 0.06)
        else:
            line = (np.abs(xs - centre) < 0.003 + 0.012 * depth) & (np.mod(np.log(depth + 0.05) * 6, 1.0) < 0.5)
        col = np.where(line[..., None], paint[None, None, :], col)
    c.paint(where, mask, col, ROAD)
    return y0, y1


def _paint_tree(c: _Canvas, rng: np.random.Generator, y: float, size: float) -> None:
    """A trunk and a lumpy crown on it (both labelled tree), standing at ground height y."""
    cx = rng.uniform(0.0, 1.0)
    trunk_h, trunk_w = size * rng.uniform(0.4, 0.8), size * rng.uniform(0.08, 0.16)
    where = c.box(y - trunk_h - 0.02, y, cx - trunk_w / 2, cx + trunk_w / 2)
    if where is not None:
        h, w = where[0].stop - where[0].start, where[1].stop - where[1].start
        c.paint(where, None, _surface(rng, _material(rng, TREE, c.link), h, w, c.res) * 0.7, TREE)
    ry, rx = size * rng.uniform(0.35, 0.6), size * rng.uniform(0.3, 0.5)
    cy = y - trunk_h - ry * 0.6
    where = c.box(cy - ry * 1.3, cy + ry * 1.3, cx - rx * 1.4, cx + rx * 1.4)
    if where is None:
        return
    ys, xs = _grid(where, c.res)
    h, w = ys.shape[0], xs.shape[1]
    mask = _ellipse(cy, cx, ry, rx, ys, xs)
    for _ in range(rng.integers(2, 5)):  # lumps make the outline irregular
        dy, dx = rng.uniform(-0.8, 0.5) * ry, rng.uniform(-0.9, 0.9) * rx
        mask |= _ellipse(cy + dy, cx + dx, ry * rng.uniform(0.4, 0.7), rx * rng.uniform(0.4, 0.7), ys, xs)
    shade = np.clip(1.15 - 0.5 * (ys - (cy - ry)) / (2 * ry), 0.6, 1.2)[..., None]  # lit from above
    c.paint(where, mask, _surface(rng, _material(rng, TREE, c.link), h, w, c.res) * shade, TREE)


def _paint_car(c: _Canvas, rng: np.random.Generator, y: float, size: float) -> None:
    """A box-shaped car: body, cabin with dark windows and two black wheels (all labelled car)."""
    cx = rng.uniform(0.05, 0.95)
    length, height = size * rng.uniform(1.0, 1.6), size * rng.uniform(0.28, 0.38)
    wheel = size * 0.14
    where = c.box(y - height - height * 0.8, y + 0.005, cx - length / 2, cx + length / 2)
    if where is None:
        return
    ys, xs = _grid(where, c.res)
    top = y - wheel - height
    hull = np.broadcast_to((ys >= top) & (ys <= y - wheel * 0.6), (ys.shape[0], xs.shape[1]))
    cab_x0, cab_x1 = cx - length * rng.uniform(0.15, 0.3), cx + length * rng.uniform(0.1, 0.3)
    slope = (ys < top) & (ys >= top - height * 0.8)
    inset = (top - ys) * 0.6
    cabin = slope & (xs >= cab_x0 + inset) & (xs <= cab_x1 - inset)
    window = cabin & (ys >= top - height * 0.65) & (ys <= top - height * 0.12)
    window &= np.abs(xs - (cab_x0 + cab_x1) / 2) > 0.004
    window &= (xs >= cab_x0 + inset + 0.006) & (xs <= cab_x1 - inset - 0.006)
    wheels = np.zeros(hull.shape, bool)
    for wx in (cx - length * 0.3, cx + length * 0.3):
        wheels |= _ellipse(y - wheel, wx, wheel, wheel, ys, xs)
    h, w = ys.shape[0], xs.shape[1]
    col = _surface(rng, _material(rng, CAR, c.link), h, w, c.res)
    col = col * np.clip(1.2 - 0.6 * (ys - top + height) / (2 * height), 0.6, 1.25)[..., None]  # glossy top
    col = np.where(window[..., None], col * 0.3, col)
    col = np.where(wheels[..., None], np.float32(0.07), col)
    c.paint(where, hull | cabin | wheels, col, CAR)


def _paint_ball(c: _Canvas, rng: np.random.Generator, y: float, size: float) -> None:
    """A shaded ball resting at ground height y, with a highlight, sometimes with stripes."""
    r = size * rng.uniform(0.15, 0.35)
    cx, cy = rng.uniform(0.03, 0.97), y - r
    where = c.box(cy - r, cy + r, cx - r, cx + r)
    if where is None:
        return
    ys, xs = _grid(where, c.res)
    mask = _ellipse(cy, cx, r, r, ys, xs)
    h, w = ys.shape[0], xs.shape[1]
    base = _surface(rng, _material(rng, BALL, c.link), h, w, c.res)
    if rng.random() < 0.4:
        stripes = np.mod(np.arctan2(ys - cy, xs - cx) * rng.integers(2, 5) / np.pi, 2.0) < 1.0
        base = np.where(stripes[..., None], _surface(rng, _material(rng, BALL, c.link), h, w, c.res), base)
    ly, lx = cy - 0.4 * r, cx - 0.35 * r  # light from the upper left
    dist = np.sqrt((ys - ly) ** 2 + (xs - lx) ** 2) / (1.6 * r)
    shade = np.clip(1.25 - 0.85 * dist, 0.3, 1.25)[..., None]
    highlight = np.clip(1 - dist * 5, 0, 1)[..., None] * 0.6
    c.paint(where, mask, np.clip(base * shade + highlight, 0, 1), BALL)


def _finish(c: _Canvas, rng: np.random.Generator) -> np.ndarray:
    """Global lighting: a linear illumination gradient, a colour cast and mild sensor noise; returns uint8."""
    ys, xs = _grid((slice(0, c.res), slice(0, c.res)), c.res)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(angle) * (xs - 0.5) + np.sin(angle) * (ys - 0.5)) * rng.uniform(0.2, 0.6)
    gain = rng.uniform(0.8, 1.15) * (1 + ramp)[..., None] * rng.uniform(0.92, 1.08, 3).astype(np.float32)
    noise = rng.standard_normal((c.res, c.res, 3), dtype=np.float32) * rng.uniform(0.005, 0.025)
    return (np.clip(c.img * gain + noise, 0, 1) * 255 + 0.5).astype(np.uint8)


def make_scene(index: int, size: int = 224, seed: int = 0, link: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """One labelled scene: (uint8 image (size, size, 3), int64 labels (size, size) in [0, 8)); deterministic.
    `link` in [0, 1]: the share of regions painted with their class's own material (`SIGNATURES`)."""
    if size < 16:
        raise HpnbError(f"make_scene needs size >= 16 pixels, found {size}")
    if index < 0 or seed < 0:
        raise HpnbError(f"make_scene needs a non-negative index and seed, found index={index}, seed={seed}")
    if not 0.0 <= link <= 1.0:
        raise HpnbError(f"make_scene needs 0 <= link <= 1 (the share of class-own materials), found link={link}")
    rng = np.random.default_rng([int(seed), int(index)])
    c = _Canvas(size, float(link))
    horizon = rng.uniform(0.3, 0.6)
    _paint_sky(c, rng, horizon)
    if rng.random() < 0.7:
        _paint_buildings(c, rng, horizon)
    _paint_grass(c, rng, horizon)
    if rng.random() < 0.5:
        _paint_water(c, rng, horizon)
    road = _paint_road(c, rng, horizon) if rng.random() < 0.6 else None

    things = []  # (ground y, class, scale): nearer things (larger y) are bigger and painted last
    n_trees = rng.integers(0, 4)
    n_cars = rng.integers(0, 3) if road else rng.integers(0, 2)
    kinds = [(TREE, n_trees), (CAR, n_cars), (BALL, rng.integers(0, 4))]
    if sum(int(n) for _, n in kinds) == 0:
        kinds[2] = (BALL, 1)
    for cls, count in kinds:
        for _ in range(int(count)):
            if cls == CAR and road is not None:
                y = rng.uniform(max(road[0], horizon + 0.05), road[1])
            else:
                y = rng.uniform(horizon + 0.03, 1.05)
            depth = (y - horizon) / (1 - horizon)
            scale = {TREE: 0.4, CAR: 0.3, BALL: 0.3}[cls] * (0.35 + 0.9 * depth) * rng.uniform(0.8, 1.25)
            things.append((y, cls, scale))
    painters = {TREE: _paint_tree, CAR: _paint_car, BALL: _paint_ball}
    for y, cls, scale in sorted(things, key=lambda t: t[0]):
        painters[cls](c, rng, y, scale)
    if len(np.unique(c.lab)) < 3:  # guarantee three classes: a ball in the foreground
        _paint_ball(c, rng, rng.uniform(0.9, 1.0), 0.4)
    return _finish(c, rng), c.lab


# ----------------------------------------------------------------------------------------------------------
# Dataset, colours and previews
# ----------------------------------------------------------------------------------------------------------


class ToyWorld(Dataset):
    """ToyWorld scenes as a torch Dataset: dicts with a normalised image, labels, a name and the index."""

    name = "toy"  # registry key (hpnb.data.get_dataset("toy", ...))
    classes = list(CLASSES)
    splits = tuple(SPLITS)

    @classmethod
    def has_layout(cls, root) -> bool:
        """Generated in memory: always available, whatever the folder."""
        return True

    def __init__(
        self,
        split: str = "train",
        n: int | None = None,
        res: int = 224,
        seed: int = 0,
        transform: Callable | None = None,
        link: float = 0.0,
    ):
        if split not in SPLITS:
            raise HpnbError(f"ToyWorld split must be one of {sorted(SPLITS)}, found {split!r}")
        offset, default_n = SPLITS[split]
        n = default_n if n is None else int(n)
        if not 1 <= n <= SPLIT_SIZE:
            raise HpnbError(f"ToyWorld needs 1 <= n <= {SPLIT_SIZE} scenes, found n={n}; leave n=None for {default_n}")
        if res < 16:
            raise HpnbError(f"ToyWorld needs res >= 16 pixels, found res={res}")
        if not 0.0 <= link <= 1.0:
            raise HpnbError(f"ToyWorld needs 0 <= link <= 1 (the share of class-own materials), found link={link}")
        self.link = float(link)
        self.split, self.n, self.res, self.seed, self.transform = split, n, int(res), int(seed), transform
        self.offset = offset
        self.classes = list(CLASSES)
        self.n_classes = N_CLASSES
        self.root = None  # generated in memory, nothing on disk

    def __len__(self) -> int:
        return self.n

    @property
    def cache_extra(self) -> str:
        """What else identifies this dataset's cached features: the generator version and seed."""
        return f"toyworld v{VERSION} seed={self.seed}" + (f" link={self.link}" if self.link else "")

    def raw(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Scene i before normalisation: (uint8 image (res, res, 3), int64 labels (res, res))."""
        if not -self.n <= i < self.n:
            raise IndexError(f"ToyWorld {self.split} has {self.n} scenes, asked for index {i}")
        return make_scene(self.offset + (i % self.n), self.res, self.seed, self.link)

    def __getitem__(self, i: int) -> dict:
        image, label = self.raw(i)
        i = i % self.n
        if self.transform is not None:
            from PIL import Image

            img_t, lab_t = self.transform(Image.fromarray(image), label)
        else:
            img_t, lab_t = normalise(image), torch.from_numpy(label)
        return {"image": img_t, "label": torch.as_tensor(lab_t).long(), "name": f"toy_{self.split}_{i:04d}", "index": i}

    def __repr__(self) -> str:
        return f"ToyWorld(split={self.split!r}, n={self.n}, res={self.res}, seed={self.seed}, classes={self.n_classes})"


def normalise(image: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) -> float (3, H, W), standardised with the ImageNet mean and std."""
    return normalize(torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255.0)


# ----------------------------------------------------------------------------------------------------------
# How hard is ToyWorld? A colour-and-edge k-means baseline on a 14-pixel patch grid
# ----------------------------------------------------------------------------------------------------------


def patch_features(image: np.ndarray, patch: int = 14) -> np.ndarray:
    """Hand-made features per patch (gh*gw, 10): mean and std of RGB, mean |dx|, |dy|, their std, gradient ratio."""
    h, w = image.shape[:2]
    if h % patch or w % patch:
        raise HpnbError(f"patch_features needs a side divisible by patch={patch}, found {h}x{w}")
    x = image.astype(np.float32) / 255.0
    gray = x.mean(-1)
    dx = np.abs(np.diff(gray, axis=1, append=gray[:, -1:]))
    dy = np.abs(np.diff(gray, axis=0, append=gray[-1:, :]))
    gh, gw = h // patch, w // patch

    def cells(a: np.ndarray) -> np.ndarray:  # (H, W, ...) -> (gh*gw, patch*patch, ...)
        a = a.reshape(gh, patch, gw, patch, *a.shape[2:]).swapaxes(1, 2)
        return a.reshape(gh * gw, patch * patch, *a.shape[4:])

    rgb, gx, gy = cells(x), cells(dx), cells(dy)
    ratio = gx.mean(1) / (gx.mean(1) + gy.mean(1) + 1e-6)
    return np.concatenate(
        [rgb.mean(1), rgb.std(1), gx.mean(1)[:, None], gy.mean(1)[:, None], (gx + gy).std(1)[:, None], ratio[:, None]],
        axis=1,
    )


def patch_histograms(label: np.ndarray, patch: int = 14) -> np.ndarray:
    """Pixels of each class inside each patch (gh*gw, C), row-major over the patch grid; IGNORE is dropped."""
    h, w = label.shape
    gh, gw = h // patch, w // patch
    cell = (np.arange(h)[:, None] // patch) * gw + np.arange(w)[None, :] // patch
    keep = (label >= 0) & (label < N_CLASSES)
    flat = cell[keep] * N_CLASSES + label[keep]
    return np.bincount(flat, minlength=gh * gw * N_CLASSES).reshape(gh * gw, N_CLASSES)


def time_scenes(n: int = 20, res: int = 224, seed: int = 0) -> float:
    """Mean seconds to generate one scene (textures warmed up first)."""
    textures()
    start = time.perf_counter()
    for i in range(n):
        make_scene(i, res, seed)
    return (time.perf_counter() - start) / n
