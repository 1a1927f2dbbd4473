"""A deterministic discrete-event engine in virtual time (SimPy's core, reduced).

Not a kernel file.  Events are ordered by ``(time, priority, seq)``: equal times run by
priority, then in scheduling order, so a run is a pure function of its inputs and its seed.
The engine owns the only random number generator of a run (``Engine.rng``, a seeded
``random.Random``); nothing in a run touches the global ``random`` module or a clock.

Processes are generators that yield the virtual delay (µs) until they want to run again;
returning ends them.  Each yield is one atomic step of the workload (one guest operation
driven to completion through the model), which is the granularity the workload simulator
needs: the model's own interleavings are the explorer's business, not this engine's.
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, field
from typing import Callable, Generator, Optional

Process = Generator[float, None, None]


@dataclass(order=True)
class _Event:
    time: float
    priority: int
    seq: int
    action: Callable[[], None] = field(compare=False)


class Engine:
    """Virtual clock, event queue and the run's RNG."""

    def __init__(self, seed: int) -> None:
        self.now = 0.0
        self.rng = random.Random(seed)
        self._queue: list[_Event] = []
        self._seq = 0
        self.steps = 0
        self.stopped: Optional[str] = None

    def schedule(self, delay: float, action: Callable[[], None], priority: int = 0) -> None:
        if delay < 0:
            raise ValueError("cannot schedule in the past")
        self._seq += 1
        heapq.heappush(self._queue, _Event(self.now + delay, priority, self._seq, action))

    def process(self, gen: Process, delay: float = 0.0, priority: int = 0,
                on_done: Optional[Callable[[], None]] = None) -> None:
        """Start a generator process after ``delay``."""
        def step() -> None:
            if self.stopped is not None:
                return
            self.steps += 1
            try:
                wait = next(gen)
            except StopIteration:
                if on_done is not None:
                    on_done()
                return
            self.schedule(max(0.0, float(wait)), step, priority)
        self.schedule(delay, step, priority)

    def stop(self, reason: str) -> None:
        """End the run at the current event (e.g. the VM was marked bugged)."""
        self.stopped = reason

    def run(self, until: Optional[float] = None) -> None:
        while self._queue and self.stopped is None:
            if until is not None and self._queue[0].time > until:
                break
            ev = heapq.heappop(self._queue)
            self.now = ev.time
            ev.action()

    @property
    def pending(self) -> int:
        return len(self._queue)
