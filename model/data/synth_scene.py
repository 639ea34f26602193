"""A whole floating-bottle scene: sampling its contents and rendering it at any frame time.

A :class:`Scene` is a frozen description (water, distractors, bottles, drift); rendering is a pure
function of the scene, the frame time and a grain generator, so still images (t = 0) and the
drifting video clips (t = 0, 1, 2, ...) share one code path. Sizes are tuned at 640x360 and
scale with the width.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from model.data.synth_bottle import Bottle, bottle_outline, draw_bottle
from model.data.synth_distractors import Sprite, draw_sprite, sample_distractors
from model.data.synth_water import Water, plane_scale, render_water, sample_water

Colour = tuple[float, float, float]  # BGR, 0-255
Box = tuple[int, int, int, int]  # xmin, ymin, xmax, ymax: pixel edges, max exclusive

# Bottles per image: 0..8, mostly a few (FloW frames hold a handful of objects).
_COUNT_WEIGHTS = np.array([0.06, 0.2, 0.2, 0.16, 0.12, 0.09, 0.07, 0.05, 0.05])
# name: (probability, body BGR, opacity range, clear plastic)
_MATERIALS = {
    "clear": (0.28, (215, 220, 212), (0.35, 0.5), True),
    "green": (0.18, (95, 165, 100), (0.8, 0.9), False),
    "brown": (0.14, (35, 75, 135), (0.85, 0.95), False),
    "white": (0.16, (228, 232, 232), (1.0, 1.0), False),
    "blue": (0.24, (205, 150, 70), (0.8, 0.9), False),
}
_CAPS = ((235, 235, 235), (190, 90, 30), (40, 40, 200), (50, 160, 50), (20, 120, 235),
         (30, 200, 230))
_LABELS = ((50, 50, 210), (240, 240, 240), (180, 80, 20), (40, 150, 40), (40, 210, 230),
           (30, 110, 230))
_MIN_LENGTH = 8.0  # shortest bottle, pixels at 640 wide
_MIN_RADIUS = 1.6  # thinnest bottle body, pixels: thinner ones vanish under the waterline


@dataclass(frozen=True)
class Scene:
    width: int
    height: int
    water: Water
    distractors: tuple[Sprite, ...]
    bottles: tuple[Bottle, ...]
    grain: float  # sensor noise, grey levels (standard deviation)


@dataclass(frozen=True)
class Rendered:
    image: np.ndarray  # (H, W, 3) uint8 BGR
    boxes: list[Box]  # one per visible bottle
    truncated: list[bool]  # per box: the bottle reaches past the image border
    masks: list[np.ndarray] | None  # per box (H, W) bool visible pixels; only when asked


def sample_scene(
    rng: np.random.Generator, width: int, height: int, *, min_bottles: int = 0
) -> Scene:
    """Draw a random scene: water, 0-8 (at least ``min_bottles``) bottles, a few distractors.

    Bottles do not overlap (3 px apart at t = 0); a crowded scene may get fewer than drawn.
    """
    water = sample_water(rng, width, height)
    # The oblique camera squashes the water plane vertically; looking down squashes it less.
    squash = float(rng.uniform(0.5, 0.85) if water.horizon > 0 else rng.uniform(0.8, 1.0))
    heading = rng.uniform(0.0, 2.0 * math.pi)
    speed = rng.uniform(0.2, 1.2) * width / 640.0
    current = (speed * math.cos(heading), 0.5 * speed * math.sin(heading))
    distractors = sample_distractors(rng, water, width, height, squash, current)

    n_bottles = max(int(rng.choice(len(_COUNT_WEIGHTS), p=_COUNT_WEIGHTS)), min_bottles)
    bottles: list[Bottle] = []
    taken: list[tuple[float, float, float, float]] = []
    for _ in range(40 * n_bottles):  # rejection sampling against overlaps
        if len(bottles) == n_bottles:
            break
        b = _sample_bottle(rng, water, width, height, squash, current)
        pts = bottle_outline(b)
        rect = (pts[:, 0].min() - 3, pts[:, 1].min() - 3, pts[:, 0].max() + 3,
                pts[:, 1].max() + 3)
        if not any(_overlap(rect, o) for o in taken):
            bottles.append(b)
            taken.append(rect)
    return Scene(width, height, water, tuple(distractors), tuple(bottles),
                 grain=float(rng.uniform(1.5, 4.0)))


def _overlap(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _sample_bottle(
    rng: np.random.Generator,
    water: Water,
    width: int,
    height: int,
    squash: float,
    current: tuple[float, float],
) -> Bottle:
    unit = width / 640.0
    near = rng.uniform(22.0, 46.0) * unit  # its length if it floated at the bottom row
    # Perspective: length = near * plane_scale(y); keep to rows where it is long enough.
    lowest_scale = _MIN_LENGTH * unit / near
    top = max(water.horizon + lowest_scale * (height - water.horizon), 0.0) + 4.0
    cy = rng.uniform(top, height - 3.0)
    scale = plane_scale(water, cy, height)
    length = max(near * scale, _MIN_LENGTH * unit)
    cx = rng.uniform(0.3 * length, width - 0.3 * length)  # now and then cut by the border
    # Lying across the view, the body is 2 * radius * squash tall: keep that >= ~2.6 px.
    radius = max(length * rng.uniform(0.13, 0.19), _MIN_RADIUS * unit, 1.3 * unit / squash)

    names = list(_MATERIALS)
    name = names[rng.choice(len(names), p=[_MATERIALS[n][0] for n in names])]
    _, base, (lo, hi), clear = _MATERIALS[name]
    body = _colour(rng, base, 14)
    cap = _CAPS[rng.integers(len(_CAPS))]
    if name == "white" and cap == _CAPS[0]:  # a white cap on a white bottle would vanish
        cap = _CAPS[1 + rng.integers(len(_CAPS) - 1)]
    label, span = None, (0.0, 0.0)
    if rng.random() < 0.5:
        label = _colour(rng, _LABELS[rng.integers(len(_LABELS))], 12)
        u0 = rng.uniform(-0.38, -0.2)
        span = (float(u0), float(min(u0 + rng.uniform(0.15, 0.3), 0.1)))
    sink = rng.random() < 0.4 and radius >= 2.5 * unit  # thin bottles stay afloat, visible
    drift = scale
    return Bottle(
        cx=float(cx), cy=float(cy), length=float(length), radius=float(radius),
        angle=float(rng.uniform(0.0, 2.0 * math.pi)), squash=squash,
        body=body, opacity=float(rng.uniform(lo, hi)), clear=clear,
        cap=_colour(rng, cap, 10), label=label, label_span=span,
        sub_side=int(rng.choice([-1, 1])),
        sub_level=float(rng.uniform(-0.6, 0.1)) if sink else -2.0,
        sub_tilt=float(rng.uniform(-0.5, 0.5)) if sink else 0.0,
        specular=float(rng.uniform(0.25, 0.7)), blur=float(rng.uniform(0.3, 0.8)),
        vx=float(current[0] * drift + rng.normal(0.0, 0.15)),
        vy=float(current[1] * drift + rng.normal(0.0, 0.08)),
        spin=float(rng.normal(0.0, 0.01)),
    )


def _colour(rng: np.random.Generator, bgr: tuple, spread: float) -> Colour:
    c = np.clip(np.asarray(bgr, np.float64) + rng.uniform(-spread, spread, 3), 0.0, 255.0)
    return tuple(float(x) for x in c)


def render_scene(
    scene: Scene,
    t: float = 0.0,
    grain_rng: np.random.Generator | None = None,
    *,
    with_masks: bool = False,
) -> Rendered:
    """Render the scene at frame time t (frames since t = 0).

    grain_rng draws the sensor noise (None = no noise). with_masks also returns each box's
    full-frame visible-pixel mask, whose tight box is exactly the box (used by the tests).
    """
    w, h = scene.width, scene.height
    img = render_water(scene.water, w, h, t)
    for s in scene.distractors:
        draw_sprite(img, s, t)
    boxes: list[Box] = []
    truncated: list[bool] = []
    masks: list[np.ndarray] | None = [] if with_masks else None
    for b in scene.bottles:
        drawn = draw_bottle(img, b, t)
        if drawn is None or drawn.box is None:
            continue
        boxes.append(drawn.box)
        truncated.append(drawn.truncated)
        if masks is not None:
            full = np.zeros((h, w), bool)
            full[drawn.patch.slices] = drawn.visible
            masks.append(full)
    if grain_rng is not None:
        img += grain_rng.standard_normal((h, w, 1), dtype=np.float32) * scene.grain
    image = np.clip(img + 0.5, 0.0, 255.0).astype(np.uint8)
    return Rendered(image, boxes, truncated, masks)
