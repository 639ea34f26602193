"""Things on the water that are not bottles: leaves, foam, twigs and bright reflection streaks.

They are the detector's hard negatives. Each is small, like a bottle, but lacks what makes a
bottle: the cap, the body-neck-cap outline, the plastic colours. Their density is moderate on
purpose — the generated set must stay learnable by a small detector in a few CPU minutes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from model.data.synth_raster import (
    FULL,
    blend,
    coverage,
    fill_polys,
    new_canvas,
    patch_around,
    to_image,
)
from model.data.synth_water import Water, plane_scale

Colour = tuple[float, float, float]  # BGR, 0-255

_LEAF = ((40, 110, 60), (30, 80, 50), (40, 70, 110), (40, 150, 170), (30, 45, 60))
_TWIG = ((30, 50, 70), (45, 60, 75), (25, 35, 45))
# Expected count per image at 640x360 (Poisson means).
_MEANS = {"leaf": 2.5, "foam": 1.5, "streak": 2.0, "twig": 0.6}


@dataclass(frozen=True)
class Sprite:
    """A flat, uniformly coloured thing on the water plane (sizes in image pixels)."""

    kind: str
    shapes: tuple[np.ndarray, ...]  # local (u, v) polygons, each (N, 2)
    cx: float
    cy: float
    angle: float
    squash: float
    colour: Colour
    opacity: float
    blur: float
    vx: float = 0.0  # drift, pixels per frame
    vy: float = 0.0
    spin: float = 0.0  # radians per frame


def _ellipse(a: float, b: float, n: int = 14) -> np.ndarray:
    th = np.linspace(0.0, 2.0 * math.pi, n, endpoint=False)
    return np.stack([a * np.cos(th), b * np.sin(th)], axis=1)


def _leaf(rng: np.random.Generator, size: float) -> tuple[np.ndarray, ...]:
    length = size * rng.uniform(5.0, 14.0)
    half_w = length * rng.uniform(0.15, 0.25)
    u = np.linspace(-length / 2.0, length / 2.0, 9)
    v = half_w * np.sin(np.pi * (u / length + 0.5)) ** 0.8
    return (np.concatenate([np.stack([u, v], 1), np.stack([u[::-1], -v[::-1]], 1)]),)


def _foam(rng: np.random.Generator, size: float) -> tuple[np.ndarray, ...]:
    blobs = []
    for _ in range(int(rng.integers(3, 9))):
        r = size * rng.uniform(1.0, 3.5)
        blobs.append(_ellipse(r, r, 10) + rng.normal(0.0, 3.0 * size, 2))
    return tuple(blobs)


def _streak(rng: np.random.Generator, size: float) -> tuple[np.ndarray, ...]:
    return (_ellipse(size * rng.uniform(3.0, 15.0), rng.uniform(0.5, 1.3), 16),)


def _twig(rng: np.random.Generator, size: float) -> tuple[np.ndarray, ...]:
    length, thick = size * rng.uniform(10.0, 35.0), rng.uniform(0.5, 1.0)
    bend = rng.normal(0.0, 0.3)
    a = np.array([-length / 2.0, 0.0])
    b = np.array([0.0, 0.0])
    c = b + length / 2.0 * np.array([math.cos(bend), math.sin(bend)])
    return tuple(np.array([p + (0, -thick), q + (0, -thick), q + (0, thick), p + (0, thick)])
                 for p, q in ((a, b), (b, c)))


def sample_distractors(
    rng: np.random.Generator,
    water: Water,
    width: int,
    height: int,
    squash: float,
    current: tuple[float, float],
) -> list[Sprite]:
    """Random distractors for one scene, drifting with ``current`` (pixels per frame)."""
    unit = width / 640.0  # sizes are tuned at 640x360
    area = width * height / (640.0 * 360.0)
    top = max(water.horizon, 0.0) + 2.0
    sprites = []
    for kind, mean in _MEANS.items():
        for _ in range(int(rng.poisson(mean * area))):
            cy = rng.uniform(top, height)
            cx = rng.uniform(0.0, width)
            size = unit * plane_scale(water, cy, height)
            drift = plane_scale(water, cy, height)
            if kind == "leaf":
                shapes, colour = _leaf(rng, size), _LEAF[rng.integers(len(_LEAF))]
                opacity, blur, angle = rng.uniform(0.8, 0.95), 0.4, rng.uniform(0, 2 * math.pi)
            elif kind == "foam":
                shapes, colour = _foam(rng, size), (rng.uniform(205, 240),) * 3
                opacity, blur, angle = rng.uniform(0.4, 0.75), 0.9, 0.0
            elif kind == "streak":  # sky mirrored in a wave crest: lies across the view
                shapes, colour = _streak(rng, size), (rng.uniform(215, 250),) * 3
                opacity, blur, angle = rng.uniform(0.5, 0.9), 0.6, rng.normal(0.0, 0.08)
                drift *= 0.3  # reflections ride the waves, not the current
            else:
                shapes, colour = _twig(rng, size), _TWIG[rng.integers(len(_TWIG))]
                opacity, blur, angle = 0.9, 0.4, rng.uniform(0, 2 * math.pi)
            sprites.append(Sprite(
                kind, shapes, float(cx), float(cy), float(angle),
                1.0 if kind == "streak" else squash, tuple(float(c) for c in colour),
                float(opacity), blur,
                vx=float(current[0] * drift + rng.normal(0.0, 0.1)),
                vy=float(current[1] * drift + rng.normal(0.0, 0.05)),
                spin=float(rng.normal(0.0, 0.01)),
            ))
    return sprites


def draw_sprite(img: np.ndarray, s: Sprite, t: float = 0.0) -> None:
    """Render a distractor at frame time t into ``img`` (H, W, 3) float32 in place."""
    height, width = img.shape[:2]
    cx, cy, angle = s.cx + s.vx * t, s.cy + s.vy * t, s.angle + s.spin * t
    polys = [to_image(p, cx, cy, angle, s.squash) for p in s.shapes]
    patch = patch_around(np.concatenate(polys), 3, width, height)
    if patch is None:
        return
    canvas = new_canvas(patch)
    fill_polys(canvas, patch, polys)
    alpha = coverage(canvas, patch).astype(np.float32) * (s.opacity / FULL)
    premult = np.asarray(s.colour, np.float32) * alpha[..., None]
    blend(img, patch, premult, alpha, s.blur)
