"""study/run.py's parser and StudyArgs are one definition: the same names, the same defaults;
--max-failures is checked as the space's max_failures."""

from __future__ import annotations

import dataclasses

import pytest

from study.driver import StudyArgs, run_study, study_defaults
from study.run import build_parser
from study.spaces import SpaceError


def test_the_parser_and_studyargs_agree():
    ns = build_parser().parse_args([])
    assert set(vars(ns)) == {f.name for f in dataclasses.fields(StudyArgs)}
    assert vars(ns) == study_defaults() == dataclasses.asdict(StudyArgs())
    assert StudyArgs(**vars(ns)) == StudyArgs()
    assert ns.space == "ablation"  # the README's default


def test_max_failures_is_checked_like_the_spaces():
    with pytest.raises(SpaceError, match="max_failures.*>= 0, got -1"):
        run_study(StudyArgs(space="smoke", max_failures=-1, dry_run=True), log=lambda s: None)
