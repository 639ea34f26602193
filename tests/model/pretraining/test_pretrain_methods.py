"""The two pretraining methods: losses on hand-worked cases, one tiny epoch each, the artifact."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from model.config import TrialConfig
from model.data.raw import DataError
from model.data.synth import generate_flow_like
from model.pretraining import (
    ArtifactError,
    PretrainDataError,
    load_artifact,
    load_pretrained_backbone,
    pretrain_settings,
    run_pretraining,
)
from model.pretraining.center_loss import CenterLossStep, FgBgClassifier, center_loss
from model.pretraining.ssl import (
    Frame,
    check_frames,
    colour_augment,
    cosine_triplet_loss,
    infonce_loss,
    pretrain_ssl,
)
from model.trainer import init_pretrained
from model.yolox import build_yolox
from tests.paths import FIXTURES

# --- center loss -------------------------------------------------------------------------------


def test_center_loss_on_a_hand_worked_case() -> None:
    feats = torch.tensor([[1.0, 2.0], [3.0, 4.0], [0.0, 0.0]])
    labels = torch.tensor([0, 1, 0])
    centers = torch.tensor([[1.0, 1.0], [2.0, 2.0]], requires_grad=True)
    loss = center_loss(feats, labels, centers)
    # ||(0, 1)||^2 + ||(1, 2)||^2 + ||(-1, -1)||^2 = 1 + 5 + 2 = 8; L = 8 / (2 * 3).
    assert loss.item() == pytest.approx(8 / 6)
    loss.backward()
    # dL/dc_j = -(1/B) sum_{i: y_i = j} (f_i - c_j)
    expected = torch.tensor([[1 / 3, 0.0], [-1 / 3, -2 / 3]])
    torch.testing.assert_close(centers.grad, expected)


class _TinyBackbone(nn.Module):
    """A CSPDarknet stand-in with the same output contract: a dict holding "dark5"."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=4, padding=1)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return {"dark5": torch.relu(self.conv(x / 255.0))}


@pytest.mark.parametrize("weight", [0.01, 1.0])
def test_centres_move_by_center_lr_whatever_the_loss_weight(weight: float) -> None:
    torch.manual_seed(0)
    cfg = TrialConfig(center_loss_weight=weight, center_lr=0.5, device="cpu")
    model = FgBgClassifier(_TinyBackbone(), 8)
    step = CenterLossStep(model, cfg, torch.device("cpu"))
    with torch.no_grad():
        step.centers.copy_(torch.randn(2, step.centers.shape[1]))
    x = torch.rand(6, 3, 32, 32) * 255
    y = torch.tensor([0, 1, 0, 1, 1, 0])
    # The features of this batch (train-mode BN on the same batch gives the same values).
    _, feats = model(x)
    c = step.centers.detach().clone().requires_grad_(True)
    center_loss(feats.detach(), y, c).backward()
    expected = c.detach() - 0.5 * c.grad  # SGD on L_C alone at center_lr: Wen's alpha
    parts = step(x, y, lr=0.01)
    torch.testing.assert_close(step.centers.detach(), expected)
    assert parts["loss"] == pytest.approx(parts["ce_loss"] + weight * parts["center_loss"])


def test_weight_zero_is_cross_entropy_only_and_leaves_the_centres() -> None:
    cfg = TrialConfig(center_loss_weight=0.0, device="cpu")
    model = FgBgClassifier(_TinyBackbone(), 8)
    step = CenterLossStep(model, cfg, torch.device("cpu"))
    before = step.centers.detach().clone()
    parts = step(torch.rand(4, 3, 32, 32) * 255, torch.tensor([0, 1, 0, 1]), lr=0.01)
    assert parts["center_loss"] == 0.0 and parts["loss"] == pytest.approx(parts["ce_loss"])
    torch.testing.assert_close(step.centers.detach(), before)
    # Every classifier parameter learned something; the centres took no gradient.
    assert all(p.grad is not None for p in model.parameters())
    assert step.centers.grad is None


# --- ssl losses and augmentation ----------------------------------------------------------------


def test_cosine_triplet_loss_on_a_hand_worked_case() -> None:
    za = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    zp = torch.tensor([[1.0, 1.0], [0.0, 1.0]])
    zn = torch.tensor([[-1.0, 0.0], [3.0, 0.0]])
    # Row 0: -cos 45deg + cos 180deg = -0.7071 - 1; row 1: -1 + 0. Mean of the two.
    expected = ((-math.sqrt(0.5) - 1.0) + (-1.0)) / 2
    assert cosine_triplet_loss(za, zp, zn).item() == pytest.approx(expected)


def test_infonce_on_a_hand_worked_case() -> None:
    za = torch.tensor([[2.0, 0.0]])
    zp = torch.tensor([[1.0, 0.0]])
    zn = torch.tensor([[0.0, 5.0]])
    # Logits (cos / T) = [1 / 0.5, 0 / 0.5] = [2, 0]; loss = -log(e^2 / (e^2 + 1)).
    assert infonce_loss(za, zp, zn, 0.5).item() == pytest.approx(math.log(1 + math.exp(-2)))


