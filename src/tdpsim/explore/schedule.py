"""Schedule files: a failing (or any) execution as JSON, replayed by the same engine.

A schedule is the scenario (a built-in's name, or the path of a scenario file) with the
sha256 of the file it was recorded on, its parameter overrides, the resolved policy, the seed and
strategy that found it, the thread names and ``choices``: the thread chosen at every step
where two or more threads were runnable.  After the last choice every execution continues
with the non-preemptive default (see ``strategies/replay.py``).  Replay is strict: a choice
naming a thread that cannot run is an error naming the decision index, step, thread and the
runnable threads.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from ..userfile import NotTextError, read_user_text

from .engine import ExecutionResult, ExplorerError
from .runner import run_one
from .scenario import Scenario, ScenarioError, is_builtin, load_scenario
from .strategies.replay import ReplayScheduler

FORMAT = "tdpsim-schedule"
VERSION = 1


class ScheduleError(ExplorerError):
    """A schedule file is malformed or does not fit its scenario."""


@dataclass
class Schedule:
    scenario: str
    params: dict[str, Any]
    policy: dict[str, Any]
    seed: int
    strategy: str
    threads: list[str]
    choices: list[str]
    failure: Optional[dict[str, Any]] = None
    extra: dict[str, Any] = field(default_factory=dict)
    scenario_sha256: str = ""

    @classmethod
    def from_result(cls, scenario: Scenario, result: ExecutionResult, *, seed: int,
                    strategy: str, decisions: Optional[list[int]] = None,
                    **extra: Any) -> "Schedule":
        names = result.thread_names
        ds = result.decisions if decisions is None else decisions
        where = scenario.name if is_builtin(scenario) else str(Path(scenario.source).resolve())
        return cls(scenario=where, params=dict(scenario.params),
                   policy=scenario.policy.as_dict(), seed=seed, strategy=strategy,
                   threads=list(names), choices=[names[d] for d in ds],
                   failure=result.failure.as_dict() if result.failure else None, extra=extra,
                   scenario_sha256=scenario.sha256)

    def to_json(self) -> str:
        doc = {"format": FORMAT, "version": VERSION, "scenario": self.scenario,
               "params": self.params, "policy": self.policy, "seed": self.seed,
               "strategy": self.strategy, "threads": self.threads, "choices": self.choices,
               "failure": self.failure, "scenario_sha256": self.scenario_sha256}
        doc.update(self.extra)
        return json.dumps(doc, indent=1, sort_keys=True) + "\n"

    def save(self, path: str | Path) -> None:
        atomic_write(Path(path), self.to_json())

    def decisions(self) -> list[int]:
        index = {n: i for i, n in enumerate(self.threads)}
        return [index[c] for c in self.choices]

    def load_scenario(self) -> Scenario:
        try:
            sc = load_scenario(self.scenario, self.params)
        except ScenarioError as e:
            raise ScheduleError(f"schedule's scenario: {e}") from None
        if self.scenario_sha256 and sc.sha256 != self.scenario_sha256:
            raise ScheduleError(f"scenario_sha256: {sc.source} changed since the schedule was "
                                f"recorded (sha256 {self.scenario_sha256[:16]}…, now "
                                f"{sc.sha256[:16]}…); its choices may not fit any more")
        if sc.thread_names != self.threads:
            raise ScheduleError(f"threads: the schedule was recorded for threads "
                                f"{self.threads} but scenario {self.scenario!r} has "
                                f"{sc.thread_names}")
        if sc.policy.as_dict() != self.policy:
            diff = {k: (v, sc.policy.as_dict().get(k)) for k, v in self.policy.items()
                    if sc.policy.as_dict().get(k) != v}
            raise ScheduleError(f"policy: the schedule's policy differs from the scenario's "
                                f"with these params (schedule, scenario): {diff}")
        return sc


def atomic_write(path: Path, text: str) -> None:
    """Write via a temporary file and rename, so a killed process never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def parse_schedule(text: str, source: str = "<schedule>") -> Schedule:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise ScheduleError(f"{source}: not valid JSON: {e.msg} at line {e.lineno} column "
                            f"{e.colno}") from None
    if not isinstance(doc, dict):
        raise ScheduleError(f"{source}: expected a JSON object with scenario, threads, "
                            "choices, ...")
    if doc.get("format") != FORMAT:
        raise ScheduleError(f"{source}: format: expected {FORMAT!r}, got {doc.get('format')!r}")
    if doc.get("version") != VERSION:
        raise ScheduleError(f"{source}: version: expected {VERSION}, got "
                            f"{doc.get('version')!r}")

    def need(key: str, typ: type, what: str) -> Any:
        if key not in doc:
            raise ScheduleError(f"{source}: {key}: missing (expected {what})")
        v = doc[key]
        if not isinstance(v, typ) or (typ is int and isinstance(v, bool)):
            raise ScheduleError(f"{source}: {key}: expected {what}, got {v!r}")
        return v

    scenario = need("scenario", str, "a scenario name")
    params = need("params", dict, "an object of parameter overrides")
    policy = need("policy", dict, "the policy object")
    seed = need("seed", int, "an integer")
    strategy = need("strategy", str, "a strategy name")
    threads = need("threads", list, "a list of thread names")
    choices = need("choices", list, "a list of thread names, one per decision")
    for i, t in enumerate(threads):
        if not isinstance(t, str):
            raise ScheduleError(f"{source}: threads[{i}]: expected a thread name, got {t!r}")
    for i, c in enumerate(choices):
        if c not in threads:
            raise ScheduleError(f"{source}: choices[{i}] (decision {i}): thread {c!r} is "
                                f"not a thread of this schedule; expected one of {threads}")
    sha = doc.get("scenario_sha256", "")
    if not isinstance(sha, str):
        raise ScheduleError(f"{source}: scenario_sha256: expected a hex string, got {sha!r}")
    known = {"format", "version", "scenario", "params", "policy", "seed", "strategy",
             "threads", "choices", "failure", "scenario_sha256"}
    extra = {k: v for k, v in doc.items() if k not in known}
    return Schedule(scenario, params, policy, seed, strategy, threads, choices,
                    doc.get("failure"), extra, sha)


def load_schedule(path: str | Path) -> Schedule:
    try:
        text = read_user_text(path, "schedule")
    except NotTextError as e:
        raise ScheduleError(str(e)) from None
    return parse_schedule(text, str(path))


def replay(schedule: Schedule, record: bool = True, strict: bool = True) -> ExecutionResult:
    """Run the schedule once more (deterministic: same schedule → same steps)."""
    sc = schedule.load_scenario()
    rep = ReplayScheduler(schedule.decisions(), schedule.threads, strict=strict)
    rep.new_execution()
    return run_one(sc, rep, record=record)
