"""The study driver (study/run.py, study/running/driver.py): dry run, COCO weights, and Ray end
to end.

One local Ray session for the module (2 CPUs, no dashboard). End-to-end runs: the smoke space
with the real training function (one trial crashes once and must continue from Tune's
checkpoint), and an interrupted-then-resumed study driven through the CLI in a subprocess (it
joins this module's Ray session through --address) with a fake training function.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from model.config import config_keys, load_config
from model.yolox.weights import WeightsUnavailableError
from study.artifacts import coco_weights as coco
from study.artifacts import jobs as pretraining
from study.layout import StudyError
from study.outputs.results import read_csv, read_history
from study.running import pipeline
from study.running.driver import StudyArgs, run_study
from study.space.definition import load_space
from study.space.plan import build_plan
from tests.paths import FAKE_TRAIN_FN, REPO
from tests.study_fakes import control_folder

RUN = [sys.executable, str(REPO / "study" / "run.py")]
ENV = {**os.environ, "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0"}
# Ray enables token authentication on the clusters ray.init starts, and a driver joining one by
# an explicit --address must ask for it (the token is in ~/.ray/auth_token)
AUTH_ENV = {**ENV, "RAY_AUTH_MODE": "token"}


@pytest.fixture(autouse=True)
def own_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The registry of the studies this user created (running/trust.py) lives under tmp_path."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))


def jsonl(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


# --- dry run and COCO weights (no Ray) --------------------------------------------------------


def test_dry_run_cli_prints_every_planned_trial(tmp_path: Path) -> None:
    proc = subprocess.run(
        [*RUN, "--space", "ablation", "--dry-run", "--no-download", "--full", "--seeds", "1"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env=ENV,
    )
    assert proc.returncode == 0, proc.stderr
    records = jsonl(proc.stdout)  # stdout is JSON lines only
    trials = [r for r in records if r["kind"] == "trial"]
    jobs = [r for r in records if r["kind"] == "pretrain"]
    # --full: the space's 18 grid points and the quick profile's stand-in pretrain=none
    assert len(trials) == 24 and len({t["id"] for t in trials}) == 24
    assert all(set(t["config"]) == set(config_keys()) for t in trials)  # full configs
    points = {(t["point"]["pretrain"], t["point"]["reg_loss"], t["point"]["size"]) for t in trials}
    assert len(points) == 24
    # center_loss/ssl × 3 sizes: 6 distinct artifacts, each shared by the iou and ciou trials
    assert len(jobs) == 6 and len({j["key"] for j in jobs}) == 6
    assert all(len(j["trials"]) == 2 for j in jobs)
    by_id = {t["id"]: t for t in trials}
    for j in jobs:
        assert {by_id[i]["pretrain_job"] for i in j["trials"]} == {j["key"]}
    assert by_id["coco-iou-s"]["pretrain_job"] is None
    assert "quick profile" in proc.stderr  # said plainly, on stderr
    # the one-line summary closes stderr; the six coco trials' weights are not on disk
    assert proc.stderr.strip().splitlines()[-1] == (
        "dry run: 24 trials planned (6 need COCO weights not on disk), 6 pretraining jobs; "
        "nothing was run"
    )
    assert not (tmp_path / "studies").exists()  # a dry run writes nothing


def test_dry_run_with_seeds_repeats_points_and_artifacts(capsys: pytest.CaptureFixture) -> None:
    out = run_study(
        StudyArgs(space="ablation", seeds=2, full=True, dry_run=True, download=False),
        log=lambda s: None,
    )
    records = jsonl(capsys.readouterr().out)
    trials = [r for r in records if r["kind"] == "trial"]
    assert len(trials) == 48 and out.exit_code == 0
    assert out.summary.startswith("dry run: 48 trials planned")
    assert sorted({t["config"]["seed"] for t in trials}) == [0, 1]
    # the seed is a pretraining setting: one artifact per method x size x seed
    assert len([r for r in records if r["kind"] == "pretrain"]) == 12


def test_dry_run_shows_each_trials_input_mode(capsys: pytest.CaptureFixture) -> None:
    out = run_study(StudyArgs(space="tiles", dry_run=True, download=False), log=lambda s: None)
    trials = [r for r in jsonl(capsys.readouterr().out) if r["kind"] == "trial"]
    assert out.exit_code == 0 and len(trials) == 4
    inputs = {t["id"]: t["input"] for t in trials}
    assert inputs["letterbox-iou"] == "512px letterbox; predicted boxes unclipped, as official"
    assert inputs["tiles-ciou"] == (
        "512px tiles (overlap 0.2) with sliced inference; predicted boxes unclipped, as official"
    )


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """No COCO checkpoint on disk and no network."""
    import study.artifacts.coco_weights

    def refuse(size: str, *args: object, **kwargs: object) -> Path:
        raise WeightsUnavailableError(f"no network for yolox_{size}.pth")

    weights = study.artifacts.coco_weights
    monkeypatch.setattr(weights, "coco_weights_available", lambda *a, **k: False)
    monkeypatch.setattr(weights, "resolve_coco_checkpoint", refuse)


COCO_SPACE = """
fixed: {epochs: 2, no_aug_epochs: 1, warmup_epochs: 1}
grid: {pretrain: [none, coco], size: [nano, tiny]}
baseline: {pretrain: none, size: nano}
"""


def test_missing_coco_weights_stop_before_any_trial(tmp_path: Path, offline: None) -> None:
    space = tmp_path / "coco.yaml"
    space.write_text(COCO_SPACE)
    with pytest.raises(StudyError) as info:
        run_study(
            StudyArgs(space=str(space), data=str(tmp_path), out=tmp_path / "s"), log=lambda s: None
        )
    msg = str(info.value)
    for part in (
        "yolox_nano.pth",
        "yolox_tiny.pth",
        "checkpoints/yolox_nano.pth",
        "--skip-unavailable",
        "needed by 1 trials",
    ):
        assert part in msg, msg
    assert not (tmp_path / "s").exists()  # stopped before anything ran


@pytest.mark.parametrize("quick", [True, False])
def test_missing_coco_weights_skip_offline_quick_start_or_on_request(
    tmp_path: Path, offline: None, quick: bool
) -> None:
    space = tmp_path / "coco.yaml"
    space.write_text(COCO_SPACE)
    plan = build_plan(load_space(space), data=None if quick else str(tmp_path))
    lines: list[str] = []
    check = coco.check_study(
        plan,
        cache_root=tmp_path / "c",
        download=True,
        skip_unavailable=not quick,
        probe_only=False,
        log=lines.append,
    )
    plan = pretraining.with_skips(plan, check.skips)
    skipped = {t.id: t.skip for t in plan.trials if t.skip}
    assert set(skipped) == {"coco-nano", "coco-tiny"}
    assert "COCO weights for YOLOX-tiny unavailable" in skipped["coco-tiny"]
    assert ("quick start without --data" if quick else "--skip-unavailable") in lines[-1]


# --- Ray end to end ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_address() -> str:
    import ray  # a dependency: its absence fails, never skips

    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def test_smoke_study_end_to_end_with_a_crash_and_retry(ray_address: str, tmp_path: Path) -> None:
    from tests.study_fakes import flaky_train

    study = tmp_path / "smoke"
    out = run_study(StudyArgs(space="smoke", out=study), train_fn=flaky_train)
    assert out.exit_code == 0, out.summary
    rows = read_csv(study / "results.csv")
    assert [r["status"] for r in rows] == ["done"] * 4
    assert {(r["pretrain"], r["reg_loss"]) for r in rows} == {
        ("none", "iou"),
        ("none", "ciou"),
        ("center_loss", "iou"),
        ("center_loss", "ciou"),
    }
    assert all(r["epoch"] == 2 and r["params"] > 0 and r["test_mAP"] is not None for r in rows)
    assert all(r["val_mAP"] is not None and r["test_mAP_lo"] <= r["test_mAP_hi"] for r in rows)
    assert all((study / "trials" / r["id"] / "test_eval.npz").is_file() for r in rows)
    assert [r["id"] for r in rows if r["role"]] == ["none-iou"]  # the space's own baseline

    # the center-loss artifact was computed once (a Ray task) and both trials loaded it
    # (plan.json holds the plan, pretraining.json the artifact: the study reads them together)
    (job,) = [j.to_dict() for j in pretraining.load_study_plan(study).pretrain_jobs]
    assert Path(job["path"]).is_file() and job["path"].startswith(str(study / "pretrain_cache"))
    for tid in ("center_loss-iou", "center_loss-ciou"):
        ran = json.loads((study / "trials" / tid / "trial.json").read_text())["config"]
        assert ran["pretrain_artifact"] == job["path"]

    # none-ciou crashed after epoch 1 and lost its working copy: the retry must have continued
    # from Tune's checkpoint, not started over
    trial = study / "trials" / "none-ciou"
    attempts = jsonl((trial / "attempts.jsonl").read_text())
    assert len(attempts) == 2 and attempts[0]["restored_from"] is None
    assert "checkpoint_000000" in attempts[1]["restored_from"]
    assert [h["epoch"] for h in read_history(trial / "history.jsonl")] == [1, 2]
    done = json.loads((trial / "done.json").read_text())
    assert done["summary"]["resumed_from_epoch"] == 1

    report = (study / "report.md").read_text()
    assert "| none (baseline) | iou |" in report and "| center_loss | ciou |" in report
    for png in ("test_mAP_by_pretrain.png", "learning_curves.png"):  # no size axis: by pretrain
        assert png in report and (study / png).stat().st_size > 1000
    assert out.best is not None and out.best["id"] in out.summary

    # best_config.yaml reruns the best trial to the same numbers on CPU: the thread count that
    # decides its float sums travels in the config, and the header's command works as written
    # from any folder (here: a fresh one, not the project root)
    import torch

    text = (study / "best_config.yaml").read_text()
    best_cfg = load_config(study / "best_config.yaml")
    assert best_cfg.threads == 1  # the trial's CPU share (resources: cpus 1)
    (line,) = [ln for ln in text.splitlines() if ln.startswith("# Rerun: ")]
    argv = shlex.split(line.removeprefix("# Rerun: "))
    assert argv[:3] == ["python", "-m", "study.cli.train"] and Path(argv[4]).is_absolute()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    done = subprocess.run(
        [sys.executable, *argv[1:], "--quiet"], cwd=elsewhere, env=env, capture_output=True,
        text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    metrics = json.loads((elsewhere / "runs" / "best" / "metrics.json").read_text())
    assert metrics["val_mAP"] == out.best["val_mAP"]
    assert metrics["test_mAP"] == out.best["test_mAP"]
    history = read_history(study / "trials" / out.best["id"] / "history.jsonl")
    rerun = torch.load(metrics["checkpoint"], weights_only=True)["history"]
    assert rerun[-1]["total_loss"] == history[-1]["total_loss"]  # bit-identical


INTERRUPT_SPACE = """
fixed: {epochs: 3, eval_interval: 1, no_aug_epochs: 1, workers: 0}
grid: {reg_loss: [iou, giou, diou, ciou], size: [nano, tiny]}
baseline: {reg_loss: iou, size: nano}
resources: {cpus: 1}
"""


# slow (33 s): Ctrl-C then --resume is covered in the default run by the SIGKILLed driver
# (test_study_faults.py), the race (test_study_race.py) and the Optuna study
# (test_optuna_study.py), each interrupted mid-study and resumed
@pytest.mark.slow
def test_interrupted_study_resumes_without_rerunning_finished_trials(
    ray_address: str, tmp_path: Path
) -> None:
    space = tmp_path / "interrupt.yaml"
    space.write_text(INTERRUPT_SPACE)
    # the fake training function's "dataset": behaviour + call log
    ctl = control_folder(tmp_path / "ctl", epoch_s=1.0)
    study = tmp_path / "study"
    common = ["--address", ray_address, "--train-fn", FAKE_TRAIN_FN]
    env = {**AUTH_ENV, "XDG_STATE_HOME": str(tmp_path / "state")}
    first = subprocess.Popen(
        [*RUN, "--space", str(space), "--data", str(ctl), "--out", str(study), *common],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.time() + 120
    finished: set[str] = set()
    while time.time() < deadline and not finished and first.poll() is None:
        time.sleep(0.5)
        if (study / "results.csv").is_file():
            finished = {r["id"] for r in read_csv(study / "results.csv") if r["status"] == "done"}
    assert finished, "no trial finished in time"
    first.send_signal(signal.SIGINT)  # Ctrl-C: Tune saves its state and stops the trials
    log1 = first.communicate(timeout=90)[0]
    assert first.returncode == 130, log1
    assert "--resume" in log1
    finished = {r["id"] for r in read_csv(study / "results.csv") if r["status"] == "done"}
    assert 0 < len(finished) < 8, log1
    started = {  # unfinished trials that had evaluated an epoch when the study stopped
        p.parent.name for p in (study / "trials").glob("*/history.jsonl")
    } - finished

    second = subprocess.run(
        [*RUN, "--resume", "--out", str(study), *common],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert second.returncode == 0, second.stdout + second.stderr
    rows = read_csv(study / "results.csv")
    assert [r["status"] for r in rows] == ["done"] * 8
    calls: dict[str, list[dict]] = {}
    for f in sorted((ctl / "calls").iterdir()):
        tid, n = f.name.rsplit(".", 1)
        calls.setdefault(tid, []).append(json.loads(f.read_text()))
    for tid in finished:  # trained exactly once, before the interruption
        assert len(calls[tid]) == 1, (tid, calls[tid])
    assert set(calls) == {r["id"] for r in rows}
    for r in rows:
        assert [h["epoch"] for h in read_history(study / "trials" / r["id"] / "history.jsonl")] == [
            1,
            2,
            3,
        ]
    for tid in started:  # continued from their checkpoint, not from scratch
        assert 1 <= calls[tid][-1]["start_epoch"] < 3, (tid, calls[tid])


def test_resources_follow_the_cluster() -> None:
    plan = build_plan(load_space("ablation"), data="/d")  # asks 4 CPUs + 0.5 GPU per trial
    log: list[str] = []
    cpu_box = {"CPU": 2.0}
    res = pipeline.effective_resources(plan, None, None, cpu_box, log.append)
    assert (res.cpus, res.gpus) == (2.0, 0.0)  # no GPU: CPU trials; 4 CPUs clamped to 2
    assert any("no GPU" in line for line in log)
    gpu_box = {"CPU": 16.0, "GPU": 1.0}
    res = pipeline.effective_resources(plan, 2, 0.25, gpu_box, log.append)
    assert (res.cpus, res.gpus) == (2, 0.25)  # four trials share the GPU
    with pytest.raises(StudyError, match="no GPU"):
        pipeline.effective_resources(plan, None, 0.5, cpu_box, log.append)  # asked explicitly
    quick = build_plan(load_space("ablation"))  # the quick block's own resources
    assert pipeline.effective_resources(quick, None, None, cpu_box, log.append).cpus == 1



def test_a_trial_given_several_gpus_trains_on_all_of_them() -> None:
    """N ≥ 2 whole GPUs per trial: N processes in the trial (ddp_workers N, the batch split);
    a fraction shares a card with one process; what cannot be split is a clear error."""
    from study.space.definition import Resources

    plan = build_plan(load_space("ablation"), data="/d")
    cfg = plan.trials[0].config  # batch_size 64 in the full profile
    assert pipeline.trial_share(cfg, Resources(cpus=8, gpus=2)).ddp_workers == 2
    assert pipeline.trial_share(cfg, Resources(cpus=8, gpus=4)).ddp_workers == 4
    half = pipeline.trial_share(cfg, Resources(cpus=2, gpus=0.5))
    assert (half.ddp_workers, half.threads) == (1, 2)
    with pytest.raises(StudyError, match="1.5 GPUs per trial"):
        pipeline.trial_share(cfg, Resources(cpus=8, gpus=1.5))
    odd = dataclasses.replace(cfg, batch_size=6)
    with pytest.raises(StudyError, match="batch_size 6 does not split over the trial's 4 GPUs"):
        pipeline.trial_share(odd, Resources(cpus=8, gpus=4))
    two = dataclasses.replace(cfg, ddp_workers=2)
    with pytest.raises(StudyError, match="ddp_workers 2: a trial with 1 GPU"):
        pipeline.trial_share(two, Resources(cpus=8, gpus=1))
    assert pipeline.trial_share(two, Resources(cpus=2, gpus=0)).ddp_workers == 2  # CPU ranks
    pipeline.check_fits_a_node(Resources(cpus=8, gpus=2), [1.0, 2.0])
    with pytest.raises(StudyError, match="4 GPUs per trial, but the largest node of the cluster "
                                         "has 2"):
        pipeline.check_fits_a_node(Resources(cpus=8, gpus=4), [2.0, 2.0])  # 4 in all

def test_trial_metrics_are_flat_scalars() -> None:
    import torch

    from study.running.trial import scalar_metrics

    flat = scalar_metrics(
        {
            "mAP": torch.tensor(0.5),
            "losses": {"iou": 1.0},
            "bad": float("nan"),
            "summary": "two\nlines",
            "epoch": 3,
            "note": "ok",
        }
    )
    assert flat == {"mAP": 0.5, "losses/iou": 1.0, "bad": None, "epoch": 3, "note": "ok"}


SAMPLED_SPACE = """
fixed: {epochs: 6, eval_interval: 1, no_aug_epochs: 1, workers: 0}
sample:
  lr: {type: loguniform, low: 0.001, high: 10.0}
  size: {type: choice, values: [nano, tiny]}
