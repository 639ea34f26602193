"""A study folder's layout: every path, file name and trial id, the trial states, and the study's
error type. Ray-free and import-free inside ``study/``: every other module takes these from here,
so a name is spelled once and no module needs another just for a path.

::

    <study>/
      plan.json          the plan (every trial's config, the pretraining jobs, skips) — --resume
      pretraining.json   what the pretraining jobs produced: artifact paths, failures
      space.yaml         the search space as the user wrote it
      study.json         who created the study (study/running/trust.py), checked before a resume
      driver.json        the running driver (study/running/session.py)
      status.json        how Tune ended each trial (the driver's callback)
      results.csv  report.md  best_config.yaml  *.png      the study's outputs, rebuilt any time
      data_report.txt  data_report.json                      the data check of every dataset
      split.json         the validation hold-out every trial shares (which images, how chosen)
      race.json          --seeds auto: each round's added trials and the comparisons' states
      tracking.json      the trackers it logs to (TensorBoard, MLflow, W&B) — --resume keeps them
      optuna.sqlite      a sampled study's Optuna history (optuna-dashboard opens it)
      trials/<id>/       trial.json history.jsonl attempts.jsonl done.json failed.json
                         trial.log crashes.jsonl data_report.txt data_report.json
                         test_eval.npz (the test split's per-image evaluation)

The names are those of the studies written before this module existed: old folders still resume.
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path
from typing import Any


class StudyError(RuntimeError):
    """The study cannot start or go on; the message says why and what to do."""


# --- study files ------------------------------------------------------------------------------
PLAN = "plan.json"
PRETRAINING = "pretraining.json"  # job key -> artifact path or failure (study/artifacts/jobs.py)
SPACE = "space.yaml"
MANIFEST = "study.json"
DRIVER = "driver.json"
STATUS = "status.json"  # the driver's record of how Tune ended each trial
RESULTS = "results.csv"
REPORT = "report.md"
BEST_CONFIG = "best_config.yaml"
LEARNING_CURVES = "learning_curves.png"
TRIALS = "trials"
TUNE = "tune"  # Tune's experiment folder (its checkpoints: tune/<id>/checkpoint_*)

# --- trial files (under trials/<id>/) ---------------------------------------------------------
TRIAL = "trial.json"  # the full config the trial ran with
HISTORY = "history.jsonl"  # every reported evaluation
ATTEMPTS = "attempts.jsonl"  # one line per start
DONE = "done.json"  # the training function returned
FAILED = "failed.json"  # a deterministic failure: the reason (never retried)
LOG = "trial.log"  # tracebacks and the data line of the trial
CRASHES = "crashes.jsonl"  # every crash Tune saw (written by the driver's callback)
CRASH_LOG = "crashes.log"  # Ray's traceback of each crash (the driver's; the trial's: trial.log)
TEST_EVAL = "test_eval.npz"  # the test split's per-image evaluation (model/bootstrap.py)
DATA_REPORT_TXT = "data_report.txt"  # also in the study folder and a single run's folder
DATA_REPORT_JSON = "data_report.json"
RACE = "race.json"  # --seeds auto: the rounds of seeds it added, and why (study/space/racing.py)
SPLIT = "split.json"  # the study's validation hold-out: every trial validates on these images
TRACKING = "tracking.json"  # the trackers the study logs to (study/running/tracking.py)
OPTUNA_DB = "optuna.sqlite"  # a sampled study's Optuna study (study/running/searcher.py)
OPTUNA_TRIAL = "trial"  # its trials' user attribute: the Tune trial's folder under trials/
OPTUNA_SEEDS = "trials"  # … and the folders of all its seeds (--seeds N: one Optuna trial each N)
OPTUNA_LOST = "lost"  # … on a trial a killed driver left RUNNING: why it was closed as FAIL

# --- trial ids --------------------------------------------------------------------------------
PLAN_ID = "plan_id"  # the param-space key of grid studies: which planned trial to run
TRIAL_INDEX = "__trial_index__"  # set by tune.search.Repeater: the seed of a repeated sample

# --- trial states (results.csv's status column) -----------------------------------------------
FINISHED = ("done", "stopped", "error", "skipped")  # ended for good: a resume does not rerun it
RESULT_STATUSES = ("done", "stopped")  # rows whose metrics enter the tables, plots and best


def valid_metric(v: Any) -> bool:
    """A metric value the tables, plots and best config use: a number ≥ 0 (COCO's -1, "no such
    objects", a missing cell and NaN are left out)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0


def optuna_url(study_dir: str | Path) -> str:
    """The Optuna storage of a sampled study, by absolute path (``sqlite:////abs/…``): what the
    searcher writes and what ``optuna-dashboard`` and ``optuna.load_study`` open."""
    return f"sqlite:///{Path(study_dir).resolve() / OPTUNA_DB}"


def trial_dir(study_dir: str | Path, trial_id: str) -> Path:
    return Path(study_dir) / TRIALS / trial_id


def trial_dirname(trial: Any) -> str:
    """Tune trial name and folder: the planned id (grid) or ``trial-<tune id>`` (sampled)."""
    return trial.config.get(PLAN_ID) or f"trial-{trial.trial_id}"


def scratch_dir(study_dir: str | Path, trial_id: str) -> Path:
    """Node-local folder for the training function's checkpoints. Not Tune's trial folder: Tune
    uploads that to storage with every experiment snapshot (hundreds of MB per trial, copied
    again and again); Tune's own checkpoints already keep every reported last.pt."""
    study = hashlib.sha1(str(Path(study_dir).resolve()).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / "yolox-flow-trials" / f"{study}-{trial_id}"
