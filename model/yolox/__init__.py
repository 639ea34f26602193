"""The YOLOX network (official module names, so official checkpoints load strictly)."""

from __future__ import annotations

from model.yolox.build import SIZES, YOLOX, build_yolox, build_yolox_from_config
from model.yolox.darknet import CSPDarknet
from model.yolox.errors import YOLOXError, YOLOXInputError
from model.yolox.head import YOLOXHead
from model.yolox.head_settings import HeadSettings, LossSettings
from model.yolox.pafpn import YOLOPAFPN
from model.yolox.weights import (
    LoadReport,
    WeightsError,
    WeightsUnavailableError,
    coco_weights_available,
    load_backbone_state,
    load_coco_weights,
)

__all__ = [
    "SIZES",
    "YOLOX",
    "CSPDarknet",
    "HeadSettings",
    "LoadReport",
    "LossSettings",
    "WeightsError",
    "WeightsUnavailableError",
    "YOLOPAFPN",
    "YOLOXError",
    "YOLOXInputError",
    "YOLOXHead",
    "build_yolox",
    "build_yolox_from_config",
    "coco_weights_available",
    "load_backbone_state",
    "load_coco_weights",
]
