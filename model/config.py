"""The trial config: one flat dataclass holding every knob a trial can vary.

Flat keys so that Ray Tune (or ``--set KEY=VALUE``) can vary any of them. It is read from YAML
through :func:`load_config` / :func:`config_from_dict`, which reject unknown keys and wrong types
naming the key and the file, and written back with :func:`save_config` in the same schema.
Variants are made with ``dataclasses.replace`` (which re-runs validation).
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml

Size = Literal["nano", "tiny", "s", "m", "l", "x"]
PretrainMethod = Literal["center_loss", "ssl"]  # computed by model/pretraining/ (an artifact)
Pretrain = Literal["none", "coco", PretrainMethod]  # (a nested Literal is flattened)
RegLoss = Literal["iou", "giou", "diou", "ciou", "nwd"]
Device = Literal["auto", "cpu", "cuda"]
PretrainInit = Literal["scratch", "coco"]
SslLoss = Literal["cosine", "infonce"]
Optimizer = Literal["sgd", "adamw"]
InputMode = Literal["letterbox", "tiles"]
AugmentOn = Literal["auto", "loader", "device"]  # (issue 26) where the augmentation runs
# the value sets, one definition each, from the Literals (everything else takes these)
SIZE_NAMES: tuple[str, ...] = get_args(Size)  # smallest first
PRETRAIN_METHODS: tuple[str, ...] = get_args(PretrainMethod)
DEVICES: tuple[str, ...] = get_args(Device)
AUGMENT_PLACES: tuple[str, ...] = get_args(AugmentOn)

# The constants official YOLOX hard-codes in yolo_head.py (SimOTA and the loss), defined once: the
# config's defaults and those of every function below it (build_yolox, the head, yolox_loss,
# simota) are these names.
CENTER_RADIUS = 1.5  # candidates: cell centre within this many strides of an object centre
CANDIDATE_TOPK = 10  # IoUs summed for the dynamic k
IOU_COST_WEIGHT = 3.0  # weight of -log(IoU) in the assignment cost
REG_WEIGHT = 5.0  # weight of the box-regression loss
# (added, issue 17) NWD's C in input pixels (see the nwd_constant key): the default of the key and
# of every function that takes it (the assignment's overlap, the box loss)
NWD_CONSTANT = 12.8
# (added, issue 17) Dynamic R-CNN's C: iterations between updates of its threshold and beta
DYNAMIC_INTERVAL = 100
# (added, issue 25) TOOD's alignment metric t = s^alpha * u^beta (Feng et al. 2021)
TOOD_ALPHA = 1.0
TOOD_BETA = 6.0
Assigner = Literal["simota", "atss", "uniform", "topk", "dynamic", "tood"]
AssignOverlap = Literal["iou", "nwd"]
ClsTarget = Literal["iou", "cleanliness", "qfl"]


class ConfigError(ValueError):
    """A config value or key is invalid; the message names the key and the source file."""


def check_choice(name: str, value: str, allowed: tuple[str, ...] | list[str]) -> str:
    """Return ``value`` if allowed, else raise a ValueError listing the allowed values.

    For the public functions of model/ that take an ablation switch directly (a config was
    checked when it was loaded); ``allowed`` is the switch's Literal (``get_args``)."""
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; use one of {', '.join(map(repr, allowed))}")
    return value


def check_literal_fields(obj: Any) -> None:
    """:func:`check_choice` for every ``Literal`` field of the dataclass ``obj``.

    For the settings objects of model/ (``AssignSettings``, ``LossSettings``), which can be
    built by hand: a typo there must not quietly run the baseline either."""
    hints = typing.get_type_hints(type(obj))
    for f in fields(obj):
        hint = hints[f.name]
        if get_origin(hint) is Literal:
            check_choice(f.name, getattr(obj, f.name), get_args(hint))


