"""Paths the tests share, wherever their file sits under tests/."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"
# the fake training functions as a --train-fn a subprocess can load (a file: tests/ is not
# on a driver's sys.path)
FAKE_TRAIN_FN = f"{REPO / 'tests' / 'study_fakes.py'}:fake_train"
