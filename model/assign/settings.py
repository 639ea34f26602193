"""The assignment's settings: built once from the trial config, handed to every assigner."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, get_args

from model.config import (
    CANDIDATE_TOPK,
    CENTER_RADIUS,
    DYNAMIC_INTERVAL,
    IOU_COST_WEIGHT,
    NWD_CONSTANT,
    TOOD_ALPHA,
    TOOD_BETA,
    Assigner,
    AssignOverlap,
    check_literal_fields,
)

if TYPE_CHECKING:
    from model.config import TrialConfig

# simota_batched (default) or the official per-image loop of simota (same result, kept as a check);
# not a config key: only tests and benchmarks/train_step.py choose it
AssignMode = Literal["batched", "per_image"]
ASSIGN_MODES: tuple[str, ...] = get_args(AssignMode)


@dataclass(frozen=True)
class AssignSettings:
    """What the assigners read; the field names are the config keys (one name per knob).

    Defaults are the official SimOTA's. Each rule reads its own fields and ignores the others
    (see its module): ``center_radius`` (SimOTA, top-k, dynamic, TOOD), ``candidate_topk`` and
    ``iou_cost_weight`` (SimOTA), ``assign_overlap`` and ``nwd_constant`` (SimOTA's cost),
    ``assign_k`` (ATSS, uniform, top-k, TOOD; 0 = the paper's k), ``dynamic_interval`` (the
    head's ``DynamicState``), ``tood_alpha`` and ``tood_beta`` (TOOD), ``assign_mode`` (SimOTA);
    ``hambox`` runs HAMBox on top of any.
    """

    assigner: Assigner = "simota"
    assign_k: int = 0
    hambox: bool = False
    assign_overlap: AssignOverlap = "iou"
    center_radius: float = CENTER_RADIUS
    candidate_topk: int = CANDIDATE_TOPK
    iou_cost_weight: float = IOU_COST_WEIGHT
    nwd_constant: float = NWD_CONSTANT
    dynamic_interval: int = DYNAMIC_INTERVAL
    tood_alpha: float = TOOD_ALPHA
    tood_beta: float = TOOD_BETA
    assign_mode: AssignMode = "batched"

    def __post_init__(self) -> None:
        check_literal_fields(self)

    @classmethod
    def from_config(cls, cfg: TrialConfig) -> AssignSettings:
        """Reads ``assigner``, ``assign_k``, ``hambox``, ``assign_overlap``, ``center_radius``,
        ``candidate_topk``, ``iou_cost_weight``, ``nwd_constant``, ``dynamic_interval``,
        ``tood_alpha`` and ``tood_beta``."""
        return cls(
            assigner=cfg.assigner,
            assign_k=cfg.assign_k,
            hambox=cfg.hambox,
            assign_overlap=cfg.assign_overlap,
            center_radius=cfg.center_radius,
            candidate_topk=cfg.candidate_topk,
            iou_cost_weight=cfg.iou_cost_weight,
            nwd_constant=cfg.nwd_constant,
            dynamic_interval=cfg.dynamic_interval,
            tood_alpha=cfg.tood_alpha,
            tood_beta=cfg.tood_beta,
        )
