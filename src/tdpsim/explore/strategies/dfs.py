"""Bounded exhaustive DFS (CHESS-style iterative context bounding, stateless).

Every execution replays the decisions of the current DFS path and extends it with the first
option at each new decision; afterwards the deepest decision with an untried option is
advanced.  Options are ordered current-thread-first, and with ``preemption_bound = b`` an
execution may switch away from a still-runnable thread at most b times (switching away from
a blocked or finished thread is free).  ``exhausted`` is True once every schedule within the
bound was run.
"""

from __future__ import annotations

from typing import Optional, Sequence

from ..engine import ExecutionResult, Scheduler, StepInfo


class _Node:
    __slots__ = ("options", "idx", "current", "preempts")

    def __init__(self, options: list[int], current: int, preempts: int) -> None:
        self.options = options
        self.idx = 0
        self.current = current
        self.preempts = preempts


class DfsScheduler(Scheduler):
    def __init__(self, preemption_bound: Optional[int] = 2, max_executions: int = 100000,
                 prefix: Sequence[int] = ()) -> None:
        self.bound = preemption_bound
        self.max_executions = max_executions
        self.stack: list[_Node] = []
        self.depth = 0
        self.preempts = 0
        self.executions = 0
        self.exhausted = False
        self.started = False
        # A fixed prefix of decisions (tids) this instance must not backtrack into: lets
        # workers split one DFS tree by its first decisions.
        self.prefix = list(prefix)

    def new_execution(self) -> bool:
        if self.exhausted or self.executions >= self.max_executions:
            return False
        if self.started and not self._advance():
            self.exhausted = True
            return False
        self.started = True
        self.executions += 1
        self.depth = 0
        self.preempts = 0
        return True

    def _advance(self) -> bool:
        stack = self.stack
        while len(stack) > len(self.prefix):
            node = stack[-1]
            if node.idx + 1 < len(node.options):
                node.idx += 1
                return True
            stack.pop()
        return False

    def choose(self, runnable: Sequence[int], info: StepInfo) -> Optional[int]:
        if len(runnable) == 1:
            return runnable[0]
        cur = info.current
        d = self.depth
        self.depth = d + 1
        if d < len(self.stack):
            node = self.stack[d]
        else:
            options = [cur] + [r for r in runnable if r != cur] if cur in runnable \
                else list(runnable)
            if d < len(self.prefix):
                options = [self.prefix[d]] if self.prefix[d] in runnable else options[:0]
            elif self.bound is not None and self.preempts >= self.bound and cur in runnable:
                options = [cur]
            if not options:
                return None  # the prefix does not apply to this tree: prune
            node = _Node(options, cur, self.preempts)
            self.stack.append(node)
        choice = node.options[node.idx]
        if choice != cur and cur in runnable:
            self.preempts += 1
        return choice

    def done(self, result: ExecutionResult) -> None:
        # Decisions deeper than this execution reached are stale (cannot happen with a
        # deterministic model, but a pruned run may stop early).
        del self.stack[max(self.depth, len(self.prefix)):]
