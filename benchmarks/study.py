"""Driver overhead and packing of a study: how much of the machine goes to the trials.

Runs a grid study through ``study.running.driver.run_study`` on a local Ray with a stand-in training
function that keeps one CPU busy for a fixed time and reports like ``train_detector`` (an
evaluation + checkpoint per epoch), or with ``--real`` the real training function on the smoke
space. Prints, for the Tune phase (Ray already up) and end to end:

* overhead per trial = (wall × slots − Σ trial time) / trials — slot-seconds the driver, Tune and
  the per-trial files cost, per trial (the target: under 5% of a trial);
* packing = Σ trial time / (wall × slots) — how full the trial slots were (target: above 0.9).

A trial's own time is measured inside the training function (its start to its return).

    python benchmarks/study.py                       # 8 trials of 20 s on 2 slots
    python benchmarks/study.py --trials 12 --trial-s 45 --epochs 3
    python benchmarks/study.py --real                # the smoke space, real training
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# This file is benchmarks/study.py: its folder must not shadow the `study` package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from model.coco_eval import TEST_METRICS, VAL_METRICS  # noqa: E402
from model.config import TrialConfig  # noqa: E402


def busy_train(
    cfg: TrialConfig,
    report: Any = None,
    checkpoint_dir: str | None = None,
    *,
    resume: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Stand-in trial: ``cfg.epochs`` epochs of ``cfg.lr`` seconds of busy CPU each (the lr key
    carries the duration so no config key has to be added), a checkpoint and a report each."""
    t0 = time.perf_counter()
    ckpt = Path(checkpoint_dir) if checkpoint_dir else None
    for epoch in range(cfg.epochs):
        end = time.perf_counter() + cfg.lr
        x = 0
        while time.perf_counter() < end:
            x += 1
        path = None
        if ckpt is not None:
            ckpt.mkdir(parents=True, exist_ok=True)
            (ckpt / "last.pt").write_bytes(b"\0" * 1_000_000)  # 1 MB, like a small checkpoint
            path = str(ckpt / "last.pt")
        if report is not None:
            coco = dict.fromkeys(VAL_METRICS, 0.1 * (epoch + 1))
            report({"epoch": epoch + 1, "total_loss": 1.0, **coco}, path)
    own = time.perf_counter() - t0
    return {
        **dict.fromkeys(VAL_METRICS, 0.1), **dict.fromkeys(TEST_METRICS, 0.1),
        "own_time_s": own, "train_time_s": own,
    }


def own_times(study_dir: Path) -> list[float]:
    """Each trial's own time: ``own_time_s`` (stand-in) or call-to-return from the attempts and
    done.json timestamps (real training)."""
    out = []
    for done in sorted((study_dir / "trials").glob("*/done.json")):
        rec = json.loads(done.read_text())
        if "own_time_s" in rec["summary"]:
            out.append(float(rec["summary"]["own_time_s"]))
        else:
            start = json.loads((done.parent / "attempts.jsonl").read_text().splitlines()[0])
            out.append(done.stat().st_mtime - float(start["time"]))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--trial-s", type=float, default=20.0, help="busy seconds per trial")
    p.add_argument("--epochs", type=int, default=4, help="reports (with checkpoints) per trial")
    p.add_argument("--slots", type=int, default=os.cpu_count() or 2, help="CPUs given to Ray")
    p.add_argument("--real", action="store_true", help="the smoke space with real training")
    args = p.parse_args()

    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    import ray

    from study.running.driver import StudyArgs, run_study

    t0 = time.time()
    ray.init(num_cpus=args.slots, include_dashboard=False, logging_level=logging.WARNING)
    ray_s = time.time() - t0
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        if args.real:
            space, data, train_fn = "smoke", None, None
        else:
            space = str(tmp_path / "bench.yaml")
            Path(space).write_text(
                f"fixed: {{epochs: {args.epochs}, no_aug_epochs: 0, warmup_epochs: 0, "
                f"lr: {args.trial_s / args.epochs}, workers: 0}}\n"
                f"grid: {{seed: {list(range(args.trials))}}}\nresources: {{cpus: 1}}\n"
            )
            data, train_fn = tmp, busy_train
        marks: list[tuple[float, str]] = []
        t1 = time.time()
        args_ = StudyArgs(space=space, data=data, out=tmp_path / "study")
        out = run_study(args_, train_fn=train_fn, log=lambda s: marks.append((time.time(), s)))
        wall = time.time() - t1
        start = next(t for t, s in marks if s.startswith("running "))
        end = next(t for t, s in marks if s.startswith("Tune phase ended"))
        own = own_times(out.study_dir)
    ray.shutdown()
    n, total = len(own), sum(own)
    slots = min(args.slots, n)
    mean = total / max(n, 1)
    print(
        f"trials: {n} on {slots} slots, mean own time {mean:.1f} s; Ray start {ray_s:.1f} s, "
        f"planning {start - t1:.1f} s, outputs {t1 + wall - end:.1f} s"
    )
    phases = (("Tune phase", end - start), ("study (Ray up)", wall), ("end to end", wall + ray_s))
    for label, w in phases:
        overhead = (w * slots - total) / max(n, 1)
        share = 100 * overhead / mean
        print(
            f"{label:15s} wall {w:6.1f} s  overhead/trial {overhead:5.2f} s "
            f"({share:4.1f}% of a trial)  packing {total / (w * slots):.3f}"
        )
    sys.exit(out.exit_code)


if __name__ == "__main__":
    main()
