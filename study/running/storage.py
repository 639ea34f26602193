"""Where a study keeps what every node must reach: its storage (issue 24).

On one machine the storage is the study folder itself, exactly as before: trials write their
records into ``trials/<id>/`` and Tune keeps its experiments (``tune/``…) next to them. On a
cluster without a shared filesystem — cloud VMs from ``ray up``, KubeRay — it is a URI every node
can reach: ``--storage s3://bucket/prefix`` (or ``gs://…``, or a path every node mounts), and the
study lives under ``<storage>/<study name>/``:

* ``tune/``, ``tune-r1/``… — Ray Tune's experiments: its state and every trial's checkpoints
  (``RunConfig(storage_path=…)``);
* ``trials/<id>/`` — what a trial records (``trial.json``, ``history.jsonl``, ``attempts.jsonl``,
  ``done.json`` / ``failed.json``, ``trial.log``, its data report, ``test_eval.npz``): the trial
  writes them into a node-local folder and pushes each change here (:class:`TrialRecords`); the
  driver pulls them into its own study folder (:meth:`Storage.pull_trial`) as results arrive —
  so nothing a trial produces is written by the trial into the driver's folder;
* ``pretrain_cache/`` — the pretraining artifacts, published once by the driver; a trial on a
  node that lacks one fetches it (:meth:`Storage.fetch_artifact`);
* the driver's own state (``plan.json``, ``space.yaml``, ``pretraining.json``, ``race.json``,
  ``split.json``, ``status.json``, ``study.json``, the data reports), pushed as it is written, so
  that ``--resume --storage URI --out DIR`` continues from storage alone (a new machine, an empty
  folder: :meth:`Storage.pull_study`).

pyarrow's filesystems do the work (S3 with ``AWS_*`` variables and ``AWS_ENDPOINT_URL`` for an
S3-compatible server; GCS where pyarrow is built with it), as Ray Tune's own storage does.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from study.layout import BEST_CONFIG, REPORT, RESULTS, StudyError, trial_dir

STORAGE_FILE = "storage.json"  # in the study folder: the storage URI of a study on a cluster
OUTPUT_FILES = (RESULTS, REPORT, BEST_CONFIG)
DRIVER_FILES = (  # the driver's state that a resume from storage alone needs
    "plan.json", "space.yaml", "pretraining.json", "race.json", "split.json", "status.json",
    "study.json", "data_report.txt", "data_report.json", STORAGE_FILE,
)
ARTIFACTS = "pretrain_cache"
TUNER_STATE = "tuner.pkl"  # what Tune's Tuner.__init__ writes and Tuner.restore unpickles first


def is_uri(text: str) -> bool:
    return "://" in text and not text.startswith("file://")


@dataclass
class Storage:
    """The study's storage: ``uri`` (a local path or a URI) of the study's own folder there."""

    uri: str
    study_dir: Path  # the driver's study folder (outputs, and a mirror of the records)
    _fs: Any = field(default=None, repr=False)
    _root: str = field(default="", repr=False)

    def __getstate__(self) -> dict[str, Any]:
        """Pickled without its filesystem (Tune pickles the callback that holds one)."""
        return {**self.__dict__, "_fs": None, "_root": ""}

    @classmethod
    def for_study(cls, study_dir: Path, storage: str | None) -> Storage:
        """``--storage`` None: the study folder itself; else ``<storage>/<study name>``."""
        study_dir = Path(study_dir).resolve()
        if storage is None:
            return cls(str(study_dir), study_dir)
        base = storage.rstrip("/")
        if not is_uri(base):
            base = str(Path(base).expanduser().resolve())
        return cls(f"{base}/{study_dir.name}", study_dir)

    @property
    def local(self) -> bool:
        """The storage is the study folder itself (one machine): nothing to push or pull."""
        return not is_uri(self.uri) and Path(self.uri) == self.study_dir

    def _filesystem(self) -> tuple[Any, str]:
        if self._fs is None:
            import pyarrow.fs

            try:
                self._fs, self._root = pyarrow.fs.FileSystem.from_uri(self.uri)
            except Exception as e:  # noqa: BLE001  (pyarrow raises bare ArrowInvalid/OSError)
                raise StudyError(
                    f"--storage {self.uri}: cannot open it ({e}); give s3://bucket/prefix (with "
                    "AWS_* credentials and AWS_ENDPOINT_URL for an S3-compatible server), "
                    "gs://bucket/prefix, or a path every node mounts"
                ) from e
        return self._fs, self._root

    @property
    def tune_path(self) -> str:
        """Ray Tune's ``storage_path``: the experiments go to ``<this>/<experiment>``."""
        return self.uri

    # --- files -----------------------------------------------------------------------------

    def _path(self, rel: str) -> str:
        return f"{self._filesystem()[1].rstrip('/')}/{rel}"

    def exists(self, rel: str) -> bool:
        import pyarrow.fs

        fs, _ = self._filesystem()
        return fs.get_file_info(self._path(rel)).type != pyarrow.fs.FileType.NotFound

    def read_bytes(self, rel: str) -> bytes | None:
        if not self.exists(rel):
            return None
        fs, _ = self._filesystem()
        with fs.open_input_stream(self._path(rel)) as f:
            return f.read()

    def write_bytes(self, rel: str, data: bytes) -> None:
        """Whole-object write: an S3 put is atomic; a local file is written then renamed."""
        fs, _ = self._filesystem()
        target = self._path(rel)
        fs.create_dir(target.rsplit("/", 1)[0], recursive=True)
        tmp = target if is_uri(self.uri) else f"{target}.tmp{hashlib.sha1(data).hexdigest()[:8]}"
        with fs.open_output_stream(tmp) as f:
            f.write(data)
        if tmp != target:
            fs.move(tmp, target)

    def remove(self, rel: str) -> None:
        """Delete the folder ``rel`` and everything under it (nothing if absent)."""
        fs, _ = self._filesystem()
        if self.exists(rel):
            fs.delete_dir(self._path(rel))

    def listing(self, rel: str) -> dict[str, tuple[int, float]]:
        """file path under ``rel`` (relative to it) -> (size, mtime), recursively."""
        import pyarrow.fs

        fs, _ = self._filesystem()
        base = self._path(rel).rstrip("/")
        try:
            infos = fs.get_file_info(pyarrow.fs.FileSelector(base, recursive=True))
        except (FileNotFoundError, OSError):
            return {}
        out = {}
        for info in infos:
            if info.type == pyarrow.fs.FileType.File:
                mtime = info.mtime.timestamp() if info.mtime is not None else 0.0
                out[info.path[len(base) + 1:]] = (int(info.size or 0), mtime)
        return out

    def children(self, rel: str = "") -> dict[str, bool]:
        """The entries directly under ``rel`` (the storage's top when empty): name -> whether
        it is a folder."""
        import pyarrow.fs

        fs, _ = self._filesystem()
        base = (self._path(rel) if rel else self._filesystem()[1]).rstrip("/")
        try:
            infos = fs.get_file_info(pyarrow.fs.FileSelector(base, allow_not_found=True))
        except (FileNotFoundError, OSError):
            return {}
        return {
            info.path.rstrip("/").rsplit("/", 1)[-1]: info.type == pyarrow.fs.FileType.Directory
            for info in infos
        }

    # --- the driver ------------------------------------------------------------------------

    def push_driver_files(self) -> None:
        """The driver's state files, as they are now, to storage (a resume needs them)."""
        if self.local:
            return
        for name in DRIVER_FILES:
            path = self.study_dir / name
            if path.is_file():
                self.write_bytes(name, path.read_bytes())

    def push_outputs(self) -> None:
        """The study's outputs (results.csv, report.md, best_config.yaml, the plots) beside its
        trials in storage: a driver whose disk goes away (a pod, a SLURM node) loses nothing."""
        if self.local:
            return
        for path in sorted(self.study_dir.iterdir()):
            if path.is_file() and (path.name in OUTPUT_FILES or path.suffix == ".png"):
                self.write_bytes(path.name, path.read_bytes())

    def pull_study(self) -> None:
        """A study folder rebuilt from storage: the driver's state and every trial's records
        (``--resume`` on a machine whose folder is gone)."""
        if self.local:
            return
        self.study_dir.mkdir(parents=True, exist_ok=True)
        for name in DRIVER_FILES:
            data = self.read_bytes(name)
            if data is not None and not (self.study_dir / name).is_file():
                (self.study_dir / name).write_bytes(data)
        for tid in {p.split("/", 1)[0] for p in self.listing("trials")}:
            self.pull_trial(tid)

    def pull_trial(self, tid: str) -> None:
        """``trials/<tid>/`` from storage into the driver's folder: the files that changed."""
        if self.local:
            return
        _pull(self, f"trials/{tid}", trial_dir(self.study_dir, tid))

    def push_trial_files(self, tid: str, names: Sequence[str]) -> None:
        """The driver's own files of a trial (its crash records) to storage, where a resume
        from storage alone finds them with the trial's records."""
        if self.local:
            return
        for name in names:
            path = trial_dir(self.study_dir, tid) / name
            if path.is_file():
                self.write_bytes(f"trials/{tid}/{name}", path.read_bytes())

    def publish_artifact(self, path: Path) -> None:
        """A pretraining artifact (and its settings sidecar) where every node can fetch it."""
        if self.local and path.resolve().parent == self.study_dir / ARTIFACTS:
            return  # already there
        for f in (path, path.with_suffix(".json")):
            if f.is_file() and not self.exists(f"{ARTIFACTS}/{f.name}"):
                self.write_bytes(f"{ARTIFACTS}/{f.name}", f.read_bytes())

    def fetch_artifact(self, path: str) -> str:
        """``path`` when this node has it, else its copy fetched from storage into a node-local
        cache (the artifact the driver published under the same file name)."""
        if Path(path).is_file():
            return path
        local = Path(tempfile.gettempdir()) / "yolox-flow-artifacts" / _tag(self.uri)
        target = local / Path(path).name
        if not target.is_file():
            data = self.read_bytes(f"{ARTIFACTS}/{Path(path).name}")
            if data is None:
                raise StudyError(
                    f"pretraining artifact {path} is on neither this node nor the study's "
                    f"storage {self.uri}/{ARTIFACTS}; resume the study on the driver that made it"
                )
            local.mkdir(parents=True, exist_ok=True)
            tmp = target.with_suffix(".tmp")
            tmp.write_bytes(data)
            tmp.replace(target)
        return str(target)

    def save_uri(self) -> None:
        """``storage.json`` in the study folder: where a later ``--resume`` finds the storage."""
        if not self.local:
            (self.study_dir / STORAGE_FILE).write_text(json.dumps({"uri": self.uri}) + "\n")


