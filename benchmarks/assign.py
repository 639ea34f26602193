"""Time SimOTA on a training-sized batch: ``simota_batched`` against a per-image loop of ``simota``.

16 images x 30 objects at 640 x 640 (8400 anchors), FloW-like small objects (4-64 px) plus a few
crowded clusters; each anchor predicts a box scattered around its cell, one to a few strides
wide, and random scores. Prints wall-clock (median, minimum) and CPU time of each path and the
speed-ups, and checks that the two paths agree. Then (issue 17) times every other assigner of the
registry ``model.assign.ASSIGNERS`` (and SimOTA with NWD, HAMBox on top of SimOTA) on the same
batch against ``simota_batched``, with the positives each gives per object.

    python benchmarks/assign.py [--batch 16] [--objects 30] [--size 640] [--classes 1]
                                [--repeat 15] [--threads 1] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import Tensor

from model.assign import ASSIGNERS, AssignInputs, AssignSettings, BatchAssignment, DynamicState
from model.assign.hambox import hambox
from model.assign.simota import simota, simota_batched


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


def run_batched(d: dict, **kw: object) -> BatchAssignment:
    return simota_batched(
        d["gt"],
        d["cls"],
        d["valid"],
        d["pred"],
        d["cls_logits"],
        d["obj_logits"],
        d["x"],
        d["y"],
        d["s"],
        **kw,
    )


def run_other(d: dict, name: str) -> BatchAssignment:
    """An entry of ``model.assign.ASSIGNERS`` (paper defaults), "simota_nwd", or
    "simota+hambox"."""
    if name == "simota_nwd":
        return run_batched(d, overlap="nwd")
    if name == "simota+hambox":
        return hambox(run_batched(d), d["gt"], d["valid"], d["pred"])
    inputs = AssignInputs(*(d[k] for k in ("gt", "cls", "valid", "pred", "cls_logits",
                                           "obj_logits", "x", "y", "s")))
    return ASSIGNERS[name](inputs, AssignSettings(assigner=name), DynamicState())


def run_loop(d: dict) -> list:
    return [
        simota(
            d["gt"][b],
            d["cls"][b],
            d["pred"][b],
            d["cls_logits"][b],
            d["obj_logits"][b],
            d["x"],
            d["y"],
            d["s"],
        )
        for b in range(d["gt"].shape[0])
    ]


def timings(fn: Callable[[], object], repeat: int, device: str) -> tuple[float, float, float]:
    """Median and minimum wall seconds and median process CPU seconds of ``fn`` over ``repeat``
    runs after a warm-up. On a CPU shared with other jobs the minimum and the CPU time are the
    steadier figures (the CPU time counts no waiting, but on CUDA it misses the GPU's work)."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    fn()
    wall, cpu = [], []
    for _ in range(repeat):
        sync()
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        sync()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return statistics.median(wall), min(wall), statistics.median(cpu)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--objects", type=int, default=30)
    ap.add_argument("--size", type=int, default=640)
    ap.add_argument("--classes", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device here")
    torch.set_num_threads(args.threads)
    d = {
        k: v.to(args.device)
        for k, v in make_batch(args.batch, args.objects, args.size, args.classes).items()
    }

    batched = run_batched(d)
    loop = run_loop(d)
    same = all(
        torch.equal(batched.image(b).fg_mask, r.fg_mask)
        and torch.equal(batched.image(b).matched_gt_inds, r.matched_gt_inds)
        and torch.equal(batched.image(b).pred_ious, r.pred_ious)
        for b, r in enumerate(loop)
    )
    loop = timings(lambda: run_loop(d), args.repeat, args.device)
    fast = timings(lambda: run_batched(d), args.repeat, args.device)
    print(
        f"SimOTA, {args.batch} images x {args.objects} objects, {d['x'].numel()} anchors, "
        f"{args.classes} classes, {args.device}, {args.threads} CPU thread(s), "
        f"{args.repeat} runs"
    )
    print(f"  foregrounds: {int(batched.fg_mask.sum())}, paths agree: {same}")
    print("                            wall median   wall min   CPU median")
    for name, t in (("per-image loop of simota", loop), ("simota_batched", fast)):
        print(f"  {name:24s} {t[0] * 1e3:9.1f} ms {t[1] * 1e3:7.1f} ms {t[2] * 1e3:9.1f} ms")
    ratios = "  ".join(f"{a / b:8.2f} x" for a, b in zip(loop, fast, strict=True))
    print(f"  {'speed-up':24s} {ratios}")

    print("\nOther assigners on the same batch, against simota_batched (time ratio; > 1 = slower)")
    print("                            wall median   wall min   CPU median   ratio   pos/object")
    n_obj = int(d["valid"].sum())
    others = [name for name in ASSIGNERS if name != "simota"]
    for name in ("simota_batched", *others, "simota_nwd", "simota+hambox"):
        if name == "simota_batched":
            fn, t = (lambda: run_batched(d)), fast
        else:
            fn = lambda n=name: run_other(d, n)  # noqa: E731
            t = timings(fn, args.repeat, args.device)
        pos = int(fn().fg_mask.sum()) / max(n_obj, 1)
        print(
            f"  {name:24s} {t[0] * 1e3:9.1f} ms {t[1] * 1e3:7.1f} ms {t[2] * 1e3:9.1f} ms "
            f"{t[1] / fast[1]:7.2f} {pos:10.2f}"
        )


if __name__ == "__main__":
    main()
