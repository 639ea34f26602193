"""Per-epoch figures of finished (or stopped) training runs, read from their checkpoints.

    python benchmarks/learning_curves.py runs/a runs/b --metric AP50 --plot curves.png
    python benchmarks/learning_curves.py "centre crop=runs/centre" "official warp=runs/official"

Each argument is a run folder (its ``last.pt`` holds the evaluation history), optionally
``label=folder``. Prints one row per run: the metric at every evaluated epoch, the training
seconds to the first epoch at or above ``--target`` and the images/s; ``--plot`` also draws the
curves (the README's learnability figure is made this way).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

# benchmarks/study.py sits next to this file: this folder must not shadow the `study` package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from model.checkpoint import load_checkpoint  # noqa: E402


def read_history(folder: Path) -> list[dict[str, Any]]:
    last = folder / "last.pt"
    if not last.is_file():
        raise SystemExit(f"{folder}: no last.pt (not a training run folder?)")
    return list(load_checkpoint(last).get("history", []))


def first_reaching(history: list[dict[str, Any]], metric: str, target: float) -> dict | None:
    return next((h for h in history if h.get(metric, -1.0) >= target), None)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="run folders, optionally label=folder")
    p.add_argument("--metric", default="AP50")
    p.add_argument("--target", type=float, default=0.5, help="report when the metric reaches it")
    p.add_argument("--plot", type=Path, help="also write the curves to this PNG")
    p.add_argument("--x", choices=["epoch", "train_time_s"], default="epoch",
                   help="the plot's x axis: epochs, or training time (minutes)")
    args = p.parse_args()

    histories: dict[str, list[dict[str, Any]]] = {}
    for arg in args.runs:
        label, _, folder = arg.rpartition("=")
        path = Path(folder)
        histories[label or path.name] = read_history(path)
    for label, hist in histories.items():
        points = " ".join(f"{h['epoch']}:{h[args.metric]:.3f}" for h in hist if args.metric in h)
        hit = first_reaching(hist, args.metric, args.target)
        speed = hist[-1]["images_per_s"] if hist and "images_per_s" in hist[-1] else None
        when = (
            f"{args.metric} >= {args.target} at epoch {hit['epoch']} after "
            f"{hit['train_time_s']:.0f} s of training"
            if hit
            else f"never reaches {args.target}"
        )
        rate = f", {speed:.1f} img/s" if speed else ""
        print(f"{label}: {points}\n  {when}{rate}")
    if args.plot:
        from study.outputs.plots import plot_learning_curves

        written = plot_learning_curves(histories, args.metric, args.plot, x=args.x)
        print(f"plot: {written}" if written else f"plot: no {args.metric} values to draw")
    peaks = [(max(h.get(args.metric, -1.0) for h in v), k) for k, v in histories.items() if v]
    if peaks:
        value, label = max(peaks)
        print(f"learning_curves: {len(histories)} runs; best {args.metric} {value:.3f} ({label})")


if __name__ == "__main__":
    main()
