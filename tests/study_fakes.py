"""A fake training function for the study tests and benchmarks (same signature as
``model.trainer.train_detector``).

Its "dataset" (``cfg.data``) is a control folder (:func:`control_folder`: a tiny real FloW-layout
dataset, which the trials check, plus ``fake.json``): ``fake.json`` sets the behaviour, and every
call leaves ``calls/<trial>.<n>`` there (what epoch it started from and its pid), so a test can
count how often a trial really trained, or kill it. Metrics are a deterministic function of the
config, the seed and the epoch: each evaluation reports ``val_*`` numbers, the last one (and the
returned summary) also ``test_*`` numbers, 0.01 below validation, as train_detector does.
``fake.json``'s ``effects`` ({"key=value": Δ}) and ``noise`` (a standard deviation) make arms with
known effects and seed noise: the noise is a normal draw seeded by (seed, the trial's values).
Issue 27: ``preview`` writes an ``eval_preview.jpg`` beside each checkpoint (a grey image with
the epoch in it), ``torch_ckpt`` writes the checkpoints with model/checkpoint.py (atomic,
last.prev.pt kept), and ``disk_full`` ({trial id: epoch}) makes that epoch's checkpoint write
meet a full disk — a real ENOSPC from the kernel (its temporary file is a link to /dev/full) —
as long as ``<data>/disk_full`` exists (the test removes it: room again). ``peak_epoch`` p: the
validation numbers rise until epoch p and fall after it, so the chosen checkpoint (``best_epoch``,
what the returned summary's ``val_*`` are) is not the last evaluation (issue 27: the value the
Optuna study holds must be the chosen checkpoint's).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from model.coco_eval import COCO_METRICS
from model.config import TrialConfig

SIZE = {"nano": 0.20, "tiny": 0.25, "s": 0.23}
PRETRAIN = {"none": -0.01, "coco": 0.0, "center_loss": 0.02, "ssl": 0.03}
LOSS = {"iou": 0.0, "giou": 0.002, "diou": 0.004, "ciou": 0.01}
PARAMS = {"nano": 900_000, "tiny": 5_000_000, "s": 9_000_000}


def control_folder(path: Path, **behaviour: Any) -> Path:
    """A fake training function's "dataset": 3 + 2 tiny images (FloW layout, class bottle) and
    ``fake.json`` = ``behaviour`` (epoch_s, fail_once, fail_at, diverge, diverge_at, …)."""
    from tests.data_builders import make_flow

    make_flow(
        path,
        train={f"t{i}": [("bottle", 4 + i, 4, 20 + i, 18)] for i in range(3)},
        test={f"v{i}": [("bottle", 10, 8 + i, 30, 22 + i)] for i in range(2)},
    )
    (path / "fake.json").write_text(json.dumps(behaviour))
    return path


def fake_score(cfg: TrialConfig, epoch: int, ctl: dict[str, Any] | None = None) -> float:
    ctl = ctl or {}
    score = (
        SIZE.get(cfg.size, 0.2)
        + PRETRAIN[cfg.pretrain]
        + LOSS[cfg.reg_loss]
        + 0.004 * ((cfg.seed * 7) % 5)
        + 0.01 * epoch / cfg.epochs
        + 0.001 * cfg.lr
    )
    values = cfg.to_dict()
    for key, delta in ctl.get("effects", {}).items():
        k, _, v = key.partition("=")
        score += float(delta) if str(values.get(k)) == v else 0.0
    if ctl.get("noise"):
        # seed noise shared by the arms (paired) plus noise of the arm itself
        import numpy as np

        arm = "/".join(f"{k}={values[k]}" for k in ("pretrain", "reg_loss", "size"))
        digest = int(hashlib.sha1(f"{arm}/{cfg.seed}".encode()).hexdigest()[:8], 16)
        shared = np.random.default_rng([cfg.seed, 7]).normal(0.0, float(ctl["noise"]))
        own = np.random.default_rng(digest).normal(0.0, float(ctl.get("arm_noise", 0.0)))
        score += float(shared + own)
    return score


def fake_coco(score: float) -> dict[str, float]:
    out = {m: round(min(score + 0.01 * i, 1.0), 6) for i, m in enumerate(COCO_METRICS)}
    out["AP_large"] = -1.0  # COCO's "no ground truth in this area range"
    out["AR_large"] = -1.0
    return out


def _node_id() -> str | None:
    """The Ray node this call runs on (None outside Ray)."""
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None


def fake_test(val: dict[str, float]) -> dict[str, float]:
    """The test figures of a fake run: 0.01 below its validation ones (COCO's -1 kept)."""
    return {f"test_{k}": (v if v < 0 else round(v - 0.01, 6)) for k, v in val.items()}


def _spin(seconds: float) -> None:
    """Busy-wait (a trial uses its CPU, like training would)."""
    end = time.perf_counter() + seconds
    x = 0
    while time.perf_counter() < end:
        x += 1


def fake_train(
    cfg: TrialConfig,
    report: Any = None,
    checkpoint_dir: str | None = None,
    *,
    resume: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    ctl_dir = Path(cfg.data)
    ctl = (
        json.loads((ctl_dir / "fake.json").read_text()) if (ctl_dir / "fake.json").is_file() else {}
    )
    ckpt = Path(checkpoint_dir) if checkpoint_dir else None
    tid = ckpt.parent.name.split("-", 1)[-1] if ckpt else "trial"  # <study hash>-<trial id>
    calls = ctl_dir / "calls"
    calls.mkdir(exist_ok=True)
    n = len(list(calls.glob(f"{tid}.*")))
    start = 0
    if resume and ckpt and ctl.get("torch_ckpt"):
        from model.checkpoint import load_resumable, previous_path

        if (ckpt / "last.pt").is_file() or previous_path(ckpt / "last.pt").is_file():
            start = int(load_resumable(ckpt / "last.pt")[0]["epoch"])
    elif resume and ckpt and (ckpt / "last.pt").is_file():
        start = json.loads((ckpt / "last.pt").read_text())["epoch"]
    (calls / f"{tid}.{n}").write_text(
        json.dumps({"start_epoch": start, "pid": os.getpid(), "node": _node_id()})
    )
    t0 = time.perf_counter()
    coco: dict[str, float] = {}
    peak = int(ctl.get("peak_epoch", 0)) or cfg.epochs
    chosen: dict[str, float] = {}
    for epoch in range(start, cfg.epochs):
        _spin(float(ctl.get("epoch_s", 0.0)))
        done = epoch + 1
        coco = fake_coco(fake_score(cfg, done if done <= peak else max(2 * peak - done, 0), ctl))
        best = min(done, peak)
        if done <= peak or not chosen:  # (a resumed run past its peak: the last as chosen)
            chosen = coco
        path = None
        if ckpt:
            ckpt.mkdir(parents=True, exist_ok=True)
            if ctl.get("preview"):
                _write_preview(ckpt, done)
            if ctl.get("torch_ckpt"):
                _save_torch(ckpt, done, ctl, ctl_dir, tid)
            else:
                tmp = ckpt / "last.pt.tmp"
                tmp.write_text(json.dumps({"epoch": done}))
                tmp.replace(ckpt / "last.pt")
            path = str(ckpt / "last.pt")
        if report is not None and (done % cfg.eval_interval == 0 or done == cfg.epochs):
            metrics = {
                "epoch": done,
                "total_loss": 1.0 / done,
                "lr": cfg.lr,
                "images_per_s": 100.0,
                "train_time_s": time.perf_counter() - t0,
                **{f"val_{k}": v for k, v in coco.items()},
                "best_epoch": best,
                **(fake_test(chosen) if done == cfg.epochs else {}),
            }
            report(metrics, path)
        if tid in ctl.get("fail_once", []) and n == 0 and done == int(ctl.get("fail_at", 1)):
            raise RuntimeError(f"fake crash of {tid} after epoch {done}")
        if tid in ctl.get("diverge", []) and done == int(ctl.get("diverge_at", 1)):
            from model.trainer import TrainingError

            kept = f"the last good checkpoint {ckpt / 'last.pt'} (after epoch {done})"
            raise TrainingError(f"non-finite loss in epoch {done + 1}: total_loss=nan; {kept}")
    return {
        **{f"val_{k}": v for k, v in chosen.items()},
        **fake_test(chosen),
        "best_epoch": min(cfg.epochs, peak),
        "params": PARAMS.get(cfg.size, 1),
        "train_time_s": time.perf_counter() - t0,
        "images_per_s": 100.0,
        "summary": "fake\nrun",
    }


def _write_preview(ckpt: Path, epoch: int) -> None:
    import cv2
    import numpy as np

    from model.eval_preview import EVAL_PREVIEW

    image = np.full((48, 64, 3), 60 + 10 * epoch, dtype=np.uint8)
    cv2.putText(image, str(epoch), (20, 36), cv2.FONT_HERSHEY_SIMPLEX, 1, (0, 255, 0), 2)
    cv2.imwrite(str(ckpt / EVAL_PREVIEW), image)


def _save_torch(ckpt: Path, epoch: int, ctl: dict[str, Any], ctl_dir: Path, tid: str) -> None:
    """The checkpoint through model/checkpoint.py; on the epoch ``disk_full`` names, while
    ``<data>/disk_full`` exists, its temporary file is a link to /dev/full (ENOSPC)."""
    import torch

    from model.checkpoint import save_checkpoint

    state = {"epoch": epoch, "weights": torch.zeros(64 * 1024)}  # 256 kB
    if ctl.get("disk_full", {}).get(tid) == epoch and (ctl_dir / "disk_full").exists():
        os.symlink("/dev/full", ckpt / f".last.pt.{os.getpid()}.tmp")
    save_checkpoint(state, ckpt / "last.pt", keep_previous=True)


def flaky_train(
    cfg: TrialConfig,
    report: Any = None,
    checkpoint_dir: str | None = None,
    *,
    resume: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """The real ``train_detector``, except that the pretrain=none / ciou trial crashes once right
    after its first checkpoint, and loses its working copy of it (as if its node died), so the
    retry can only continue from the checkpoint Tune kept."""
    # the marker lives outside the trial folders (Tune may recreate those between attempts),
    # keyed by the config and the Ray node (new for every Ray session, so test runs never share)
    import ray

    from model.trainer import train_detector

    node = ray.get_runtime_context().get_node_id() if ray.is_initialized() else "-"
    key = hashlib.sha1(f"{sorted(cfg.to_dict().items())}{node}".encode()).hexdigest()[:16]
    marker = Path(tempfile.gettempdir()) / "flaky_train" / key if checkpoint_dir else None
    if marker is None or marker.exists() or (cfg.pretrain, cfg.reg_loss) != ("none", "ciou"):
        return train_detector(cfg, report, checkpoint_dir, resume=resume, progress=progress)

    def report_then_crash(metrics: dict[str, Any], path: str | None) -> None:
        report(metrics, path)
        marker.parent.mkdir(exist_ok=True)
        marker.write_text(str(metrics["epoch"]))
        for f in Path(checkpoint_dir).iterdir():
            f.unlink()
        raise RuntimeError(f"injected crash after epoch {metrics['epoch']}")

    return train_detector(cfg, report_then_crash, checkpoint_dir, resume=resume, progress=progress)


def killable_train(
    cfg: TrialConfig,
    report: Any = None,
    checkpoint_dir: str | None = None,
    *,
    resume: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """The real ``train_detector``, except that its first attempt stops in the middle of epoch 2
    (after that epoch's first step) and waits to be killed, its pid in ``<data>/../kill_me.json``
    (which also marks later attempts as retries that train normally)."""
    import model.trainer as mt

    marker = Path(cfg.data).parent / "kill_me.json"
    if marker.exists() or not checkpoint_dir:
        return mt.train_detector(cfg, report, checkpoint_dir, resume=resume, progress=progress)
    rescale = mt.rescale_batch
    state = {"reported": 0, "steps_after": 0}

    def count_reports(metrics: dict[str, Any], path: str | None) -> None:
        report(metrics, path)
        state["reported"] += 1

    def rescale_then_wait(*args: Any, **kwargs: Any) -> Any:
        if state["reported"]:
            state["steps_after"] += 1
            if state["steps_after"] == 2:  # one step of epoch 2 done: mid-epoch
                marker.write_text(json.dumps({"pid": os.getpid()}))
                time.sleep(120)
        return rescale(*args, **kwargs)

    mt.rescale_batch = rescale_then_wait
    try:
        return mt.train_detector(
            cfg, count_reports, checkpoint_dir, resume=resume, progress=progress
        )
    finally:
        mt.rescale_batch = rescale
