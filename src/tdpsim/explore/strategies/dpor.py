"""Source-DPOR with sleep sets (Abdulla, Aronis, Jonsson, Sagonas, POPL 2014, Algorithm 1),
stateless and iterative: one engine execution per maximal trace explored.

Events are the engine's steps; an event's footprint is the set of (key, write) pairs it
touched: the key of the point that started it plus the unannotated VM-wide accesses the
tracker saw (``tracking.py``).  Two events are dependent when they share a key and at least
one of them writes it.  Lock points carry ``write`` = exclusive mode, so two shared
(read_lock) acquisitions commute while anything against a write_lock does not.

After each execution the happens-before relation is built with vector clocks, every race
(i, j) — dependent events of different threads with no happens-before path other than
their direct conflict — is found, and some initial thread of v = notdep(i, E).j is added to
backtrack(pre(E, i)) unless one is already there or asleep.  If no initial is enabled at
pre(E, i) (possible with blocking locks) every enabled thread is added, as classic DPOR
does.  Explored siblings go to the node's sleep set and are inherited by children whose
event is independent of theirs; a state where every runnable thread sleeps is pruned.
"""

from __future__ import annotations

from typing import Optional, Sequence

from ..engine import ExecutionResult, Scheduler, StepInfo


def dependent(a: frozenset, b: frozenset) -> bool:
    for k, w in a:
        if (k, True) in b or (w and (k, False) in b):
            return True
    return False


class _Node:
    __slots__ = ("enabled", "chosen", "backtrack", "done", "sleep", "fp_of")

    def __init__(self, enabled: list[int], chosen: int, sleep: dict[int, frozenset]) -> None:
        self.enabled = enabled
        self.chosen = chosen
        self.backtrack = {chosen}
        self.done: set[int] = set()
        self.sleep = sleep
        self.fp_of: dict[int, frozenset] = {}


class DporScheduler(Scheduler):
    needs_footprints = True

    def __init__(self, max_executions: int = 100000) -> None:
        self.max_executions = max_executions
        self.stack: list[_Node] = []
        self.depth = 0
        self.executions = 0
        self.pruned = 0
        self.exhausted = False
        self.started = False

    # ---------------------------------------------------------------- interface
    def new_execution(self) -> bool:
        if self.exhausted or self.executions >= self.max_executions:
            return False
        if self.started and not self._backtrack():
            self.exhausted = True
            return False
        self.started = True
        self.executions += 1
        self.depth = 0
        return True

    def choose(self, runnable: Sequence[int], info: StepInfo) -> Optional[int]:
        d = self.depth
        stack = self.stack
        if d > 0:
            stack[d - 1].fp_of[info.last_tid] = info.last_footprint
        self.depth = d + 1
        if d < len(stack):
            node = stack[d]
            if node.chosen not in runnable:  # nondeterminism: should never happen
                raise RuntimeError(f"DPOR replay diverged at step {d}")
            return node.chosen
        if d == 0:
            sleep: dict[int, frozenset] = {}
        else:
            parent = stack[d - 1]
            last = info.last_footprint
            sleep = {q: fp for q, fp in parent.sleep.items()
                     if q != parent.chosen and not dependent(fp, last)}
        cands = [r for r in runnable if r not in sleep]
        if not cands:
            self.pruned += 1
            return None  # sleep-set blocked: every continuation was covered elsewhere
        cur = info.current
        choice = cur if cur in cands else cands[0]
        stack.append(_Node(list(runnable), choice, sleep))
        return choice

    def done(self, result: ExecutionResult) -> None:
        events = result.events
        n = len(events)
        if n and n <= len(self.stack):
            self.stack[n - 1].fp_of[events[-1][0]] = events[-1][1]
        del self.stack[n:]
        self._races(events, len(result.thread_names))

    # ---------------------------------------------------------------- internals
    def _backtrack(self) -> bool:
        stack = self.stack
        while stack:
            node = stack[-1]
            p = node.chosen
            node.done.add(p)
            fp = node.fp_of.get(p)
            if fp is not None:
                node.sleep[p] = fp
            todo = sorted(node.backtrack - node.done - node.sleep.keys())
            if todo:
                node.chosen = todo[0]
                return True
            stack.pop()
        return False

    def _races(self, events: list[tuple[int, frozenset]], nthreads: int) -> None:
        stack = self.stack
        vcs: list[list[int]] = []
        thread_vc: dict[int, list[int]] = {}
        last_write: dict = {}
        reads: dict = {}
        for j, (p, fp) in enumerate(events):
            prev = thread_vc.get(p)
            vc = list(prev) if prev is not None else [-1] * nthreads
            conflicts: set[int] = set()
            for k, w in fp:
                lw = last_write.get(k)
                if lw is not None:
                    conflicts.add(lw)
                if w:
                    conflicts.update(reads.get(k, ()))
            for i in sorted(conflicts, reverse=True):
                pi = events[i][0]
                if pi == p:
                    continue
                if vc[pi] < i and i < len(stack):
                    self._add_backtrack(i, j, events, vcs, vc)
                other = vcs[i]
                for r in range(nthreads):
                    if other[r] > vc[r]:
                        vc[r] = other[r]
            vc[p] = j
            vcs.append(vc)
            thread_vc[p] = vc
            for k, w in sorted(fp, key=lambda kw: kw[1]):
                if w:
                    last_write[k] = j
                    reads[k] = []
                else:
                    reads.setdefault(k, []).append(j)

    def _add_backtrack(self, i: int, j: int, events: list, vcs: list, vc_j: list[int]) -> None:
        node = self.stack[i]
        pi = events[i][0]
        # v = notdep(i, E).j: events after i that do not happen after i, then j.
        first: dict[int, int] = {}
        for k in range(i + 1, j):
            if vcs[k][pi] >= i:
                continue
            t = events[k][0]
            if t not in first:
                first[t] = k
        pj = events[j][0]
        if pj not in first:
            first[pj] = j
        initials = []
        for t, f in first.items():
            clock = vc_j if f == j else vcs[f]
            if all(not (ft < f and clock[r] >= ft) for r, ft in first.items() if r != t):
                initials.append(t)
        covered = node.backtrack | node.sleep.keys()
        if any(t in covered for t in initials):
            return
        enabled = [t for t in initials if t in node.enabled]
        if enabled:
            node.backtrack.add(min(enabled))
        else:
            node.backtrack.update(t for t in node.enabled if t not in node.sleep)
