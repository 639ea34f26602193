"""Pretrain a backbone once: ``python -m study.cli.pretrain --method center_loss|ssl --size SIZE``.

Writes the artifact ``<method>-<size>-<key>.pt`` (plus a ``.json`` with its settings and figures)
into ``--out`` (default ``runs/pretrain``), named by the same key as the study's artifact cache,
so ``--out`` can be a study's ``pretrain_cache/`` and an artifact already there is reused (unless
``--force``). Without ``--data`` it uses the embedded floating-bottle set. Prints the figures
(center loss: held-out foreground/background ``accuracy``; ssl: loss and held-out triplet
accuracy) and a one-line summary. Use the artifact in a trial with
``--set pretrain=<method> --set pretrain_artifact=PATH``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

from model.config import (
    DEVICES,
    PRETRAIN_METHODS,
    SIZE_NAMES,
    TrialConfig,
    add_override_argument,
)
from model.pretraining import load_artifact, run_pretraining
from study import cli
from study.artifacts.cache import ArtifactCache
from study.artifacts.coco_weights import prepare_coco_weights


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Pretrain a YOLOX backbone (center loss or SSL).")
    p.add_argument("--method", required=True, choices=PRETRAIN_METHODS)
    p.add_argument("--size", required=True, choices=SIZE_NAMES)
    p.add_argument("--config", type=Path, help="trial config YAML (defaults for missing keys)")
    p.add_argument("--data", help="dataset folder (default: the embedded floating-bottle set)")
    p.add_argument("--out", type=Path, default=Path("runs/pretrain"), help="artifact folder")
    p.add_argument("--epochs", type=int, help="pretraining epochs (key pretrain_epochs)")
    add_override_argument(p, "override one config key (repeatable), e.g. --set crop_size=96")
    p.add_argument(
        "--unlabeled",
        action="append",
        default=[],
        metavar="PATH",
        help="ssl: an extra video or image folder (repeatable; key ssl_sources)",
    )
    p.add_argument("--device", choices=DEVICES, help="overrides the config")
    p.add_argument("--force", action="store_true", help="recompute even if the artifact exists")
    p.add_argument("--no-download", action="store_true", help="never download COCO weights")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def resolve_config(args: argparse.Namespace) -> TrialConfig:
    """The config file, then ``--set``, then the dedicated flags (which win)."""
    unlabeled = [str(Path(u).resolve()) for u in args.unlabeled or ()]
    return cli.resolve_config(
        args.config,
        args.overrides,
        pretrain=args.method,
        size=args.size,
        pretrain_epochs=args.epochs,
        data=args.data,
        ssl_sources=os.pathsep.join(unlabeled) if unlabeled else None,
        device=args.device,
    )


def figures(method: str, m: dict[str, float]) -> list[str]:
    """Human lines for an artifact's metrics."""
    if method == "center_loss":
        return [
            f"accuracy {m['accuracy']:.4f} (foreground {m['fg_accuracy']:.4f}, background "
            f"{m['bg_accuracy']:.4f}) on {int(m['n_held_out'])} held-out crops of "
            f"{int(m['n_crops'])}",
            f"final loss {m['loss']:.4f} (cross-entropy {m['ce_loss']:.4f}, center "
            f"{m['center_loss']:.4f})",
        ]
    return [
        f"final loss {m['loss']:.4f}",
        f"held-out triplet accuracy {m['triplet_accuracy']:.4f} (before training "
        f"{m['triplet_accuracy_init']:.4f}), cosine gap {m['cos_gap']:.4f} (before "
        f"{m['cos_gap_init']:.4f}) on {int(m['n_frames'])} frames",
    ]


def run(args: argparse.Namespace) -> int:
    cfg = resolve_config(args)
    if args.threads > 0:  # in the config, which pretraining runs on (model/threads.py)
        cfg = dataclasses.replace(cfg, threads=args.threads)
    cache = ArtifactCache(args.out)
    prepare_coco_weights([cfg], download=not args.no_download, cache=cache)
    start = time.perf_counter()
    path = cache.path(cfg)
    reused = path.is_file() and not args.force
    if args.force:
        run_pretraining(cfg, path, progress=not args.quiet)
    else:
        path = cache.get_or_create(cfg, progress=not args.quiet)
    art = load_artifact(path, size=cfg.size)
    m = art["metrics"]
    for line in figures(cfg.pretrain, m):
        print(line)
    head = m["accuracy"] if cfg.pretrain == "center_loss" else m["triplet_accuracy"]
    what = "accuracy" if cfg.pretrain == "center_loss" else "triplet accuracy"
    took = "reused" if reused else f"{time.perf_counter() - start:.1f} s"
    print(
        f"pretrain: {cfg.pretrain} YOLOX-{cfg.size} {cfg.pretrain_epochs} epochs from "
        f"{cfg.pretrain_init}: {what} {head:.4f}, {len(art['backbone'])} backbone tensors, "
        f"{took} -> {path}"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return cli.run_command("pretrain", lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