num_samples: 4
scheduler: {type: asha, max_t: 6, grace_period: 1, reduction_factor: 2}
resources: {cpus: 1}
"""


def test_sampled_study_with_optuna_asha_and_seeds(ray_address: str, tmp_path: Path) -> None:
    import optuna

    from tests.study_fakes import fake_train

    space = tmp_path / "sampled.yaml"
    space.write_text(SAMPLED_SPACE)
    ctl = control_folder(tmp_path / "ctl", epoch_s=0.05)
    study = tmp_path / "study"
    args = StudyArgs(space=str(space), data=str(ctl), out=study, seeds=2)
    out = run_study(args, train_fn=fake_train, log=lambda s: None)
    assert out.exit_code == 0, out.summary
    rows = read_csv(study / "results.csv")
    assert len(rows) == 8 and all(r["id"].startswith("trial-") for r in rows)
    for r in rows:  # ASHA may stop a trial early; one that reached its last epoch is done
        assert (r["status"], r["epoch"] == 6) in {("done", True), ("stopped", False)}, r
    # Repeater: each Optuna proposal ran with seeds 0 and 1
    proposals: dict[tuple, list[int]] = {}
    for r in rows:
        proposals.setdefault((r["lr"], r["size"]), []).append(r["seed"])
    assert len(proposals) == 4 and all(sorted(s) == [0, 1] for s in proposals.values())
    assert all(0.001 <= lr <= 10.0 and size in ("nano", "tiny") for lr, size in proposals)
    # the seeded TPE sampler's study lives in the study folder
    stored = optuna.load_study(study_name="study", storage=f"sqlite:///{study / 'optuna.sqlite'}")
    assert len(stored.trials) == 4
    assert {t.params["lr"] for t in stored.trials} == {lr for lr, _ in proposals}
    report = (study / "report.md").read_text()
    assert "| id | status | lr | size | mAP |" in report
    assert "Rows in the order of `val mAP`" in report  # ranked on validation, quoted on test
    assert (study / "test_mAP_vs_params.png").is_file() and (study / "best_config.yaml").is_file()
