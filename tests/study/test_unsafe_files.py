"""Files that are not weights-only checkpoints (pickled objects, random bytes) given where
weights are expected: one-line errors naming the file, and exit 2 from the CLIs."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from model.checkpoint import CheckpointError, load_checkpoint
from model.pretraining.artifact import ArtifactError, load_artifact
from model.yolox import WeightsError, build_yolox, load_coco_weights
from study.cli import train as train_cli
from tests.data_builders import make_flow


class Opaque:
    """Any class: unpickling it would run code, so weights_only refuses it."""

    def __init__(self) -> None:
        self.payload = [1, 2, 3]


GLOBAL = f"GLOBAL {__name__}.Opaque was not an allowed global by default"


def _torch_object(path: Path) -> Path:
    torch.save({"model": {"w": torch.zeros(2)}, "extra": Opaque()}, path)
    return path


def _plain_pickle(path: Path) -> Path:
    with path.open("wb") as f:
        pickle.dump({"model": {"layer": Opaque()}}, f)
    return path


def _random_bytes(path: Path) -> Path:
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, np.uint8).tobytes())
    return path


MAKERS = {"torch_object": _torch_object, "plain_pickle": _plain_pickle, "random": _random_bytes}
# what each file's refusal says (after the file name)
REASONS = {
    "torch_object": f"refused by the weights-only unpickler: Unsupported global: {GLOBAL}",
    "plain_pickle": "refused by the weights-only unpickler: Unsupported operand",
    "random": "refused by the weights-only unpickler: Unsupported operand",
}


@pytest.fixture(params=sorted(MAKERS))
def bad_file(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, Path]:
    return request.param, MAKERS[request.param](tmp_path / f"{request.param}.pt")


def _one_line(e: pytest.ExceptionInfo) -> str:
    text = str(e.value)
    assert "\n" not in text
    return text


def test_coco_weights_path(bad_file: tuple[str, Path]) -> None:
    kind, path = bad_file
    with pytest.raises(WeightsError) as e:
        load_coco_weights(build_yolox("nano"), "nano", path, download=False)
    text = _one_line(e)
    assert text.startswith(f"{path} is not a weights-only checkpoint ({REASONS[kind]}")
    assert text.endswith(
        "); pass an official yolox_<size>.pth or a last.pt/best.pt written by model.trainer "
        "(pickled Python objects are never loaded)"
    )


def test_pretrain_artifact(bad_file: tuple[str, Path]) -> None:
    kind, path = bad_file
    with pytest.raises(ArtifactError) as e:
        load_artifact(path, size="nano")
    text = _one_line(e)
    assert text.startswith(
        f"pretraining artifact {path} is not a weights-only checkpoint ({REASONS[kind]}"
    )
    assert text.endswith(
        "); pass a .pt written by study/cli/pretrain.py, or clear pretrain_artifact to have the "
        "study compute it"
    )


def test_training_checkpoint(bad_file: tuple[str, Path]) -> None:
    kind, path = bad_file
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path)
    assert _one_line(e).startswith(
        f"cannot read checkpoint {path}: not a weights-only checkpoint ({REASONS[kind]}"
    )


def test_a_good_file_still_loads_and_nothing_was_run(tmp_path: Path) -> None:
    good = tmp_path / "ok.pt"
    torch.save({"model": build_yolox("nano").state_dict()}, good)
    assert len(load_coco_weights(build_yolox("nano"), "nano", good).loaded) == 642


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("flow")
    return make_flow(root, train={"a": [("bottle", 2, 2, 30, 30)], "b": []}, test={"t": []})


TINY = ["--set", "size=nano", "--set", "img_size=64", "--set", "epochs=1", "--set",
        "no_aug_epochs=0", "--set", "workers=0", "--set", "batch_size=2", "--device", "cpu",
        "--quiet", "--no-download"]


@pytest.mark.parametrize("key", ["coco_weights", "pretrain_artifact"])
def test_train_cli_exits_2_with_one_line(
    key: str, tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _torch_object(tmp_path / "weights.pt")
    pretrain = "coco" if key == "coco_weights" else "center_loss"
    code = train_cli.main(
        [*TINY, "--data", str(tiny_data), "--out", str(tmp_path / "o"), "--cache",
         str(tmp_path / "cache"), "--set", f"pretrain={pretrain}", "--set", f"{key}={path}"]
    )
    err = capsys.readouterr().err
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("train: error: ")
    assert f"{path} is not a weights-only checkpoint (refused by the weights-only unpickler: " in (
        lines[0]
    )


def test_train_cli_exits_2_on_a_checkpoint_of_another_width(
    tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "wider.pth"  # nano's layout, other widths
    torch.save({"model": build_yolox(depth=0.33, width=0.375, depthwise=True).state_dict()}, path)
    code = train_cli.main(
        [*TINY, "--data", str(tiny_data), "--out", str(tmp_path / "o"), "--set", "pretrain=coco",
         "--set", f"coco_weights={path}"]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith(f"train: error: {path}: shape mismatch at backbone.backbone.stem.")
    assert err.endswith("the checkpoint is for a different size (use one of this size)")
