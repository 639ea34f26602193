"""Milliseconds per YOLOX training step: forward, loss (with SimOTA), backward, SGD step.

Side by side, on the same machine and threads (issue 26): the **official** step (the per-image
SimOTA loop, which follows the official implementation's loop structure; the official package
cannot be installed here, so that loop is our stand-in; NCHW tensors, as official) and our
**default** step (``TrialConfig()``'s settings: batched SimOTA, ``channels_last``). Other
variants: ``batched`` (batched SimOTA, NCHW) and ``per_image_nhwc``.

    python benchmarks/train_step.py                      # nano@320 and s@640, batch 8
    python benchmarks/train_step.py --preset nano320 --iters 5 --threads 1
    python benchmarks/train_step.py --size tiny --img 416 --batch 4 --device cuda
    python benchmarks/train_step.py --variants official,default,batched

On CUDA the step runs under torch.autocast (fp16) with a GradScaler; on the CPU in fp32.
On a shared CPU machine use ``--threads 1``: with more threads than idle cores every small op
waits on a descheduled thread, and the many small ops of the assignment suffer most.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import model.yolox.loss as loss_module
from model.assign import AssignSettings
from model.yolox import HeadSettings, LossSettings, build_yolox

PRESETS = {"nano320": ("nano", 320, 8), "s640": ("s", 640, 8)}
# name -> (assign_mode, channels_last)
VARIANTS = {
    "official": ("per_image", False),
    "default": ("batched", True),  # TrialConfig() defaults (issue 26: channels_last on)
    "batched": ("batched", False),
    "per_image_nhwc": ("per_image", True),
}


class LossTimer:
    """Wraps ``yolox_loss`` (looked up by the head at call time) to time SimOTA + loss terms."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda
        self.ms: list[float] = []
        self._inner = loss_module.yolox_loss

    def __call__(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN204
        if self.cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = self._inner(*args, **kwargs)
        if self.cuda:
            torch.cuda.synchronize()
        self.ms.append((time.perf_counter() - t0) * 1e3)
        return out


def random_targets(
    batch: int, img: int, lo: int, hi: int, max_objects: int, gen: torch.Generator
) -> torch.Tensor:
    """FloW-like targets (B, max_objects, 5): ``lo``..``hi`` small boxes per image, zero padding.

    Sizes are log-uniform in 4..48 px (most under 32 px, as in FloW-Img), centres inside the image.
    """
    targets = torch.zeros(batch, max_objects, 5)
    for b in range(batch):
        n = int(torch.randint(lo, hi + 1, (1,), generator=gen))
        wh = torch.exp(torch.empty(n, 2).uniform_(1.386, 3.871, generator=gen))  # 4..48 px
        cxy = wh / 2 + torch.rand(n, 2, generator=gen) * (img - wh)
        targets[b, :n, 1:3] = cxy
        targets[b, :n, 3:5] = wh
    return targets


def time_steps(
    size: str,
    img: int,
    batch: int,
    mode: str,
    device: torch.device,
    warmup: int,
    iters: int,
    objects: tuple[int, int],
    seed: int,
    channels_last: bool = False,
) -> tuple[list[float], list[float], float]:
    """Per-step wall times in ms, the loss-forward times in ms, and the first step's total loss."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    cuda = device.type == "cuda"
    settings = HeadSettings(loss=LossSettings(assign=AssignSettings(assign_mode=mode)))
    net = build_yolox(size, num_classes=1, settings=settings).to(device).train()
    images = torch.rand(batch, 3, img, img, generator=gen) * 255
    targets = random_targets(batch, img, *objects, max_objects=120, gen=gen)
    images, targets = images.to(device), targets.to(device)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.SGD(net.parameters(), lr=0.01 * batch / 64, momentum=0.9, nesterov=True)
    scaler = torch.amp.GradScaler("cuda", enabled=cuda)

    timer = LossTimer(cuda)
    loss_module.yolox_loss = timer
    times: list[float] = []
    first_loss = float("nan")
    for i in range(warmup + iters):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.float16, enabled=cuda):
            losses = net(images, targets)
        opt.zero_grad(set_to_none=True)
        scaler.scale(losses["total_loss"]).backward()
        scaler.step(opt)
        scaler.update()
        if cuda:
            torch.cuda.synchronize()
        if i == 0:
            first_loss = float(losses["total_loss"].detach())
        if i >= warmup:
            times.append((time.perf_counter() - t0) * 1e3)
    loss_module.yolox_loss = timer._inner
    return times, timer.ms[warmup:], first_loss


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--preset", choices=[*PRESETS, "all"], default="all")
    p.add_argument("--size", help="instead of a preset: model size (with --img, --batch)")
    p.add_argument("--img", type=int, default=640)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--variants", default="official,default",
                   help=f"comma list of {', '.join(VARIANTS)}")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--objects", type=int, nargs=2, default=(10, 30), metavar=("MIN", "MAX"))
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variant {unknown[0]!r}; use {', '.join(VARIANTS)}")
    runs = (
        [(args.size, args.img, args.batch)]
        if args.size
        else (list(PRESETS.values()) if args.preset == "all" else [PRESETS[args.preset]])
    )
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    extra = "fp16 autocast + GradScaler" if device.type == "cuda" else "fp32"
    print(f"device: {where} ({extra}), torch {torch.__version__}, "
          f"{torch.get_num_threads()} CPU threads")
    print("official = the per-image SimOTA loop (the official loop structure; the official "
          "package cannot be installed here, so this is the stand-in), NCHW; default = our "
          "TrialConfig defaults: batched SimOTA, channels_last")
    print(f"targets: {args.objects[0]}-{args.objects[1]} boxes of 4-48 px per image; "
          f"{args.warmup} warm-up + {args.iters} timed steps")
    print(f"{'size':>5} {'img':>5} {'batch':>5} {'variant':>15} {'mean ms':>9} {'min ms':>9} "
          f"{'loss fwd ms':>12} {'first loss':>11}")
    for size, img, batch in runs:
        means: dict[str, float] = {}
        for name in variants:
            mode, channels_last = VARIANTS[name]
            times, loss_ms, loss = time_steps(
                size, img, batch, mode, device, args.warmup, args.iters, args.objects, args.seed,
                channels_last=channels_last,
            )
            means[name] = statistics.mean(times)
            print(
                f"{size:>5} {img:>5} {batch:>5} {name:>15} {means[name]:9.1f} {min(times):9.1f} "
                f"{statistics.mean(loss_ms):12.1f} {loss:11.4f}",
                flush=True,
            )
        base = means.get("official")
        if base:
            ratios = ", ".join(f"{k} {v / base:.2f}x" for k, v in means.items() if k != "official")
            print(f"      step time against official: {ratios}")


if __name__ == "__main__":
    main()