@dataclass(frozen=True)
class TrialConfig:
    """Every setting of one trial. Defaults follow the official YOLOX recipe (``yolox_base.py``)."""

    # --- model ---
    size: Size = "s"  # nano, tiny, s, m, l, x (official depth/width multipliers)
    num_classes: int = 1  # FloW has one class, "bottle"
    # box regression loss; "iou" is the official 1 - IoU^2; (added, issue 17) "nwd" is
    # 1 - NWD, the normalized Gaussian Wasserstein distance for tiny objects (model/box_losses.py)
    reg_loss: RegLoss = "iou"
    # (added, issue 17) NWD's C in input pixels, NWD = exp(-W2 / C). The paper (Wang et al. 2021,
    # arXiv 2110.13389) sets C to the dataset's average absolute object size and reports 12.8 for
    # AI-TOD; we keep 12.8: FloW bottles are ~20 px in the frame but ~10 px after a 640 letterbox
    # (~20 px only with tiles), so 12.8 sits between the two and keeps the paper's value to
    # compare with. Set it to the mean sqrt(w * h) of the training boxes to follow the rule
    nwd_constant: float = NWD_CONSTANT
    pretrain: Pretrain = "none"  # backbone initialisation: none, coco, center_loss, ssl
    # (added, issue 14) class names to train, comma-separated ("bottle" or "bottle,can"), in
    # class-index order; boxes of other classes are dropped and counted in the data report.
    # "" = every class in the data. num_classes must equal the number of names given
    classes: str = ""

    # --- data ---
    data: str = ""  # dataset folder (any supported layout); "" = the embedded floating-bottle set
    # (issue 23) the validation split every choice is made on (best.pt, early stopping, the
    # search, the study's best trial): the layout's own val, else this share of the training
    # images, stratified by box count and class (model/data/raw.py carve_validation). The test
    # split is scored once, at the end, on the checkpoint chosen on val
    val_fraction: float = 0.2
    # the seed of that hold-out: a study keeps it the same for every trial (it is not the trial's
    # seed, so seeds 0..N-1 of an arm are validated and tested on the same images)
    split_seed: int = 0
    img_size: int = 640  # square training/eval input size in pixels (multiple of 32)
    workers: int = 4  # data-loader worker processes
    cache_images: bool = False  # keep decoded, resized training images in RAM (small datasets)
    # (added, issue 26) read the training frames from the node's decoded-frame cache
    # (model/data/frame_cache.py): each frame decoded once into a memory-mapped uint8 file that
    # every trial and loader worker on the machine shares (one copy in the page cache), instead
    # of a JPEG decode per load or a private RAM copy per trial (cache_images). The same pixels
    frame_cache: bool = False
    # (added, issue 26) the folder of that cache; "" = frames/ in $YOLOX_FLOW_CACHE
    # (~/.cache/yolox-flow-study). A disk too small for it is a warning and a decode per load
    frame_cache_dir: str = ""
    # (added, issue 26) where mosaic, affine, mixup, HSV and flip run. loader: numpy/OpenCV in
    # the loader (the official per-sample path). device: batched tensor operations on the
    # training device (model/data/device_augment.py); the loader only gathers uint8 frames,
    # draws and boxes (the same draws and boxes, the pixels within interpolation rounding).
    # auto: device on CUDA, loader on CPU, where the loader measured faster (docs/measurements.md)
    augment_on: AugmentOn = "auto"

    # --- schedule and optimiser ---
    epochs: int = 300
    no_aug_epochs: int = 15  # last epochs: no mosaic/mixup, L1 loss on, constant min lr
    warmup_epochs: int = 5
    batch_size: int = 16
    lr: float = 0.01  # learning rate per 64 images (scaled linearly by batch_size / 64)
    warmup_lr: float = 0.0
    min_lr_ratio: float = 0.05
    weight_decay: float = 5e-4  # not applied to BN weights and biases
    # (added, issue 3) sgd: the official Nesterov SGD. adamw: AdamW (beta1 = momentum, decoupled
    # weight decay), a common choice for short runs (Ultralytics picks it below 10k iterations;
    # on the embedded set it did worse than SGD, see the README); lr is per 64 images for both
    optimizer: Optimizer = "sgd"
    momentum: float = 0.9  # SGD: Nesterov momentum; AdamW: beta1
    ema: bool = True  # evaluate the exponential moving average of the weights
    ema_decay: float = 0.9998
    # (added, issue 3) updates over which the EMA decay ramps up, d * (1 - exp(-updates / ramp));
    # official 2000. A run of a few hundred updates stays on the ramp, and its EMA is then only
    # the last few weights (ema_decay 0.98 with ema_ramp 50 did not help a 240-update run: README)
    ema_ramp: float = 2000.0
    # (added, issue 3) BatchNorm running-statistics momentum; 0.03 is official. The running
    # statistics average the last ~1/momentum iterations: with a few hundred iterations in all
    # (a small dataset, a short run) 0.03 leaves them behind the weights, and evaluation suffers
    bn_momentum: float = 0.03

    # --- augmentation (official YOLOX defaults) ---
    mosaic_prob: float = 1.0
    mixup_prob: float = 1.0
    hsv_prob: float = 1.0
    flip_prob: float = 0.5
    degrees: float = 10.0
    translate: float = 0.1
    mosaic_scale_min: float = 0.1
    mosaic_scale_max: float = 2.0
    mixup_scale_min: float = 0.5
    mixup_scale_max: float = 1.5
    shear: float = 2.0
    # (added, issue 3) warp the 2S mosaic canvas about its centre into the S input (YOLOv5 and
    # early YOLOX) instead of the official about-the-origin warp, which shows the top-left window:
    # with 16:9 frames a third of that window is grey padding
    mosaic_centre_crop: bool = False
    multiscale: int = 5  # input size (input_size) +- multiscale*32, every 10 iterations; 0 = off
    max_labels: int = 120  # padded target rows per image

    # --- native-resolution tiles (issue 9; model/data/tiles.py, model/sliced.py) ---
    # letterbox: the official input, the whole frame shrunk into img_size x img_size. tiles: the
    # network sees tile_size x tile_size crops of the frame at its own resolution (never scaled
    # up; smaller frames are padded): training samples, each mosaic piece and mixup's second
    # image are crops, and evaluation/detection slide overlapping tiles over the full frame and
    # merge their boxes in frame pixels. A 20 px bottle in a 1080p frame stays 20 px instead
    # of the 7 px a 640 letterbox leaves, at the price of more forward passes per frame.
    input_mode: InputMode = "letterbox"
    tile_size: int = 320  # tiles: the network input (square px, multiple of 32)
    # tiles, inference: neighbouring tiles share at least this fraction of tile_size, so an
    # object narrower than the shared strip is whole in some tile (SAHI's default is 0.2)
    tile_overlap: float = 0.2
    # tiles, training: share of crops placed to contain a random box (at a random position in
    # the crop); the rest are placed uniformly, so water, glints and leaves are learnt as
    # background. Images without boxes always get uniform crops
    tile_object_share: float = 0.5
    # tiles, training: a box cut by the crop edge is kept (clipped) when at least this fraction
    # of its area is inside, else dropped and counted in the epoch log
    tile_min_visible: float = 0.25
    # tiles, inference: also run one letterbox pass of the whole frame at img_size and merge its
    # boxes with the tiles' (objects larger than a tile)
    tile_full_frame: bool = False

    # --- SimOTA and loss constants the official code hard-codes ---
    center_radius: float = CENTER_RADIUS  # candidates: within this many strides of a gt centre
    candidate_topk: int = CANDIDATE_TOPK  # IoUs summed for the dynamic k
    iou_cost_weight: float = IOU_COST_WEIGHT
    reg_weight: float = REG_WEIGHT

    # --- label assignment and classification targets (added, issue 17; model/assign/) ---
    # simota: the official SimOTA (bit-identical). atss: ATSS (Zhang et al. 2020), per level the
    # k nearest points, IoU threshold mean + std. uniform: YOLOF's uniform matching (k nearest
    # priors + k nearest predictions by L1). topk: the k highest-IoU predictions inside the
    # centre region. dynamic: Dynamic R-CNN's rising IoU threshold and SmoothL1 beta (state in
    # checkpoints). (issue 25) tood: TOOD's task-aligned assignment (Feng et al. 2021), the k
    # largest score^tood_alpha * IoU^tood_beta in the centre region, their normalised metric as
    # the class target. See each module of model/assign/ for the rule and where we depart
    assigner: Assigner = "simota"
    # k of atss/uniform/topk/tood; 0 = the paper's value (atss 9, uniform 4, topk 9, tood 13).
    # Not SimOTA's (candidate_topk) nor dynamic's (which has no k)
    assign_k: int = 0
    # tood: the exponents of its alignment metric t = s^alpha * u^beta (s the class score, u the
    # IoU); the paper's alpha 1, beta 6. alpha 0 ranks by IoU alone
    tood_alpha: float = TOOD_ALPHA
    tood_beta: float = TOOD_BETA
    # HAMBox compensation (Liu et al. 2020) on top of any assigner: an object left with fewer
    # than 3 positives gets the unassigned predictions whose box overlaps it best (IoU >= 0.35),
    # weighted by that IoU
    hambox: bool = False
    # dynamic: iterations between updates of its IoU threshold and SmoothL1 beta (Dynamic R-CNN's
    # C, 100); the statistics collected in between are saved in checkpoints
    dynamic_interval: int = DYNAMIC_INTERVAL
    # the overlap inside SimOTA's cost and dynamic k: iou (official) or nwd (NWD with
    # nwd_constant; a tiny object's disjoint candidates are still ranked by distance)
    assign_overlap: AssignOverlap = "iou"
    # class target of a positive: iou (official: one-hot x IoU of its prediction), cleanliness
    # (Li et al. 2020: 0.75 IoU + 0.25 class score, also re-weighting the regression), qfl
    # (GFL's quality focal loss against the IoU target, beta 2)
    cls_target: ClsTarget = "iou"

    # --- evaluation ---
    eval_interval: int = 10  # evaluate every N epochs (and always after the last one)
    test_conf: float = 0.01  # score threshold before NMS
    nms_iou: float = 0.65
    # (added, issue 9) clip predicted boxes to the image before COCO scoring. Official YOLOX does
    # not, and false keeps our numbers comparable with published ones; clipping raises early-
    # training scores a lot (0.056 -> 0.100 mAP on held-out VOC, nano after 40 epochs) because
    # boxes that run past the frame edge get a better IoU. See model/coco_eval.py
    eval_clip_boxes: bool = False
    # (issue 27) at every evaluation, a JPEG grid of the first N validation images with their
    # boxes and the detections (model/eval_preview.py), written next to last.pt for the
    # trackers; 0 = none. Cheap (N images, no gradients) and draws no random number
    eval_preview_images: int = 4

    # --- pretraining (used when pretrain is coco, center_loss or ssl) ---
    # pretrain: coco starts from this local file: the official yolox_<size>.pth, or any YOLOX
    # checkpoint of this size (a last.pt/best.pt of ours: its EMA weights, its own classes);
    # class layers load when their shapes fit. "" = the official file in the torch hub cache
    coco_weights: str = ""
    pretrain_artifact: str = ""  # backbone .pt for center_loss/ssl (filled in by the study cache)
    pretrain_init: PretrainInit = "scratch"  # where the pretraining starts: scratch or COCO weights
    pretrain_epochs: int = 10  # (issue 5: was 30) 10 reach >= 0.94 fg/bg accuracy on embedded data
    pretrain_batch_size: int = 32
    pretrain_lr: float = 0.01
    crop_size: int = 64  # center-loss crops (square px; issue 5: was 224, FloW boxes are < 32 px)
    center_loss_weight: float = 0.01  # 0 = cross-entropy only (the ablation)
    center_lr: float = 0.5  # SGD lr of the learnable class centres
    ssl_patch_size: int = 64
    ssl_loss: SslLoss = "cosine"  # -cos(a, p) + cos(a, n) as in the FloW study, or InfoNCE
    ssl_temperature: float = 0.1
    ssl_video_every: int = 10  # take every n-th frame of the unlabeled videos
    # (added, issue 5) extra unlabeled sources for ssl: videos or image folders, separated by
    # os.pathsep (':'); always used besides the dataset's video/ folder and training images
    ssl_sources: str = ""
    ssl_triplets_per_frame: int = 4  # (added, issue 5) ssl triplets per frame and epoch

    # --- run ---
    seed: int = 0
    device: Device = "auto"  # auto = cuda when available
    # torch CPU threads of the run (0 = torch's default: every core). CPU float sums depend on
    # how many threads split them, so the same config reruns bit-identically only with the same
    # count; a study writes each trial's CPU share here, and best_config.yaml carries it.
    threads: int = 0
    # (issue 24) processes of one trial (torch.distributed: gloo on CPU, NCCL on CUDA with a GPU
    # each; model/distributed.py): each trains on batch_size / ddp_workers images of every batch,
    # with BatchNorm and the loss normalised over the whole batch, so the run trains as one
    # process with the same total batch; a study sets it from --gpus-per-trial N >= 2
    ddp_workers: int = 1
    amp: bool = True  # mixed precision (CUDA only; ignored on CPU)
    # NHWC memory format, on every device: the CUDA norm with AMP, and (issue 26: now the default)
    # ~35% faster nano steps on the CPU too; the same results up to float rounding
    channels_last: bool = True
    max_train_images: int = 0  # 0 = all; a cap for quick profiles

    def __post_init__(self) -> None:
        _validate(self, source="<TrialConfig>")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def input_size(self) -> int:
        """The square network input in training: ``tile_size`` with tiles, else ``img_size``."""
        return self.tile_size if self.input_mode == "tiles" else self.img_size