def test_colour_augment_jitters_each_patch_and_sometimes_makes_it_gray() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(400, 3, 8, 8) * 255
    out = colour_augment(x, gen)
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 255
    gray = (out[:, 0] == out[:, 1]).all(dim=(1, 2)) & (out[:, 1] == out[:, 2]).all(dim=(1, 2))
    assert 40 < int(gray.sum()) < 130  # ~20 % grayscale
    assert not torch.allclose(out[~gray], x[~gray])


# --- bad input ---------------------------------------------------------------------------------


def test_frames_smaller_than_the_patch_grid_name_the_file() -> None:
    frames = [Frame("/v/ok.jpg", 300, 300), Frame("/v/small.png", 300, 150)]
    with pytest.raises(PretrainDataError, match=r"small\.png is 300x150.*3x3 patch grid"):
        check_frames(frames, 64)


def test_a_lone_small_frame_is_a_data_error_naming_it() -> None:
    img = np.zeros((96, 96, 3), np.uint8)
    cfg = TrialConfig(size="nano", ssl_patch_size=32, pretrain_epochs=1, device="cpu")
    with pytest.raises(PretrainDataError, match="lone.jpg"):
        pretrain_ssl(cfg, [Frame("lone.jpg", 96, 96, img)], progress=False)


# --- one tiny epoch of each method, end to end -------------------------------------------------

