"""The assignment package's registry and settings: one entry per config value, each setting read
from the config key of its name, and the loss's tables over the config's Literals."""

from __future__ import annotations

import dataclasses
from typing import get_args

import pytest

from model.assign import ASSIGNER_NAMES, ASSIGNERS, PAPER_K, AssignSettings, default_k
from model.box_losses import BOX_LOSSES
from model.config import Assigner, ClsTarget, RegLoss, TrialConfig, config_keys
from model.yolox.head_settings import HeadSettings, LossSettings
from model.yolox.loss import CLASS_TARGETS


def test_every_config_assigner_has_one_registry_entry_and_no_other() -> None:
    assert ASSIGNER_NAMES == get_args(Assigner)
    assert set(ASSIGNERS) == set(ASSIGNER_NAMES)
    assert set(PAPER_K) <= set(ASSIGNERS) and all(k > 0 for k in PAPER_K.values())
    assert all(default_k(name) == PAPER_K.get(name, 0) for name in ASSIGNERS)


def test_the_loss_tables_cover_the_config_values_exactly() -> None:
    assert set(BOX_LOSSES) == set(get_args(RegLoss))
    assert set(CLASS_TARGETS) == set(get_args(ClsTarget))


def _flat(settings: object) -> dict:
    """Fields of a settings object, nested ones flattened (the nested object's own name left
    out)."""
    out = {}
    for f in dataclasses.fields(settings):  # type: ignore[arg-type]
        value = getattr(settings, f.name)
        if dataclasses.is_dataclass(value):
            out.update(_flat(value))
        else:
            out[f.name] = value
    return out


def test_from_config_reads_each_field_from_the_key_of_its_name() -> None:
    """Every field but assign_mode and prior_prob (no config keys) is a config key, and a
    config with every such key off its default gives settings with those values."""
    default = TrialConfig()
    changed = {
        "reg_loss": "giou", "reg_weight": 2.0, "nwd_constant": 9.0, "cls_target": "qfl",
        "assigner": "atss", "assign_k": 4, "hambox": True, "assign_overlap": "nwd",
        "center_radius": 2.5, "candidate_topk": 5, "iou_cost_weight": 1.0,
        "dynamic_interval": 7, "tood_alpha": 0.5, "tood_beta": 4.0,
    }  # fmt: skip
    cfg = dataclasses.replace(default, **changed)
    got = _flat(HeadSettings.from_config(cfg))
    assert set(got) - set(config_keys()) == {"assign_mode", "prior_prob"}
    assert {k: got[k] for k in changed} == changed
    assert _flat(HeadSettings.from_config(default)) == _flat(HeadSettings())
    assert LossSettings.from_config(cfg).assign == AssignSettings.from_config(cfg)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: AssignSettings(assigner="atsss"), "unknown assigner 'atsss'; use one of 'simota'"),
        (lambda: AssignSettings(assign_overlap="giou"), "unknown assign_overlap 'giou'"),
        (lambda: LossSettings(cls_target="soft"), "unknown cls_target 'soft'; use one of 'iou'"),
    ],
)
def test_a_settings_typo_is_an_error_listing_the_values(make, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()
