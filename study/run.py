"""Run a study: ``python study/run.py --space ablation [--data PATH] [options]``.

Without ``--data`` the trials train on the embedded floating-bottle dataset with the space's quick
profile (small images, few epochs, capped images) — a first look in minutes on a CPU; with
``--data`` they use the space's own settings. ``--dry-run`` prints every planned trial (one JSON
object per line, full config) and the pretraining jobs, and starts nothing.

Outputs go to ``studies/<space>-<timestamp>/`` (or ``--out``): results.csv, report.md, plots,
best_config.yaml (see study/driver.py). Ctrl-C stops cleanly; ``--resume --out DIR`` continues
without rerunning finished trials — only in a study folder this user created (it restores Ray
Tune's pickled state; see docs/studies.md).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # `python study/run.py` (the README's); not -m, not yolox-study
    # the script's folder, study/, comes first on sys.path (and Ray copies it to its workers),
    # where train.py, report.py, … would shadow top-level modules of those names: the one place
    # that cannot be avoided without changing the README's command
    here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]

from model.config import DEVICES, add_override_argument  # noqa: E402
from study.driver import DEFAULT_TRAIN_FN, StudyArgs, main_entry, study_defaults  # noqa: E402
from study.spaces import shipped_spaces  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Ray Tune ablation / hyperparameter study of YOLOX on small floating waste."
    )
    a = p.add_argument
    shipped = ", ".join(q.stem for q in shipped_spaces())
    a(
        "--space",
        default="ablation",
        help=f"space name (search_spaces/NAME.yaml: {shipped}) or a YAML path; default ablation",
    )
    a("--data", help="dataset folder; without it: embedded dataset + the space's quick profile")
    a("--out", type=Path, help="study folder (default studies/<space>-<timestamp>)")
    a("--name", help="study name: the folder studies/NAME (when --out is not given)")
    a(
        "--address",
        help="join this running Ray cluster (its head node, e.g. 10.0.0.5:6379); with token "
        "authentication on, run with RAY_AUTH_MODE=token and the cluster's token in "
        "~/.ray/auth_token or RAY_AUTH_TOKEN",
    )
    a("--gpus-per-trial", type=float, help="GPUs per trial; fractions share a GPU (e.g. 0.25)")
    a("--cpus-per-trial", type=float, help="CPUs per trial (also the trial's torch threads)")
    a("--max-concurrent", type=int, help="at most this many trials at once")
    a(
        "--seeds",
        type=int,
        help="repeat every grid point with seeds 0..N-1 (default 1; the quick profile may set "
        "its own)",
    )
    a(
        "--full",
        action="store_true",
        help="without --data: run every grid value of the space, not only the quick profile's",
    )
    a(
        "--device",
        choices=DEVICES,
        default="auto",
        help="auto: the quick profile for CUDA when this machine has a GPU, else for CPU; cpu "
        "forces the CPU one; with --data it sets the trials' device",
    )
    add_override_argument(
        p, "override a trial-config key for every trial (repeatable); on an axis it pins it"
    )
    a(
        "--resume",
        action="store_true",
        help="continue the study in --out (or the latest one); only a study you created: it "
        "loads Ray Tune's pickled state, which can run code",
    )
    a(
        "--force",
        action="store_true",
        help="write a new study into a non-empty --out that holds no study (replacing its "
        "results.csv, report.md, best_config.yaml …)",
    )
    a(
        "--strict",
        action="store_true",
        help="stop before any trial if the data check drops, clips or fixes an image or a box",
    )
    a("--dry-run", action="store_true", help="print the planned trials as JSON lines and exit")
    a(
        "--skip-unavailable",
        action="store_true",
        help="run without the trials whose COCO weights cannot be downloaded (instead of stopping)",
    )
    a("--no-download", dest="download", action="store_false", help="never download COCO weights")
    a(
        "--dashboard-host",
        default="127.0.0.1",
        help="interface of the Ray dashboard (default 127.0.0.1, as every other Ray port of a "
        "local study). Ray >= 2.59 turns token authentication on for the local session: the "
        "dashboard asks for the token that `ray get-auth-token` prints (~/.ray/auth_token); "
        "RAY_AUTH_MODE=disabled turns it off — then anyone reaching the port can run code",
    )
    a("--cache", type=Path, help="pretraining artifact cache (default <study>/pretrain_cache)")
    a(
        "--max-failures",
        type=int,
        help="retries of a crashed trial (default: the space's); a non-finite loss, a config "
        "or a data error is never retried",
    )
    a("--searcher-seed", type=int, default=0, help="seed of the Optuna sampler")
    a(
        "--train-fn",
        default=DEFAULT_TRAIN_FN,
        metavar="MODULE:FUNCTION",
        help="training function with train_detector's signature (tests and benchmarks); "
        "MODULE may be a path/to/file.py",
    )
    # the defaults are StudyArgs's: one source for the CLI and for run_study's callers
    p.set_defaults(**study_defaults())
    return p


def main(argv: list[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    args = StudyArgs(**vars(ns))
    return main_entry(args)


if __name__ == "__main__":
    sys.exit(main())
