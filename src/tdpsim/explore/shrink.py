"""Shrinking a failing schedule: delta debugging (Zeller's ddmin) on the decision list.

A candidate is a sub-list of the decisions, replayed leniently (a decision that does not fit
falls back to the non-preemptive default).  It is kept when it fails the same way: the same
kind and the same message once numbers (pfns, gfns, steps, epochs) are normalised away, so a
shorter schedule that hits the same check at the same place with other values counts.  The
survivor is put in canonical form (the decisions the lenient run really took, minus a tail
the default would take anyway, so it replays strictly), then made 1-minimal: no single
decision can be removed without losing the failure.  The result is never longer than the
input.
"""

from __future__ import annotations

import re
from typing import Callable, Optional

from .engine import ExecutionResult, Failure
from .runner import run_one
from .scenario import Scenario
from .strategies.replay import ReplayScheduler, ScheduleMismatch


_NUMBER = re.compile(r"0x[0-9a-fA-F]+|\d+")


def signature(f: Optional[Failure]) -> Optional[tuple[str, str]]:
    """A failure's identity: its kind and where/what, with every number normalised."""
    if f is None:
        return None
    return f.kind, _NUMBER.sub("#", f.message)


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
    """A failing decision list no longer than ``failing.decisions``, 1-minimal unless the
    ``max_runs`` replay budget ran out first."""
    names = failing.thread_names
    want = signature(failing.failure)
    runs = [0]

    def fails(ds: list[int], strict: bool = False) -> bool:
        if runs[0] >= max_runs:
            return False
        runs[0] += 1
        try:
            return signature(_run(scenario, ds, names, strict).failure) == want
        except ScheduleMismatch:
            return False

    def canonical(ds: list[int]) -> list[int]:
        taken = list(_run(scenario, ds, names).decisions)
        while taken and fails(taken[:-1], strict=True):
            taken.pop()
        return taken if fails(taken, strict=True) else ds

    original = list(failing.decisions)
    best = canonical(ddmin(original, fails))
    reduced = True
    while reduced:
        reduced = False
        for i in range(len(best)):
            cand = best[:i] + best[i + 1:]
            if fails(cand):
                best, reduced = canonical(cand), True
                break
    if not fails(best, strict=True):
        best = original
    return best if len(best) <= len(original) else original
