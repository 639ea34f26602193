"""Sliced inference: detect on overlapping native-resolution tiles of a frame, merge the boxes.

The inference half of ``input_mode: tiles`` (the training half is :mod:`model.data.tiles`).

1. **Slicing** (:func:`tile_origins`). Along a side of length ``L`` with tile ``T`` and overlap
   ``o``: one tile at 0 when ``L <= T`` (padded past the frame, never scaled), else
   ``n = ceil((L - T) / (T - round(o * T))) + 1`` tiles evenly spaced from 0 to ``L - T``, so
   neighbours share at least ``round(o * T)`` pixels. SAHI instead slides by the fixed step and
   shifts the last tile back to the edge, which can leave a last pair overlapping almost fully;
   even spacing gives the same tile count with the overlap spread evenly.
2. **Batched forwards**: the tiles of all frames of a call go through the network together,
   ``batch_size`` at a time; each tile's boxes pass the usual score filter and per-class NMS
   (:func:`model.postprocess.postprocess`) and are shifted to frame pixels. Optionally the whole
   frame is also letterboxed into ``full_frame_size`` and detected once (objects larger than a
   tile); its boxes join the merge as one more source.
3. **Merge across tiles** (:func:`merge_detections`). Greedy, in descending score, within one
   class and only between *different* sources (per-tile NMS already settled pairs inside a
   tile): every box whose intersection over the smaller box (IoS) with the current one is at
   least ``merge_ios`` joins it and is removed. The kept box grows to the union of itself and
   the joined boxes that are *cut* — touching an edge of their tile that lies inside the frame
   — and to all joined boxes when it is cut itself: a bottle split by a tile edge becomes one
   box, while a whole box is never stretched by a stray neighbour. A box that grew is matched
   again against the boxes left, so an object spanning several tiles comes out whole. Its score
   is the highest.
   SAHI's default postprocess (greedy NMM over IoS 0.5) unions every match; we keep unions to
   cut boxes for that reason. With a single source (a frame no larger than one tile) nothing
   merges, so tiles and letterbox then give exactly the same boxes.

Why not the ``sahi`` package: it requires ``opencv-python`` (which overwrites the
``opencv-python-headless`` we depend on: both install ``cv2``), shapely, requests and fire,
and its merge runs per image over Python lists of prediction objects; slicing is ten lines and
the merge below is vectorised except for one pass over the boxes that touch another tile's.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from model.data.tiles import crop_tile
from model.data.transforms import letterbox
from model.postprocess import postprocess

MERGE_IOS = 0.5  # IoS at which boxes of two tiles are one object (SAHI's default threshold)
EDGE_MARGIN_PX = 3.0  # a box within this distance of an inner tile edge counts as cut
FULL_FRAME_SOURCE = -1  # source id of the full-frame letterbox pass


def tile_origins(length: int, tile: int, overlap: float) -> list[int]:
    """Start offsets of the tiles along one side (see the module docstring, step 1)."""
    if length <= tile:
        return [0]
    step = max(tile - round(overlap * tile), 1)
    n = math.ceil((length - tile) / step) + 1
    return [round(i * (length - tile) / (n - 1)) for i in range(n)]


def frame_tiles(height: int, width: int, tile: int, overlap: float) -> list[tuple[int, int]]:
    """Top-left corners ``(x0, y0)`` of the tiles of a frame, row-major."""
    return [
        (x0, y0)
        for y0 in tile_origins(height, tile, overlap)
        for x0 in tile_origins(width, tile, overlap)
    ]


def cut_mask(
    boxes: Tensor, x0: int, y0: int, tile: int, width: int, height: int,
    margin: float = EDGE_MARGIN_PX,
) -> Tensor:
    """Which boxes ``(K, 4)`` x1, y1, x2, y2 (frame pixels) of the tile at ``(x0, y0)`` touch
    one of its edges that lies inside the ``width`` x ``height`` frame -> ``(K,)`` bool."""
    cut = torch.zeros(len(boxes), dtype=torch.bool, device=boxes.device)
    if x0 > 0:
        cut |= boxes[:, 0] <= x0 + margin
    if y0 > 0:
        cut |= boxes[:, 1] <= y0 + margin
    if x0 + tile < width:
        cut |= boxes[:, 2] >= x0 + tile - margin
    if y0 + tile < height:
        cut |= boxes[:, 3] >= y0 + tile - margin
    return cut


def merge_detections(
    dets: Tensor, sources: Tensor, cut: Tensor, merge_ios: float = MERGE_IOS
) -> Tensor:
    """Merge the detections of one frame's tiles (module docstring, step 3).

    ``dets`` (K, 7) x1, y1, x2, y2 (frame pixels), obj, cls_conf, class; ``sources`` (K,) the
    tile (or :data:`FULL_FRAME_SOURCE`) each came from; ``cut`` (K,) bool. Returns ``(K', 7)``
    in descending score, on ``dets``' device.
    """
    if len(dets) == 0:
        return dets
    device = dets.device
    d = dets.detach().float().cpu()
    order = torch.argsort(d[:, 4] * d[:, 5], descending=True, stable=True)
    d, src, cut = d[order], sources.cpu()[order], cut.cpu()[order]
    box, cls = d[:, :4], d[:, 6]
    lo = torch.max(box[:, None, :2], box[None, :, :2])
    hi = torch.min(box[:, None, 2:], box[None, :, 2:])
    inter = (hi - lo).clamp(min=0).prod(-1)  # (K, K)
    area = (box[:, 2:] - box[:, :2]).clamp(min=0).prod(-1)
    smaller = torch.min(area[:, None], area[None, :]).clamp(min=torch.finfo(area.dtype).tiny)
    match = (inter / smaller >= merge_ios) & (cls[:, None] == cls[None, :])
    match &= src[:, None] != src[None, :]
    if not match.any():  # one source, or nothing overlaps across tiles: the boxes as they are
        return dets
    match_np, cut_np, out = match.numpy(), cut.numpy(), d.numpy().copy()
    src_np, cls_np = src.numpy(), cls.numpy()
    alive = np.ones(len(out), dtype=bool)
    later = np.triu(match_np, 1).any(1)  # boxes with a lower-scored match to take in
    for i in np.flatnonzero(later):
        if not alive[i]:
            continue
        joined = np.flatnonzero(match_np[i, i + 1 :] & alive[i + 1 :]) + i + 1
        while len(joined):
            alive[joined] = False
            grow = joined if cut_np[i] else joined[cut_np[joined]]
            if len(grow) == 0:
                break  # the box did not change: nothing new can match it
            out[i, 0:2] = np.minimum(out[i, 0:2], out[grow, 0:2].min(0))
            out[i, 2:4] = np.maximum(out[i, 2:4], out[grow, 2:4].max(0))
            # A box backed by a whole view is whole now: it only takes in cut parts.
            cut_np[i] &= bool(cut_np[joined].all())
            # Grown, it may now hold parts it did not overlap before (an object spanning
            # several tiles): match the remaining boxes against the grown box.
            rest = np.flatnonzero(
                alive & (np.arange(len(out)) > i) & (cls_np == cls_np[i]) & (src_np != src_np[i])
            )
            joined = rest[_ios(out[i, :4], out[rest, :4]) >= merge_ios] if len(rest) else rest
    return torch.from_numpy(out[alive]).to(device)


def _ios(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    """Intersection over the smaller box of ``box`` (4,) with each of ``others`` (N, 4)."""
    # An untrained network can predict boxes of infinite size (exp overflow): inf / inf is no
    # overlap here, not a warning.
    with np.errstate(over="ignore", invalid="ignore"):
        lo = np.maximum(box[:2], others[:, :2])
        hi = np.minimum(box[2:], others[:, 2:])
        inter = (hi - lo).clip(0).prod(1)
        area = (box[2:] - box[:2]).clip(0).prod()
        areas = (others[:, 2:] - others[:, :2]).clip(0).prod(1)
        ios = inter / np.maximum(np.minimum(area, areas), np.finfo(np.float32).tiny)
    return np.nan_to_num(ios, nan=0.0)


@dataclass(frozen=True)
class SliceSettings:
    """How :func:`sliced_detect` cuts and merges (from ``TrialConfig``: ``tile_size``,
    ``tile_overlap``, ``img_size`` when ``tile_full_frame``, ``num_classes``, ``test_conf``,
    ``nms_iou``, ``channels_last``)."""

    tile: int
    overlap: float
    num_classes: int
    conf: float
    nms_iou: float
    full_frame_size: int = 0  # 0 = no full-frame pass
    channels_last: bool = False
    merge_ios: float = MERGE_IOS


def detect_batch(
    net: nn.Module,
    images: Tensor,
    *,
    num_classes: int,
    conf: float,
    nms_iou: float,
    channels_last: bool = False,
    timings: dict[str, float] | None = None,
) -> list[Tensor | None]:
    """Forward a float batch ``[B, 3, S, S]`` (on the network's device) and postprocess it:
    per image ``(K, 7)`` x1, y1, x2, y2 (input pixels), obj, cls_conf, class, or None.
    ``timings`` accumulates ``forward_s`` and ``nms_s`` (CUDA synchronised)."""
    device = images.device
    t0 = time.perf_counter()
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    prediction = net(images)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t1 = time.perf_counter()
    outputs = postprocess(prediction, num_classes, conf_thre=conf, nms_thre=nms_iou)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    if timings is not None:
        timings["forward_s"] = timings.get("forward_s", 0.0) + t1 - t0
        timings["nms_s"] = timings.get("nms_s", 0.0) + time.perf_counter() - t1
    return outputs


def _forward(
    net: nn.Module, views: list[np.ndarray], s: SliceSettings, batch_size: int,
    device: torch.device, timings: dict[str, float] | None,
) -> list[Tensor | None]:
    """Postprocessed detections (input pixels) of square uint8 ``views``, in batches."""
    outputs: list[Tensor | None] = []
    for start in range(0, len(views), batch_size):
        chunk = np.stack(views[start : start + batch_size])  # (b, T, T, 3)
        batch = torch.from_numpy(chunk).to(device).permute(0, 3, 1, 2).float().contiguous()
        outputs.extend(detect_batch(
            net, batch, num_classes=s.num_classes, conf=s.conf, nms_iou=s.nms_iou,
            channels_last=s.channels_last, timings=timings,
        ))
    return outputs


def sliced_detect(
    net: nn.Module,
    frames: Sequence[np.ndarray],
    s: SliceSettings,
    *,
    batch_size: int = 8,
    timings: dict[str, float] | None = None,
) -> list[Tensor]:
    """Detections of each BGR uint8 frame ``(H, W, 3)`` by sliced inference.

    ``net`` in eval mode. Returns one ``(K, 7)`` tensor per frame: x1, y1, x2, y2 in frame
    pixels (not clipped), obj, cls_conf, class. ``timings`` (optional) accumulates
    ``forward_s``, ``nms_s``, ``merge_s`` and ``tiles`` (views forwarded, full frames included).
    """
    device = next(net.parameters()).device
    views: list[np.ndarray] = []
    owners: list[tuple[int, int, int, int]] = []  # frame, source, x0, y0
    empty = np.zeros((0, 5), dtype=np.float32)
    for f, frame in enumerate(frames):
        h, w = frame.shape[:2]
        for t, (x0, y0) in enumerate(frame_tiles(h, w, s.tile, s.overlap)):
            views.append(crop_tile(frame, empty, x0, y0, s.tile, 1.0)[0])
            owners.append((f, t, x0, y0))
    outputs = _forward(net, views, s, batch_size, device, timings)
    full: list[Tensor | None] = [None] * len(frames)
    ratios: list[float] = []
    if s.full_frame_size:
        boxed = [letterbox(frame, s.full_frame_size) for frame in frames]
        ratios = [r for _, r in boxed]
        full = _forward(net, [img for img, _ in boxed], s, batch_size, device, timings)
    t_merge = time.perf_counter()
    per_frame: list[list[tuple[Tensor, Tensor, Tensor]]] = [[] for _ in frames]
    for (f, t, x0, y0), out in zip(owners, outputs, strict=True):
        if out is None or len(out) == 0:
            continue
        h, w = frames[f].shape[:2]
        out = out.clone()
        out[:, [0, 2]] += x0
        out[:, [1, 3]] += y0
        src = torch.full((len(out),), t, dtype=torch.long, device=out.device)
        per_frame[f].append((out, src, cut_mask(out, x0, y0, s.tile, w, h)))
    for f, out in enumerate(full):
        if out is not None and len(out):
            out = out.clone()
            out[:, :4] /= ratios[f]
            src = torch.full((len(out),), FULL_FRAME_SOURCE, dtype=torch.long, device=out.device)
            per_frame[f].append((out, src, torch.zeros(len(out), dtype=torch.bool,
                                                      device=out.device)))
    results: list[Tensor] = []
    for parts in per_frame:
        if not parts:
            results.append(torch.zeros((0, 7), device=device))
            continue
        dets, src, cut = (torch.cat(x) for x in zip(*parts, strict=True))
        results.append(merge_detections(dets, src, cut, s.merge_ios))
    if timings is not None:
        timings["merge_s"] = timings.get("merge_s", 0.0) + time.perf_counter() - t_merge
        timings["tiles"] = timings.get("tiles", 0) + len(views) + (len(frames) if s.full_frame_size
                                                                    else 0)
    return results
