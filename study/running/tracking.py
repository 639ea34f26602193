"""Which trackers a study logs to (``--track``), the line that says where to look, and the Tune
callbacks that do it (study/running/trackers.py, track_mlflow.py, track_wandb.py).

* ``--track`` not given: TensorBoard when its writer (tensorboardX, which ``ray[tune]`` brings) is
  installed, else nothing;
* ``--track tensorboard,mlflow`` (or ``--track tensorboard --track mlflow``): exactly those;
  ``--track none``: none. A tracker whose package is missing stops the study before Ray starts,
  naming the ``pip install`` that fixes it.

Where each writes:

* TensorBoard: event files in each trial's folder of the Tune experiment
  (``<study>/tune/<trial>/events.out.tfevents.*``; Tune copies them there from its staging folder
  every few seconds): ``tensorboard --logdir <study>``;
* MLflow: ``$MLFLOW_TRACKING_URI`` when set, else a local store in the study folder: runs in
  ``<study>/mlflow.db`` (SQLite: MLflow 3 refuses its old ``mlruns/`` file store unless told to),
  artifacts in ``<study>/mlartifacts``; experiment named after the study, one run per trial;
* W&B: project ``$WANDB_PROJECT`` (default ``yolox-flow-study``), group = the study's name; online
  when W&B has credentials (``WANDB_API_KEY`` or ``wandb login``) or ``WANDB_MODE`` says so, else
  offline into ``<study>/wandb/`` (``wandb sync`` uploads it later). Written there directly, not
  into Tune's trial folders: Tune copies those to the study before W&B finishes a run.

Tune keeps its own CSV and JSON result files whatever is chosen. A resumed study keeps the
trackers it started with (Tune restores its callbacks with its state).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from study.files import atomic_write_json
from study.layout import TRACKING, StudyError

TRACKERS = ("tensorboard", "mlflow", "wandb")
NONE = "none"
# the package that writes for each tracker, and what installs it
WRITER = {"tensorboard": "tensorboardX", "mlflow": "mlflow", "wandb": "wandb"}
INSTALL = {
    "tensorboard": "pip install tensorboardX",
    "mlflow": "pip install 'yolox-flow-study[track]' (or mlflow-skinny)",
    "wandb": "pip install 'yolox-flow-study[track]' (or wandb)",
}
WANDB_PROJECT = "yolox-flow-study"
Log = Callable[[str], None]


def parse_track(text: str) -> list[str]:
    """``tensorboard,mlflow`` → ``["tensorboard", "mlflow"]``; an unknown name is a
    StudyError listing the known ones."""
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    for n in names:
        if n not in (*TRACKERS, NONE):
            raise StudyError(
                f"--track {text}: unknown tracker {n!r}; choose from {', '.join(TRACKERS)} "
                f"(several: comma-separated or --track again), or {NONE}"
            )
    if not names:
        raise StudyError(f"--track: name a tracker ({', '.join(TRACKERS)}) or {NONE}")
    return names


def installed(tracker: str) -> bool:
    return importlib.util.find_spec(WRITER[tracker]) is not None


def chosen_trackers(track: Sequence[str]) -> tuple[str, ...]:
    """The trackers of the ``--track`` values (each may hold several, comma-separated): the
    default without any, none with ``none``; a chosen tracker that is not installed is a
    StudyError naming the install."""
    names = [n for text in track for n in parse_track(text)]
    if NONE in names:
        if len(set(names)) > 1:
            raise StudyError(f"--track {NONE} cannot be combined with a tracker ({names})")
        return ()
    if not names:
        return ("tensorboard",) if installed("tensorboard") else ()
    missing = [n for n in dict.fromkeys(names) if not installed(n)]
    if missing:
        fixes = "; ".join(f"{n}: {INSTALL[n]}" for n in missing)
        raise StudyError(
            f"--track {','.join(missing)}: {WRITER[missing[0]]} is not installed ({fixes}); "
            "or drop it from --track"
        )
    return tuple(dict.fromkeys(names))


def mlflow_uri(study_dir: Path) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{study_dir.resolve()}/mlflow.db"


def mlflow_artifacts(study_dir: Path) -> str | None:
    """The artifact folder of the study's own store (None: the tracking server decides)."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return None
    return (study_dir.resolve() / "mlartifacts").as_uri()


def wandb_mode() -> str:
    """``online`` when W&B can log in (or ``WANDB_MODE`` says so), else ``offline``."""
    mode = os.environ.get("WANDB_MODE", "").strip().lower()
    if mode in ("online", "offline", "disabled"):
        return mode
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return "online" if "api.wandb.ai" in netrc.read_text() else "offline"
    except OSError:
        return "offline"


