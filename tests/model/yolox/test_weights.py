"""COCO checkpoints and backbone artifacts: what loads, what is skipped, and the offline errors.

Checkpoints are written here in the official layout from a seeded 80-class model; the network is
never touched (the download function is replaced).
"""

from __future__ import annotations

import math
import urllib.error
from pathlib import Path

import pytest
import torch

from model.yolox import (
    WeightsUnavailableError,
    build_yolox,
    coco_weights_available,
    load_backbone_state,
    load_coco_weights,
)
from model.yolox import weights as W

URL = "https://github.com/Megvii-BaseDetection/YOLOX/releases/download/0.1.1rc0/yolox_nano.pth"
N_TENSORS = 642  # state_dict entries of YOLOX-nano (tests/fixtures/yolox_state_dict_manifest.json)
CLASS_KEYS = [f"head.cls_preds.{i}.{p}" for i in range(3) for p in ("weight", "bias")]


@pytest.fixture(scope="module")
def coco_state() -> dict[str, torch.Tensor]:
    """A nano 80-class state_dict with every float tensor random, so each copy is observable."""
    gen = torch.Generator().manual_seed(0)
    state = build_yolox("nano", num_classes=80).state_dict()
    out = {}
    for k, v in state.items():
        out[k] = torch.rand(v.shape, generator=gen) + 0.5 if v.is_floating_point() else v + 7
    return out


@pytest.fixture
def hub_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    return tmp_path / "hub"


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Path]]:
    """Replace the download with one that fails as offline machines do; record the attempts."""
    attempts: list[tuple[str, Path]] = []

    def offline(url: str, dst: Path, progress: bool) -> None:
        attempts.append((url, dst))
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(W, "_download", offline)
    return attempts


