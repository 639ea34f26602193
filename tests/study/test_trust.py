"""``--resume`` trusts only the folder the study was created in, with the storage it was created
with, holding the Tune state its driver recorded (study/running/trust.py; issue 27, point 4).

Real folders and a real registry (``XDG_STATE_HOME`` under tmp_path). Most tests build the Tune
state by hand and record it as the driver does (:func:`trust.record_written`,
:func:`trust.record_staged`, :func:`trust.record_phase`); one real study (the fake training
function, under a private umask) proves that a study the driver ran resumes, that nothing of it
was made readable to others, and that a rewritten ``tuner.pkl`` is refused.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import shutil
import stat
from pathlib import Path

import pytest
import ray  # a dependency: its absence fails, never skips

from study import run as run_cli
from study.cli import adopt as adopt_cli
from study.layout import StudyError
from study.running import trust
from study.running.driver import StudyArgs, run_study
from study.running.progress import StudyCallback, serving
from study.running.storage import Storage, restorable, storage_of
from tests.study_fakes import control_folder, fake_train

SESSION = "2026-01-01_00-00-00"
STATE = f"experiment_state-{SESSION}.json"
SEARCHER = f"searcher-state-{SESSION}.pkl"
ADOPT = "python -m study.cli.adopt"


@pytest.fixture(autouse=True)
def own_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))


def fix(study: Path) -> str:
    return (f"To use its results read {study}/results.csv; to run its plan again start a new "
            f"study: python study/run.py --space {study}/space.yaml --out NEW_FOLDER")


def state_json(trials: int = 1) -> bytes:
    return json.dumps({"trial_data": [["{}", "{}"]] * trials, "runner_data": {}}).encode()


def made_study(root: Path, storage: str | None = None) -> Path:
    """A study folder as the driver leaves it after a Tune phase: registered, its Tune state
    (``tuner.pkl``, an experiment state with a trial, a searcher state) recorded."""
    study = root / "study"
    study.mkdir(parents=True)
    (study / "plan.json").write_text("{}\n")
    (study / "space.yaml").write_text("grid: {reg_loss: [iou]}\n")
    store = storage_of(study, storage)
    trust.write_manifest(study, store)
    store.save_uri()
    store.push_driver_files()
    store.write_bytes("tune/tuner.pkl", pickle.dumps({"tuner": 1}))
    trust.record_written(study, store, "tune", ["tuner.pkl"])  # (1) the Tuner was built
    staging = root / "staging"
    staging.mkdir()
    (staging / STATE).write_bytes(state_json())
    (staging / SEARCHER).write_bytes(pickle.dumps({"searcher": 1}))
    assert trust.record_staged(trust.read_study_id(study), "tune", staging)  # (2)
    for f in staging.iterdir():  # the copy Tune makes into the storage
        store.write_bytes(f"tune/{f.name}", f.read_bytes())
    assert trust.record_phase(study, store, "tune")  # (3) the phase ended
    return study


def refusal(study: Path, storage: Storage | None = None) -> str:
    with pytest.raises(StudyError) as e:
        trust.check_resumable(study, storage)
    text = str(e.value)
    assert "\n" not in text
    return text


# --- the honest cases ------------------------------------------------------------------------


def test_the_folder_as_its_driver_left_it_resumes(tmp_path: Path) -> None:
    study = made_study(tmp_path)
    trust.check_resumable(study)
    entry = trust.load_entry(trust.read_study_id(study))
    assert entry["path"] == str(study.resolve()) and entry["storage"] is None
    assert sorted(entry["tune"]) == ["tune/" + n for n in sorted([STATE, SEARCHER, "tuner.pkl"])]
    assert trust.log_path(entry["study_id"]).read_text() == ""  # the phase end took them in


def test_a_driver_killed_mid_phase_leaves_state_it_recorded(tmp_path: Path) -> None:
    """SIGKILL: no phase end; the storage holds the last copy Tune made of its staged state,
    whose digests the callback recorded before the copy began."""
    study = made_study(tmp_path)
    staging = tmp_path / "staging"
    for n in (2, 3):  # two more experiment checkpoints; the kill came after the first copy
        (staging / STATE).write_bytes(state_json(n))
        trust.record_staged(trust.read_study_id(study), "tune", staging)
        if n == 2:
            shutil.copy(staging / STATE, study / "tune" / STATE)
    trust.check_resumable(study)
    (study / "tune" / STATE).write_bytes(state_json(4))  # a version no driver wrote
    assert f"{study / 'tune' / STATE} is not a file this study's driver wrote" in refusal(study)


def test_a_round_without_a_trial_is_removed_unread_so_not_checked(tmp_path: Path) -> None:
    study = made_study(tmp_path)
    r1 = study / "tune-r1"
    r1.mkdir()
    (r1 / "tuner.pkl").write_bytes(b"never recorded")
    (r1 / f"experiment_state-{SESSION}.json").write_bytes(state_json(0))
    assert not restorable(storage_of(study, None), "tune-r1")
    trust.check_resumable(study)
    (r1 / f"experiment_state-{SESSION}.json").write_bytes(state_json(1))  # now Tune would load it
    assert f"{r1 / 'experiment_state-'}" in refusal(study)


def test_a_study_kept_in_storage_resumes_into_a_new_empty_folder(tmp_path: Path) -> None:
    """``--storage`` (here a path every node mounts): the registry binds the storage, not the
    folder, which ``--resume --storage URI --out DIR`` rebuilds anywhere."""
    store = tmp_path / "store"
    study = made_study(tmp_path, str(store))
    assert trust.load_entry(trust.read_study_id(study))["storage"] == f"{store}/study"
    shutil.rmtree(study)
    new = tmp_path / "elsewhere" / "study"
    storage_of(new, str(store)).pull_study()
    trust.check_resumable(new, storage_of(new, str(store)))
    trust.check_resumable(new)  # (its storage.json, pulled with the rest)
    (store / "study" / "tune" / "tuner.pkl").write_bytes(pickle.dumps({"evil": 1}))
    assert f"{store}/study/tune/tuner.pkl is not a file this study's driver wrote" in refusal(new)


# --- what a copy, a rewrite, a link or another storage cannot do -----------------------------


def test_a_copied_folder_is_refused_with_the_way_to_adopt_it(tmp_path: Path) -> None:
    study = made_study(tmp_path)
    copy = tmp_path / "copy"
    shutil.copytree(study, copy)
    sid = trust.read_study_id(study)
    assert refusal(copy) == (
        f"--resume: refusing {copy}: you created study {sid} in {study.resolve()}, and "
        f"{copy.resolve()} is a copy or a move of it, whose Tune state anyone may have prepared. "
        f"{trust.RISK}. If you copied or moved it yourself and trust every file in it, adopt it "
        f"first: {ADOPT} {copy}; else: " + fix(copy)
    )


def test_a_rewritten_tuner_pkl_is_refused_naming_the_file(tmp_path: Path) -> None:
    study = made_study(tmp_path)
    pkl = study / "tune" / "tuner.pkl"
    pkl.write_bytes(pickle.dumps({"tuner": "rewritten"}))
    digest = trust.sha256(pkl.read_bytes())
    sid = trust.read_study_id(study)
    assert refusal(study) == (
        f"--resume: refusing {study}: {pkl} is not a file this study's driver wrote (its sha256 "
        f"{digest[:12]}… is not among those recorded in {trust.entry_path(sid)}), and Tune would "
        f"unpickle it. {trust.RISK}. If you changed it yourself and trust it, adopt the folder "
        f"first: {ADOPT} {study}; else: " + fix(study)
    )


def test_a_new_state_file_is_refused(tmp_path: Path) -> None:
    study = made_study(tmp_path)
    newer = study / "tune" / "experiment_state-2099-01-01_00-00-00.json"  # Tune loads the newest
    newer.write_bytes(state_json())
    assert f"{newer} is not a file this study's driver wrote" in refusal(study)


def test_a_link_out_of_the_folder_is_refused(tmp_path: Path) -> None:
    study = made_study(tmp_path)
    outside = tmp_path / "outside"
    shutil.move(study / "tune", outside)  # the state, moved where others may write
    (study / "tune").symlink_to(outside, target_is_directory=True)
    assert refusal(study) == (
        f"--resume: refusing {study}: {study / 'tune'} is a link out of the study folder (to "
        f"{outside}), so what it would load lives where others may change it. {trust.RISK}. "
        "Replace the link by a copy of what it points to (or remove it) and resume again; else: "
        + fix(study)
    )


def test_another_storage_is_refused(tmp_path: Path) -> None:
    study = made_study(tmp_path)  # its Tune state in the folder
    other = storage_of(study, str(tmp_path / "bucket"))
    sid = trust.read_study_id(study)
    assert refusal(study, other) == (
        f"--resume: refusing {study}: it would load Tune's state from {tmp_path}/bucket/study, "
        f"but you created study {sid} with its state in its folder, and another storage may "
        f"hold anyone's pickles. {trust.RISK}. Resume with no --storage; if you moved the "
        f"storage yourself and trust it, adopt it first: {ADOPT} {study} --storage "
        f"{tmp_path}/bucket; else: " + fix(study)
    )


def test_a_study_id_cannot_lead_out_of_the_registry(tmp_path: Path) -> None:
    """study.json's id names a registry file: an id with ``../`` in it would make a file of
    the folder's own its registry entry."""
    study = made_study(tmp_path)
    forged = dict(trust.load_entry(trust.read_study_id(study)), tune={})
    (study / "entry.json").write_text(json.dumps(forged))  # a registry entry of its own
    rel = os.path.relpath(study / "entry", trust.registry_dir())
    (study / "study.json").write_text(json.dumps({"study_id": rel}))
    assert (trust.registry_dir() / f"{rel}.json").is_file()
    assert refusal(study).startswith(
        f"--resume: refusing {study}: its study id {rel} is not among the studies you created")


