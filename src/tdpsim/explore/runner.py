"""Run executions of a scenario under a strategy until it is exhausted, a failure is found
or a budget ends.  No I/O: progress goes to an optional callback."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Optional

from .engine import Engine, ExecutionResult, Scheduler
from .scenario import Scenario
from .strategies.dpor import trace_of


def run_one(scenario: Scenario, scheduler: Scheduler, record: bool = False) -> ExecutionResult:
    """One execution (the strategy's ``new_execution`` must already have returned True)."""
    world = scenario.build()
    result = Engine(world, scheduler, record=record, max_steps=scenario.max_steps).run()
    scheduler.done(result)
    return result


@dataclass
class ExploreReport:
    """Totals of one exploration."""

    executions: int = 0
    steps: int = 0
    pruned: int = 0
    states: set = field(default_factory=set)
    traces: set = field(default_factory=set)
    failure: Optional[ExecutionResult] = None
    failure_index: int = -1
    failures: set = field(default_factory=set)  # distinct "KIND: message" of every failure
    exhausted: bool = False
    seconds: float = 0.0

    @property
    def executions_per_second(self) -> float:
        return self.executions / self.seconds if self.seconds else 0.0

    @property
    def steps_per_second(self) -> float:
        return self.steps / self.seconds if self.seconds else 0.0


def explore(scenario: Scenario, scheduler: Scheduler, *, stop_on_failure: bool = True,
            time_limit: Optional[float] = None,
            progress: Optional[Callable[[ExploreReport], None]] = None,
            progress_every: int = 256) -> ExploreReport:
    report = ExploreReport()
    t0 = time.perf_counter()
    while scheduler.new_execution():
        result = run_one(scenario, scheduler)
        report.executions += 1
        report.steps += result.steps
        if result.pruned:
            report.pruned += 1
        else:
            report.states.add(result.state_hash)
        report.traces.add(result.trace_hash)
        if result.failure is not None:
            report.failures.add(f"{result.failure.kind}: {result.failure.message}")
        if result.failure is not None and report.failure is None:
            report.failure = result
            report.failure_index = report.executions - 1
            if stop_on_failure:
                break
        if progress is not None and report.executions % progress_every == 0:
            report.seconds = time.perf_counter() - t0
            progress(report)
        if time_limit is not None and time.perf_counter() - t0 > time_limit:
            break
    else:
        report.exhausted = bool(getattr(scheduler, "exhausted", False))
    report.seconds = time.perf_counter() - t0
    if progress is not None:
        progress(report)
    return report


def explore_traces(scenario: Scenario, scheduler: Scheduler) -> tuple[int, dict]:
    """Run ``scheduler`` to its end, recording footprints: (executions, Mazurkiewicz trace
    -> final state) — what ``benchmarks/bench_dpor.py --sound`` and the tests compare."""
    scheduler.needs_footprints = True
    out: dict = {}
    n = 0
    while scheduler.new_execution():
        res = run_one(scenario, scheduler)
        n += 1
        if not res.pruned:
            out.setdefault(trace_of(res.events), res.state_hash)
    return n, out
