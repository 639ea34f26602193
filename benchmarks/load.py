"""Driver load (issue 27): a sampled study of many fast trials through the real driver.

``run_study`` → pipeline → Ray Tune (Optuna TPE over ``optuna.sqlite``) → ``run_trial`` (the
data check, the records) → the driver's callback → the outputs, with the fake training
function of tests/study_fakes.py as the stand-in (``--epoch-s`` of busy CPU per epoch, a
deterministic metric), many trials at once on fractional CPUs. It measures

* wall time (end to end, and the Tune phase) and the **driver overhead per trial**: the Tune
  phase's wall time less the stand-in's own time spread over the cores it could use, per trial;
  the driver process's CPU time per trial, split into the driver's callback (results.csv,
  status.json), the searcher (Optuna's ask and tell) and the rest (Ray Tune, Ray's client);
* the driver's **peak RSS** (sampled every 0.2 s, and its growth over the Tune phase) and the
  peak RSS of the whole local Ray session (driver, GCS, raylet, workers);
* the **peak number of trials running at once**, from the trials' own records (first start in
  attempts.jsonl to done.json);

and checks the study is complete and consistent: results.csv has every trial done, every trial
folder its files, report.md a row per trial, best_config.yaml the best trial, the Optuna
storage one COMPLETE trial per trial and the same best trial as the report.

    python benchmarks/load.py                                  # 500 trials, 32 at once
    python benchmarks/load.py --trials 50 --concurrent 16      # the test's size
    python benchmarks/load.py --cpus-per-trial 0.0625 --out /tmp/load-study

tests/study/test_load.py runs :func:`run_load` at 50 trials (completeness, not speed).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import re
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# Run as a script, this file's folder (which holds benchmarks/study.py) would shadow the `study`
# package: the repository root takes its place, so that the stand-in, tests/study_fakes.py,
# imports as it does under pytest (the trials get it by value: study/running/driver.py).
HERE = Path(__file__).resolve().parent
sys.path[:] = [str(HERE.parent) if Path(p or ".").resolve() == HERE else p for p in sys.path]

SPACE = """
fixed: {{epochs: {epochs}, eval_interval: 1, no_aug_epochs: 1, workers: 0}}
sample:
  lr: {{type: loguniform, low: 0.001, high: 10.0}}
  size: {{type: choice, values: [nano, tiny]}}