def test_a_rewritten_storage_json_is_refused(tmp_path: Path) -> None:
    store = tmp_path / "store"
    study = made_study(tmp_path, str(store))
    (study / "storage.json").write_text(json.dumps({"uri": f"{tmp_path}/evil/study"}))
    text = refusal(study)
    assert f"it would load Tune's state from {tmp_path}/evil/study, but you created" in text
    assert f"with its state in {store}/study," in text
    assert f"Resume with --storage {store};" in text


# --- adopting --------------------------------------------------------------------------------


def test_a_moved_folder_is_adopted_deliberately(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    study = made_study(tmp_path)
    sid = trust.read_study_id(study)
    moved = tmp_path / "moved" / "study"
    moved.parent.mkdir()
    shutil.move(study, moved)
    assert "is a copy or a move of it" in refusal(moved)
    assert adopt_cli.main([str(moved)]) == 2  # nothing to read the answer from (pytest's stdin)
    assert capsys.readouterr().err.strip().endswith(
        "adopt: error: nothing adopted: no answer to the question; pass --yes to adopt")
    assert adopt_cli.main([str(moved), "--yes"]) == 0
    out = capsys.readouterr().out
    assert f"registered by you: {study.resolve()}" in out
    assert "  tune/tuner.pkl  sha256 " in out and "as this study's driver wrote it" in out
    assert "--resume will unpickle these 3 files (any code in them runs)" in out
    assert out.strip().endswith(f"resume it with: python study/run.py --resume --out {moved}")
    trust.check_resumable(moved)
    assert trust.read_study_id(moved) == sid  # the same study, in its new place


def test_an_adopted_copy_gets_its_own_id_and_both_resume(tmp_path: Path) -> None:
    study = made_study(tmp_path)
    copy = tmp_path / "copy"
    shutil.copytree(study, copy)
    (copy / "tune" / "tuner.pkl").write_bytes(pickle.dumps({"changed": "on purpose"}))
    assert adopt_cli.adopt(copy, None, yes=False, ask=lambda q: "n") == 1
    assert "is a copy or a move of it" in refusal(copy)
    assert adopt_cli.adopt(copy, None, yes=False, ask=lambda q: "y") == 0
    assert trust.read_study_id(copy) != trust.read_study_id(study)
    assert json.loads((copy / "study.json").read_text())["adopted_from"] == \
        trust.read_study_id(study)
    trust.check_resumable(copy)
    trust.check_resumable(study)


# --- the umask ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("user", "inside"), [(0o077, 0o077), (0o002, 0o022), (0o022, 0o022)])
def test_the_drivers_umask_only_adds_to_the_users(user: int, inside: int) -> None:
    before = os.umask(user)
    try:
        with trust.private_umask():
            now = os.umask(0o777)
            os.umask(now)
        assert now == inside and os.umask(before) == user
    finally:
        os.umask(before)


def test_a_restored_callback_takes_the_drivers_folder(tmp_path: Path) -> None:
    """Tune restores the driver's callback from tuner.pkl as the study began (maybe in the
    folder it was moved from); the one this driver built for the fit replaces its state."""
    old = StudyCallback(str(tmp_path / "was"), total=2, study_id="old")
    restored = pickle.loads(pickle.dumps(old))
    built = StudyCallback(str(tmp_path / "is"), total=2, study_id="new")
    with serving(built):
        restored.setup()
    restored.on_experiment_end([])
    assert (restored.study_dir, restored.study_id) == (str(tmp_path / "is"), "new")


# --- one real study, under a private umask -------------------------------------------------------

SPACE = """
fixed: {epochs: 2, eval_interval: 1, no_aug_epochs: 1, workers: 0}
grid: {reg_loss: [iou, giou]}
resources: {cpus: 1}
"""


@pytest.fixture(scope="module")
def private_ray() -> None:
    """A Ray session started under umask 077: its workers (which write the trials' records)
    inherit it, as they inherit the driver's."""
    before = os.umask(0o077)
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    yield
    ray.shutdown()
    os.umask(before)


def test_a_real_study_resumes_stays_private_and_refuses_a_rewritten_pickle(
    private_ray: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    study = tmp_path / "study"
    args = StudyArgs(space=str(space), data=str(control_folder(tmp_path / "ctl")), out=study)
    assert run_study(args, train_fn=fake_train, log=lambda s: None).exit_code == 0
    shared = [p for root in (study, tmp_path / "state") for p in [root, *root.rglob("*")]
              if not p.is_symlink() and stat.S_IMODE(p.lstat().st_mode) & 0o077]
    assert not shared, [(str(p), oct(p.lstat().st_mode)) for p in shared]
    tune = trust.load_entry(trust.read_study_id(study))["tune"]
    assert "tune/tuner.pkl" in tune and any(k.startswith("tune/experiment_state-") for k in tune)
    again = run_study(StudyArgs(resume=True, out=study), train_fn=fake_train, log=lambda s: None)
    assert again.exit_code == 0
    capsys.readouterr()
    pkl = study / "tune" / "tuner.pkl"
    pkl.write_bytes(pickle.dumps({"not": "the driver's"}))
    assert run_cli.main(["--resume", "--out", str(study), "--train-fn",
                         "tests.study_fakes:fake_train"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    said = f"error: --resume: refusing {study}: {pkl} is not a file this study's driver wrote"
    assert len(lines) == 1 and lines[0].startswith(said), lines