MANIFEST = FIXTURES / "yolox_state_dict_manifest.json"
PREFIX = "backbone.backbone."


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 training images of 256x160 (with bottles) and one 10-frame unlabeled clip."""
    out = tmp_path_factory.mktemp("pretrain") / "flow"
    return generate_flow_like(
        out, n_train=6, n_test=2, width=256, height=160, n_clips=1, clip_frames=10, progress=False
    )


def _tiny_cfg(data: Path, method: str, **kw: object) -> TrialConfig:
    return TrialConfig(
        pretrain=method,
        size="nano",
        data=str(data),
        device="cpu",
        pretrain_epochs=1,
        pretrain_batch_size=8,
        crop_size=64,
        ssl_patch_size=32,
        ssl_video_every=5,
        ssl_triplets_per_frame=2,
        **kw,
    )


@pytest.fixture(scope="module")
def artifacts(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("artifacts")
    paths = {}
    for method in ("center_loss", "ssl"):
        paths[method] = out / f"{method}.pt"
        run_pretraining(_tiny_cfg(tiny_data, method), paths[method], progress=False)
    return paths


def _manifest_backbone_keys(size: str) -> list[str]:
    entries = json.loads(MANIFEST.read_text())[size]["state_dict"]
    return [k[len(PREFIX) :] for k, _ in entries if k.startswith(PREFIX)]


@pytest.mark.parametrize("method", ["center_loss", "ssl"])
def test_artifact_holds_the_cspdarknet_of_its_size(
    artifacts: dict[str, Path], tiny_data: Path, method: str
) -> None:
    path = artifacts[method]
    art = torch.load(path, map_location="cpu", weights_only=True)
    assert art["method"] == method and art["size"] == "nano" and art["format_version"] == 1
    # Keys exactly those of the official YOLOX-nano CSPDarknet (and of ours), in order.
    keys = list(art["backbone"])
    assert keys == _manifest_backbone_keys("nano")
    assert keys == list(build_yolox("nano").backbone.backbone.state_dict())
    cfg = _tiny_cfg(tiny_data, method)
    assert art["settings"] == pretrain_settings(cfg)
    assert art["data_fingerprint"] == art["settings"]["data_fingerprint"]
    assert all(math.isfinite(v) for v in art["metrics"].values())
    assert not list(path.parent.glob("*.tmp"))  # the atomic write left nothing behind


def test_center_loss_figures(artifacts: dict[str, Path]) -> None:
    m = load_artifact(artifacts["center_loss"])["metrics"]
    for key in ("accuracy", "fg_accuracy", "bg_accuracy"):
        assert 0.0 <= m[key] <= 1.0
    # One crop per bottle and as many background crops; 20 % of each kind held out.
    assert m["n_crops"] == 2 * m["n_positive"]
    assert m["n_held_out"] == 2 * round(0.2 * m["n_positive"])


def test_ssl_figures(artifacts: dict[str, Path]) -> None:
    m = load_artifact(artifacts["ssl"])["metrics"]
    assert 0.0 <= m["triplet_accuracy"] <= 1.0 and -2.0 <= m["cos_gap"] <= 2.0
    assert -1.0 <= m["loss"] <= 1.0  # the cosine loss is bounded by +-2, averaged per triplet
    # 5 training images (the 6th is the validation hold-out) + frames 0 and 5 of the 10-frame clip
    assert m["n_frames"] == 5 + 2


@pytest.mark.parametrize("method", ["center_loss", "ssl"])
def test_artifact_loads_into_a_detector_and_reports_the_count(
    artifacts: dict[str, Path], tiny_data: Path, method: str
) -> None:
    state = load_artifact(artifacts[method])["backbone"]
    net = build_yolox("nano", num_classes=1)
    report = load_pretrained_backbone(net, artifacts[method], "nano")
    assert len(report.loaded) == len(state) and not report.missing
    assert f"loaded {len(state)}/{len(state)} tensors" in report.summary()
    for key, value in state.items():
        torch.testing.assert_close(net.backbone.backbone.state_dict()[key], value)
    # The trainer's own initialisation takes the artifact too and returns the same count.
    cfg = dataclasses.replace(
        _tiny_cfg(tiny_data, method), pretrain_artifact=str(artifacts[method])
    )
    assert init_pretrained(build_yolox("nano", num_classes=1), cfg) == len(state)


def test_the_saved_backbone_is_the_trained_one(artifacts: dict[str, Path]) -> None:
    torch.manual_seed(0)  # the pretraining's seed: this is the backbone it started from
    start = build_yolox("nano").backbone.backbone.state_dict()
    trained = load_artifact(artifacts["center_loss"])["backbone"]
    changed = [
        k for k, v in trained.items() if v.is_floating_point() and not torch.equal(v, start[k])
    ]
    assert len(changed) > len(trained) // 2


def test_an_artifact_of_another_size_is_refused_naming_the_file(
    artifacts: dict[str, Path],
) -> None:
    with pytest.raises(ArtifactError, match=r"center_loss\.pt holds a YOLOX-nano backbone"):
        load_pretrained_backbone(build_yolox("tiny"), artifacts["center_loss"], "tiny")


def test_infonce_variant_runs(tiny_data: Path, tmp_path: Path) -> None:
    cfg = _tiny_cfg(tiny_data, "ssl", ssl_loss="infonce", ssl_temperature=0.2)
    m = run_pretraining(cfg, tmp_path / "infonce.pt", progress=False)
    # InfoNCE over 2B candidates: log(2 * 8) at chance; a finite loss near it after 1 step.
    assert 0.0 < m["loss"] < 2 * math.log(16)


def test_dataset_without_boxes_is_an_error_naming_it(tiny_data: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    generate_flow_like(
        empty, n_train=2, n_test=0, width=128, height=96, video=False, progress=False
    )
    for xml in (empty / "training" / "annotations").glob("*.xml"):
        xml.write_text(re.sub(r"<object>.*?</object>", "", xml.read_text(), flags=re.S))
    cfg = _tiny_cfg(empty, "center_loss")
    with pytest.raises(PretrainDataError, match=rf"no objects to crop.*{empty}.*0 boxes"):
        run_pretraining(cfg, tmp_path / "x.pt", progress=False)
    assert not (tmp_path / "x.pt").exists()


def test_unreadable_video_is_an_error_naming_it(tiny_data: Path, tmp_path: Path) -> None:
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00" * 1000)
    cfg = _tiny_cfg(tiny_data, "ssl", ssl_sources=str(bad))
    with pytest.raises(DataError, match="broken.mp4"):
        run_pretraining(cfg, tmp_path / "x.pt", progress=False)


def test_frames_below_the_patch_grid_name_a_training_image(tiny_data: Path, tmp_path: Path) -> None:
    cfg = dataclasses.replace(_tiny_cfg(tiny_data, "ssl"), ssl_patch_size=64)  # 192 > 160 px
    with pytest.raises(PretrainDataError, match=r"train_\d+\.jpg is 256x160.*ssl_patch_size 64"):
        run_pretraining(cfg, tmp_path / "x.pt", progress=False)


def test_classes_are_part_of_the_center_loss_key_only_when_set() -> None:
    base = TrialConfig(pretrain="center_loss")
    assert "classes" not in pretrain_settings(base, fingerprint="f")  # old cache keys stay valid
    chosen = dataclasses.replace(base, classes="bottle")
    assert pretrain_settings(chosen, fingerprint="f")["classes"] == "bottle"
    ssl = dataclasses.replace(chosen, pretrain="ssl")
    assert "classes" not in pretrain_settings(ssl, fingerprint="f")  # ssl reads no boxes


@pytest.mark.parametrize("method", ["center_loss", "ssl"])
def test_pretraining_runs_on_the_configs_threads_and_restores_them(
    tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, method: str
) -> None:
    # the thread count decides CPU numerics: a single run's artifact must be the one a study's
    # one-core pretraining task computes, so run_pretraining honours cfg.threads
    import model.pretraining.artifact as artifact

    seen: list[int] = []

    def fake(cfg: TrialConfig, *args: object, **kw: object) -> tuple[dict, dict]:
        seen.append(torch.get_num_threads())
        raise RuntimeError("stop here")

    monkeypatch.setattr(artifact, "pretrain_center_loss", fake)
    monkeypatch.setattr(artifact, "pretrain_ssl", fake)
    before = torch.get_num_threads()
    want = 1 if before > 1 else 2
    cfg = _tiny_cfg(tiny_data, method, threads=want)
    with pytest.raises(RuntimeError, match="stop here"):
        run_pretraining(cfg, tmp_path / "a.pt", progress=False)
    assert seen == [want]
    assert torch.get_num_threads() == before