_HINTS: dict[str, Any] | None = None


def _hints() -> dict[str, Any]:
    global _HINTS
    if _HINTS is None:
        _HINTS = typing.get_type_hints(TrialConfig)
    return _HINTS


def config_keys() -> list[str]:
    return [f.name for f in fields(TrialConfig)]


# A decimal number as people write it: 1e-3, 1E6, -2.5e-4, .5, 3. (YAML 1.1, which PyYAML
# follows, reads an exponent without a dot, 1e-3, as a string; YAML 1.2 and Python read a float)
_FLOAT_LITERAL = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def as_float_literal(value: Any) -> Any:
    """``value`` as a float when it is a string holding a decimal number ("1e-3"), else as is.

    For float-typed values only: a str-typed key keeps its text.
    """
    if isinstance(value, str) and _FLOAT_LITERAL.fullmatch(value.strip()):
        return float(value)
    return value


def class_list(classes: str) -> list[str]:
    """The names of a ``classes`` value: "bottle, can" -> ["bottle", "can"]; "" -> []."""
    return [c.strip() for c in classes.split(",") if c.strip()]


def _check_type(key: str, value: Any, source: str) -> Any:
    """Return ``value`` coerced where lossless (int -> float, "1e-3" -> 0.001 for a float
    key), else raise ConfigError."""
    hint = _hints()[key]
    if get_origin(hint) is Literal:
        allowed = get_args(hint)
        if value not in allowed:
            raise ConfigError(
                f"{source}: key '{key}' must be one of {', '.join(map(repr, allowed))}, "
                f"got {value!r}"
            )
        return value
    if hint is bool:
        ok = isinstance(value, bool)
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif hint is float:
        value = as_float_literal(value)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok:
            value = float(value)
    elif hint is str:
        ok = isinstance(value, str)
    elif isinstance(hint, types.UnionType):  # pragma: no cover - no union fields today
        ok = isinstance(value, get_args(hint))
    else:  # pragma: no cover
        ok = isinstance(value, hint)
    if not ok:
        tname = getattr(hint, "__name__", str(hint))
        raise ConfigError(
            f"{source}: key '{key}' must be of type {tname}, got {type(value).__name__} {value!r}"
        )
    return value


