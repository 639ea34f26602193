"""Patch geometry of the self-supervised pretraining: anchors, adjacent positives, far negatives.

A patch is a square of side ``p`` given by its top-left corner ``(x, y)`` in frame pixels. The
positive is one of the four patches directly above, below, left or right of the anchor (sharing a
whole edge with it); the negative lies at least ``FAR`` patch widths away from the anchor along x
or y (Chebyshev distance of the corners ``>= FAR * p``), or comes from another frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FAR = 3  # negatives at least this many patch widths from the anchor
ANCHOR_TRIES = 50  # anchors drawn in a lone frame before giving up on a far negative
GRID = 3  # a frame must hold 3 x 3 patches: the anchor and its four neighbours
# Unit offsets of the positive, in patches: up, down, left, right.
DIRECTIONS: tuple[tuple[int, int], ...] = ((0, -1), (0, 1), (-1, 0), (1, 0))


@dataclass(frozen=True)
class Triplet:
    """Where the three patches of one training example lie. Corners in frame pixels."""

    frame: int  # index of the anchor's (and the positive's) frame
    anchor: tuple[int, int]
    positive: tuple[int, int]
    neg_frame: int  # the negative's frame (== frame for an in-frame far negative)
    negative: tuple[int, int]


def sample_anchor_positive(
    rng: np.random.Generator, width: int, height: int, p: int
) -> tuple[tuple[int, int], tuple[int, int]]:
    """An anchor whose four neighbours all fit in the frame, and one of them at random."""
    ax = int(rng.integers(p, width - 2 * p + 1))
    ay = int(rng.integers(p, height - 2 * p + 1))
    dx, dy = DIRECTIONS[int(rng.integers(len(DIRECTIONS)))]
    return (ax, ay), (ax + dx * p, ay + dy * p)


def _far_intervals(a: int, limit: int, dist: int) -> list[tuple[int, int]]:
    """Closed integer intervals of v in [0, limit] with |v - a| >= dist."""
    out = []
    if a - dist >= 0:
        out.append((0, a - dist))
    if a + dist <= limit:
        out.append((a + dist, limit))
    return out


def _draw(rng: np.random.Generator, intervals: list[tuple[int, int]]) -> int:
    sizes = np.array([hi - lo + 1 for lo, hi in intervals], dtype=np.float64)
    lo, hi = intervals[int(rng.choice(len(intervals), p=sizes / sizes.sum()))]
    return int(rng.integers(lo, hi + 1))


def sample_far_negative(
    rng: np.random.Generator, anchor: tuple[int, int], width: int, height: int, p: int
) -> tuple[int, int] | None:
    """A patch corner at Chebyshev distance >= FAR * p from ``anchor``; None when none fits.

    Drawn exactly (no rejection): far along x with y free, or far along y with x free, each
    chosen in proportion to how many corners it offers.
    """
    ax, ay = anchor
    xmax, ymax = width - p, height - p
    far_x = _far_intervals(ax, xmax, FAR * p)
    far_y = _far_intervals(ay, ymax, FAR * p)
    n_x = sum(hi - lo + 1 for lo, hi in far_x) * (ymax + 1)
    n_y = sum(hi - lo + 1 for lo, hi in far_y) * (xmax + 1)
    if n_x + n_y == 0:
        return None
    if rng.random() < n_x / (n_x + n_y):
        return _draw(rng, far_x), int(rng.integers(0, ymax + 1))
    return int(rng.integers(0, xmax + 1)), _draw(rng, far_y)


def plan_triplets(
    rng: np.random.Generator,
    sizes: list[tuple[int, int]],
    frames: list[int],
    per_frame: int,
    p: int,
    cross_frame_prob: float = 0.5,
) -> list[Triplet]:
    """``per_frame`` triplets for each index in ``frames`` (sizes[i] = (width, height)).

    The negative comes from another frame of ``frames`` with probability ``cross_frame_prob``
    (always when the anchor's frame has no far patch). ``frames`` must be distinct and each at
    least GRID * p on each side (checked by the caller, which knows the file names). With a
    single frame too small for any far negative, a ValueError says so.
    """
    out: list[Triplet] = []
    others = len(frames) > 1
    for f in frames:
        w, h = sizes[f]
        for _ in range(per_frame):
            anchor, positive = sample_anchor_positive(rng, w, h, p)
            if others and rng.random() < cross_frame_prob:
                out.append(_cross_frame(rng, sizes, frames, f, anchor, positive, p))
                continue
            neg = sample_far_negative(rng, anchor, w, h, p)
            # A single frame: redraw the anchor until a far patch exists (small frames).
            for _ in range(ANCHOR_TRIES if not others else 0):
                if neg is not None:
                    break
                anchor, positive = sample_anchor_positive(rng, w, h, p)
                neg = sample_far_negative(rng, anchor, w, h, p)
            if neg is not None:
                out.append(Triplet(f, anchor, positive, f, neg))
            elif others:
                out.append(_cross_frame(rng, sizes, frames, f, anchor, positive, p))
            else:
                raise ValueError(
                    f"the only frame ({w}x{h}) has no patch {FAR} patch widths away from an "
                    "anchor, and there is no other frame to take a negative from"
                )
    return out


def _cross_frame(
    rng: np.random.Generator,
    sizes: list[tuple[int, int]],
    frames: list[int],
    f: int,
    anchor: tuple[int, int],
    positive: tuple[int, int],
    p: int,
) -> Triplet:
    """A triplet whose negative is a random patch of a frame other than ``f`` (uniformly)."""
    j = int(rng.integers(len(frames) - 1))
    g = frames[j] if frames[j] != f else frames[-1]
    gw, gh = sizes[g]
    neg = (int(rng.integers(0, gw - p + 1)), int(rng.integers(0, gh - p + 1)))
    return Triplet(f, anchor, positive, g, neg)


def cut_patch(frame: np.ndarray, corner: tuple[int, int], p: int) -> np.ndarray:
    """(H, W, 3) uint8 -> the (p, p, 3) patch whose top-left corner is ``corner`` (inside)."""
    x, y = corner
    return frame[y : y + p, x : x + p]