def describe(
    trackers: Sequence[str], study_dir: Path, storage_uri: str | None = None
) -> list[str]:
    """The lines printed when the study starts: where each tracker writes and how to open it.
    ``storage_uri``: the study's remote storage (``--storage``), where Tune's trial folders and
    so the TensorBoard event files live."""
    study = study_dir.resolve()
    lines = []
    if "tensorboard" in trackers:
        viewer = "" if importlib.util.find_spec("tensorboard") else (
            " (the viewer: pip install tensorboard)"
        )
        if storage_uri is None:
            lines.append(f"TensorBoard: tensorboard --logdir {study}{viewer}")
        else:  # TensorBoard reads s3:// itself (boto3); other stores: copy the folder down
            lines.append(f"TensorBoard: tensorboard --logdir {storage_uri}{viewer} (event "
                         "files in the storage's trial folders; for gs:// copy it down first)")
    if "mlflow" in trackers:
        uri = mlflow_uri(study)
        lines.append(
            f"MLflow: experiment {study.name} in {uri}; open it with mlflow ui "
            f"--backend-store-uri {uri}"
        )
    if "wandb" in trackers:
        project = os.environ.get("WANDB_PROJECT") or WANDB_PROJECT
        mode = wandb_mode()
        where = (
            f"offline into {study}/wandb/ (upload later: wandb sync "
            f"{study}/wandb/offline-run-*)" if mode == "offline" else mode
        )
        lines.append(f"W&B: project {project}, group {study.name}, {where}")
    if not trackers:
        lines.append(
            "tracking: none (TensorBoard needs tensorboardX; --track mlflow or wandb with "
            "their packages)"
        )
    return lines


def start(args: Any, study_dir: Path, log: Log) -> Any:
    """The study's trackers, checked before Ray starts, and the lines saying where to look;
    returns ``args`` with ``track`` set to them (``["none"]`` for none). A resumed study keeps
    the trackers it started with (``tracking.json``): Tune restores its callbacks."""
    recorded = _recorded(study_dir) if args.resume else None
    if recorded is not None:
        if args.track and chosen_trackers(args.track) != recorded:
            raise StudyError(
                f"--resume keeps the trackers {study_dir} started with "
                f"({', '.join(recorded) or NONE}); drop --track"
            )
        trackers = recorded
    else:
        trackers = chosen_trackers(args.track)
    from study.running.storage import storage_of

    storage = storage_of(study_dir, args.storage)
    for line in describe(trackers, study_dir, None if storage.local else storage.uri):
        log(line)
    return dataclasses.replace(args, track=list(trackers) or [NONE])


def _recorded(study_dir: Path) -> tuple[str, ...] | None:
    try:
        names = json.loads((study_dir / TRACKING).read_text())["trackers"]
    except (OSError, ValueError, KeyError, TypeError):
        return None  # (a study from before --track)
    return tuple(n for n in names if n in TRACKERS)


def tracking_callbacks(trackers: Sequence[str], study_dir: Path) -> list[Any]:
    """Tune callbacks for ``trackers`` (``none`` among them: no tracker), with Tune's CSV and
    JSON loggers, which a study always keeps. Tune adds its TensorBoard logger by itself unless
    told not to: it is turned off here, so that a study has TensorBoard files exactly when it
    tracks with TensorBoard. The first call records the trackers in ``tracking.json``."""
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"  # read by Tuner.fit, in this process
    study = study_dir.resolve()
    if not (study / TRACKING).is_file():
        atomic_write_json(study / TRACKING, {"trackers": [t for t in trackers if t != NONE]})
    out: list[Any] = [CSVLoggerCallback(), JsonLoggerCallback()]
    if "tensorboard" in trackers:
        from study.running.trackers import StudyTensorBoard

        out.append(StudyTensorBoard())
    if "mlflow" in trackers:
        from study.running.track_mlflow import StudyMLflow

        out.append(
            StudyMLflow(
                tracking_uri=mlflow_uri(study), experiment_name=study.name,
                tags={"study": study.name, "study_dir": str(study)},
                artifact_location=mlflow_artifacts(study),
            )
        )
    if "wandb" in trackers:
        from study.running.track_wandb import StudyWandb

        project = os.environ.get("WANDB_PROJECT") or WANDB_PROJECT
        out.append(
            StudyWandb(
                project=project, group=study.name, mode=wandb_mode(), dir=str(study),
                settings={"silent": True},  # its per-run summary would drown the progress lines
            )
        )
    return out

