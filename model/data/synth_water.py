"""The water background: perspective waves, colour gradients, sun glints and the river bank.

The camera looks obliquely at a water plane. Row y sees the plane at depth ``1 / d(y)`` with
``d = (y - horizon) / (height - horizon)`` (1 at the bottom row, 0 at the horizon), so everything
on the water — waves, bottles, leaves — shrinks by ``d`` towards the horizon. Scenes without a
visible shore put the horizon above the frame. Waves are a sum of sinusoids on the plane; each
is faded out where its on-screen wavelength gets shorter than a few pixels (no aliasing near the
horizon). The wave slope drives the sky reflection and, where it is steep, the glints.
The field is computed at half resolution and upsampled: waves are smooth, and it halves the cost.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

Colour = tuple[float, float, float]  # BGR, 0-255

_WATER = ((70, 110, 95), (100, 120, 105), (120, 130, 70), (140, 120, 95), (75, 100, 115),
          (55, 85, 60), (95, 105, 100))
_SKY = ((230, 215, 200), (205, 205, 200), (200, 212, 220), (235, 225, 215))
_BANK = ((40, 70, 50), (50, 75, 95), (115, 118, 120), (35, 60, 45))


@dataclass(frozen=True)
class Water:
    """Everything that defines one scene's water; rendering is a pure function of it and time."""

    horizon: float  # image row of the horizon; negative = above the frame (no shore visible)
    deep: Colour  # water colour near the camera
    reflect: Colour  # colour mirrored near the horizon (sky, or the bank when it is in view)
    bank: Colour  # shore colour above the horizon
    waves: np.ndarray  # (K, 5) float32 rows: kx, kz (rad per plane unit), steepness, omega, phase
    fresnel: float  # reflectance at the bottom row
    slope_gain: float  # how much the wave slope changes the reflection
    glint: float  # ripple slope below which there are no glints (calm water)
    glint_share: float  # share of the water area that glints (the steepest ripples)
    sun_x: float  # column of the sun's glitter path, fraction of the width
    sun_width: float  # its width, fraction of the width
    sun_gain: float  # how much the path lowers the glint threshold (0 = overcast)
    tint: np.ndarray  # (3, 5, 3) float32 coarse colour offsets (mud, weed, shade)
    bank_tex: np.ndarray  # (1, 48) float32 shore brightness texture (trees, walls)
    gusts: np.ndarray  # (4, 6) float32 ripple strength by area, 0.2-1.4


def sample_water(rng: np.random.Generator, width: int, height: int) -> Water:
    """Draw a random water scene: hue, sky, shore, wave spectrum, sun."""
    if rng.random() < 0.6:
        horizon = float(rng.uniform(0.05, 0.22) * height)
    else:  # looking down at the water: horizon above the frame, milder perspective
        horizon = float(-rng.uniform(1.0, 3.0) * height)
    deep = _jitter(rng, _WATER[rng.integers(len(_WATER))], 15, rng.uniform(0.8, 1.2))
    sky = _jitter(rng, _SKY[rng.integers(len(_SKY))], 10, 1.0)
    bank = _jitter(rng, _BANK[rng.integers(len(_BANK))], 12, rng.uniform(0.8, 1.2))
    # Near the horizon the water mirrors the bank when one is in view, else the sky.
    mirrored = tuple(0.5 * s + 0.5 * b for s, b in zip(sky, bank, strict=True))
    reflect = mirrored if horizon > 0 else sky

    # Wavelengths at all scales, so that every distance has waves of a visible size.
    # A wide spread of headings around the wind direction breaks the sinusoids into chop.
    k_waves = 14
    wavelength = np.exp(rng.uniform(np.log(0.012), np.log(0.6), k_waves))  # plane units
    k = 2.0 * np.pi / wavelength
    heading = rng.normal(0.0, 0.3) + rng.normal(0.0, 0.7, k_waves)  # mostly towards the camera
    calm = rng.uniform(0.5, 1.3)
    waves = np.stack([
        k * np.sin(heading),
        k * np.cos(heading),
        calm * rng.uniform(0.5, 1.0, k_waves) / np.sqrt(k_waves),
        0.04 * np.sqrt(k) * rng.uniform(0.8, 1.2, k_waves),  # deep-water dispersion, per frame
        rng.uniform(0.0, 2.0 * np.pi, k_waves),
    ], axis=1).astype(np.float32)
    sunny = rng.random() < 0.5
    return Water(
        horizon=horizon, deep=deep, reflect=reflect, bank=bank, waves=waves,
        fresnel=float(rng.uniform(0.05, 0.25)), slope_gain=float(rng.uniform(0.12, 0.25)),
        glint=float(rng.uniform(0.4, 0.8)), glint_share=float(rng.uniform(3e-4, 3e-3)),
        sun_x=float(rng.uniform(0.1, 0.9)),
        sun_width=float(rng.uniform(0.05, 0.2)), sun_gain=float(rng.uniform(0.3, 0.6)) * sunny,
        # mostly brightness, a little hue: independent channels would paint pink blotches
        tint=(rng.normal(0.0, 9.0, (3, 5, 1)) + rng.normal(0.0, 3.0, (3, 5, 3))).astype(np.float32),
        bank_tex=rng.uniform(0.6, 1.3, (1, 48)).astype(np.float32),
        gusts=rng.uniform(0.2, 1.4, (4, 6)).astype(np.float32),
    )


