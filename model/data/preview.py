"""A picture of what the network is trained on: a grid of augmented samples with their boxes."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from model.config import TrialConfig
from model.data.augment import AugmentParams, sample_rng, train_sample
from model.data.loader import epoch_order, training_source

# BGR colours per class id (cycled); saturated so they stand out from grey padding and water.
PALETTE = [(0, 255, 0), (0, 0, 255), (255, 0, 0), (0, 255, 255), (255, 0, 255), (255, 255, 0)]


def class_colour(cls: int) -> tuple[int, int, int]:
    return PALETTE[cls % len(PALETTE)]


def draw_targets(img: np.ndarray, targets: np.ndarray, names: list[str]) -> np.ndarray:
    """Draw ``targets`` (M, 5) ``class, cx, cy, w, h`` (zero rows skipped) on a copy of ``img``.

    Each box is a 1 px rectangle from ``round(x1, y1)`` to ``round(x2, y2)`` in its class colour,
    with the class name above it.
    """
    out = img.copy()
    for cls, cx, cy, w, h in targets[np.any(targets != 0, axis=1)]:
        c = int(cls)
        x1, y1 = round(cx - w / 2), round(cy - h / 2)
        x2, y2 = round(cx + w / 2), round(cy + h / 2)
        cv2.rectangle(out, (x1, y1), (x2, y2), class_colour(c), 1)
        name = names[c] if 0 <= c < len(names) else str(c)
        cv2.putText(
            out,
            name,
            (x1, max(y1 - 3, 8)),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.35,
            class_colour(c),
            1,
            cv2.LINE_AA,
        )
    return out


def render_grid(split: Any, cfg: TrialConfig, n: int, seed: int) -> np.ndarray:
    """A grid of the first ``n`` training samples of epoch 0 for ``seed`` (augmented as ``cfg``).

    Cells are ``cfg.input_size`` square (``img_size``, or ``tile_size`` with ``input_mode:
    tiles``, whose samples are native-resolution crops), row-major, ``ceil(sqrt(n))`` per row;
    sample ``k`` is the one the training loader would produce at position ``k`` of epoch 0 with
    ``cfg.seed = seed``.
    Returns a BGR uint8 image ``(rows * S, cols * S, 3)``.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1 samples, got {n}")
    size = cfg.input_size
    source = training_source(split, cfg, progress=False)
    params = AugmentParams.from_config(cfg)
    names = [c["name"] for c in sorted(split.categories, key=lambda c: c["id"])]
    order = epoch_order(len(source), n, seed, 0)
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = np.zeros((rows * size, cols * size, 3), dtype=np.uint8)
    for k in range(n):
        img, targets = train_sample(source, int(order[k]), sample_rng(seed, 0, k), params)
        r, c = divmod(k, cols)
        grid[r * size : (r + 1) * size, c * size : (c + 1) * size] = draw_targets(
            img, targets, names
        )
    return grid


def render_preview(
    src: str | Path,
    out: str | Path,
    *,
    n: int = 16,
    seed: int = 0,
    img_size: int | None = None,
    cfg: TrialConfig | None = None,
) -> Path:
    """Write a PNG grid of ``n`` augmented training samples of the dataset at ``src``.

    ``cfg`` gives the augmentation settings and the tile size (defaults: the official recipe,
    640 px); ``img_size``, when given, sets the tile size over ``cfg.img_size``. Returns the
    path written.
    """
    from model.data.dataset import load_dataset  # the reader pulls in every layout; load lazily

    base = cfg if cfg is not None else TrialConfig()
    cfg = replace(base, img_size=img_size or base.img_size, seed=seed)
    grid = render_grid(load_dataset(src).train, cfg, n, seed)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(out), grid):
        raise OSError(f"could not write the preview to {out}: use a path ending in .png")
    return out
