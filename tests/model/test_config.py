from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from model.config import (
    ConfigError,
    TrialConfig,
    config_from_dict,
    config_keys,
    dump_config,
    load_config,
    parse_override,
    save_config,
)
from tests.paths import REPO


def test_defaults_follow_the_official_recipe() -> None:
    cfg = TrialConfig()
    assert (cfg.lr, cfg.momentum, cfg.weight_decay) == (0.01, 0.9, 5e-4)
    assert (cfg.warmup_epochs, cfg.no_aug_epochs, cfg.min_lr_ratio) == (5, 15, 0.05)
    assert (cfg.center_radius, cfg.candidate_topk, cfg.iou_cost_weight, cfg.reg_weight) == (
        1.5,
        10,
        3.0,
        5.0,
    )
    assert (cfg.test_conf, cfg.nms_iou) == (0.01, 0.65)


def test_yaml_round_trip_keeps_every_value(tmp_path) -> None:
    cfg = dataclasses.replace(
        TrialConfig(),
        size="nano",
        reg_loss="ciou",
        lr=0.02,
        ema=False,
        data="/x/y",
        epochs=7,
        no_aug_epochs=2,
    )
    path = save_config(cfg, tmp_path / "c.yaml", comment="mAP 0.5\nbest trial")
    text = path.read_text()
    assert text.startswith("# mAP 0.5\n# best trial\n")
    assert load_config(path) == cfg
    # every key is written, in the dataclass order
    keys = [line.split(":")[0] for line in text.splitlines() if not line.startswith("#")]
    assert keys == config_keys()


