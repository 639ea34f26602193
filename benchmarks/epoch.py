"""Images/s of a training epoch and of evaluation, with a breakdown of where the time goes.

    python benchmarks/epoch.py [--size nano] [--img-size 320] [--batch 8] [--data PATH]

Runs the same steps as ``model.trainer`` (multi-scale off so every phase sees one input size) with
simple timers: data loading (waiting for the next batch), forward + loss, of which SimOTA
assignment, backward + optimiser step + EMA; then one evaluation split into loading, forward,
NMS and COCOeval. Prints figures only; nothing is asserted.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import time
from collections.abc import Callable
from typing import Any

import torch

from model.coco_eval import evaluate_coco
from model.config import TrialConfig
from model.data.loader import build_train_loader
from model.optim import ModelEMA, YoloxWarmCos, build_optimizer, set_lr
from model.trainer import load_trial_data, resolve_device, seed_everything
from model.yolox import build_yolox_from_config


class Timer:
    """Accumulated seconds per phase; CUDA is synchronised so GPU work lands in its phase."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds: dict[str, float] = {}

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def add(self, phase: str, seconds: float) -> None:
        self.seconds[phase] = self.seconds.get(phase, 0.0) + seconds


def time_assignment(timer: Timer) -> Callable[[], None]:
    """Wrap the assignment the loss calls (``assign_batch``: the configured assigner and HAMBox)
    so its time is counted; returns the undo."""
    import model.yolox.loss as loss_mod

    originals: dict[str, Any] = {}
    for name in dir(loss_mod):
        fn = getattr(loss_mod, name)
        if name == "assign_batch" and callable(fn):
            originals[name] = fn

            @functools.wraps(fn)
            def timed(*args: Any, _fn: Any = fn, **kwargs: Any) -> Any:
                timer.sync()
                t = time.perf_counter()
                out = _fn(*args, **kwargs)
                timer.sync()
                timer.add("assignment", time.perf_counter() - t)
                return out

            setattr(loss_mod, name, timed)

    def undo() -> None:
        for name, fn in originals.items():
            setattr(loss_mod, name, fn)

    return undo


def bench(cfg: TrialConfig, epochs: int) -> None:
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    t0 = time.perf_counter()
    dataset = load_trial_data(cfg)
    net = build_yolox_from_config(cfg).to(device)
    loader = build_train_loader(dataset.train, cfg, device=device, progress=False)
    setup_s = time.perf_counter() - t0
    optimizer = build_optimizer(net, cfg)
    schedule = YoloxWarmCos.from_config(cfg, len(loader))
    ema = ModelEMA(net, cfg.ema_decay)
    timer = Timer(device)
    undo = time_assignment(timer)
    images = 0
    try:
        for epoch in range(epochs):
            net.train()
            loader.set_epoch(epoch)
            tick = time.perf_counter()
            for i, (x, targets) in zip(range(len(loader)), loader, strict=False):
                timer.sync()
                t1 = time.perf_counter()
                timer.add("data loading", t1 - tick)
                set_lr(optimizer, schedule(epoch * len(loader) + i))
                out = net(x, targets)
                timer.sync()
                t2 = time.perf_counter()
                timer.add("forward+loss", t2 - t1)
                optimizer.zero_grad(set_to_none=True)
                out["total_loss"].backward()
                optimizer.step()
                ema.update(net)
                timer.sync()
                tick = time.perf_counter()
                timer.add("backward+step+EMA", tick - t2)
                images += x.shape[0]
    finally:
        undo()
    train_s = sum(timer.seconds[k] for k in ("data loading", "forward+loss", "backward+step+EMA"))
    t3 = time.perf_counter()
    ev = evaluate_coco(ema.module, dataset.test_split or dataset.val_split, cfg)
    eval_s = time.perf_counter() - t3

    print(f"setup (data index, network, loader): {setup_s:.2f} s")
    print(f"training: {images} images in {train_s:.2f} s = {images / train_s:.1f} img/s "
          f"({cfg.size}, {cfg.img_size}px, batch {cfg.batch_size}, {device}, "
          f"{torch.get_num_threads()} threads, workers {cfg.workers})")
    for phase in ("data loading", "forward+loss", "assignment", "backward+step+EMA"):
        s = timer.seconds.get(phase, 0.0)
        note = "  (part of forward+loss)" if phase == "assignment" else ""
        print(f"  {phase:<20} {s:8.2f} s {100 * s / train_s:5.1f} %{note}")
    n = ev["images"]
    print(f"evaluation: {n} images in {eval_s:.2f} s = {n / eval_s:.1f} img/s, "
          f"{ev['num_detections']} detections, mAP {ev['mAP']:.4f} AP50 {ev['AP50']:.4f}")
    for key in ("load_s", "forward_s", "nms_s", "cocoeval_s"):
        print(f"  {key[:-2]:<20} {ev[key]:8.2f} s {100 * ev[key] / eval_s:5.1f} %")
    print(f"epoch: train {images / train_s:.1f} img/s, eval {n / eval_s:.1f} img/s")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="nano")
    p.add_argument("--img-size", type=int, default=320)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--data", default="", help="dataset folder; default the embedded set")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = leave)")
    p.add_argument("--max-images", type=int, default=0, help="cap the training images")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = dataclasses.replace(
        TrialConfig(), size=args.size, img_size=args.img_size, batch_size=args.batch,
        workers=args.workers, data=args.data, device=args.device, multiscale=0,
        max_train_images=args.max_images, epochs=max(args.epochs, 1), no_aug_epochs=0,
        warmup_epochs=1,
    )
    bench(cfg, args.epochs)


if __name__ == "__main__":
    main()
