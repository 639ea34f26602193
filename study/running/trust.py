"""Which study folders ``--resume`` may load: only those this user's own study/run.py created,
in the place it created them, holding the Tune state its driver wrote.

``--resume`` restores Ray Tune's state — ``tune/tuner.pkl``, the experiment and searcher state —
with (cloud)pickle, and unpickling runs whatever code the file holds. A study folder from
someone else (a download, a colleague's share, a folder others can write to) would run their
code as you; so would a copy of your own folder whose pickles someone rewrote. So:

* creating a study writes ``study.json`` (a random study id, who and where) and registers the id
  in this user's own state folder (``$XDG_STATE_HOME/yolox-flow-study/studies/<id>.json``,
  default ``~/.local/state/…``), outside every study folder. The entry binds the id to
  - the folder's real path (``Path.resolve()``) when Tune's state lives in the folder (the
    default storage): a copy or a moved folder is not the registered one;
  - the storage URI when it lives elsewhere (``--storage``): Tune's state is then read from the
    storage, and the local folder holds only JSON records that ``--resume --storage URI --out
    DIR`` may rebuild anywhere (study/running/storage.py), so the storage is bound, the folder's
    place is not;
  - the sha256 of each file of Tune's state: in every experiment (``tune/``, ``tune-r1/`` …) each
    top-level ``*.json`` / ``*.pkl`` file not starting with ``.`` — what Tune's restore reads:
    ``tuner.pkl``, ``experiment_state-*.json`` (its trials embed cloudpickled fields), and the
    cloudpickled ``searcher-state-*.pkl``, ``search_gen_state-*.json``,
    ``basic-variant-state-*.json``, ``callback-states-*.pkl`` (``sync_down_experiment_state``
    copies exactly those suffixes; no loader's pattern matches Tune's hidden temporary files).
* When the digests are taken. Tune writes ``tuner.pkl`` once, when the Tuner is built, and
  rewrites the rest at every experiment checkpoint while it runs — into its staging folder, then
  copied to the storage in the background. The driver appends to ``<id>.tune.jsonl`` the digest
  of (1) ``tuner.pkl`` right after it built the Tuner and (2) the staged files at every
  experiment checkpoint, from ``StudyCallback.get_state``, which Tune calls right after writing
  them and before the copy starts (``TuneController.save_to_dir``; the final checkpoint after
  ``fit`` included). (3) When a Tune phase ends (``fit`` returned, stopped by Ctrl-C, or raised)
  and when the study ends, the entry keeps the digest of each state file the storage then holds
  that (1) or (2) recorded, and the appended lines of that experiment go. A file nobody
  recorded is never taken in, not even at the end of a phase: a state file that was in the
  experiment folder before the driver (``--force`` into someone's folder) stays foreign.
* The rule on ``--resume``: each state file must carry a digest recorded for its name. A driver
  killed with SIGKILL mid-phase leaves the last copy that completed, recorded in (2) before it
  began: it resumes. A rewritten or foreign file was never recorded: refused (so is a copy the
  kill itself cut short — Tune could not read it either; adopt after a look). An experiment whose
  newest state holds no trial is removed unread instead of restored (:func:`~study.running.
  storage.restorable`), so it is not checked.
* ``--resume`` refuses, in one line with the fix, a folder without ``study.json``; an id this
  user never registered; another storage than the registered one; another real path (local
  storage); a file or folder that belongs to another user, that group or others may write to,
  or a link that leads out of the folder; a Tune state file whose digest was not recorded.
* A folder you moved or copied yourself, or whose state you changed on purpose, is adopted with
  ``python -m study.cli.adopt DIR [--storage URI]`` (study/cli/adopt.py): it shows the Tune state
  files ``--resume`` would unpickle, asks, and registers the folder where it is, with their
  digests (a copy whose original is still registered gets a study id of its own).
* the driver keeps the user's umask, only adding 022 to it, and, when it ends, removes
  group/other write permission from what it wrote, so its own studies pass the checks even under
  a permissive umask and stay private under a private one.

Reading someone's results (``results.csv``, ``report.md``) needs none of this, and their
``space.yaml`` starts a new study of the same plan.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import re
import socket
import stat
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from study.files import append_jsonl, atomic_write_json, atomic_write_text
from study.layout import MANIFEST, TUNE, StudyError
from study.running.storage import Storage, restorable, storage_of

RISK = (
    "--resume loads Ray Tune's pickled state (tune/tuner.pkl …), and unpickling runs any code "
    "in it, so only study folders you created yourself are resumed (docs/studies.md, "
    "'Resuming and trust')"
)
EXPERIMENT = re.compile(rf"{TUNE}(-r\d+)?")  # the study's Tune experiments (study/space/racing.py)
STATE_SUFFIXES = (".json", ".pkl")
STUDY_ID = re.compile(r"[0-9a-f]{32}")  # uuid4().hex


def registry_dir() -> Path:
    """This user's list of the studies they created (one small JSON file per study id)."""
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(base) / "yolox-flow-study" / "studies"


