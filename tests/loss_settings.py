"""The loss's settings from flat key names, for tests written against the trial config's keys."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from model.assign import AssignSettings
from model.yolox.head_settings import LossSettings

_LOSS_KEYS = {f.name for f in fields(LossSettings)} - {"assign"}


def loss_settings(**keys: Any) -> LossSettings:
    """``LossSettings`` with ``keys`` (the config's names, plus ``assign_mode``), built directly
    so that a bad value fails in the settings' own check; ``nwd_constant`` goes to both."""
    assign = {k: v for k, v in keys.items() if k not in _LOSS_KEYS or k == "nwd_constant"}
    loss = {k: v for k, v in keys.items() if k in _LOSS_KEYS}
    return LossSettings(**loss, assign=AssignSettings(**assign))
