"""Training checkpoints: atomic writes, ``weights_only`` loading, RNG states as tensors.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts so that
``torch.load(path, weights_only=True)`` reads it without unpickling code. The training loop
decides what goes in (see ``model/trainer.py``); this module only makes writing safe and RNG
states portable.

Faults a week-long run meets (issue 27):

* a full disk: every write goes through a Python file object (``torch.save`` to a path reports
  ENOSPC as a bare ``RuntimeError`` from its C++ writer), so it surfaces as
  :class:`DiskFullError`, naming the folder, the space the checkpoint needs and what is free;
  the temporary file is removed and the previous checkpoint is untouched;
* a damaged ``last.pt`` (a truncated copy, a disk error): ``save_checkpoint(...,
  keep_previous=True)`` keeps the checkpoint it replaces as ``last.prev.pt`` (a hard link: no
  second copy of the bytes), and :func:`load_resumable` falls back to it, saying so.
"""

from __future__ import annotations

import os
import pickle
import random
import re
import shutil
import struct
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.config import TrialConfig
from model.diskfull import DiskFullError, free_bytes, is_disk_full

CHECKPOINT_FORMAT = 1  # bump when the layout of the training checkpoint changes


class CheckpointError(RuntimeError):
    """A checkpoint cannot be read or does not hold what the caller needs."""


class NotWeightsOnlyError(ValueError):
    """``torch.load(weights_only=True)`` refused a file; the message is the one-line reason
    (without the path: each caller names the file and says what it should be)."""


# What torch.load(weights_only=True) raises on a file that is not a weights-only checkpoint:
# a pickled object it will not build (UnpicklingError), a damaged zip (RuntimeError), and for a
# plain pickle or random bytes whatever its pure-Python unpickler trips on (KeyError, ...).
_LOAD_ERRORS = (
    pickle.UnpicklingError,
    RuntimeError,
    EOFError,
    ValueError,
    KeyError,
    IndexError,
    TypeError,
    AttributeError,
    struct.error,
)


def _load_reason(e: BaseException) -> str:
    """One line out of torch's several-paragraph refusal: what was refused."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e))
    if "WeightsUnpickler error:" in text:
        after = text.split("WeightsUnpickler error:", 1)[1]
        line = next((ln.strip() for ln in after.splitlines() if ln.strip()), "")
        # "... Please use torch.serialization.add_safe_globals": advice for trusted files only
        return "refused by the weights-only unpickler: " + line.split(". Please use")[0]
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    return f"{type(e).__name__}: {line.split('. ')[0][:200]}"


def load_weights_only(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load(path, weights_only=True)``; a file it refuses is a NotWeightsOnlyError.

    FileNotFoundError and other OSErrors pass through. torch's warnings about the file (e.g.
    the pickle protocol of a plain ``pickle.dump``) are shown only when the load succeeds.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            obj = torch.load(path, map_location=map_location, weights_only=True)
        except OSError:
            raise
        except _LOAD_ERRORS as e:
            raise NotWeightsOnlyError(_load_reason(e)) from e
    for w in caught:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return obj


def _state_nbytes(obj: Any) -> int:
    """Bytes of the tensors in a checkpoint dict: about the size ``torch.save`` writes."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_state_nbytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_state_nbytes(v) for v in obj)
    return 64


def _tmp_path(path: Path) -> Path:
    # Same folder as the target so os.replace stays a rename on one filesystem.
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def previous_path(path: str | Path) -> Path:
    """Where ``save_checkpoint(..., keep_previous=True)`` keeps the file it replaced:
    ``last.pt`` → ``last.prev.pt``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def _write_file(tmp: Path, write: Any, needed: Any, target: Path) -> None:
    """``write(f)`` into ``tmp`` through a Python file object, flushed to the disk; a full disk
    is a DiskFullError for ``target`` (``needed()``: the bytes the file takes) with ``tmp``
    removed."""
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())  # on the disk before the rename makes it the checkpoint
    except OSError as e:
        tmp.unlink(missing_ok=True)
        if is_disk_full(e):
            raise DiskFullError(target, needed(), free_bytes(tmp.parent)) from e
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def save_checkpoint(
    state: dict[str, Any], path: str | Path, *, keep_previous: bool = False
) -> Path:
    """Write ``state`` to ``path`` atomically: a crash mid-write leaves the previous file intact.

    ``keep_previous``: the file being replaced stays as :func:`previous_path` (``last.prev.pt``),
    for :func:`load_resumable` to fall back to. A full disk raises :class:`DiskFullError`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(path)
    size = path.stat().st_size if path.is_file() else 0  # the last one: about this one's size
    _write_file(
        tmp, lambda f: torch.save(state, f), lambda: max(size, _state_nbytes(state)), path
    )
    try:
        if keep_previous and path.is_file():
            _keep(path, previous_path(path))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _keep(path: Path, prev: Path) -> None:
    """``prev`` becomes the current ``path`` (a hard link; a copy where links are refused),
    replaced atomically: ``path`` itself never goes missing."""
    tmp = _tmp_path(prev)
    tmp.unlink(missing_ok=True)
    try:
        os.link(path, tmp)
    except OSError:
        _write_file(tmp, lambda f: f.write(path.read_bytes()), lambda: path.stat().st_size, prev)
    os.replace(tmp, prev)