def entry_path(study_id: str) -> Path:
    """The registry file of ``study_id`` — only ever of an id as write_manifest makes them: an
    id read from a study.json is a file name here, and ``../`` must not lead out."""
    if not STUDY_ID.fullmatch(study_id):
        raise StudyError(f"{study_id!r} is not a study id")
    return registry_dir() / f"{study_id}.json"


def log_path(study_id: str) -> Path:
    """The digests the running driver appends at each experiment checkpoint."""
    return entry_path(study_id).with_suffix(".tune.jsonl")


def read_study_id(study_dir: Path) -> str | None:
    try:
        study_id = str(json.loads((Path(study_dir) / MANIFEST).read_text())["study_id"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return study_id if STUDY_ID.fullmatch(study_id) else None


def load_entry(study_id: str) -> dict[str, Any] | None:
    """This user's registry entry of ``study_id``; None when there is none (or the id is no
    id at all)."""
    if not STUDY_ID.fullmatch(study_id):
        return None
    try:
        return json.loads(entry_path(study_id).read_text())
    except (OSError, ValueError):
        return None


def bound_storage(storage: Storage) -> str | None:
    """What the registry binds a study's storage to: None for the folder itself."""
    return None if storage.local else storage.uri


def write_manifest(study_dir: Path, storage: Storage | None = None) -> str:
    """At creation: ``study.json`` in the folder and the id in this user's registry (with no
    Tune state yet: whatever the folder holds was not written by this study's driver)."""
    storage = storage or Storage.for_study(study_dir, None)
    record: dict[str, Any] = {
        "format": 2,
        "study_id": uuid.uuid4().hex,
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        "uid": os.getuid(),
        "user": getpass.getuser(),
        "host": socket.gethostname(),
        "path": str(Path(study_dir).resolve()),
        "storage": bound_storage(storage),
    }
    register(record, storage, {})
    atomic_write_json(Path(study_dir) / MANIFEST, record)
    return record["study_id"]


def register(record: dict[str, Any], storage: Storage, tune: dict[str, str]) -> None:
    """The registry entry of ``record`` (a study.json's content): bound to its path, its
    storage and the digests ``tune`` (``<experiment>/<file>`` -> sha256)."""
    reg = registry_dir()
    reg.mkdir(parents=True, exist_ok=True, mode=0o700)
    entry = {**record, "storage": bound_storage(storage), "tune": tune}
    atomic_write_json(entry_path(record["study_id"]), entry)
    log_path(record["study_id"]).unlink(missing_ok=True)


# --- Tune's state and its digests --------------------------------------------------------------


def experiments(storage: Storage) -> list[str]:
    return sorted(n for n, is_dir in storage.children().items()
                  if is_dir and EXPERIMENT.fullmatch(n))


def state_names(names: list[str]) -> list[str]:
    """Of an experiment folder's top-level files, those Tune's restore reads."""
    return sorted(n for n in names if n.endswith(STATE_SUFFIXES) and not n.startswith("."))


def state_digests(storage: Storage, only: str | None = None) -> dict[str, str]:
    """``<experiment>/<file>`` -> sha256 of every Tune state file in the storage (of the
    experiment ``only``, when given)."""
    out = {}
    for exp in experiments(storage) if only is None else [only]:
        files = [n for n, is_dir in storage.children(exp).items() if not is_dir]
        for name in state_names(files):
            data = storage.read_bytes(f"{exp}/{name}")
            if data is not None:
                out[f"{exp}/{name}"] = sha256(data)
    return out


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def record_written(study_dir: Path, storage: Storage, experiment: str, names: list[str]) -> bool:
    """(1) the driver just wrote these files of ``experiment`` (``tuner.pkl``): record their
    digests; False when the study is not registered or the registry cannot be written."""
    study_id = read_study_id(study_dir)
    if study_id is None or not entry_path(study_id).is_file():
        return False
    digests = {}
    for name in names:
        data = storage.read_bytes(f"{experiment}/{name}")
        if data is not None:
            digests[f"{experiment}/{name}"] = sha256(data)
    return append_digests(study_id, digests)


def record_staged(study_id: str, experiment: str, staging: Path) -> bool:
    """(2) Tune just wrote its state into ``staging`` and is about to copy it to the storage:
    record the digests of its files; False when the registry cannot be written."""
    if not entry_path(study_id).is_file():
        return False
    try:
        names = state_names([p.name for p in staging.iterdir() if p.is_file()])
        digests = {f"{experiment}/{n}": sha256((staging / n).read_bytes()) for n in names}
    except OSError:
        return False
    return append_digests(study_id, digests)


def append_digests(study_id: str, digests: dict[str, str]) -> bool:
    try:
        for rel, digest in digests.items():
            append_jsonl(log_path(study_id), {"file": rel, "sha256": digest})
    except OSError:
        return False
    return True


def record_phase(study_dir: Path, storage: Storage, experiment: str | None = None) -> bool:
    """(3) after a Tune phase (``experiment``) or the study (every experiment): the entry keeps
    the digest of each state file the storage holds that (1) or (2) recorded; False when the
    study is not registered or the registry cannot be written."""
    study_id = read_study_id(study_dir)
    entry = load_entry(study_id) if study_id else None
    if entry is None or study_id is None:
        return False
    known = recorded(study_id, entry)
    mine = (lambda rel: rel.split("/", 1)[0] == experiment) if experiment else (lambda rel: True)
    tune = {rel: d for rel, d in entry.get("tune", {}).items() if not mine(rel)}
    now = state_digests(storage, experiment)
    tune.update({rel: d for rel, d in now.items() if d in known.get(rel, ())})
    try:
        atomic_write_json(entry_path(study_id), {**entry, "tune": tune})
        log = log_path(study_id)
        if log.is_file():
            kept = [ln for ln in log.read_text().splitlines()
                    if ln.strip() and not mine(ln_file(ln))]
            atomic_write_text(log, "".join(f"{ln}\n" for ln in kept))
    except OSError:
        return False
    return True


def ln_file(line: str) -> str:
    """The file a line of the digest log names ("" for a line a kill cut short)."""
    try:
        return str(json.loads(line)["file"])
    except (ValueError, KeyError, TypeError):
        return ""


def recorded(study_id: str, entry: dict[str, Any]) -> dict[str, set[str]]:
    """``<experiment>/<file>`` -> every digest recorded for it since the last phase end."""
    out = {rel: {d} for rel, d in entry.get("tune", {}).items()}
    log = log_path(study_id)
    lines = log.read_text().splitlines() if log.is_file() else []
    for line in lines:
        try:
            rec = json.loads(line)
            out.setdefault(rec["file"], set()).add(rec["sha256"])
        except (ValueError, KeyError, TypeError):
            continue  # (a line the kill cut short)
    return out


# --- the check -------------------------------------------------------------------------------


def check_resumable(study_dir: Path, storage: Storage | None = None) -> None:
    """StudyError (one line: what is wrong, the risk, what to do) unless this user created
    ``study_dir`` there, with ``storage``, and nobody else can have changed what it loads."""
    storage = storage or storage_of(study_dir, None)
    fix = (
        f"To use its results read {study_dir / 'results.csv'}; to run its plan again start a "
        f"new study: python study/run.py --space {study_dir / 'space.yaml'} --out NEW_FOLDER"
    )
    study_id, entry = registered(study_dir, fix)
    check_binding(study_dir, storage, study_id, entry, fix)
    bad = unsafe_entry(study_dir)
    if bad is not None:
        path, why = bad
        if path.is_symlink():
            raise StudyError(
                f"--resume: refusing {study_dir}: {path} {why}, so what it would load lives "
                f"where others may change it. {RISK}. Replace the link by a copy of what it "
                f"points to (or remove it) and resume again; else: {fix}"
            )
        raise StudyError(
            f"--resume: refusing {study_dir}: {path} {why}, so someone else may have changed "
            f"the state it would load. {RISK}. If you trust every file in it, run "
            f"chmod -R go-w {study_dir} (as its owner) and resume again; else: {fix}"
        )
    check_state(study_dir, storage, study_id, entry, fix)


def registered(study_dir: Path, fix: str) -> tuple[str, dict[str, Any]]:
    """The folder's study id and this user's registry entry of it."""
    try:
        study_id = str(json.loads((study_dir / MANIFEST).read_text())["study_id"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise StudyError(
            f"--resume: refusing {study_dir}: it has no readable {MANIFEST} ({type(e).__name__})"
            f", so study/run.py did not create it for you. {RISK}. {fix}"
        ) from e
    entry = load_entry(study_id)
    if entry is None:
        raise StudyError(
            f"--resume: refusing {study_dir}: its study id {study_id} is not among the studies "
            f"you created ({registry_dir()}); it comes from another user or machine. {RISK}. "
            f"If it is a study you ran on another machine and you trust every file in it, adopt "
            f"it first: python -m study.cli.adopt {study_dir}{_storage_flag(study_dir)}; else: "
            f"{fix}"
        )
    return study_id, entry


def _storage_flag(study_dir: Path) -> str:
    """`` --storage URI`` when the folder records a storage (a study rebuilt from it)."""
    storage = storage_of(study_dir, None)
    return "" if storage.local else f" --storage {storage.uri.rsplit('/', 1)[0]}"


def check_binding(
    study_dir: Path, storage: Storage, study_id: str, entry: dict[str, Any], fix: str
) -> None:
    """The storage, and for a study kept in its folder the folder's real path, are those
    this user registered."""
    adopt = f"python -m study.cli.adopt {study_dir}"
    want, have = entry.get("storage"), bound_storage(storage)
    if want != have:
        flag = f"--storage {storage_base(want)}" if want else "no --storage"
        moved = f"{adopt} --storage {storage_base(have)}" if have else adopt
        raise StudyError(
            f"--resume: refusing {study_dir}: it would load Tune's state from "
            f"{have or 'the folder itself'}, but you created study {study_id} with its state in "
            f"{want or 'its folder'}, and another storage may hold anyone's pickles. {RISK}. "
            f"Resume with {flag}; if you moved the storage yourself and trust it, adopt it "
            f"first: {moved}; else: {fix}"
        )
    real = Path(study_dir).resolve()
    if want is None and str(real) != entry.get("path"):
        raise StudyError(
            f"--resume: refusing {study_dir}: you created study {study_id} in "
            f"{entry.get('path')}, and {real} is a copy or a move of it, whose Tune state "
            f"anyone may have prepared. {RISK}. If you copied or moved it yourself and trust "
            f"every file in it, adopt it first: {adopt}; else: {fix}"
        )


def storage_base(uri: str) -> str:
    """The ``--storage`` that gives a study the storage ``uri`` (``<base>/<study name>``)."""
    return uri.rsplit("/", 1)[0]


def check_state(
    study_dir: Path, storage: Storage, study_id: str, entry: dict[str, Any], fix: str
) -> None:
    """Every Tune state file that a resume would read carries a digest the driver recorded."""
    known = recorded(study_id, entry)
    for exp in experiments(storage):
        if not restorable(storage, exp):
            continue  # removed unread by the resume (study/running/pipeline.py)
        for rel, digest in state_digests(storage, exp).items():
            if digest in known.get(rel, ()):
                continue
            where = study_dir / rel if storage.local else f"{storage.uri}/{rel}"
            raise StudyError(
                f"--resume: refusing {study_dir}: {where} is not a file this study's driver "
                f"wrote (its sha256 {digest[:12]}… is not among those recorded in "
                f"{entry_path(study_id)}), and Tune would unpickle it. {RISK}. If you changed it "
                f"yourself and trust it, adopt the folder first: python -m study.cli.adopt "
                f"{study_dir}; else: {fix}"
            )


def unsafe_entry(root: Path) -> tuple[Path, str] | None:
    """The first file or folder under ``root`` (itself included) that belongs to another user,
    that group or others may write to, or a link out of ``root``, with the reason; None when
    there is none."""
    uid = os.getuid()
    for path in [root, *sorted(root.rglob("*"))]:
        st = path.lstat()
        if st.st_uid != uid:
            return path, f"belongs to uid {st.st_uid}, not to you (uid {uid})"
        if stat.S_ISLNK(st.st_mode):
            target = path.resolve()
            if not target.is_relative_to(root.resolve()):
                return path, f"is a link out of the study folder (to {target})"
            continue
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            return path, f"is writable by group or others (mode {stat.filemode(st.st_mode)})"
    return None


# --- adopting a folder -------------------------------------------------------------------------


def adoption(study_dir: Path, storage: Storage, state: dict[str, str]) -> list[str]:
    """What adopting ``study_dir`` would trust, as lines for the user: the study, where it was
    registered, and each Tune state file a resume would unpickle (``state``: their digests,
    :func:`state_digests`), recorded or not."""
    study_id = read_study_id(study_dir)
    if study_id is None:
        raise StudyError(f"{study_dir} has no readable {MANIFEST}: it is no study folder")
    record = json.loads((study_dir / MANIFEST).read_text())
    entry = load_entry(study_id)
    lines = [
        f"study {study_id}, created {record.get('created')} by {record.get('user')} on "
        f"{record.get('host')} in {record.get('path')}",
        f"registered by you: {'no' if entry is None else entry.get('path')}"
        + (f" (storage {entry.get('storage')})" if entry and entry.get("storage") else ""),
        f"to adopt: {Path(study_dir).resolve()}"
        + ("" if storage.local else f" with its Tune state in {storage.uri}"),
    ]
    known = recorded(study_id, entry) if entry else {}
    for rel, digest in state.items():
        ok = digest in known.get(rel, ())
        lines.append(f"  {rel}  sha256 {digest[:12]}…  "
                     + ("as this study's driver wrote it" if ok else "NOT as recorded"))
    lines.append(f"--resume will unpickle these {len(state)} files (any code in them runs)")
    return lines


def adopt(study_dir: Path, storage: Storage, state: dict[str, str]) -> str:
    """Register ``study_dir`` where it is, with ``storage`` and the digests ``state`` of the
    Tune state the user was shown (a file changed since is refused by the resume); returns
    its study id — a new one for a copy whose registered original is still there."""
    bad = unsafe_entry(study_dir)
    if bad is not None:
        raise StudyError(f"{bad[0]} {bad[1]}; fix that first (chmod -R go-w, or replace "
                         "the link by a copy of what it points to)")
    record = json.loads((study_dir / MANIFEST).read_text())  # (adoption read its id)
    old = load_entry(str(record["study_id"]))
    real = str(Path(study_dir).resolve())
    original = Path(old["path"]) if old and old.get("path") else None
    if (old is not None and storage.local and original is not None and str(original) != real
            and read_study_id(original) == record["study_id"]):
        record = {**record, "study_id": uuid.uuid4().hex, "adopted_from": record["study_id"]}
    record = {**record, "path": real, "storage": bound_storage(storage)}
    register(record, storage, state)
    atomic_write_json(study_dir / MANIFEST, record)
    storage.push_driver_files()
    return record["study_id"]


# --- permissions -------------------------------------------------------------------------------


def harden(root: Path) -> None:
    """Remove group/other write permission from what this user owns under ``root`` (the
    driver's own umask does not reach Ray workers started by others)."""
    if not root.is_dir():
        return
    uid = os.getuid()
    for path in [root, *root.rglob("*")]:
        try:
            st = path.lstat()
            if (
                st.st_uid == uid
                and not stat.S_ISLNK(st.st_mode)
                and st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
            ):
                path.chmod(stat.S_IMODE(st.st_mode) & ~(stat.S_IWGRP | stat.S_IWOTH))
        except FileNotFoundError:  # a file Tune replaced meanwhile
            continue


@contextmanager
def private_umask() -> Iterator[None]:
    """Files and folders created inside are not group/world writable (the Ray processes started
    meanwhile inherit the umask); a stricter umask (077) stays as it is: bits are only added."""
    before = os.umask(0o022)
    os.umask(before | 0o022)
    try:
        yield
    finally:
        os.umask(before)
