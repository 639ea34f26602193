"""study/run.py's parser is made from StudyArgs (study/cli/args.py): every flag is a field, with its
default, type and help; --max-failures is checked as the space's max_failures; --train-fn."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from study.cli.args import StudyArgs, flag_name, study_defaults
from study.layout import StudyError
from study.run import build_parser
from study.running.driver import import_train_fn, run_study
from study.space.definition import SpaceError
from tests.paths import FAKE_TRAIN_FN


def test_the_parser_and_studyargs_agree():
    ns = build_parser().parse_args([])
    assert set(vars(ns)) == {f.name for f in dataclasses.fields(StudyArgs)}
    assert vars(ns) == study_defaults() == dataclasses.asdict(StudyArgs())
    assert StudyArgs(**vars(ns)) == StudyArgs()
    assert ns.space == "ablation"  # the README's default


def test_every_flag_is_a_field_with_its_type_and_help():
    parser = build_parser()
    actions = {a.dest: a for a in parser._actions if a.dest != "help"}
    assert set(actions) == {f.name for f in dataclasses.fields(StudyArgs)}
    for f in dataclasses.fields(StudyArgs):
        action = actions[f.name]
        assert action.help, f.name
        assert action.option_strings == ["--set" if f.name == "overrides" else flag_name(f)]
    assert actions["download"].option_strings == ["--no-download"]
    ns = parser.parse_args(
        ["--seeds", "3", "--cpus-per-trial", "1.5", "--out", "o", "--no-download", "--full",
         "--set", "lr=0.1", "--set", "epochs=2", "--device", "cpu"]
    )
    assert (ns.seeds, ns.cpus_per_trial, ns.download, ns.full) == (3, 1.5, False, True)
    assert ns.out == Path("o") and ns.overrides == ["lr=0.1", "epochs=2"]
    with pytest.raises(SystemExit):
        parser.parse_args(["--device", "tpu"])  # the choices are model.config.DEVICES


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