num_samples: {trials}
resources: {{cpus: 1}}
"""
TRIAL_FILES = ("trial.json", "attempts.jsonl", "history.jsonl", "done.json")
REPORT_ROW = re.compile(r"^\| trial-\w+ \|", re.M)


@dataclass
class Timers:
    """Wall seconds of each call of the driver's own hooks, in call order, by hook (Tune calls
    them from its one loop: what they take, every trial waits for)."""

    calls: dict[str, list[float]] = field(default_factory=dict)

    def total(self, prefix: str) -> float:
        return sum(sum(v) for k, v in self.calls.items() if k.startswith(prefix))

    def ends(self, key: str) -> tuple[float, float]:
        """Mean seconds of the first and of the last tenth of the calls of ``key``."""
        v = self.calls.get(key) or [0.0]
        n = max(len(v) // 10, 1)
        return sum(v[:n]) / n, sum(v[-n:]) / n


@contextmanager
def timed_hooks(timers: Timers) -> Iterator[None]:
    """Time the driver's callback (results.csv, status.json, progress lines) and the searcher
    (Optuna's ask, reports and tell: SQLite transactions); class methods, restored after."""
    from study.running.progress import StudyCallback
    from study.running.searcher import ChosenCheckpoint

    hooks = [
        (StudyCallback, "on_trial_complete", "callback.complete"),
        (StudyCallback, "on_trial_result", "callback.result"),
        (StudyCallback, "on_trial_start", "callback.start"),
        (ChosenCheckpoint, "suggest", "searcher.suggest"),
        (ChosenCheckpoint, "on_trial_result", "searcher.result"),
        (ChosenCheckpoint, "on_trial_complete", "searcher.complete"),
    ]
    saved = [(cls, name, cls.__dict__[name]) for cls, name, _ in hooks]

    def wrap(fn: Callable[..., Any], key: str) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                timers.calls.setdefault(key, []).append(time.perf_counter() - t0)

        return timed

    for cls, name, key in hooks:
        setattr(cls, name, wrap(cls.__dict__[name], key))
    try:
        yield
    finally:
        for cls, name, fn in saved:
            setattr(cls, name, fn)


class MemorySampler:
    """This process's (the driver's) RSS every ``every`` seconds, and every ``uss_every`` the
    memory of the whole local Ray session it started (itself and its child processes: GCS,
    raylet, the trials' workers) as the sum of their USS (unique pages: the shared libraries
    that every worker maps, torch above all, counted once as they are in RAM)."""

    def __init__(self, every: float = 0.2, uss_every: float = 5.0) -> None:
        import importlib

        importlib.import_module("ray")  # its thirdparty_files hold psutil if it is not installed
        self.psutil = importlib.import_module("psutil")
        self.proc = self.psutil.Process()
        self.every, self.uss_every = every, uss_every
        self.rss: list[tuple[float, int]] = []  # (time, driver RSS)
        self.uss: list[int] = []  # the session's summed USS
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _session_uss(self) -> int:
        total = 0
        for proc in [self.proc, *self.proc.children(recursive=True)]:
            try:
                total += proc.memory_full_info().uss
            except (self.psutil.NoSuchProcess, self.psutil.AccessDenied):
                continue
        return total

    def _run(self) -> None:
        last_uss = 0.0
        while not self._stop.is_set():
            now = time.time()
            self.rss.append((now, self.proc.memory_info().rss))
            if now - last_uss >= self.uss_every:
                self.uss.append(self._session_uss())
                last_uss = now
            self._stop.wait(self.every)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()

    def driver_at(self, t: float) -> int:
        """The driver's RSS at the sample nearest to ``t``."""
        return min(self.rss, key=lambda s: abs(s[0] - t))[1] if self.rss else 0


def trial_spans(study: Path) -> dict[str, tuple[float, float]]:
    """Trial folder → (its first start, done.json written), from the trial's own records."""
    spans = {}
    for done in sorted((study / "trials").glob("*/done.json")):
        lines = (done.parent / "attempts.jsonl").read_text().splitlines()
        spans[done.parent.name] = (float(json.loads(lines[0])["time"]), done.stat().st_mtime)
    return spans


def peak_overlap(spans: dict[str, tuple[float, float]]) -> int:
    """The most spans open at one instant."""
    events = sorted([(s, 1) for s, _ in spans.values()] + [(e, -1) for _, e in spans.values()])
    now = peak = 0
    for _, step in events:  # (an end sorts before a start at the same instant)
        now += step
        peak = max(peak, now)
    return peak


def check_study(study: Path, trials: int) -> list[str]:
    """What is missing or inconsistent in the finished study ([] when complete)."""
    import optuna
    from optuna.trial import TrialState

    from study.outputs.results import read_csv

    problems = []
    rows = read_csv(study / "results.csv")
    ids = [r["id"] for r in rows]
    if len(rows) != trials or len(set(ids)) != trials:
        problems.append(f"results.csv: {len(rows)} rows ({len(set(ids))} ids), not {trials}")
    problems += [f"{r['id']}: {r['status']}" for r in rows if r["status"] != "done"][:5]
    for tid in ids:
        missing = [f for f in TRIAL_FILES if not (study / "trials" / tid / f).is_file()]
        if missing:
            problems.append(f"trials/{tid}: no {', '.join(missing)}")
    report = (study / "report.md").read_text()
    if len(REPORT_ROW.findall(report)) != trials:
        problems.append(f"report.md: {len(REPORT_ROW.findall(report))} trial rows, not {trials}")
    best = re.search(r"\*\*Best trial \(chosen on validation \w+\): (trial-\w+)\*\*", report)
    if not (study / "best_config.yaml").is_file() or best is None:
        problems.append("no best_config.yaml or no best trial in report.md")
    stored = optuna.load_study(study_name=study.name,
                               storage=f"sqlite:///{study.resolve()}/optuna.sqlite")
    complete = stored.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    named = sorted(t.user_attrs.get("trial", "") for t in complete)
    if len(stored.trials) != trials or named != sorted(ids):
        problems.append(f"optuna.sqlite: {len(complete)} COMPLETE of {len(stored.trials)}, "
                        f"{len(set(named) & set(ids))} naming a trial of results.csv")
    val = {r["id"]: r["val_mAP"] for r in rows}
    wrong = [t.number for t in complete if t.value != val.get(t.user_attrs.get("trial"))]
    if wrong:
        problems.append(f"optuna.sqlite: {len(wrong)} values differ from results.csv")
    if best is not None and stored.best_trial.user_attrs.get("trial") != best.group(1):
        problems.append(f"report's best {best.group(1)} is not Optuna's best trial")
    return problems


@dataclass
class LoadResult:
    """The figures of one load run (seconds, MiB)."""

    trials: int
    concurrent: int  # asked (--max-concurrent)
    cpus_per_trial: float
    peak_running: int = 0  # observed, from the trials' records
    wall_s: float = 0.0  # run_study, end to end (Ray already up)
    tune_s: float = 0.0  # the Tune phase
    startup_s: float = 0.0  # the Tune phase's start to the first trial's (workers start)
    steady_per_trial_s: float = 0.0  # first trial's start to the last one's end, per trial
    own_s: float = 0.0  # the stand-in's own (busy) time, summed over the trials
    overhead_per_trial_s: float = 0.0  # (Tune phase - own time / cores) / trials
    driver_cpu_per_trial_s: float = 0.0  # the driver's CPU time in the Tune phase / trials
    callback_per_trial_s: float = 0.0  # wall time in the driver's callback / trials
    callback_end_s: tuple[float, float] = (0.0, 0.0)  # its trial end: first, last tenth
    searcher_per_trial_s: float = 0.0  # wall time in the searcher (Optuna, SQLite) / trials
    suggest_end_s: tuple[float, float] = (0.0, 0.0)  # its suggest (ask): first, last tenth
    driver_rss_peak_mib: float = 0.0
    driver_rss_growth_mib: float = 0.0  # over the Tune phase
    session_uss_peak_mib: float = 0.0
    problems: list[str] = field(default_factory=list)


def stand_in_study(folder: Path, trials: int, epochs: int, epoch_s: float) -> tuple[Path, Path]:
    """The sampled space file and the fake's control folder (a tiny real dataset)."""
    from tests.study_fakes import control_folder

    folder.mkdir(parents=True, exist_ok=True)
    space = folder / "load.yaml"
    space.write_text(SPACE.format(epochs=epochs, trials=trials))
    return space, control_folder(folder / "ctl", epoch_s=epoch_s)


def run_load(
    folder: Path, trials: int = 500, concurrent: int = 32, cpus_per_trial: float | None = None,
    epochs: int = 2, epoch_s: float = 0.0, cores: int | None = None,
) -> LoadResult:
    """One sampled study of ``trials`` stand-in trials, at most ``concurrent`` at once on
    ``cpus_per_trial`` each (default: the cluster's CPUs / ``concurrent``), in ``folder``/study,
    on the Ray session this process already runs; its figures and its problems."""
    import ray

    from study.running.driver import StudyArgs, run_study
    from tests.study_fakes import fake_train

    cores = cores or int(ray.cluster_resources().get("CPU", 1))
    cpus = cpus_per_trial or cores / concurrent
    space, ctl = stand_in_study(folder, trials, epochs, epoch_s)
    study = folder / "study"
    args = StudyArgs(space=str(space), data=str(ctl), out=study, cpus_per_trial=cpus,
                     max_concurrent=concurrent)
    marks: list[tuple[float, float, str]] = []  # (time, driver CPU seconds, line)

    def log(line: str) -> None:
        marks.append((time.time(), time.process_time(), line))

    timers = Timers()
    t0 = time.time()
    with MemorySampler() as memory, timed_hooks(timers):
        out = run_study(args, train_fn=fake_train, log=log)
    result = LoadResult(trials, concurrent, cpus, wall_s=time.time() - t0)
    result.problems = ([] if out.exit_code == 0 else [out.summary]) + check_study(study, trials)
    return figures(result, study, marks, timers, memory, own=trials * epochs * epoch_s,
                   cores=cores)


def figures(
    r: LoadResult, study: Path, marks: list[tuple[float, float, str]], timers: Timers,
    memory: MemorySampler, own: float, cores: int,
) -> LoadResult:
    """``r`` with the figures of the run: the log's marks (time, driver CPU, line) of the Tune
    phase, the hooks' timers, the memory samples and the trials' records."""
    start = next(m for m in marks if m[2].startswith("running "))
    end = next(m for m in marks if m[2].startswith("Tune phase ended"))
    spans = trial_spans(study)
    first = min(s for s, _ in spans.values())
    last = max(e for _, e in spans.values())
    n, mib = r.trials, 1 / 2**20
    tune = end[0] - start[0]
    return dataclasses.replace(
        r, peak_running=peak_overlap(spans), tune_s=tune, startup_s=first - start[0],
        steady_per_trial_s=(last - first) / n, own_s=own,
        overhead_per_trial_s=(tune - own / min(cores, r.concurrent)) / n,
        driver_cpu_per_trial_s=(end[1] - start[1]) / n,
        callback_per_trial_s=timers.total("callback") / n,
        callback_end_s=timers.ends("callback.complete"),
        searcher_per_trial_s=timers.total("searcher") / n,
        suggest_end_s=timers.ends("searcher.suggest"),
        driver_rss_peak_mib=max(s[1] for s in memory.rss) * mib,
        driver_rss_growth_mib=(memory.driver_at(end[0]) - memory.driver_at(start[0])) * mib,
        session_uss_peak_mib=max(memory.uss, default=0) * mib,
    )


def table(r: LoadResult) -> str:
    """The figures as a Markdown table, then the one-line summary."""
    ms = 1000

    def ends(v: tuple[float, float]) -> str:
        return f"{v[0] * ms:.0f} → {v[1] * ms:.0f} ms"

    rows = [
        ("trials / asked at once / CPUs per trial",
         f"{r.trials} / {r.concurrent} / {r.cpus_per_trial:g}"),
        ("trials running at once (peak, from the trials' records)", f"{r.peak_running}"),
        ("wall: study end to end (Ray up) / Tune phase", f"{r.wall_s:.1f} s / {r.tune_s:.1f} s"),
        ("Tune phase: workers' start-up (to the first trial) / then per trial",
         f"{r.startup_s:.1f} s / {r.steady_per_trial_s * ms:.0f} ms"),
        ("stand-in's own (busy) time, summed", f"{r.own_s:.1f} s"),
        ("driver overhead per trial ((Tune phase − own time ÷ cores) ÷ trials)",
         f"{r.overhead_per_trial_s * ms:.0f} ms"),
        ("driver process CPU per trial", f"{r.driver_cpu_per_trial_s * ms:.0f} ms"),
        ("driver's callback per trial (wall) / its trial end, first → last tenth",
         f"{r.callback_per_trial_s * ms:.1f} ms / {ends(r.callback_end_s)}"),
        ("searcher (Optuna on SQLite) per trial (wall) / its ask, first → last tenth",
         f"{r.searcher_per_trial_s * ms:.1f} ms / {ends(r.suggest_end_s)}"),
        ("driver RSS: peak / growth over the Tune phase",
         f"{r.driver_rss_peak_mib:.0f} MiB / {r.driver_rss_growth_mib:+.0f} MiB"),
        ("Ray session memory peak (USS of driver, GCS, raylet, workers)",
         f"{r.session_uss_peak_mib:.0f} MiB"),
        ("complete and consistent", "yes" if not r.problems else "; ".join(r.problems[:5])),
    ]
    lines = ["| figure | value |", "| --- | --- |", *(f"| {a} | {b} |" for a, b in rows)]
    lines.append(
        f"{r.trials} trials ({r.peak_running} at once) in {r.tune_s:.0f} s of Tune: "
        f"{r.overhead_per_trial_s * ms:.0f} ms driver overhead per trial, driver RSS peak "
        f"{r.driver_rss_peak_mib:.0f} MiB; {'complete' if not r.problems else 'PROBLEMS'}"
    )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=500)
    p.add_argument("--concurrent", type=int, default=32, help="--max-concurrent of the study")
    p.add_argument("--cpus-per-trial", type=float, default=None,
                   help="default: the CPUs given to Ray / --concurrent (fractional)")
    p.add_argument("--cpus", type=int, default=os.cpu_count() or 2, help="CPUs given to Ray")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--epoch-s", type=float, default=0.0, help="busy seconds per epoch")
    p.add_argument("--out", type=Path, default=None, help="keep the study here")
    p.add_argument("--json", type=Path, default=None, help="also write the figures as JSON")
    args = p.parse_args()
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    os.environ.setdefault("XDG_STATE_HOME", tempfile.mkdtemp(prefix="load-state-"))
    import ray

    ray.init(num_cpus=args.cpus, include_dashboard=False, logging_level=logging.WARNING)
    try:
        folder = args.out or Path(tempfile.mkdtemp(prefix="load-"))
        result = run_load(folder, args.trials, args.concurrent, args.cpus_per_trial,
                          args.epochs, args.epoch_s, cores=args.cpus)
    finally:
        ray.shutdown()
    print(f"Ray {ray.__version__}, {args.cpus} CPUs, study in {folder / 'study'}")
    print(table(result))
    if args.json:
        args.json.write_text(json.dumps(asdict(result), indent=1))
    sys.exit(1 if result.problems else 0)


if __name__ == "__main__":
    main()
