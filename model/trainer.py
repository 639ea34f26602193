"""The shared training function: every trial of a study calls :func:`train_detector`.

The official YOLOX recipe (``yolox/core/trainer.py``), re-written without Ray:

* SGD Nesterov over three parameter groups, per-iteration "yoloxwarmcos" lr (``model/optim.py``);
* at the start of the last ``no_aug_epochs``: ``loader.close_mosaic()`` and ``head.use_l1 = True``;
  like the official trainer we also evaluate after **every** one of those epochs (on top of every
  ``eval_interval`` epochs and the last one), so ``best.pt`` can pick among the final epochs;
* EMA of the weights, which is what gets evaluated, reported and selected;
* multi-scale training: a new input size every 10 iterations. The official trainer draws it from
  the global ``random`` module; we draw it from a generator seeded by
  ``(cfg.seed, iteration // 10)``, so that a resumed run picks the sizes an uninterrupted one did;
* AMP (float16 autocast + GradScaler) on CUDA only; channels_last on any device.

Validation and test (issue 23): every evaluation during training scores the **validation**
split (the layout's val, else a stratified hold-out of the training images: see
``model/data/raw.py``), and ``best.pt`` is the best validation mAP. The **test** split is scored
once, after the last epoch, on that chosen checkpoint, with a bootstrap interval over the test
images (``model/bootstrap.py``); its per-image evaluation is kept as ``test_eval.npz`` next to the
checkpoints, so a study can compare runs on the same resampled images. Reported keys carry their
split: ``val_mAP`` … ``val_AR_large`` per evaluation, ``test_mAP`` … once at the end.

Checkpoints (``last.pt`` after every epoch, ``best.pt`` by validation mAP) are written atomically
and hold everything a resume needs, so a run killed between epochs and resumed ends bit-identical
on CPU.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from model.assign.diagnostics import ASSIGN_DIAGNOSTICS, summarize_stats
from model.bootstrap import bootstrap_ci
from model.checkpoint import (
    CHECKPOINT_FORMAT,
    copy_checkpoint,
    load_checkpoint,
    load_resumable,
    previous_path,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from model.coco_eval import COCO_METRICS, evaluate_coco, prefixed
from model.config import ConfigError, TrialConfig, class_list
from model.data.dataset import DataError, DataReport, DetectionDataset, load_dataset
from model.data.device_augment import describe_placement
from model.data.embedded import embedded_dataset_dir
from model.data.loader import build_train_loader, random_input_size, rescale_batch
from model.data.raw import plural
from model.distributed import (
    World,
    close_world,
    free_port,
    init_world,
    spawn_ranks,
    sync_batchnorm,
)
from model.eval_preview import EVAL_PREVIEW, write_eval_preview
from model.optim import ModelEMA, YoloxWarmCos, build_optimizer, set_lr
from model.threads import torch_threads
from model.yolox import build_yolox_from_config, load_coco_weights
from model.yolox.loss import LOSS_KEYS

logger = logging.getLogger(__name__)

ReportFn = Callable[[dict[str, Any], "str | None"], None]
MULTISCALE_EVERY = 10  # iterations between input-size changes (official)
TEST_EVAL = "test_eval.npz"  # the test split's per-image evaluation, next to the checkpoints
BOOTSTRAP_RESAMPLES = 1000  # test images resampled for the interval of test_mAP / test_AP50
BOOTSTRAP_SEED = 0  # the same resampled sets for every run: intervals of two runs compare
# Keys that may differ between a checkpoint and the config resuming it: where the data or the
# weights live and how the run is executed, not what is trained.
RESUME_FREE_KEYS = frozenset(
    # threads: a resume on another thread count continues (numbers differ in the last bits)
    {"data", "workers", "device", "coco_weights", "pretrain_artifact", "cache_images", "threads",
     "frame_cache", "frame_cache_dir",  # (issue 26) the frame cache serves the same pixels
     "ddp_workers",  # (issue 24) the same training on more processes, to float rounding
     "eval_preview_images"}  # (issue 27) pictures for the trackers: nothing trained differs
)


class TrainingError(RuntimeError):
    """Training cannot go on (a non-finite loss); the message says where and what to change."""


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU; ``cuda`` without CUDA is a config error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "key 'device' is 'cuda' but torch sees no CUDA device; use device: auto or cpu"
        )
    return torch.device(name)


def load_trial_data(
    cfg: TrialConfig,
    *,
    progress: bool = False,
    on_report: Callable[[DataReport], None] | None = None,
) -> DetectionDataset:
    """The dataset of ``cfg.data`` ("" = the embedded set), restricted to ``cfg.classes`` when
    set, checked against ``cfg.num_classes``; the data report's warnings are logged.

    ``on_report(report)`` receives the data report before the checks below can fail (so a
    caller can write it even when every training image was dropped). Inside
    :func:`preloaded_data` the dataset given there is returned without reading the files again.
    """
    if (ready := _PRELOADED.get(_data_key(cfg))) is not None:
        return ready
    src = cfg.data or embedded_dataset_dir(progress=progress)
    dataset = load_dataset(
        src, val_fraction=cfg.val_fraction, split_seed=cfg.split_seed, progress=progress,
        classes=class_list(cfg.classes) or None,
    )
    for warning in dataset.report.warnings:
        logger.warning("data %s: %s", src, warning)
    if on_report is not None:
        on_report(dataset.report)
    require_images(dataset)
    names = dataset.train.class_names
    if len(names) != cfg.num_classes:
        raise ConfigError(_num_classes_error(cfg, dataset, src))
    return dataset


def _num_classes_error(cfg: TrialConfig, dataset: DetectionDataset, src: object) -> str:
    """num_classes against the data: every class with its boxes and files, and both fixes."""
    report, names = dataset.report, dataset.train.class_names
    found = "; ".join(report.describe_class(n) for n in names) or "no class"
    fixes = f"set num_classes: {len(names)} to train every class (--set num_classes={len(names)})"
    if 0 < cfg.num_classes < len(names):
        # the classes with most boxes, in the dataset's order
        ranked = sorted(names, key=lambda n: -report.classes[n].boxes)[: cfg.num_classes]
        keep = ",".join(n for n in names if n in ranked)
        fixes += (
            f", or classes: {keep} to keep only {'that' if cfg.num_classes == 1 else 'those'} "
            f"(--set classes={keep}; the other boxes are dropped and counted)"
        )
    return (
        f"key 'num_classes' is {cfg.num_classes} but the dataset {src} has "
        f"{plural(len(names), 'class')}: {found}; {fixes}"
    )


_PRELOADED: dict[str, DetectionDataset] = {}


def _data_key(cfg: TrialConfig) -> str:
    """The config as the data sees it (pretraining resolves ``pretrain_artifact`` later)."""
    values = cfg.to_dict()
    values.pop("pretrain_artifact", None)
    return json.dumps(values, sort_keys=True, default=str)


@contextmanager
def preloaded_data(cfg: TrialConfig, dataset: DetectionDataset) -> Iterator[None]:
    """Within the block, :func:`load_trial_data` of ``cfg`` returns ``dataset``: study/cli/train.py
    and the study's trials load (and report) the data before training, and checking every image
    a second time would double the start-up time on a large dataset."""
    key = _data_key(cfg)
    _PRELOADED[key] = dataset
    try:
        yield
    finally:
        _PRELOADED.pop(key, None)


def require_images(dataset: DetectionDataset) -> None:
    """DataError naming the folder when the training, validation or test split has no usable
    image (the loaders would otherwise fail deep inside with a bare ValueError); no validation
    split at all is the DataError of :attr:`DetectionDataset.val_split`."""
    splits = [dataset.train, dataset.val_split]
    if dataset.test_split is not None:
        splits.append(dataset.test_split)
    for split in splits:
        if split.num_images:
            continue
        stats = dataset.report.splits.get(split.name)
        read = stats.images_read if stats else 0
        dropped = [i for i in dataset.report.issues if i.split == split.name and i.image]
        kinds: dict[str, int] = {}
        for i in dropped:
            kinds[i.kind] = kinds.get(i.kind, 0) + 1
        folders = sorted({str(Path(i.image).parent) for i in dropped})
        where = folders[0] if len(folders) == 1 else str(dataset.root)
        why = (
            f"{'the' if read == 1 else 'all'} {plural(read, 'image')} in {where} "
            f"{'was' if read == 1 else 'were'} dropped ("
            + ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
            + ")"
            if read
            else f"no image was found in it under {dataset.root}"
        )
        raise DataError(
            f"{dataset.root}: the {split.name} split has no usable image: {why}; fix or replace "
            f"those files (python -m model.data check {dataset.root} lists each one)"
        )


def init_pretrained(net: nn.Module, cfg: TrialConfig) -> int:
    """Initialise ``net`` as ``cfg.pretrain`` says; returns how many tensors were loaded.

    Raises ConfigError (no artifact given), ``ArtifactError`` (unreadable artifact or another
    size) or ``WeightsUnavailableError`` (COCO weights neither on disk nor downloadable).
    """
    if cfg.pretrain == "none":
        return 0
    if cfg.pretrain == "coco":
        rep = load_coco_weights(net, cfg.size, path=cfg.coco_weights or None)
    else:
        if not cfg.pretrain_artifact:
            raise ConfigError(
                f"key 'pretrain' is {cfg.pretrain!r} but 'pretrain_artifact' is empty; run the "
                "trial through study/cli/train.py (it resolves the artifact through the cache), or "
                "make one with study/cli/pretrain.py and pass --set pretrain_artifact=PATH"
            )
        # Imported here: trials without pretraining never load the pretraining code.
        from model.pretraining.artifact import load_pretrained_backbone

        rep = load_pretrained_backbone(net, cfg.pretrain_artifact, cfg.size)
    logger.info("pretrain %s: %s", cfg.pretrain, rep.summary())
    return len(rep.loaded)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


@contextmanager
def _deterministic(device: torch.device, threads: int = 0):
    """Deterministic kernels on CPU (cheap there) and ``threads`` torch threads (0 = as they
    are); both restored afterwards (they are process-global)."""
    with torch_threads(threads):
        if device.type != "cpu":
            yield
            return
        before = torch.are_deterministic_algorithms_enabled()
        warn_before = torch.is_deterministic_algorithms_warn_only_enabled()
        torch.use_deterministic_algorithms(True, warn_only=True)
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(before, warn_only=warn_before)


def _loss_values(out: dict[str, Any]) -> dict[str, float]:
    """The loss dict as floats, with one device sync instead of one per entry."""
    keys = list(out)
    flat = torch.stack([torch.as_tensor(out[k]).detach().float().reshape(()).cpu() for k in keys])
    return dict(zip(keys, flat.tolist(), strict=True))


def multiscale_size(cfg: TrialConfig, iteration: int) -> int:
    """Input size of global ``iteration``: ``cfg.input_size`` (``img_size``, or ``tile_size``
    with tiles) for the first 10, then a seeded draw."""
    block = iteration // MULTISCALE_EVERY
    if cfg.multiscale == 0 or block == 0:
        return cfg.input_size
    return random_input_size(cfg, np.random.default_rng([cfg.seed, block]))


def is_eval_epoch(cfg: TrialConfig, epoch: int) -> bool:
    """Whether to evaluate after (0-based) ``epoch``."""
    done = epoch + 1
    in_no_aug = epoch >= cfg.epochs - cfg.no_aug_epochs
    return done % cfg.eval_interval == 0 or done == cfg.epochs or in_no_aug


def config_changes(saved_config: dict[str, Any], cfg: TrialConfig) -> str:
    """What ``cfg`` changes against a checkpoint's config, beyond :data:`RESUME_FREE_KEYS`, as
    ``"lr: 0.01 -> 0.02, …"`` (the first six; "" when nothing). A key the checkpoint lacks was
    added later, and its default is what that run trained with."""
    saved = {**TrialConfig().to_dict(), **saved_config}
    changed = sorted(
        k for k, v in cfg.to_dict().items() if k not in RESUME_FREE_KEYS and saved.get(k) != v
    )
    return ", ".join(f"{k}: {saved.get(k)!r} -> {getattr(cfg, k)!r}" for k in changed[:6])


def _check_resume(state: dict[str, Any], cfg: TrialConfig, path: Path, iters: int) -> None:
    diff = config_changes(state.get("config", {}), cfg)
    if diff:
        raise ConfigError(
            f"{path}: cannot resume, the checkpoint was trained with a different config ({diff}); "
            "use another checkpoint_dir/--out, or resume=False / --no-resume to start over"
        )
    if state.get("iters_per_epoch") != iters:
        raise ConfigError(
            f"{path}: cannot resume, the checkpoint has {state.get('iters_per_epoch')} iterations "
            f"per epoch but the data now gives {iters}; the dataset changed — start over with "
            "resume=False / --no-resume"
        )


class _Trainer:
    """State of one run; :func:`train_detector` is its only user."""

    def __init__(
        self,
        cfg: TrialConfig,
        checkpoint_dir: str | Path | None,
        progress: bool,
        world: World | None = None,
    ):
        self.cfg = cfg
        self.world = world or World()  # (ddp_workers > 1: model/distributed.py)
        self.progress = progress and self.world.main
        self.device = rank_device(cfg, self.world)
        self.amp = cfg.amp and self.device.type == "cuda"
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # as official; ~11 multi-scale shapes to tune
        self.ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        seed_everything(cfg.seed)
        self.dataset = load_trial_data(cfg, progress=progress)
        self.net = build_yolox_from_config(cfg)
        self.params = sum(p.numel() for p in self.net.parameters())
        self.net.head.assign_stats = True  # (issue 17) assignment diagnostics every epoch
        if self.world.active:  # every rank's batch as one: BatchNorm and the loss's normaliser
            sync_batchnorm(self.net, self.device)
            self.net.head.world = self.world
        self.loader = build_train_loader(
            self.dataset.train, cfg, device=self.device, progress=progress
        )
        self.iters = len(self.loader)
        self.schedule = YoloxWarmCos.from_config(cfg, self.iters)
        self.start_epoch = 0
        self.history: list[dict[str, Any]] = []
        self.best_map = -math.inf  # validation mAP of best.pt
        self.best_epoch = 0
        self.best_weights: dict[str, torch.Tensor] | None = None  # best.pt's EMA, once improved
        self.test: dict[str, Any] = {}  # the test scoring of the chosen checkpoint (at the end)
        self.train_time = 0.0
        self.images_seen = 0
        self.tile_counts = {"tile_boxes_whole": 0, "tile_boxes_clipped": 0,
                            "tile_boxes_dropped": 0}
        self.summary = ""  # COCO summary text of best.pt on val
        self.test_summary = ""
        self.pretrain_loaded = 0

    def setup(self, resume: bool) -> None:
        last = self.ckpt_dir / "last.pt" if self.ckpt_dir else None
        state = None
        if resume and last is not None and (last.is_file() or previous_path(last).is_file()):
            state, used, why = load_resumable(last)
            if used != last:  # (issue 27) a truncated or damaged last.pt: the one before it
                self._warn(
                    f"{last} is unreadable ({why}); resuming from the checkpoint before it, "
                    f"{used} (after epoch {state.get('epoch')}): the epochs since are trained "
                    "again"
                )
                last = used
        if state is None and self.ckpt_dir is not None:
            # Starting over in this folder: a stale best.pt/last.pt must not outlive the new run
            # (a crash before its first save would otherwise leave the old run to resume).
            for name in ("last.pt", "best.pt", previous_path("last.pt").name, EVAL_PREVIEW):
                (self.ckpt_dir / name).unlink(missing_ok=True)
        if state is None:  # fresh run: pretrained weights (resumed runs take all from the file)
            self.pretrain_loaded = init_pretrained(self.net, self.cfg)
        self.net.to(self.device)
        if self.cfg.channels_last:
            self.net.to(memory_format=torch.channels_last)
        self.world.broadcast(self.net)  # (the same weights on every rank: rank 0's)
        self.optimizer = build_optimizer(self.net, self.cfg)
        self.ema = (
            ModelEMA(self.net, self.cfg.ema_decay, ramp=self.cfg.ema_ramp) if self.cfg.ema else None
        )
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        if state is not None:
            assert last is not None
            _check_resume(state, self.cfg, last, self.iters)
            self._restore(state)
            self._log(f"resumed from {last} after epoch {self.start_epoch}/{self.cfg.epochs}")

    def _restore(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["model"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.start_epoch = int(state["epoch"])
        self.history = list(state["history"])
        self.best_map = float(state.get("best_val_mAP", state.get("best_mAP", -math.inf)))
        self.best_epoch = int(state["best_epoch"])
        self.train_time = float(state["train_time_s"])
        self.images_seen = int(state["images_seen"])
        self.tile_counts = {**self.tile_counts, **state.get("tile_counts", {})}
        self.summary = str(state["summary"])
        self.test = dict(state.get("test") or {})
        self.pretrain_loaded = int(state["pretrain_loaded"])
        if "assign_state" in state:  # (issue 17) the dynamic assigner's threshold and beta
            self.net.head.dynamic_state.load_state_dict(state["assign_state"])
        set_rng_state(state["rng"])  # last: building the run above consumed random numbers

    def _log(self, line: str) -> None:
        if self.progress:  # above the bar instead of through it
            tqdm.write(line)
        else:
            logger.info(line)

    def _warn(self, line: str) -> None:
        """A line the user must see, also from inside a study's trial (its warnings reach the
        driver's console; its info lines do not)."""
        if self.progress:
            tqdm.write(line)
        else:
            logger.warning(line)

    @property
    def eval_net(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.net

    def run(self, report: ReportFn | None) -> None:
        cfg = self.cfg
        # said once training starts (after the weights and the resume checks could fail)
        self._log(describe_placement(self.loader.placement, cfg.augment_on, self.device))
        total = self.iters * cfg.epochs
        bar = tqdm(
            total=total, initial=self.start_epoch * self.iters, desc="train", unit="it",
            disable=not self.progress, dynamic_ncols=True,
        )
        try:
            for epoch in range(self.start_epoch, cfg.epochs):
                if epoch >= cfg.epochs - cfg.no_aug_epochs:
                    self.loader.close_mosaic()
                    self.net.head.use_l1 = True
                losses = self._train_epoch(epoch, bar)
                self._end_epoch(epoch, losses, report)
        finally:
            bar.close()

    def _train_epoch(self, epoch: int, bar: tqdm) -> dict[str, float]:
        """One pass over the loader; returns the epoch's means (:meth:`_epoch_summary`)."""
        self.net.train()
        self.loader.set_epoch(epoch)
        sums = dict.fromkeys(LOSS_KEYS, 0.0)
        stat_sums: dict[str, Any] = {}  # assignment counts (tensors), see model.assign.diagnostics
        autocast = (
            torch.autocast("cuda", dtype=torch.float16) if self.amp else nullcontext()
        )
        start = time.perf_counter()
        images_done = 0
        lr = self.schedule(epoch * self.iters)
        for i, (images, targets) in zip(range(self.iters), self.loader, strict=False):
            values, lr, shape = self._train_step(epoch, i, images, targets, autocast, stat_sums)
            for k in sums:
                sums[k] += values.get(k, 0.0)
            images_done += shape[0]
            bar.update(1)
            if self.progress:
                bar.set_postfix(
                    epoch=f"{epoch + 1}/{self.cfg.epochs}", loss=f"{values['total_loss']:.2f}",
                    lr=f"{lr:.2e}", size=shape[-1],
                )
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.train_time += time.perf_counter() - start
        self.images_seen += images_done
        return self._epoch_summary(epoch, sums, stat_sums, lr)

    def _train_step(
        self,
        epoch: int,
        i: int,
        images: torch.Tensor,
        targets: torch.Tensor,
        autocast: AbstractContextManager[Any],
        stat_sums: dict[str, Any],
    ) -> tuple[dict[str, float], float, torch.Size]:
        """Iteration ``i`` of ``epoch``: its lr and input size, forward, backward, EMA update.

        Adds the step's assignment counts to ``stat_sums``; returns (the loss values, the lr,
        the shape of the resized batch (B, 3, S, S)).
        """
        cfg, net = self.cfg, self.net
        step = epoch * self.iters + i
        lr = self.schedule(step)
        set_lr(self.optimizer, lr)
        images, targets = rescale_batch(images, targets, multiscale_size(cfg, step))
        shape = images.shape  # the whole batch (each rank trains on its slice of it)
        images, targets = self.world.shard(images), self.world.shard(targets)
        if cfg.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast:
            out = net(images, targets)
        for k, v in out.pop("assign_stats", {}).items():  # counts, not losses
            stat_sums[k] = stat_sums.get(k, 0.0) + v
        values = self._global_values(out)
        if not math.isfinite(values["total_loss"]):
            self._non_finite(step, epoch, i, values)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(out["total_loss"]).backward()
        self.world.average_gradients(net)  # (one process: nothing to do)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.ema is not None:
            self.ema.update(net)
        return values, lr, shape

    def _global_values(self, out: dict[str, Any]) -> dict[str, float]:
        """The step's loss values as floats; on several ranks, those of the whole batch (each
        rank's terms are its share of them, times the ranks: their mean)."""
        if not self.world.active:
            return _loss_values(out)
        keys = list(out)
        local = torch.stack([torch.as_tensor(out[k]).detach().float().reshape(()).cpu()
                             for k in keys])
        return dict(zip(keys, (self.world.sum(local) / self.world.size).tolist(), strict=True))

    def _epoch_summary(
        self, epoch: int, sums: dict[str, float], stat_sums: dict[str, Any], lr: float
    ) -> dict[str, Any]:
        """The epoch's mean losses, its last lr, its assignment diagnostics and (tiles) its cut
        counts; logs the diagnostics and the counts."""
        means: dict[str, Any] = {k: v / max(self.iters, 1) for k, v in sums.items()}
        means["lr"] = lr
        diag = summarize_stats(stat_sums)
        means.update(diag)
        self._log_assignment(epoch, diag)
        if self.cfg.input_mode == "tiles":
            means.update(self._take_tile_counts(epoch))  # this epoch's counts
        return means

    def _log_assignment(self, epoch: int, diag: dict[str, float]) -> None:
        """One line of the epoch's positives per object by size, share without any, mean IoU."""
        buckets = " ".join(
            f"{k.removeprefix('pos_per_obj_')} {v:.2f}" for k, v in diag.items()
            if k.startswith("pos_per_obj_")
        )
        self._log(
            f"epoch {epoch + 1}/{self.cfg.epochs}: positives per object by size (px) {buckets}; "
            f"objects without a positive {diag['no_pos_share']:.1%}; mean IoU of positives "
            f"{diag['pos_mean_iou']:.3f}"
        )

    def _take_tile_counts(self, epoch: int) -> dict[str, int]:
        """This epoch's counts of boxes the tile crops kept whole, clipped and dropped, added
        to the run's; logged."""
        cfg = self.cfg
        cut = self.loader.take_cut_counts()
        for k, v in cut.items():
            self.tile_counts[k] += v
        self._log(
            f"epoch {epoch + 1}/{cfg.epochs}: tile crops kept {cut['tile_boxes_whole']} "
            f"boxes whole, clipped {cut['tile_boxes_clipped']}, dropped "
            f"{cut['tile_boxes_dropped']} (< {cfg.tile_min_visible:g} of the box visible)"
        )
        return cut

    def _non_finite(self, step: int, epoch: int, i: int, values: dict[str, float]) -> None:
        last = self.ckpt_dir / "last.pt" if self.ckpt_dir else None
        kept = (
            f"the last good checkpoint {last} (after epoch {epoch}) is intact"
            if last is not None and last.is_file() else "no checkpoint was written yet"
        )
        shown = ", ".join(f"{k}={v:.4g}" for k, v in values.items())
        raise TrainingError(
            f"non-finite loss at step {step} (epoch {epoch + 1}/{self.cfg.epochs}, iteration "
            f"{i + 1}/{self.iters}): {shown}; {kept}. Fix: lower lr (now {self.cfg.lr}), use "
            "warmup_epochs > 0, or set amp: false"
        )

    def _end_epoch(self, epoch: int, losses: dict[str, float], report: ReportFn | None) -> None:
        if not self.world.main:  # rank 0 evaluates, saves and reports
            return
        metrics: dict[str, Any] | None = None
        improved = False
        if is_eval_epoch(self.cfg, epoch):
            result = evaluate_coco(self.eval_net, self.dataset.val_split, self.cfg)
            coco = {k: float(result[k]) for k in COCO_METRICS}
            improved = coco["mAP"] > self.best_map
            if improved:
                self.best_map, self.best_epoch = coco["mAP"], epoch + 1
                self.summary = result["summary"]
                self.best_weights = {
                    k: v.detach().to("cpu", copy=True)
                    for k, v in self.eval_net.state_dict().items()
                }
            metrics = {
                "epoch": epoch + 1,
                "iteration": (epoch + 1) * self.iters,
                **losses,
                "images_per_s": self.images_seen / max(self.train_time, 1e-9),
                "train_time_s": self.train_time,
                **prefixed(coco, "val_"),
                "best_val_mAP": self.best_map,
                "best_epoch": self.best_epoch,
            }
            self.history.append(metrics)
            if self.ckpt_dir is not None:  # the pictures the trackers show (issue 27)
                write_eval_preview(
                    self.eval_net, self.dataset.val_split, self.cfg, self.ckpt_dir / EVAL_PREVIEW
                )
            self._log(
                f"epoch {epoch + 1}/{self.cfg.epochs}: val mAP {coco['mAP']:.4f} AP50 "
                f"{coco['AP50']:.4f} AR_100 {coco['AR_100']:.4f} loss {losses['total_loss']:.3f}"
            )
        if epoch + 1 == self.cfg.epochs:  # the end: the chosen checkpoint meets the test split
            self.test = self._score_test()
            if metrics is not None:
                metrics.update(self.test)
        path = self._save(epoch, improved)
        if metrics is not None and report is not None:
            report(dict(metrics), str(path) if path else None)

    def _chosen_weights(self) -> dict[str, torch.Tensor] | None:
        """best.pt's evaluated (EMA) weights: kept since the last improvement, else (a resumed
        run that has not improved since) read from best.pt; None = the current weights."""
        if self.best_weights is not None:
            return self.best_weights
        best = self.ckpt_dir / "best.pt" if self.ckpt_dir else None
        if best is None or not best.is_file():
            return None
        state = load_checkpoint(best)
        return state["ema"]["module"] if state.get("ema") else state["model"]

    def _score_test(self) -> dict[str, Any]:
        """The test split's 12 numbers for the checkpoint chosen on validation (best.pt), with
        the bootstrap intervals of mAP and AP50 over the test images; {} without a test split."""
        split = self.dataset.test_split
        if split is None:
            return {}
        net = self.eval_net
        chosen = self._chosen_weights()
        saved = None
        if chosen is not None:
            saved = {k: v.detach().clone() for k, v in net.state_dict().items()}
            net.load_state_dict(chosen)
        try:
            result = evaluate_coco(net, split, self.cfg, per_image=True)
        finally:
            if saved is not None:
                net.load_state_dict(saved)
        per_image = result["per_image"]
        out: dict[str, Any] = {
            **prefixed({k: float(result[k]) for k in COCO_METRICS}, "test_"),
            "test_epoch": self.best_epoch,
            "test_images": split.num_images,
        }
        intervals = bootstrap_ci(per_image, resamples=BOOTSTRAP_RESAMPLES, seed=BOOTSTRAP_SEED)
        for name, iv in intervals.items():
            out[f"test_{name}_lo"], out[f"test_{name}_hi"] = iv.lo, iv.hi
        if self.ckpt_dir is not None:
            per_image.save(self.ckpt_dir / TEST_EVAL)
        self.test_summary = result["summary"]
        self._log(
            f"test ({split.num_images} images, checkpoint of epoch {self.best_epoch}): mAP "
            f"{out['test_mAP']:.4f} [{out.get('test_mAP_lo', math.nan):.4f}, "
            f"{out.get('test_mAP_hi', math.nan):.4f}] AP50 {out['test_AP50']:.4f}"
        )
        return out

    def _save(self, epoch: int, improved: bool) -> Path | None:
        if self.ckpt_dir is None:
            return None
        state = {
            "format": CHECKPOINT_FORMAT,
            "epoch": epoch + 1,  # completed epochs
            "iters_per_epoch": self.iters,
            "model": self.net.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng_state(),
            "config": self.cfg.to_dict(),
            "history": self.history,
            "best_val_mAP": self.best_map,
            "best_epoch": self.best_epoch,
            "train_time_s": self.train_time,
            "images_seen": self.images_seen,
            "tile_counts": self.tile_counts,
            "summary": self.summary,
            "test": self.test,
            "pretrain_loaded": self.pretrain_loaded,
            "assign_state": self.net.head.dynamic_state.state_dict(),
            "params": self.params,
            "class_names": list(self.dataset.train.class_names),
        }
        # the one it replaces stays as last.prev.pt: a resume falls back to it (issue 27)
        last = save_checkpoint(state, self.ckpt_dir / "last.pt", keep_previous=True)
        if improved:
            copy_checkpoint(last, self.ckpt_dir / "best.pt")
        return last

    def result(self) -> dict[str, Any]:
        final = self.history[-1] if self.history else {}
        chosen = next((h for h in self.history if h["epoch"] == self.best_epoch), final)
        if not self.test and self.start_epoch >= self.cfg.epochs:
            self.test = self._score_test()  # a finished run from before the test scoring
        best = self.ckpt_dir / "best.pt" if self.ckpt_dir else None
        last = self.ckpt_dir / "last.pt" if self.ckpt_dir else None
        test_eval = self.ckpt_dir / TEST_EVAL if self.ckpt_dir else None
        return {
            # the chosen checkpoint (best.pt, by validation mAP): its validation numbers, and
            # the test split's, scored once
            **{f"val_{k}": float(chosen.get(f"val_{k}", 0.0)) for k in COCO_METRICS},
            **self.test,
            "best_val_mAP": max(self.best_map, 0.0) if self.history else 0.0,
            "best_epoch": self.best_epoch,
            "epochs": self.cfg.epochs,
            "resumed_from_epoch": self.start_epoch,
            "train_time_s": self.train_time,
            "images_per_s": self.images_seen / max(self.train_time, 1e-9),
            "params": self.params,
            "pretrain_loaded": self.pretrain_loaded,
            "device": str(self.device),
            "input_mode": self.cfg.input_mode,
            "eval_boxes": "clipped to the image" if self.cfg.eval_clip_boxes else
            "unclipped (official)",
            **({"tile_counts": dict(self.tile_counts)} if self.cfg.input_mode == "tiles" else {}),
            # (issue 17) the last evaluated epoch's assignment diagnostics (see summarize_stats)
            "assignment": {k: final[k] for k in ASSIGN_DIAGNOSTICS if k in final},
            "summary": self.summary,
            "test_summary": self.test_summary,
            "last_checkpoint": str(last) if last and last.is_file() else None,
            "best_checkpoint": str(best) if best and best.is_file() else None,
            "test_eval": str(test_eval) if test_eval and test_eval.is_file() else None,
        }


def train_detector(
    cfg: TrialConfig,
    report: ReportFn | None = None,
    checkpoint_dir: str | Path | None = None,
    *,
    resume: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Train one YOLOX detector for ``cfg`` and evaluate its EMA weights with COCO metrics.

    ``report(metrics, checkpoint_path)`` is called after each evaluation with ``epoch``,
    ``iteration``, ``lr``, the epoch-mean losses, ``images_per_s``, ``train_time_s``, the 12
    :data:`~model.coco_eval.COCO_METRICS` of the **validation** split as ``val_mAP`` …
    ``val_AR_large``, ``best_val_mAP`` and ``best_epoch``; the last report also carries the
    **test** split's 12 numbers of the chosen checkpoint (``test_mAP`` …, ``test_epoch``,
    ``test_images``, bootstrap intervals ``test_mAP_lo`` / ``_hi`` and ``test_AP50_lo`` /
    ``_hi``; none of these without a test split). ``checkpoint_path`` is ``last.pt`` (None
    without ``checkpoint_dir``). With ``resume`` and an existing ``checkpoint_dir/last.pt`` the
    run continues from it.

    Returns the chosen checkpoint's (best.pt, by validation mAP) ``val_*`` numbers and the
    test figures above, ``best_val_mAP``, ``best_epoch``, ``epochs``, ``train_time_s``,
    ``images_per_s``, ``params``, ``pretrain_loaded``, ``device``, ``summary`` /
    ``test_summary`` (COCO summary texts, validation and test), ``assignment`` (the last
    evaluated epoch's assignment diagnostics: positives per object by size, share of objects
    without one, mean IoU of positives; also in every report) and the ``last_checkpoint`` /
    ``best_checkpoint`` / ``test_eval`` (per-image test evaluation) paths.

    With ``ddp_workers`` > 1 the run takes that many processes (model/distributed.py): this one
    is rank 0, which evaluates, saves and reports; the others train on their slices of each
    batch.

    Raises :class:`~model.config.ConfigError` for config/data mismatches and
    :class:`TrainingError` on a non-finite loss (the last good checkpoint stays intact).
    """
    if cfg.ddp_workers > 1:
        return _train_distributed(cfg, report, checkpoint_dir, resume, progress)
    return _train(cfg, report, checkpoint_dir, resume, progress, World())


def _train(
    cfg: TrialConfig,
    report: ReportFn | None,
    checkpoint_dir: str | Path | None,
    resume: bool,
    progress: bool,
    world: World,
) -> dict[str, Any]:
    threads = cfg.threads
    if world.active and threads:  # the trial's share, divided between its ranks
        threads = max(1, threads // world.size)
    with _deterministic(rank_device(cfg, world), threads):
        trainer = _Trainer(cfg, checkpoint_dir, progress, world)
        trainer.setup(resume)
        trainer.run(report)
        return trainer.result()


def rank_device(cfg: TrialConfig, world: World) -> torch.device:
    """The config's device; on CUDA with several ranks, rank r takes GPU r of the trial's."""
    device = resolve_device(cfg.device)
    if device.type == "cuda" and world.active:
        torch.cuda.set_device(world.rank)
        return torch.device("cuda", world.rank)
    return device


def _train_distributed(
    cfg: TrialConfig,
    report: ReportFn | None,
    checkpoint_dir: str | Path | None,
    resume: bool,
    progress: bool,
) -> dict[str, Any]:
    """Ranks 1.. as spawned processes, rank 0 here; a rank that fails fails the run."""
    size, port = cfg.ddp_workers, free_port()
    procs = spawn_ranks(size, _rank_main, (size, port, cfg, checkpoint_dir, resume))
    ok = False
    try:
        world = init_world(0, size, port, rank_device(cfg, World(0, size)))
        try:
            result = _train(cfg, report, checkpoint_dir, resume, progress, world)
        finally:
            close_world(world)
        ok = True
        return result
    finally:
        for p in procs:
            p.join(timeout=120 if ok else 5)
            if p.is_alive():
                p.terminate()
        failed = [p.exitcode for p in procs if p.exitcode not in (0, None)]
        if ok and failed:
            raise TrainingError(
                f"a rank of the {size}-process run ended with exit code {failed[0]}; its "
                "traceback is above; rerun (it resumes from last.pt) or set ddp_workers: 1"
            )


def _rank_main(
    rank: int, size: int, port: int, cfg: TrialConfig, checkpoint_dir: str | Path | None,
    resume: bool,
) -> None:
    """A spawned rank > 0: join the run's process group and train its slices."""
    world = init_world(rank, size, port, rank_device(cfg, World(rank, size)))
    try:
        _train(cfg, None, checkpoint_dir, resume, False, world)
    finally:
        close_world(world)
