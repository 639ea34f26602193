"""study/cli/pretrain.py: writes the artifact, prints figures and a summary, reuses, fails
clearly."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from model.data.synth import generate_flow_like
from study.cli import pretrain as cli
from tests.paths import REPO

ROOT = REPO
TINY = ["--size", "nano", "--epochs", "1", "--set", "pretrain_batch_size=8", "--device", "cpu"]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "flow"
    return generate_flow_like(
        out, n_train=5, n_test=1, width=256, height=160, n_clips=1, clip_frames=6, progress=False
    )


def test_center_loss_cli_writes_the_artifact_and_prints_accuracy(
    tiny_data: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "study.cli.pretrain", "--method", "center_loss",
           *TINY, "--data", str(tiny_data), "--out", str(out), "--threads", "1"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.strip().splitlines()
    assert re.search(r"^accuracy [01]\.\d{4} \(foreground .* background .*\) on \d+ held", lines[0])
    summary = lines[-1]
    assert summary.startswith("pretrain: center_loss YOLOX-nano 1 epochs from scratch: accuracy")
    assert "center-loss pretraining" in run.stderr  # the progress bar
    (artifact,) = out.glob("center_loss-nano-*.pt")
    assert summary.endswith(str(artifact))
    art = torch.load(artifact, weights_only=True)
    assert art["method"] == "center_loss" and art["settings"]["pretrain_epochs"] == 1
    # A second run finds the artifact by its key and does not recompute it.
    again = subprocess.run(cmd + ["--quiet"], capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and again.stdout.strip().endswith(f"reused -> {artifact}")
    assert "center-loss pretraining" not in again.stderr


def test_ssl_cli_with_extra_frames_and_default_embedded_data(
    tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    # No --data means the embedded set; here it is stood in for by the tiny one.
    monkeypatch.setattr("model.pretraining.sources.embedded_dataset_dir", lambda: tiny_data)
    extra = tiny_data / "video"
    code = cli.main(["--method", "ssl", *TINY, "--set", "ssl_patch_size=32",
                     "--unlabeled", str(extra), "--out", str(tmp_path), "--quiet"])
    assert code == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[0].startswith("final loss ") and "held-out triplet accuracy" in out[1]
    assert out[-1].startswith("pretrain: ssl YOLOX-nano 1 epochs from scratch: triplet accuracy")
    (artifact,) = tmp_path.glob("ssl-nano-*.pt")
    settings = torch.load(artifact, weights_only=True)["settings"]
    assert settings["ssl_patch_size"] == 32 and settings["method"] == "ssl"


def test_cli_errors_name_the_cause(tiny_data: Path, tmp_path: Path, capsys) -> None:
    code = cli.main(["--method", "ssl", *TINY, "--data", str(tiny_data), "--out", str(tmp_path),
                     "--set", "ssl_patch_size=64", "--quiet"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("pretrain: error: frame ") and "smaller than the 3x3 patch grid" in err
    code = cli.main(["--method", "center_loss", *TINY, "--set", "crop_size=50", "--quiet"])
    assert code == 2 and "crop_size' must be a multiple of 32" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.pt"))