def _jitter(rng: np.random.Generator, bgr: tuple, spread: float, gain: float) -> Colour:
    c = (np.asarray(bgr, np.float64) + rng.uniform(-spread, spread, 3)) * gain
    return tuple(float(x) for x in np.clip(c, 10.0, 245.0))


def plane_scale(water: Water, y: float, height: int) -> float:
    """On-screen size of a unit on the water at row y, relative to the bottom row (0..1]."""
    return float(np.clip((y - water.horizon) / (height - water.horizon), 0.02, 1.0))


def render_water(water: Water, width: int, height: int, t: float = 0.0) -> np.ndarray:
    """The background at frame time t: ``(height, width, 3)`` float32 BGR 0-255."""
    h2, w2 = (height + 1) // 2, (width + 1) // 2
    ys = ((np.arange(h2, dtype=np.float32) + 0.5) * (height / h2))[:, None]  # (h2, 1)
    xs = ((np.arange(w2, dtype=np.float32) + 0.5) * (width / w2))[None, :]  # (1, w2)
    span = height - water.horizon
    d = np.clip((ys - water.horizon) / span, 0.02, 1.0)  # (h2, 1)
    z = 1.0 / d
    px = (xs - width / 2.0) * (2.0 / width) * z  # plane x, (h2, w2); bottom row spans -1..1

    swell = np.zeros((h2, w2), np.float32)
    ripple = np.zeros((h2, w2), np.float32)  # waves shorter than ~40 px on screen
    for kx, kz, steep, omega, phase in water.waves:
        # phase change per screen pixel (horizontal and vertical); fade above ~0.5 rad/px
        rate = np.hypot(kx * 2.0 / width * z, kz * z * z / span)  # (h2, 1)
        amp = steep * kz / np.hypot(kx, kz) * np.exp(-((rate / 0.5) ** 2))
        wave = amp * np.cos(kx * px + (kz * z - omega * t + phase))
        short = np.clip((rate - 0.1) / 0.1, 0.0, 1.0)
        ripple += short * wave
        swell += (1.0 - short) * wave
    # Patchy gusts modulate the ripples: breaks the lattice that a few crossing sinusoids make.
    ripple *= cv2.resize(water.gusts, (w2, h2), interpolation=cv2.INTER_CUBIC)
    slope = swell + ripple

    mix = np.clip(water.fresnel + 0.6 * (1.0 - d) ** 3 + water.slope_gain * slope, 0.0, 1.0)
    deep, reflect = np.asarray(water.deep, np.float32), np.asarray(water.reflect, np.float32)
    img = deep + (reflect - deep) * mix[..., None]  # (h2, w2, 3)
    img += cv2.resize(water.tint, (w2, h2), interpolation=cv2.INTER_CUBIC)

    sun = water.sun_gain * np.exp(-(((xs / width - water.sun_x) / water.sun_width) ** 2))
    sparkle = 2.0 * ripple + sun
    # Glints are the steepest ripples facing the sun: a set share of the water, never calm water.
    level = max(float(np.quantile(sparkle, 1.0 - water.glint_share)), water.glint)
    glint = np.clip((sparkle - level) * 4.0, 0.0, 1.0) ** 2
    img += (235.0 * glint)[..., None]

    shore_rows = int(np.clip(np.ceil(water.horizon / height * h2), 0, h2))
    if shore_rows > 0:
        tex = cv2.resize(water.bank_tex, (w2, shore_rows), interpolation=cv2.INTER_LINEAR)
        fall = np.linspace(1.1, 0.7, shore_rows, dtype=np.float32)[:, None]  # darker at the water
        img[:shore_rows] = np.asarray(water.bank, np.float32) * (tex * fall)[..., None]
    return cv2.resize(img, (width, height), interpolation=cv2.INTER_LINEAR)
