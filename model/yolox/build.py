"""The YOLOX detector and its builders: the network's shape as arguments, the head's and the
loss's settings as one object (``HeadSettings``), no registry."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import Tensor, nn

from model.yolox.errors import YOLOXInputError
from model.yolox.head import YOLOXHead
from model.yolox.head_settings import HeadSettings
from model.yolox.pafpn import IN_CHANNELS, YOLOPAFPN

if TYPE_CHECKING:
    from model.config import TrialConfig

# name -> (depth multiplier, width multiplier, depthwise convs), as in the official exps.
SIZES: dict[str, tuple[float, float, bool]] = {
    "nano": (0.33, 0.25, True),
    "tiny": (0.33, 0.375, False),
    "s": (0.33, 0.50, False),
    "m": (0.67, 0.75, False),
    "l": (1.0, 1.0, False),
    "x": (1.33, 1.25, False),
}

class YOLOX(nn.Module):
    """YOLOX = ``backbone`` (YOLOPAFPN, whose ``.backbone`` is CSPDarknet) + ``head`` (YOLOXHead).

    ``net(images)`` with images (B, 3, H, W) float BGR 0-255, H and W multiples of 32, returns
    (B, A, 5 + C): cx, cy, w, h in input pixels, objectness and class scores after sigmoid.
    ``net(images, targets)`` with targets (B, M, 5) (class, cx, cy, w, h in input pixels; all-zero
    rows are padding) returns the loss dict (total_loss, iou_loss, l1_loss, conf_loss, cls_loss,
    num_fg). Which of the two is chosen by whether targets are given, not by ``training``: an
    eval-mode network can score a validation loss with frozen BatchNorm statistics.
    """

    def __init__(self, backbone: YOLOPAFPN, head: YOLOXHead, arch: dict[str, Any] | None = None):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.arch: dict[str, Any] = dict(arch or {})  # how it was built, for logs and checkpoints

    def forward(self, images: Tensor, targets: Tensor | None = None) -> Tensor | dict[str, Tensor]:
        shape = images.shape
        if images.dim() != 4 or shape[1] != 3 or shape[2] % 32 or shape[3] % 32:
            raise YOLOXInputError(
                "images must be (B, 3, H, W) with H and W multiples of 32 (the coarsest stride); "
                f"got shape {tuple(images.shape)}"
            )
        return self.head(self.backbone(images), targets)


def _resolve_arch(
    size: str | None, depth: float | None, width: float | None, depthwise: bool | None
) -> tuple[float, float, bool]:
    if size is not None:
        if size not in SIZES:
            allowed = ", ".join(map(repr, SIZES))
            raise YOLOXInputError(f"unknown YOLOX size {size!r}; use one of {allowed}")
        if depth is not None or width is not None or depthwise is not None:
            raise YOLOXInputError(
                f"build_yolox: give either size={size!r} or explicit depth/width/depthwise, "
                "not both"
            )
        return SIZES[size]
    if depth is None or width is None:
        raise YOLOXInputError(
            "build_yolox: give a size (one of "
            f"{', '.join(map(repr, SIZES))}) or both depth= and width="
        )
    if depth <= 0 or width <= 0:
        raise YOLOXInputError(f"build_yolox: depth and width must be > 0, got {depth}, {width}")
    return depth, width, bool(depthwise)


def build_yolox(
    size: str | None = None,
    num_classes: int = 1,
    *,
    depth: float | None = None,
    width: float | None = None,
    depthwise: bool | None = None,
    act: str = "silu",
    settings: HeadSettings | None = None,
) -> YOLOX:
    """Build a YOLOX of a named ``size`` (see ``SIZES``) or of explicit depth/width/depthwise.

    ``settings``: the head's and the loss's (``HeadSettings.from_config(cfg)``; None = official).
    Weights are freshly initialised (PyTorch defaults, head priors ``settings.prior_prob``); load
    pretrained ones with ``model.yolox.weights``.
    """
    depth, width, depthwise = _resolve_arch(size, depth, width, depthwise)
    if num_classes < 1:
        raise YOLOXInputError(f"build_yolox: num_classes must be >= 1, got {num_classes}")
    backbone = YOLOPAFPN(depth, width, depthwise=depthwise, act=act)
    head = YOLOXHead(
        num_classes, width, in_channels=IN_CHANNELS, act=act, depthwise=depthwise, settings=settings
    )
    arch = {
        "size": size,
        "depth": depth,
        "width": width,
        "depthwise": depthwise,
        "num_classes": num_classes,
        "act": act,
    }
    return YOLOX(backbone, head, arch)


def build_yolox_from_config(cfg: TrialConfig) -> YOLOX:
    """The network of a trial: size, classes, ``bn_momentum`` and the head's settings, built
    once here (``HeadSettings.from_config``: the loss and assignment keys of ``cfg``).

    Pretrained weights (``cfg.pretrain``) are not loaded here; the trainer does that.
    """
    net = build_yolox(cfg.size, cfg.num_classes, settings=HeadSettings.from_config(cfg))
    set_bn_momentum(net, cfg.bn_momentum)
    return net


def set_bn_momentum(net: nn.Module, momentum: float) -> None:
    """Set the running-statistics momentum of every BatchNorm in ``net``."""
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = momentum