def copy_checkpoint(src: str | Path, dst: str | Path) -> Path:
    """Atomically copy a checkpoint file (used for ``best.pt``); a full disk raises
    :class:`DiskFullError` and leaves ``dst`` as it was."""
    dst = Path(dst)
    tmp = _tmp_path(dst)
    try:
        size = Path(src).stat().st_size
        with open(src, "rb") as fsrc:
            _write_file(tmp, lambda f: shutil.copyfileobj(fsrc, f), lambda: size, dst)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    return dst


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``; errors name the file and the fix."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; pass the path of a .pt file")
    try:
        state = load_weights_only(path, map_location)
    except (NotWeightsOnlyError, OSError) as e:
        raise CheckpointError(
            f"cannot read checkpoint {path}: not a weights-only checkpoint ({e}); it must be a "
            "file written by model.trainer (tensors and plain containers only)"
        ) from e
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(state).__name__}, not a dict")
    return state


def load_resumable(
    path: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[dict[str, Any], Path, str]:
    """The checkpoint to resume from: ``path``, or — when it is unreadable (truncated, damaged)
    — the one it replaced (:func:`previous_path`). Returns ``(state, the file read, why the
    other was not used: "" when ``path`` was)``; CheckpointError when neither can be read."""
    path = Path(path)
    try:
        return load_checkpoint(path, map_location), path, ""
    except CheckpointError as e:
        prev = previous_path(path)
        if not prev.is_file():
            raise
        why = str(e.__cause__ or e)
        try:
            return load_checkpoint(prev, map_location), prev, why
        except CheckpointError as e2:
            raise CheckpointError(
                f"cannot resume: {path} is unreadable ({why}) and so is the checkpoint before "
                f"it, {prev} ({e2.__cause__ or e2}); start over (resume=False / --no-resume)"
            ) from e


# --- RNG states as tensors (weights_only cannot read numpy arrays or arbitrary tuples) ---


def rng_state() -> dict[str, Any]:
    """The global RNG states of python ``random``, numpy, torch CPU and (when present) CUDA."""
    version, internal, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python_version": int(version),
        "python": torch.tensor(internal, dtype=torch.int64),
        "python_gauss": gauss,  # None or a float
        "numpy_name": str(np_name),
        "numpy_keys": torch.from_numpy(np_keys.astype(np.int64)),
        "numpy_pos": int(np_pos),
        "numpy_has_gauss": int(np_has_gauss),
        "numpy_gauss": float(np_gauss),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured (CUDA states only when CUDA is present)."""
    internal = tuple(int(v) for v in state["python"].tolist())
    random.setstate((state["python_version"], internal, state["python_gauss"]))
    np.random.set_state(
        (
            state["numpy_name"],
            state["numpy_keys"].numpy().astype(np.uint32),
            state["numpy_pos"],
            state["numpy_has_gauss"],
            state["numpy_gauss"],
        )
    )
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def load_trained_detector(
    path: str | Path, *, device: str | torch.device = "cpu", use_ema: bool = True
) -> tuple[torch.nn.Module, TrialConfig, dict[str, Any]]:
    """Rebuild the detector of a training checkpoint, in eval mode on ``device``.

    Takes the EMA weights when the run kept them (what training evaluated) unless ``use_ema`` is
    False. Returns ``(net, config, checkpoint dict)``.
    """
    from model.config import config_from_dict
    from model.yolox.build import build_yolox_from_config  # (not the package: no cycle)

    state = load_checkpoint(path)
    if "config" not in state or "model" not in state:
        raise CheckpointError(
            f"checkpoint {path} has no 'config'/'model' entries (keys: {sorted(state)}); pass a "
            "last.pt or best.pt written by model.trainer"
        )
    cfg = config_from_dict(state["config"], source=f"{path} (config)")
    net = build_yolox_from_config(cfg)
    ema = state.get("ema")
    weights = ema["module"] if use_ema and ema else state["model"]
    net.load_state_dict(weights)
    return net.to(device).eval(), cfg, state
