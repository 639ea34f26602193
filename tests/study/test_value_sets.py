"""Every value set comes from the config's Literals: the network's sizes, the losses' kinds, the
CLIs' choices; the official constants are the defaults of every function that takes them."""

from __future__ import annotations

import argparse
import importlib
import inspect
from typing import get_args

import pytest

from model import config as C


def _choices(parser: argparse.ArgumentParser, flag: str) -> tuple[str, ...] | None:
    for action in parser._actions:
        if flag in action.option_strings:
            return tuple(action.choices) if action.choices is not None else None
    raise AssertionError(f"{flag} not in the parser")


def test_the_sets_are_the_literals():
    assert C.SIZE_NAMES == get_args(C.Size)
    assert C.DEVICES == get_args(C.Device)
    assert C.PRETRAIN_METHODS == ("center_loss", "ssl")
    assert set(C.PRETRAIN_METHODS) < set(get_args(C.Pretrain))


def test_the_network_sizes_and_the_loss_kinds_are_those_sets():
    from model.box_losses import IOU_KINDS, REG_LOSSES
    from model.pretraining.artifact import METHODS
    from model.yolox.build import SIZES

    assert tuple(SIZES) == C.SIZE_NAMES
    assert REG_LOSSES == get_args(C.RegLoss)
    assert set(IOU_KINDS) <= set(REG_LOSSES)
    assert METHODS == C.PRETRAIN_METHODS


@pytest.mark.parametrize(
    "module",
    ["study.cli.train", "study.cli.evaluate", "study.cli.detect", "study.cli.pretrain",
     "study.run"],
)
def test_the_clis_device_choices(module):
    parser = importlib.import_module(module).build_parser()
    assert _choices(parser, "--device") == C.DEVICES


def test_the_pretrain_cli_choices():
    from study.cli.pretrain import build_parser

    parser = build_parser()
    assert _choices(parser, "--method") == C.PRETRAIN_METHODS
    assert _choices(parser, "--size") == C.SIZE_NAMES


def test_the_official_constants_are_every_default():
    from model.assign.settings import AssignSettings
    from model.assign.simota import simota, simota_batched
    from model.yolox.build import build_yolox
    from model.yolox.head import YOLOXHead
    from model.yolox.head_settings import LossSettings
    from model.yolox.loss import yolox_loss

    official = {
        "center_radius": C.CENTER_RADIUS,
        "candidate_topk": C.CANDIDATE_TOPK,
        "iou_cost_weight": C.IOU_COST_WEIGHT,
        "reg_weight": C.REG_WEIGHT,
    }
    assert (1.5, 10, 3.0, 5.0) == tuple(official.values())
    cfg = C.TrialConfig()
    assert {k: getattr(cfg, k) for k in official} == official
    fns = (simota, simota_batched, yolox_loss, build_yolox, YOLOXHead.__init__, AssignSettings,
           LossSettings)
    for fn in fns:
        params = inspect.signature(fn).parameters
        for name, value in official.items():
            if name in params:
                assert params[name].default == value, (fn, name)
        # one name per knob all the way down
        assert "topk" not in params and "iou_weight" not in params, fn