def storage_of(study_dir: Path, storage: str | None) -> Storage:
    """The study's storage: ``--storage`` when given, else the URI its folder recorded, else
    the folder itself."""
    if storage is None:
        recorded = Path(study_dir) / STORAGE_FILE
        if recorded.is_file():
            uri = json.loads(recorded.read_text())["uri"]
            return Storage(uri, Path(study_dir).resolve())
    return Storage.for_study(Path(study_dir), storage)


def restorable(storage: Storage, experiment: str) -> bool:
    """Tune can restore ``<storage>/<experiment>`` (it holds ``tuner.pkl``) and its newest
    experiment state holds a trial: a study stopped between writing a round's first state and
    adding its trials left none, and Tune cannot restore that (its ``_restore_trials`` indexes
    the first trial) — that round starts afresh instead (its folder is removed unread). Read
    as plain JSON: nothing here unpickles."""
    if not storage.exists(f"{experiment}/{TUNER_STATE}"):
        return False
    names = sorted(
        (mtime, name) for name, (_, mtime) in storage.listing(experiment).items()
        if "/" not in name and name.startswith("experiment_state-") and name.endswith(".json")
    )
    if not names:
        return False
    state = storage.read_bytes(f"{experiment}/{names[-1][1]}") or b"{}"
    try:
        return bool(json.loads(state).get("trial_data"))
    except ValueError:
        return False


