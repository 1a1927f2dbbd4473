"""Random walk: at every step a uniformly random runnable thread (Shuttle's RandomScheduler).

Execution ``i`` of a campaign with seed ``s`` uses the stream ``Random(s * 1_000_003 + i)``, so
any execution can be rerun alone from (seed, index) and workers can split indexes.
"""

from __future__ import annotations

import random
from typing import Optional, Sequence

from ..engine import Scheduler, StepInfo


class RandomScheduler(Scheduler):
    def __init__(self, seed: int = 0, executions: int = 1000, start: int = 0,
                 stride: int = 1) -> None:
        self.seed = seed
        self.limit = executions
        self.index = start - stride
        self.stride = stride
        self.rng = random.Random()

    def new_execution(self) -> bool:
        self.index += self.stride
        if self.index >= self.limit:
            return False
        self.rng.seed(self.seed * 1_000_003 + self.index)
        return True

    def choose(self, runnable: Sequence[int], info: StepInfo) -> Optional[int]:
        if len(runnable) == 1:
            return runnable[0]
        return runnable[int(self.rng.random() * len(runnable))]