# A rule between keys: (holds, the key an error names, the rule as the error says it).
_Rule = tuple[bool, str, str]


def _training_rules(cfg: TrialConfig) -> list[_Rule]:
    """The rules of the training, schedule, assignment, evaluation and tiling keys."""
    return [
        (cfg.num_classes >= 1, "num_classes", "must be >= 1"),
        (cfg.img_size >= 32 and cfg.img_size % 32 == 0, "img_size", "must be a multiple of 32"),
        (cfg.epochs >= 1, "epochs", "must be >= 1"),
        (
            0 <= cfg.no_aug_epochs <= cfg.epochs,
            "no_aug_epochs",
            f"must be in [0, epochs={cfg.epochs}] (lower it when you lower epochs)",
        ),
        (cfg.warmup_epochs >= 0, "warmup_epochs", "must be >= 0"),
        (cfg.batch_size >= 1, "batch_size", "must be >= 1"),
        (cfg.lr > 0, "lr", "must be > 0"),
        (cfg.nwd_constant > 0, "nwd_constant", "must be > 0 (pixels)"),
        (0 < cfg.bn_momentum <= 1, "bn_momentum", "must be in (0, 1]"),
        (0 <= cfg.ema_decay < 1, "ema_decay", "must be in [0, 1)"),
        (cfg.ema_ramp > 0, "ema_ramp", "must be > 0 (updates)"),
        (0 <= cfg.momentum < 1, "momentum", "must be in [0, 1)"),
        (0 < cfg.min_lr_ratio <= 1, "min_lr_ratio", "must be in (0, 1]"),
        (cfg.workers >= 0, "workers", "must be >= 0"),
        (cfg.eval_interval >= 1, "eval_interval", "must be >= 1"),
        (0 <= cfg.eval_preview_images <= 16, "eval_preview_images", "must be in 0..16"),
        (0 <= cfg.val_fraction < 1, "val_fraction", "must be in [0, 1)"),
        (cfg.split_seed >= 0, "split_seed", "must be >= 0"),
        (cfg.ddp_workers >= 1, "ddp_workers", "must be >= 1 (processes of one trial)"),
        (
            cfg.batch_size % cfg.ddp_workers == 0,
            "ddp_workers",
            f"must divide batch_size={cfg.batch_size} (each process takes an equal slice)",
        ),
        (cfg.multiscale >= 0, "multiscale", "must be >= 0"),
        (cfg.mosaic_scale_min <= cfg.mosaic_scale_max, "mosaic_scale_min", "must be <= max"),
        (cfg.mixup_scale_min <= cfg.mixup_scale_max, "mixup_scale_min", "must be <= max"),
        (cfg.candidate_topk >= 1, "candidate_topk", "must be >= 1"),
        (cfg.dynamic_interval >= 1, "dynamic_interval", "must be >= 1 (iterations)"),
        (cfg.assign_k >= 0, "assign_k", "must be >= 0 (0 = the assigner's paper value)"),
        (cfg.tood_alpha >= 0, "tood_alpha", "must be >= 0 (the paper's 1)"),
        (cfg.tood_beta >= 0, "tood_beta", "must be >= 0 (the paper's 6)"),
        (0 < cfg.test_conf < 1, "test_conf", "must be in (0, 1)"),
        (0 < cfg.nms_iou <= 1, "nms_iou", "must be in (0, 1]"),
        (cfg.center_loss_weight >= 0, "center_loss_weight", "must be >= 0"),
        (cfg.max_train_images >= 0, "max_train_images", "must be >= 0"),
        (
            cfg.tile_size >= 32 and cfg.tile_size % 32 == 0,
            "tile_size",
            "must be a multiple of 32",
        ),
        (0 <= cfg.tile_overlap < 1, "tile_overlap", "must be in [0, 1)"),
        (0 <= cfg.tile_object_share <= 1, "tile_object_share", "must be in [0, 1]"),
        (0 < cfg.tile_min_visible <= 1, "tile_min_visible", "must be in (0, 1]"),
    ]


