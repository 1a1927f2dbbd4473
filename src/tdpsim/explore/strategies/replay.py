"""Replay: follow a recorded list of decisions (one thread per step with >= 2 runnable
threads); after the list, keep running the current thread while it is runnable, else the
lowest-numbered runnable one (the non-preemptive default every strategy's schedules are
trimmed against).

``strict`` replay raises ``ScheduleMismatch`` naming the step index, the thread and what was
runnable when a decision cannot be followed; lenient replay (used while shrinking) falls back to
the default instead.
"""

from __future__ import annotations

from typing import Optional, Sequence

from ..engine import ExplorerError, Scheduler, StepInfo


class ScheduleMismatch(ExplorerError):
    """A schedule asks for a thread that cannot run at that point."""


def default_choice(runnable: Sequence[int], current: int) -> int:
    return current if current in runnable else runnable[0]


class ReplayScheduler(Scheduler):
    def __init__(self, decisions: Sequence[int], names: Sequence[str], strict: bool = True,
                 runs: int = 1) -> None:
        self.decisions = list(decisions)
        self.names = list(names)
        self.strict = strict
        self.runs = runs
        self.pos = 0

    def new_execution(self) -> bool:
        if self.runs <= 0:
            return False
        self.runs -= 1
        self.pos = 0
        return True

    def choose(self, runnable: Sequence[int], info: StepInfo) -> Optional[int]:
        if len(runnable) == 1:
            return runnable[0]
        i = self.pos
        self.pos += 1
        if i < len(self.decisions):
            want = self.decisions[i]
            if want in runnable:
                return want
            if self.strict:
                name = self.names[want] if 0 <= want < len(self.names) else f"#{want}"
                state = _why_not(info, want)
                raise ScheduleMismatch(
                    f"decision {i} (step {info.step}): the schedule chooses thread {name!r} "
                    f"but it {state}; expected one of the runnable threads "
                    f"{[self.names[r] for r in runnable]}")
        return default_choice(runnable, info.current)


def _why_not(info: StepInfo, tid: int) -> str:
    if not 0 <= tid < len(info.pending):
        return "does not exist"
    t = info.engine.threads[tid]
    if t.done:
        return "has already finished"
    kind, key, _ = info.pending[tid]
    if kind in ("lock_acquire", "lock_wait"):
        return f"is waiting for {key[1]}"
    if kind == "retry_wait":
        return "is waiting to retry its fault (nothing it read has changed)"
    return f"is blocked at {kind} {key}"
