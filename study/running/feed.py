"""Feeding the trials (issue 26): the node's frame cache built once before them, and the CPUs a
trial needs for its data, printed at the start of a study.

The driver calls, after the data check and before Ray:

- :func:`plan_frame_cache` builds (or finds) the decoded-frame cache of every dataset whose
  trials read it (``frame_cache: true``), once per node, over the training and validation
  images (a superset of every trial's split, whatever its ``split_seed``), at the one input size
  all those trials read (a letterbox ``img_size``), or at native resolution when they differ or
  use tiles; it logs what the cache cost (frames, disk, build time) or why it is off.
- :func:`cpu_request_line` says how many loader cores a trial needs to keep the data wait under
  10 % of its step time, from the figures of ``benchmarks/feed.py`` below, against the CPUs per
  trial the study asks for.

The figures are measurements where this project has them and estimates where it does not (a
GPU's step rate: no GPU was lent yet; ``benchmarks/gpu_check.sh`` measures them); the line says
which.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from model.config import TrialConfig
from model.data.frame_cache import (
    FULL,
    BuildInfo,
    FrameCacheError,
    fit_name,
    gib,
    open_frame_cache,
)
from model.data.loader import cache_fit

Log = Callable[[str], None]
TARGET_WAIT = 0.10  # the data wait a trial may have, as a share of its step time

# Loader samples/s per CPU core at a 640 input, mosaic + mixup (benchmarks/feed.py, one thread of
# the 2-core development CPU, FloW-like frames). "decode": each frame decoded per load (our
# loader; the official MosaicDetection measured 18.8 and 68.6); "cache": the frame cache with
# augmentation in the loader; "plan": the frame cache with augmentation on the device (the
# loader's share only). Keys: (pipeline, frames) with frames "1080p" or "360p".
LOADER_PER_CORE = {
    ("decode", "1080p"): 21.2, ("decode", "360p"): 84.7,
    ("cache", "1080p"): 118.7, ("cache", "360p"): 139.5,
    ("plan", "1080p"): 1395.3, ("plan", "360p"): 1403.3,
}  # fmt: skip
MEASURED_INPUT = 640
# Training samples/s of one trial at a 640 input, our defaults. CPU: measured (benchmarks/feed.py,
# batch 8, one thread). CUDA: an estimate for an H100/H200 with AMP at batch 64 (the issue's
# "thousands of images per second" for nano), not measured: no GPU was lent to this project yet.
STEP_CPU = {"nano": 3.7, "tiny": 1.6, "s": 0.9, "m": 0.4, "l": 0.2, "x": 0.1}
STEP_CUDA_ESTIMATE = {"nano": 2000.0, "tiny": 1400.0, "s": 900.0, "m": 450.0, "l": 280.0,
                      "x": 160.0}


def plan_frame_cache(
    cfgs: Sequence[TrialConfig], log: Log, *, progress: bool = False, threads: int = 0
) -> list[BuildInfo]:
    """Build or find the frame cache of every dataset whose trials have ``frame_cache`` on;
    one line per cache into ``log``. A cache that cannot be built (a disk too small, a folder
    not writable) is a line saying why: its trials then decode per load. Returns the caches."""
    from model.trainer import load_trial_data  # the dataset as the trials will load it

    groups: dict[tuple[str, str], list[TrialConfig]] = {}
    for cfg in cfgs:
        if cfg.frame_cache:
            groups.setdefault((cfg.data, cfg.frame_cache_dir), []).append(cfg)
    infos = []
    for (data, _root), group in groups.items():
        fits = {cache_fit(c) for c in group}
        fit = fits.pop() if len(fits) == 1 else FULL
        dataset = load_trial_data(group[0], progress=progress)
        images = [*dataset.train.images, *dataset.val_split.images]
        images = list({im["file_name"]: im for im in images}.values())
        where = data or "the embedded dataset"
        try:
            frames = open_frame_cache(
                [im["file_name"] for im in images],
                [(int(im["height"]), int(im["width"])) for im in images],
                fit, group[0].frame_cache_dir or None, progress=progress, threads=threads,
            )  # fmt: skip
        except FrameCacheError as e:
            log(f"frame cache of {where}: off ({e})")
            continue
        info = frames.info
        how = f"built in {info.seconds:.1f} s" if info.built else "found"
        log(
            f"frame cache of {where}: {info.frames} frames at {fit_name(fit)} resolution, "
            f"{gib(info.bytes)} on disk, {how} ({frames.store.base}); shared by "
            f"{len(group)} trial{'s' if len(group) != 1 else ''}"
        )
        infos.append(info)
    return infos


def _frames_key(frame_side: int) -> str:
    return "1080p" if frame_side > 1000 else "360p"


def loader_rate(cfg: TrialConfig, *, cuda: bool, frame_side: int) -> tuple[float, str]:
    """Samples/s one loader core gives ``cfg`` (and the pipeline's name): the measured figure,
    scaled by the input's area for the cached pipelines (their work is per output pixel).
    ``cache_images`` counts as cached frames (decoded once, held in RAM)."""
    device_aug = cfg.augment_on == "device" or (cfg.augment_on == "auto" and cuda)
    if not (cfg.frame_cache or cfg.cache_images):  # cache_images: decoded once, in RAM
        pipeline = "decode"
    else:
        pipeline = "plan" if device_aug else "cache"
    rate = LOADER_PER_CORE[(pipeline, _frames_key(frame_side))]
    if pipeline != "decode":
        rate *= (MEASURED_INPUT / cfg.input_size) ** 2
    return rate, pipeline


def cores_needed(step_rate: float, per_core: float) -> int:
    """Loader cores for a wait under :data:`TARGET_WAIT`: with ``c`` cores working in parallel
    with the step, the step waits ``1 - c * per_core / step_rate`` of its time."""
    return max(1, math.ceil((1 - TARGET_WAIT) * step_rate / per_core))


def cpu_request_line(
    cfgs: Sequence[TrialConfig], cpus_per_trial: float, *, cuda: bool, frame_side: int = 1920
) -> str:
    """One line: the loader cores the study's most demanding trial needs against the CPUs a
    trial gets. ``frame_side``: the frames' longer side (1080p figures above 1000 px)."""
    if not cfgs:
        return "feed: no trial to feed"
    worst: tuple[float, TrialConfig, float, str] | None = None
    for cfg in cfgs:
        scale = (MEASURED_INPUT / cfg.input_size) ** 2
        step = (STEP_CUDA_ESTIMATE if cuda else STEP_CPU)[cfg.size] * scale
        per_core, pipeline = loader_rate(cfg, cuda=cuda, frame_side=frame_side)
        if worst is None or step / per_core > worst[0] / worst[2]:
            worst = (step, cfg, per_core, pipeline)
    assert worst is not None
    step, cfg, per_core, pipeline = worst
    what = f"{cfg.size} at {cfg.input_size} px, {pipeline} pipeline on {_frames_key(frame_side)}"
    if not cuda:
        data = 1 / per_core
        share = data / (data + 1 / step)
        return (
            f"feed (CPU): {what}: the loader in the trial's own process takes {share:.0%} of a "
            f"step (measured figures); {cpus_per_trial:g} CPU per trial, all of them training"
        )
    need = cores_needed(step, per_core)
    verdict = "enough" if cpus_per_trial >= need + 1 else (
        f"too few: ask for {need + 1} (--cpus-per-trial), or turn frame_cache on"
    )
    return (
        f"feed (CUDA): {what}: a step takes ~{step:.0f} samples/s (estimate, not measured: "
        f"benchmarks/gpu_check.sh measures it), a loader core gives {per_core:.0f}: {need} "
        f"loader core{'s' if need != 1 else ''} keep the data wait under "
        f"{TARGET_WAIT:.0%}, plus one for the trial; {cpus_per_trial:g} CPUs per trial: {verdict}"
    )
