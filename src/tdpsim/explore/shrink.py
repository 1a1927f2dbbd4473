"""Shrinking a failing schedule: delta debugging (Zeller's ddmin) on the decision list.

A candidate is a sub-list of the decisions, replayed leniently (a decision that does not fit
falls back to the non-preemptive default).  It is kept when it fails with the same failure
kind at the same function.  The survivor is replayed once more to record the decisions
actually taken, and trailing decisions that the default would take anyway are dropped, so the
result replays strictly.  The result is never longer than the input.
"""

from __future__ import annotations

from typing import Callable, Optional

from .engine import ExecutionResult, Failure
from .runner import run_one
from .scenario import Scenario
from .strategies.replay import ReplayScheduler


def _signature(f: Optional[Failure]) -> Optional[tuple[str, str]]:
    if f is None:
        return None
    return f.kind, f.message.split(":")[0]


def _run(scenario: Scenario, decisions: list[int], names: list[str],
         strict: bool = False) -> ExecutionResult:
    rep = ReplayScheduler(decisions, names, strict=strict)
    rep.new_execution()
    return run_one(scenario, rep)


def ddmin(items: list[int], fails: Callable[[list[int]], bool]) -> list[int]:
    """Classic ddmin: a 1-minimal sub-list of ``items`` for which ``fails`` holds."""
    n = 2
    while len(items) >= 2:
        chunk = max(1, len(items) // n)
        subsets = [items[i:i + chunk] for i in range(0, len(items), chunk)]
        reduced = False
        for i in range(len(subsets)):
            complement = [x for j, s in enumerate(subsets) if j != i for x in s]
            if fails(complement):
                items, n, reduced = complement, max(n - 1, 2), True
                break
        if not reduced:
            if n >= len(items):
                break
            n = min(len(items), n * 2)
    if len(items) == 1 and fails([]):
        return []
    return items


def shrink(scenario: Scenario, failing: ExecutionResult, max_runs: int = 2000) -> list[int]:
    """A failing decision list no longer than ``failing.decisions``, usually much shorter."""
    names = failing.thread_names
    want = _signature(failing.failure)
    runs = [0]

    def fails(ds: list[int]) -> bool:
        if runs[0] >= max_runs:
            return False
        runs[0] += 1
        return _signature(_run(scenario, ds, names).failure) == want

    original = list(failing.decisions)
    small = ddmin(original, fails)
    # Canonical form: the decisions the lenient run really took, minus a default tail.
    taken = list(_run(scenario, small, names).decisions)
    while taken and _signature(_run(scenario, taken[:-1], names, strict=True).failure) == want:
        taken.pop()
    best = taken if _signature(_run(scenario, taken, names, strict=True).failure) == want \
        else original
    return best if len(best) <= len(original) else original
