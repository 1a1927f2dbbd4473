"""PCT — probabilistic concurrency testing (Burckhardt, Kothari, Musuvathi, Nagarakatte,
ASPLOS 2010).

Each execution gives the n threads distinct random priorities d..d+n-1 and picks d-1 priority
change points uniformly among the first k steps; the highest-priority runnable thread always
runs, and at the i-th change point the running thread's priority drops to i (below every
initial priority).  A bug of depth d is found by one execution with probability at least
1 / (n * k^(d-1)) (the paper's Theorem 1).  k is the longest execution seen so far (the first
execution uses ``k_hint``).
"""

from __future__ import annotations

import random
from typing import Optional, Sequence

from ..engine import ExecutionResult, Scheduler, StepInfo


def pct_bound(n: int, k: int, d: int) -> float:
    """The published lower bound on the probability that one PCT execution finds a bug of
    depth d in a program of n threads and k steps."""
    return 1.0 / (n * k ** (d - 1))


class PctScheduler(Scheduler):
    def __init__(self, seed: int = 0, depth: int = 3, executions: int = 1000,
                 k_hint: int = 200, start: int = 0, stride: int = 1) -> None:
        if depth < 1:
            raise ValueError("PCT depth must be >= 1")
        self.seed = seed
        self.depth = depth
        self.limit = executions
        self.k = k_hint
        self.index = start - stride
        self.stride = stride
        self.rng = random.Random()
        self.prio: dict[int, int] = {}
        self.change: dict[int, int] = {}

    def new_execution(self) -> bool:
        self.index += self.stride
        if self.index >= self.limit:
            return False
        self.rng.seed(self.seed * 1_000_003 + self.index)
        self.prio = {}
        self.change = {}
        # d-1 change points among steps 1..k, each mapped to its new (low) priority.
        for i in range(1, self.depth):
            step = 1 + int(self.rng.random() * self.k)
            self.change.setdefault(step, self.depth - i)
        return True

    def _priority(self, tid: int) -> int:
        p = self.prio.get(tid)
        if p is None:
            # Distinct initial priorities >= depth: a random draw breaks ties by tid.
            p = self.prio[tid] = self.depth + int(self.rng.random() * 1_000_000) * 64 + tid
        return p

    def choose(self, runnable: Sequence[int], info: StepInfo) -> Optional[int]:
        low = self.change.get(info.step)
        if low is not None and info.current >= 0:
            self.prio[info.current] = low
        if len(runnable) == 1:
            return runnable[0]
        return max(runnable, key=self._priority)

    def done(self, result: ExecutionResult) -> None:
        self.k = max(self.k, result.steps)

    def bound(self, n: int) -> float:
        return pct_bound(n, self.k, self.depth)