def _save(state: dict, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": state, "start_epoch": 300}, path)
    return path


def test_80_class_model_loads_every_tensor(coco_state: dict, tmp_path: Path) -> None:
    ckpt = _save(coco_state, tmp_path / "yolox_nano.pth")
    net = build_yolox("nano", num_classes=80)
    report = load_coco_weights(net, "nano", ckpt, download=False)
    assert (len(report.loaded), report.skipped, report.missing) == (N_TENSORS, [], [])
    assert report.source == str(ckpt)
    for k, v in net.state_dict().items():
        assert torch.equal(v, coco_state[k]), k


def test_1_class_model_skips_only_the_class_layers(
    coco_state: dict, tmp_path: Path, no_network: list
) -> None:
    ckpt = _save(coco_state, tmp_path / "yolox_nano.pth")
    net = build_yolox("nano", num_classes=1)
    report = load_coco_weights(net, "nano", ckpt)
    assert report.skipped == CLASS_KEYS
    assert len(report.loaded) == N_TENSORS - 6 and report.missing == []
    why = [f"{k} (shape mismatch: file {tuple(coco_state[k].shape)} vs net "
           f"{tuple(net.state_dict()[k].shape)})" for k in CLASS_KEYS]
    assert report.summary() == (
        f"loaded 636/642 tensors from {ckpt} (skipped 6, missing 0); skipped, the net keeps its "
        f"own: {', '.join(why)}"
    )
    assert report.why["head.cls_preds.0.weight"] == (
        "shape mismatch: file (80, 64, 1, 1) vs net (1, 64, 1, 1)"
    )
    state = net.state_dict()
    for k in report.loaded:
        assert torch.equal(state[k], coco_state[k]), k
    for i in range(3):  # class layers keep their fresh prior initialisation
        torch.testing.assert_close(state[f"head.cls_preds.{i}.bias"], torch.tensor([-math.log(99)]))
    assert no_network == []


def test_missing_tensors_are_reported(coco_state: dict, tmp_path: Path) -> None:
    partial = {k: v for k, v in coco_state.items() if not k.endswith("num_batches_tracked")}
    ckpt = _save(partial, tmp_path / "old.pth")
    report = load_coco_weights(build_yolox("nano", num_classes=80), "nano", ckpt)
    assert len(report.missing) == 104 and len(report.loaded) == N_TENSORS - 104
    assert report.missing[0] == "backbone.backbone.stem.conv.bn.num_batches_tracked"


def test_shape_mismatch_names_key_and_shapes(coco_state: dict, tmp_path: Path) -> None:
    ckpt = _save(coco_state, tmp_path / "yolox_nano.pth")
    thinner = build_yolox(depth=0.33, width=0.125, depthwise=True, num_classes=1)
    with pytest.raises(
        ValueError,
        match=r"shape mismatch at backbone\.backbone\.stem\.conv\.conv\.weight: "
        r"checkpoint \(16, 12, 3, 3\) vs model \(8, 12, 3, 3\); the checkpoint is for a "
        r"different size \(use one of this size\)",
    ):
        load_coco_weights(thinner, "nano", ckpt)


def test_foreign_keys_are_an_error(coco_state: dict, tmp_path: Path) -> None:
    ckpt = _save({**coco_state, "head.extra.weight": torch.zeros(1)}, tmp_path / "x.pth")
    with pytest.raises(ValueError, match=r"1 key\(s\) not in the YOLOX being loaded"):
        load_coco_weights(build_yolox("nano"), "nano", ckpt)


def test_offline_download_failure_says_url_and_path(hub_dir: Path, no_network: list) -> None:
    net = build_yolox("nano")
    dst = hub_dir / "checkpoints" / "yolox_nano.pth"
    with pytest.raises(WeightsUnavailableError) as err:
        load_coco_weights(net, "nano", progress=False)
    msg = str(err.value)
    assert f"fetch {URL} elsewhere and place it at {dst}" in msg
    assert "Temporary failure in name resolution" in msg
    assert no_network == [(URL, dst)]


def test_download_off_never_calls_the_network(hub_dir: Path, no_network: list) -> None:
    with pytest.raises(WeightsUnavailableError, match="downloading is off; download .* and place"):
        load_coco_weights(build_yolox("nano"), "nano", download=False)
    assert no_network == []


def test_hub_cache_is_found_without_downloading(
    coco_state: dict, hub_dir: Path, no_network: list
) -> None:
    assert not coco_weights_available("nano")
    cached = _save(coco_state, hub_dir / "checkpoints" / "yolox_nano.pth")
    assert coco_weights_available("nano")
    report = load_coco_weights(build_yolox("nano"), "nano")
    assert report.source == str(cached) and len(report.loaded) == N_TENSORS - 6
    assert no_network == []


def test_download_happens_once_into_the_hub_cache(
    coco_state: dict, hub_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fetched: list[str] = []

    def fake_download(url: str, dst: Path, progress: bool) -> None:
        fetched.append(url)
        _save(coco_state, dst)

    monkeypatch.setattr(W, "_download", fake_download)
    for _ in range(2):
        load_coco_weights(build_yolox("nano"), "nano", progress=False)
    assert fetched == [URL]


def test_explicit_path_must_exist(tmp_path: Path, no_network: list) -> None:
    missing = tmp_path / "nowhere" / "yolox_nano.pth"
    assert not coco_weights_available("nano", missing)
    with pytest.raises(WeightsUnavailableError, match=f"{missing} does not exist; download {URL}"):
        load_coco_weights(build_yolox("nano"), "nano", missing)
    assert no_network == []


def test_unknown_size_and_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown YOLOX size 'xl'; use one of 'nano'"):
        coco_weights_available("xl")
    bad = tmp_path / "list.pth"
    torch.save([1, 2], bad)
    with pytest.raises(ValueError, match=f"{bad} is not a YOLOX checkpoint"):
        load_coco_weights(build_yolox("nano"), "nano", bad)
    pickled = tmp_path / "object.pth"
    torch.save({"model": {"x": Path("/")}}, pickled)  # arbitrary objects are refused
    with pytest.raises(W.WeightsError, match=f"{pickled} is not a weights-only checkpoint"):
        load_coco_weights(build_yolox("nano"), "nano", pickled)


def test_backbone_artifact_loads_into_cspdarknet(coco_state: dict) -> None:
    prefix = "backbone.backbone."
    backbone = {k[len(prefix) :]: v for k, v in coco_state.items() if k.startswith(prefix)}
    net = build_yolox("nano", num_classes=1)
    head_before = {k: v.clone() for k, v in net.head.state_dict().items()}
    report = load_backbone_state(net, backbone, source="center_loss.pt")
    assert len(report.loaded) == len(backbone) == 282
    assert report.skipped == [] and report.missing == []
    assert report.summary() == "loaded 282/282 tensors from center_loss.pt (skipped 0, missing 0)"
    for k, v in net.backbone.backbone.state_dict().items():
        assert torch.equal(v, backbone[k]), k
    for k, v in net.head.state_dict().items():
        assert torch.equal(v, head_before[k]), k
    with pytest.raises(ValueError, match="keys start with 'backbone.backbone.'"):
        load_backbone_state(net, {prefix + k: v for k, v in backbone.items()})


# --- issue 14: a trial can start from a detector of its own classes ---


def _random_state(num_classes: int, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    state = build_yolox("nano", num_classes=num_classes).state_dict()
    return {
        k: torch.rand(v.shape, generator=gen) if v.is_floating_point() else v + seed
        for k, v in state.items()
    }


def _training_checkpoint(path: Path, model: dict, ema: dict | None) -> Path:
    """A file in the model/checkpoint.py layout (what model.trainer writes), made by hand."""
    torch.save(
        {"format": 1, "epoch": 3, "model": model,
         "ema": {"module": ema, "updates": 12} if ema is not None else None,
         "optimizer": {"state": {}, "param_groups": []}, "config": {"size": "nano"},
         "history": [{"epoch": 3, "mAP": 0.5}], "class_names": ["bottle"]},
        path,
    )
    return path


def test_own_1_class_checkpoint_initialises_a_1_class_net_completely(tmp_path: Path) -> None:
    model, ema = _random_state(1, seed=1), _random_state(1, seed=2)
    ckpt = _training_checkpoint(tmp_path / "best.pt", model, ema)
    net = build_yolox("nano", num_classes=1)
    report = load_coco_weights(net, "nano", ckpt, download=False)
    assert (len(report.loaded), report.skipped, report.missing) == (N_TENSORS, [], [])
    assert report.entry == "ema"
    assert report.summary() == (
        f"loaded 642/642 tensors from {ckpt} (its EMA weights) (skipped 0, missing 0)"
    )
    for k, v in net.state_dict().items():  # the EMA weights, class layers included
        assert torch.equal(v, ema[k]), k
    # without an EMA (ema: false) the trained weights themselves
    ckpt = _training_checkpoint(tmp_path / "last.pt", model, None)
    net = build_yolox("nano", num_classes=1)
    assert load_coco_weights(net, "nano", ckpt).entry == "model"
    for k, v in net.state_dict().items():
        assert torch.equal(v, model[k]), k


def test_3_class_checkpoint_into_a_1_class_net_skips_only_the_class_layers(tmp_path: Path) -> None:
    three = _random_state(3, seed=4)
    ckpt = _training_checkpoint(tmp_path / "best.pt", three, three)
    net = build_yolox("nano", num_classes=1)
    fresh = {k: v.clone() for k, v in net.state_dict().items()}
    report = load_coco_weights(net, "nano", ckpt)
    assert report.skipped == CLASS_KEYS and len(report.loaded) == N_TENSORS - 6
    assert report.why == {
        **{f"head.cls_preds.{i}.weight": "shape mismatch: file (3, 64, 1, 1) vs net (1, 64, 1, 1)"
           for i in range(3)},
        **{f"head.cls_preds.{i}.bias": "shape mismatch: file (3,) vs net (1,)" for i in range(3)},
    }
    assert "skipped, the net keeps its own: head.cls_preds.0.weight (shape mismatch: file " in (
        report.summary()
    )
    for k, v in net.state_dict().items():
        assert torch.equal(v, fresh[k] if k in CLASS_KEYS else three[k]), k