def test_partial_yaml_takes_defaults(tmp_path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("size: tiny\nepochs: 30\n")
    cfg = load_config(path)
    assert (cfg.size, cfg.epochs) == ("tiny", 30)
    assert cfg.lr == TrialConfig().lr


def test_unknown_key_names_key_and_file(tmp_path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("size: s\nreg_los: ciou\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(path) in str(e.value)
    assert "'reg_los'" in str(e.value) and "did you mean 'reg_loss'" in str(e.value)


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("epochs", "300", "must be of type int, got str"),
        ("epochs", 3.5, "must be of type int, got float"),
        ("ema", 1, "must be of type bool, got int"),
        ("lr", True, "must be of type float, got bool"),
        ("reg_loss", "cious", "must be one of 'iou', 'giou', 'diou', 'ciou'"),
        ("size", "xs", "must be one of 'nano'"),
        ("img_size", 100, "must be a multiple of 32"),
        ("no_aug_epochs", 500, "must be in [0, epochs=300] (lower it when you lower epochs)"),
        ("mosaic_prob", 1.5, "must be in [0, 1]"),
        ("bn_momentum", 0.0, "must be in (0, 1]"),
        ("momentum", 1.0, "must be in [0, 1)"),
        ("ema_decay", 1.0, "must be in [0, 1)"),
        ("ema_ramp", 0.0, "must be > 0 (updates)"),
        ("optimizer", "adam", "must be one of 'sgd', 'adamw'"),
    ],
)
def test_bad_values_name_the_key(key, value, expected, tmp_path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(f"{key}: {value!r}\n" if isinstance(value, str) else f"{key}: {value}\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert f"'{key}'" in str(e.value) and expected in str(e.value)
    assert str(path) in str(e.value)


def test_int_is_accepted_for_float_and_stored_as_float() -> None:
    cfg = config_from_dict({"lr": 1})
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float)


def test_replace_validates() -> None:
    with pytest.raises(ConfigError, match="'batch_size' must be >= 1"):
        dataclasses.replace(TrialConfig(), batch_size=0)


def test_non_mapping_yaml_is_an_error(tmp_path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(path)


def test_parse_override() -> None:
    assert parse_override("lr=0.02") == ("lr", 0.02)
    assert parse_override("size=nano") == ("size", "nano")
    assert parse_override("ema=false") == ("ema", False)
    assert parse_override("data=2024") == ("data", "2024")  # str keys keep the text
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        parse_override("lr")
    with pytest.raises(ConfigError, match="unknown key 'learning_rate'"):
        parse_override("learning_rate=0.1")


def test_dump_is_safe_yaml() -> None:
    text = dump_config(TrialConfig())
    assert "!!python" not in text


@pytest.mark.parametrize(
    "path", sorted((REPO / "configs").glob("*.yaml")), ids=str
)
def test_shipped_configs_load(path: Path) -> None:
    # every key of a shipped config must still exist and validate (a renamed key fails here)
    # and reach the config with its value
    cfg = load_config(path)
    written = yaml.safe_load(path.read_text())
    assert written and {k: getattr(cfg, k) for k in written} == written


# --- issue 14: values as YAML users write them; the classes key ---


@pytest.mark.parametrize(("text", "expected"), [("1e-3", 1e-3), ("1E6", 1e6), ("-2.5e-4", -2.5e-4)])
def test_exponent_floats_are_floats_in_files_dicts_and_overrides(text, expected, tmp_path) -> None:
    # PyYAML (YAML 1.1) reads 1e-3 as the string "1e-3": the checker reads it as the number
    path = tmp_path / "c.yaml"
    path.write_text(f"warmup_lr: {text}\nlr: 1e-3\n")
    assert yaml.safe_load(path.read_text())["lr"] == "1e-3"  # the premise
    cfg = load_config(path)
    assert cfg.warmup_lr == expected and isinstance(cfg.warmup_lr, float)
    assert cfg.lr == 1e-3 and isinstance(cfg.lr, float)
    assert config_from_dict({"warmup_lr": text}).warmup_lr == expected
    key, value = parse_override(f"warmup_lr={text}")
    assert (key, value) == ("warmup_lr", expected) and isinstance(value, float)
    assert dataclasses.replace(TrialConfig(), warmup_lr=text).warmup_lr == expected


def test_string_keys_keep_exponent_text_and_non_numbers_stay_errors() -> None:
    assert parse_override("data=1e-3") == ("data", "1e-3")
    assert config_from_dict({"data": "1E6"}).data == "1E6"
    with pytest.raises(ConfigError, match=r"key 'lr' must be of type float, got str '1e-3x'"):
        config_from_dict({"lr": "1e-3x"})
    with pytest.raises(ConfigError, match=r"key 'epochs' must be of type int, got str '1e3'"):
        config_from_dict({"epochs": "1e3"})  # an int key is not read as a float
    with pytest.raises(ConfigError, match=r"key 'lr' must be > 0, got -0.001"):
        config_from_dict({"lr": "-1e-3"})  # the rules see the number


def test_malformed_override_is_one_line_naming_it() -> None:
    with pytest.raises(ConfigError) as e:
        parse_override("lr=[1,2")
    msg = str(e.value)
    assert msg.startswith("--set 'lr=[1,2': the value of 'lr' is not valid YAML (")
    assert msg.endswith("; write a number, true/false, or a quoted string")
    assert "\n" not in msg
    assert parse_override("data=/x/[a") == ("data", "/x/[a")  # a str key takes the text


def test_malformed_yaml_file_is_one_line(tmp_path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("lr: 0.1\nsize: [nano\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(e.value).startswith(f"{path}: not valid YAML (line ")
    assert "\n" not in str(e.value)


def test_classes_key_names_and_rules() -> None:
    cfg = config_from_dict({"classes": "bottle, can", "num_classes": 2})
    assert cfg.classes == "bottle, can"
    assert parse_override("classes=bottle") == ("classes", "bottle")
    with pytest.raises(
        ConfigError,
        match=r"key 'classes' names 2 classes but num_classes is 1; set num_classes: 2, "
        r"got 'bottle,can'",
    ):
        config_from_dict({"classes": "bottle,can"})
    with pytest.raises(ConfigError, match="key 'classes' must name each class once"):
        config_from_dict({"classes": "can,can", "num_classes": 2})
