"""The head's and the loss's settings: built once from the trial config
(``build_yolox_from_config``) and passed down as one object each, never as loose keywords.

    TrialConfig --from_config--> HeadSettings(loss=LossSettings(assign=AssignSettings(...)))
    build_yolox(..., settings) -> YOLOXHead(..., settings) -> yolox_loss(..., settings.loss)
                                                          -> model.assign (settings.loss.assign)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from model.assign.settings import AssignSettings
from model.config import NWD_CONSTANT, REG_WEIGHT, ClsTarget, RegLoss, check_literal_fields

if TYPE_CHECKING:
    from model.config import TrialConfig

PRIOR_PROB = 1e-2  # official: initial objectness / class probability of the head


@dataclass(frozen=True)
class LossSettings:
    """What ``yolox_loss`` reads; field names are the config keys. Defaults are official."""

    reg_loss: RegLoss = "iou"  # a name of model.box_losses.BOX_LOSSES
    reg_weight: float = REG_WEIGHT
    nwd_constant: float = NWD_CONSTANT  # reg_loss nwd's C (the assignment reads the same key)
    cls_target: ClsTarget = "iou"  # a name of model.yolox.loss.CLASS_TARGETS
    assign: AssignSettings = field(default_factory=AssignSettings)

    def __post_init__(self) -> None:
        check_literal_fields(self)

    @classmethod
    def from_config(cls, cfg: TrialConfig) -> LossSettings:
        """Reads ``reg_loss``, ``reg_weight``, ``nwd_constant``, ``cls_target`` and, through
        :meth:`AssignSettings.from_config`, the assignment's keys."""
        return cls(
            reg_loss=cfg.reg_loss,
            reg_weight=cfg.reg_weight,
            nwd_constant=cfg.nwd_constant,
            cls_target=cfg.cls_target,
            assign=AssignSettings.from_config(cfg),
        )


@dataclass(frozen=True)
class HeadSettings:
    """What ``YOLOXHead`` reads beyond its shape: its initial score prior (no config key) and
    the loss's settings. Defaults are official."""

    prior_prob: float = PRIOR_PROB
    loss: LossSettings = field(default_factory=LossSettings)

    @classmethod
    def from_config(cls, cfg: TrialConfig) -> HeadSettings:
        """Reads the keys of :meth:`LossSettings.from_config` (none of its own)."""
        return cls(loss=LossSettings.from_config(cfg))