def _tag(uri: str) -> str:
    return hashlib.sha1(uri.encode()).hexdigest()[:12]


def _pull(storage: Storage, rel: str, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for name, (size, _mtime) in storage.listing(rel).items():
        target = dest / name
        if target.is_file() and target.stat().st_size == size and not name.endswith(".jsonl") \
                and not name.endswith(".json"):
            continue  # (binary files that did not change: not fetched again)
        data = storage.read_bytes(f"{rel}/{name}")
        if data is None:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".pull")
        tmp.write_bytes(data)
        tmp.replace(target)


class TrialRecords:
    """A trial's record folder, ``out``: the study folder's ``trials/<id>/`` on one machine;
    with remote storage a node-local folder, pulled from storage when the trial starts (a retry
    on another node continues the same records) and pushed after every change (:meth:`push`)."""

    def __init__(self, storage: Storage, tid: str) -> None:
        self.storage, self.tid = storage, tid
        if storage.local:
            self.out = trial_dir(storage.study_dir, tid)
        else:
            self.out = (Path(tempfile.gettempdir()) / "yolox-flow-records" / _tag(storage.uri)
                        / tid)
            shutil.rmtree(self.out, ignore_errors=True)
            _pull(storage, f"trials/{tid}", self.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self._pushed: dict[str, tuple[int, int]] = {}

    def push(self) -> None:
        """Every file of the folder that changed since the last push, to storage."""
        if self.storage.local:
            return
        for f in sorted(self.out.rglob("*")):
            if not f.is_file() or f.name.endswith((".tmp", ".pull")):
                continue
            rel = f.relative_to(self.out).as_posix()
            stat = f.stat()
            mark = (stat.st_size, stat.st_mtime_ns)
            if self._pushed.get(rel) != mark:
                self.storage.write_bytes(f"trials/{self.tid}/{rel}", f.read_bytes())
                self._pushed[rel] = mark
