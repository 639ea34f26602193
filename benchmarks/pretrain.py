"""Time each pretraining method on the embedded data: ``python benchmarks/pretrain.py``.

Runs center loss (and its cross-entropy-only ablation) and SSL (cosine and InfoNCE) once each
with the config defaults (or ``--set`` overrides), in a temporary folder, and prints seconds in
all, seconds per epoch and the headline figure. Nothing is cached: every method really runs.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from model.config import TrialConfig, add_override_argument, config_from_dict, parse_override
from model.pretraining import run_pretraining
from model.pretraining.sources import data_dir

VARIANTS: dict[str, dict[str, object]] = {
    "center_loss": {"pretrain": "center_loss"},
    "center_loss (CE only)": {"pretrain": "center_loss", "center_loss_weight": 0.0},
    "ssl cosine": {"pretrain": "ssl", "ssl_loss": "cosine"},
    "ssl infonce": {"pretrain": "ssl", "ssl_loss": "infonce"},
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="nano")
    p.add_argument("--epochs", type=int, help="pretrain_epochs (default: the config's)")
    add_override_argument(p, "override a config key (repeatable), e.g. --set crop_size=96")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--only", choices=list(VARIANTS), action="append", help="run only these")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    base = dict(parse_override(o) for o in args.overrides)
    base.update(size=args.size, device=base.get("device", "cpu"))
    if args.epochs:
        base["pretrain_epochs"] = args.epochs
    data_dir(TrialConfig())  # generate the embedded set first, outside the timings
    device = "cuda" if torch.cuda.is_available() and base["device"] != "cpu" else "cpu"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), device {device}")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.only or list(VARIANTS):
            cfg = config_from_dict({**base, **VARIANTS[name]}, source="benchmark")
            start = time.perf_counter()
            m = run_pretraining(cfg, Path(tmp) / "a.pt", progress=False)
            took = time.perf_counter() - start
            figure = (
                f"accuracy {m['accuracy']:.4f}"
                if cfg.pretrain == "center_loss"
                else f"triplet accuracy {m['triplet_accuracy']:.4f} (init "
                f"{m['triplet_accuracy_init']:.4f}), loss {m['loss']:.4f}"
            )
            print(
                f"{name:22s} YOLOX-{cfg.size} {cfg.pretrain_epochs:3d} epochs: {took:7.1f} s "
                f"({took / cfg.pretrain_epochs:6.1f} s/epoch)  {figure}",
                flush=True,
            )


if __name__ == "__main__":
    main()
