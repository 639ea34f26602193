"""Time SimOTA on a training-sized batch: ``simota_batched`` against a per-image loop of ``simota``.

16 images x 30 objects at 640 x 640 (8400 anchors), FloW-like small objects (4-64 px) plus a few
crowded clusters; predictions are what a half-trained detector emits: boxes near the anchors'
cells, large near objects. Prints the median time of each path and the speed-up, and checks the
two paths agree.

    python benchmarks/assign.py [--batch 16] [--objects 30] [--size 640] [--classes 1] [--repeat 7]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import Tensor

from model.assign import BatchAssignment, simota, simota_batched


def anchor_grid(size: int, strides: tuple[int, ...] = (8, 16, 32)) -> tuple[Tensor, Tensor, Tensor]:
    """x_shifts, y_shifts, strides (A,) for a square input, levels in stride order, row-major."""
    xs, ys, ss = [], [], []
    for s in strides:
        n = size // s
        yv, xv = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
        xs.append(xv.flatten())
        ys.append(yv.flatten())
        ss.append(torch.full((n * n,), s))
    return torch.cat(xs).float(), torch.cat(ys).float(), torch.cat(ss).float()


def make_batch(batch: int, objects: int, size: int, classes: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    x, y, s = anchor_grid(size)
    a = x.numel()
    centres = torch.rand(batch, objects, 2, generator=g) * size
    # a third of the objects in clusters (floating waste gathers along banks and eddies)
    k = objects // 3
    centres[:, :k] = centres[:, :1] + torch.randn(batch, k, 2, generator=g) * 12
    wh = 4 + torch.rand(batch, objects, 2, generator=g) ** 2 * 60  # mostly small
    gt = torch.cat([centres.clamp(0, size - 1), wh], -1)  # (B, G, 4)
    gt_classes = torch.randint(0, classes, (batch, objects), generator=g).float()
    cell = torch.stack([(x + 0.5) * s, (y + 0.5) * s], 1)  # (A, 2)
    pred_c = cell + torch.randn(batch, a, 2, generator=g) * s[:, None] * 0.5
    pred_wh = s[:, None] * torch.exp(torch.randn(batch, a, 2, generator=g) * 0.5 + 0.5)
    pred = torch.cat([pred_c, pred_wh], -1)  # (B, A, 4)
    return {
        "gt": gt,
        "cls": gt_classes,
        "valid": torch.ones(batch, objects, dtype=torch.bool),
        "pred": pred,
        "cls_logits": torch.randn(batch, a, classes, generator=g) - 2,
        "obj_logits": torch.randn(batch, a, generator=g) - 2,
        "x": x,
        "y": y,
        "s": s,
    }


def run_batched(d: dict) -> BatchAssignment:
    return simota_batched(d["gt"], d["cls"], d["valid"], d["pred"], d["cls_logits"],
                          d["obj_logits"], d["x"], d["y"], d["s"])


def run_loop(d: dict) -> list:
    return [
        simota(d["gt"][b], d["cls"][b], d["pred"][b], d["cls_logits"][b], d["obj_logits"][b],
               d["x"], d["y"], d["s"])
        for b in range(d["gt"].shape[0])
    ]


def median_time(fn: Callable[[], object], repeat: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--objects", type=int, default=30)
    ap.add_argument("--size", type=int, default=640)
    ap.add_argument("--classes", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    d = make_batch(args.batch, args.objects, args.size, args.classes)

    batched = run_batched(d)
    loop = run_loop(d)
    same = all(
        torch.equal(batched.image(b).fg_mask, r.fg_mask)
        and torch.equal(batched.image(b).matched_gt_inds, r.matched_gt_inds)
        and torch.equal(batched.image(b).pred_ious, r.pred_ious)
        for b, r in enumerate(loop)
    )
    t_loop = median_time(lambda: run_loop(d), args.repeat)
    t_batched = median_time(lambda: run_batched(d), args.repeat)
    print(f"SimOTA, {args.batch} images x {args.objects} objects, {d['x'].numel()} anchors, "
          f"{args.classes} classes, {args.threads} thread(s), median of {args.repeat}")
    print(f"  foregrounds: {int(batched.fg_mask.sum())}, paths agree: {same}")
    print(f"  per-image loop of simota: {t_loop * 1e3:8.1f} ms")
    print(f"  simota_batched:           {t_batched * 1e3:8.1f} ms")
    print(f"  speed-up:                 {t_loop / t_batched:8.2f}x")


if __name__ == "__main__":
    main()