def _pretraining_rules(cfg: TrialConfig) -> list[_Rule]:
    """The rules of the thread and pretraining keys (issue 5): the backbone needs inputs that
    are multiples of its stride 32."""
    return [
        (cfg.threads >= 0, "threads", "must be >= 0 (0 = torch's default)"),
        (cfg.pretrain_epochs >= 1, "pretrain_epochs", "must be >= 1"),
        (cfg.pretrain_batch_size >= 2, "pretrain_batch_size", "must be >= 2 (BatchNorm)"),
        (cfg.pretrain_lr > 0, "pretrain_lr", "must be > 0"),
        (cfg.crop_size >= 32 and cfg.crop_size % 32 == 0, "crop_size", "must be a multiple of 32"),
        (cfg.center_lr > 0, "center_lr", "must be > 0"),
        (
            cfg.ssl_patch_size >= 32 and cfg.ssl_patch_size % 32 == 0,
            "ssl_patch_size",
            "must be a multiple of 32",
        ),
        (cfg.ssl_temperature > 0, "ssl_temperature", "must be > 0"),
        (cfg.ssl_video_every >= 1, "ssl_video_every", "must be >= 1"),
        (cfg.ssl_triplets_per_frame >= 1, "ssl_triplets_per_frame", "must be >= 1"),
    ]


