"""study/run.py's parser and StudyArgs are one definition: the same names, the same defaults;
--max-failures is checked as the space's max_failures."""

from __future__ import annotations

import dataclasses

import pytest

from study.driver import StudyArgs, import_train_fn, run_study, study_defaults
from study.layout import StudyError
from study.run import build_parser
from study.spaces import SpaceError
from tests.paths import FAKE_TRAIN_FN


def test_the_parser_and_studyargs_agree():
    ns = build_parser().parse_args([])
    assert set(vars(ns)) == {f.name for f in dataclasses.fields(StudyArgs)}
    assert vars(ns) == study_defaults() == dataclasses.asdict(StudyArgs())
    assert StudyArgs(**vars(ns)) == StudyArgs()
    assert ns.space == "ablation"  # the README's default


def test_max_failures_is_checked_like_the_spaces():
    with pytest.raises(SpaceError, match="max_failures.*>= 0, got -1"):
        run_study(StudyArgs(space="smoke", max_failures=-1, dry_run=True), log=lambda s: None)


def test_the_training_function_comes_from_a_module_or_a_file():
    import tests.study_fakes

    assert import_train_fn("tests.study_fakes:fake_train") is tests.study_fakes.fake_train
    from_file = import_train_fn(FAKE_TRAIN_FN)  # loaded from its path, not from sys.path
    assert from_file.__name__ == "fake_train" and from_file.__module__ == "train_fn_study_fakes"
    for bad in ("tests.study_fakes", "tests.study_fakes:nothing", "/no/such/file.py:f"):
        with pytest.raises(StudyError, match="--train-fn"):
            import_train_fn(bad)