def _class_and_prob_rules(cfg: TrialConfig) -> list[_Rule]:
    """The rules of ``classes`` against ``num_classes``, and of the augmentation probabilities."""
    names = class_list(cfg.classes)
    rules = [
        (len(set(names)) == len(names), "classes", "must name each class once"),
        (
            not names or len(names) == cfg.num_classes,
            "classes",
            f"names {len(names)} classes but num_classes is {cfg.num_classes}; set "
            f"num_classes: {len(names)}",
        ),
    ]
    for prob in ("mosaic_prob", "mixup_prob", "hsv_prob", "flip_prob"):
        rules.append((0 <= getattr(cfg, prob) <= 1, prob, "must be in [0, 1]"))
    return rules


def _rules(cfg: TrialConfig) -> list[_Rule]:
    """Every rule between keys, in the order they are checked (the first broken one is said)."""
    return _training_rules(cfg) + _pretraining_rules(cfg) + _class_and_prob_rules(cfg)


def _validate(cfg: TrialConfig, source: str) -> None:
    """Check (and coerce in place) every field's type, then the rules between keys."""
    for f in fields(cfg):
        # stored coerced, so TrialConfig(lr="1e-3") or replace(cfg, lr=1) hold a float too
        object.__setattr__(cfg, f.name, _check_type(f.name, getattr(cfg, f.name), source))
    for ok, key, rule in _rules(cfg):
        if not ok:
            raise ConfigError(f"{source}: key '{key}' {rule}, got {getattr(cfg, key)!r}")


def _check_key(key: Any, value: Any, source: str) -> Any:
    """``value`` checked for a known ``key`` and its type (rules between keys come later)."""
    known = config_keys()
    if key not in known:
        close = difflib.get_close_matches(str(key), known, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(f"{source}: unknown key '{key}'{hint}")
    return _check_type(key, value, source)


def config_from_dict(
    values: dict[str, Any], source: str = "<dict>", base: TrialConfig | None = None
) -> TrialConfig:
    """Build a config from ``values`` over ``base`` (defaults when None).

    Unknown keys and wrong types raise :class:`ConfigError` naming the key and ``source``.
    """
    if not isinstance(values, dict):
        raise ConfigError(f"{source}: a trial config must be a mapping of keys to values")
    checked = {key: _check_key(key, value, source) for key, value in values.items()}
    base = base or TrialConfig()
    merged = {**base.to_dict(), **checked}
    cfg = TrialConfig.__new__(TrialConfig)
    for k, v in merged.items():
        object.__setattr__(cfg, k, v)
    _validate(cfg, source)
    return cfg


def load_config(path: str | Path, base: TrialConfig | None = None) -> TrialConfig:
    """Read a YAML trial config; keys not given take the defaults (or ``base``)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from e
    try:
        values = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({yaml_problem(e)})") from e
    return config_from_dict(values, source=str(path), base=base)


def yaml_problem(e: yaml.YAMLError) -> str:
    """A one-line description of a YAML error: what is wrong and where (PyYAML's own text spans
    several lines, with the offending line quoted)."""
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    mark = getattr(e, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return f"{where}{problem}"


def dump_config(cfg: TrialConfig, comment: str = "") -> str:
    """YAML text of the full config (every key), with an optional leading ``#`` comment block."""
    head = "".join(f"# {line}\n" if line else "#\n" for line in comment.splitlines())
    return head + yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def save_config(cfg: TrialConfig, path: str | Path, comment: str = "") -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(dump_config(cfg, comment))
    tmp.replace(path)
    return path


def describe_inference(cfg: TrialConfig) -> str:
    """How ``cfg`` detects and scores, in words (for logs, reports and CLI summaries)."""
    if cfg.input_mode == "tiles":
        how = f"{cfg.tile_size}px tiles (overlap {cfg.tile_overlap:g}) with sliced inference"
        if cfg.tile_full_frame:
            how += f" + a {cfg.img_size}px full-frame pass"
    else:
        how = f"{cfg.img_size}px letterbox"
    boxes = "clipped to the image" if cfg.eval_clip_boxes else "unclipped, as official"
    return f"{how}; predicted boxes {boxes}"


def add_override_argument(parser: Any, help: str) -> None:
    """Add the repeatable ``--set KEY=VALUE`` option (``args.overrides``, a list of strings,
    read by :func:`parse_override`) to an ``argparse`` parser; ``help`` gives its example."""
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=help
    )


def parse_override(text: str, source: str = "--set") -> tuple[str, Any]:
    """Parse ``KEY=VALUE`` (VALUE read as YAML, so ``lr=0.02`` is a float) into a checked pair."""
    if "=" not in text:
        raise ConfigError(f"{source}: expected KEY=VALUE, got {text!r}")
    key, raw = text.split("=", 1)
    key = key.strip()
    is_str = key in config_keys() and _hints()[key] is str
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        if not is_str:
            raise ConfigError(
                f"{source} {text!r}: the value of '{key}' is not valid YAML ({yaml_problem(e)}); "
                "write a number, true/false, or a quoted string"
            ) from e
        value = raw.strip()
    if is_str and not isinstance(value, str):
        value = raw.strip()
    # Only the key and its type here: rules that tie keys together (no_aug_epochs <= epochs)
    # are checked once every override is merged into the config, or `--set epochs=10` would
    # fail against the default no_aug_epochs of 15 whatever the config file says.
    return key, _check_key(key, value, source)
