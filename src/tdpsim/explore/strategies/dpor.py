"""Optimal DPOR with wakeup trees (Abdulla, Aronis, Jonsson, Sagonas, POPL 2014, Algorithm 2),
stateless and iterative: one engine execution per Mazurkiewicz trace explored.  Source-DPOR
(the same paper's Algorithm 1) is kept as ``wakeup_trees=False`` for comparison.

Events are the engine's steps; an event's footprint is the set of (key, write) pairs it
touched: the key of the point that started it plus the unannotated VM-wide accesses the
tracker saw (``tracking.py``).  Two events are dependent when they share a key and at least
one of them writes it.

Locks.  An acquisition carries (lock, exclusive); the engine names a release
("release", lock) and it is read here as (lock, exclusive) too, so happens-before runs from
a release to the next conflicting acquisition (two shared holders commute; a writer is
ordered against everyone).  A release -> acquisition race cannot be reversed (the acquirer
was blocked), so the race reversed instead is the one between the two acquisitions: the
releasing thread's matching acquisition and the later one (Abdulla et al., JACM 2017, §10),
provided nothing else orders them.

After each execution the happens-before relation is built with vector clocks; for every race
e < e' (dependent events of different threads, ordered only by their own conflict) the
sequence v = notdep(e, E).e' is inserted into the wakeup tree at pre(E, e) unless a sleeping
thread is a weak initial of v (the trace is covered elsewhere).  Insertion walks the tree
and descends into the first child whose thread is a weak initial of the rest of v; reaching
a leaf means an equivalent continuation is already scheduled.  Exploration follows the
leftmost branch; after a leaf it continues with the running thread (fewest switches) or the
lowest-numbered runnable one.  An explored branch's thread joins the node's sleep set and is
inherited by children whose event is independent of it.  A branch's footprint is the one its
event had when it last ran: the one recorded at insertion came from another execution, where
the racing event e' ran after e, and can differ once e' runs first (a stale one put threads to
sleep that should have woken, and lost traces).

A branch whose thread is not runnable when reached (a reversal that only a blocking wait
forbids) is dropped: such a race is not reversible.  A state where every runnable thread
sleeps prunes the execution (never on programs without blocking; races are still analysed on
the prefix so nothing it would have revealed is lost).

Splitting.  With ``eager_depth = k`` the first k steps branch on every runnable thread that is
not asleep (in thread order) instead of only where races demand; races at those levels are
then covered by a branch or a sleeping thread, so they are ignored.  This costs a few
sleep-blocked executions (empty subtrees) and makes each subtree below level k depend only
on its prefix and the sleep sets along it.  ``prefix`` fixes the first steps to the given
threads with the given sleep sets, so one instance explores exactly one such subtree;
``campaign.py`` runs them as chunks and the union is the ``eager_depth = k`` run.
"""

from __future__ import annotations

from typing import Optional, Sequence

from ..engine import _NOT_DATA, ExecutionResult, Scheduler, StepInfo
from ..ops import RETRY_WAIT

def dependent(a: frozenset, b: frozenset) -> bool:
    for k, w in a:
        if (k, True) in b or (w and (k, False) in b):
            return True
    return False


class _WNode:
    """A wakeup-tree node: the event of ``tid`` (footprint once known) and the branches
    still to explore after it, leftmost first."""

    __slots__ = ("tid", "fp", "children")

    def __init__(self, tid: int, fp: Optional[frozenset]) -> None:
        self.tid = tid
        self.fp = fp
        self.children: list[_WNode] = []


class _Node:
    """One step of the current execution: its wakeup tree (``cur`` is the branch being
    explored, always ``wut.children[0]``) and its sleep set (tid -> footprint)."""

    __slots__ = ("wut", "cur", "sleep", "enabled")

    def __init__(self, wut: _WNode, cur: _WNode, sleep: dict[int, frozenset],
                 enabled: Sequence[int]) -> None:
        self.wut = wut
        self.cur = cur
        self.sleep = sleep
        self.enabled = enabled  # the runnable threads here (the same in every replay)


def normalise(fp: frozenset, memo: dict) -> tuple[frozenset, Optional[tuple]]:
    """A release reads as an access of its lock; returns (footprint, released lock)."""
    r = memo.get(fp)
    if r is None:
        released = None
        out = []
        for k, w in fp:
            if k[0] == "release":
                k = released = ("lock",) + k[1:]
            out.append((k, w))
        r = memo[fp] = (frozenset(out), released)
    return r


class DporScheduler(Scheduler):
    needs_footprints = True

    def __init__(self, max_executions: int = 100000, *, wakeup_trees: bool = True,
                 eager_depth: int = 0, prefix: Sequence[int] = (),
                 prefix_sleep: Sequence[dict[int, frozenset]] = (),
                 preemption_bound: Optional[int] = None) -> None:
        self.max_executions = max_executions
        self.optimal = wakeup_trees
        # Bounded DPOR: never take a branch that would switch away from a runnable thread
        # more than this many times in one execution (like DFS's bound).  Each execution
        # is then a distinct trace with at most that many preemptions, so there are never
        # more of them than bounded DFS runs.  Coverage is weaker than DFS's at the same
        # bound: bounding prunes branches DPOR relies on to reach other traces (Coons,
        # Musuvathi, McKinley, OOPSLA 2013), e.g. seed_promotion at bound 0 reaches 1 of the
        # 2 final states DFS reaches.  A quick search, not a proof; unbounded is the default.
        self.bound = preemption_bound
        self.preempts = 0
        self._cur = -1
        self._can_preempt = True
        # The first eager_depth steps branch on every runnable thread that is not asleep:
        # exactly the subtrees a split campaign runs as separate chunks.
        self.eager = eager_depth
        self.prefix = list(prefix)
        self.prefix_sleep = [dict(s) for s in prefix_sleep] or [{} for _ in self.prefix]
        self.root = _WNode(-1, None)
        self.stack: list[_Node] = []
        self.depth = 0
        self.fresh = 0  # first step of the current execution not shared with the previous
        self.executions = 0
        self.pruned = 0
        self.exhausted = False
        self.started = False
        self._memo: dict = {}

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
        self.preempts = 0
        return True

    def _allowed(self, t: int, runnable: Sequence[int]) -> bool:
        return t == self._cur or self._can_preempt or self._cur not in runnable

    def choose(self, runnable: Sequence[int], info: StepInfo) -> Optional[int]:
        self._cur = c = info.current
        self._can_preempt = self.bound is None or self.preempts < self.bound
        t = self._choose(runnable, info)
        if t is not None and t != c and c in runnable:
            self.preempts += 1
        return t

    def _choose(self, runnable: Sequence[int], info: StepInfo) -> Optional[int]:
        d = self.depth
        stack = self.stack
        if d > 0:
            stack[d - 1].cur.fp = normalise(info.last_footprint, self._memo)[0]
        self.depth = d + 1
        if d < len(stack):
            node = stack[d]
            if node.cur.tid in runnable and self._allowed(node.cur.tid, runnable):
                return node.cur.tid
            if d < len(stack) - 1:  # nondeterminism: should never happen
                raise RuntimeError(f"DPOR replay diverged at step {d}")
            # The branch taken at the backtrack point cannot run here: drop it.
            node.wut.children.pop(0)
            t = self._pick(node, runnable)
            if t is None:
                stack.pop()
                self.pruned += 1
            return t
        if d < len(self.prefix):
            wut = _WNode(-1, None)
            wut.children.append(_WNode(self.prefix[d], None))
            node = _Node(wut, wut.children[0], self.prefix_sleep[d], runnable)
            stack.append(node)
            if self.prefix[d] not in runnable:
                self.pruned += 1
                return None  # this subtree does not exist
            return self.prefix[d]
        if d == 0:
            sleep: dict[int, frozenset] = {}
            wut = self.root
        else:
            parent = stack[d - 1]
            last = parent.cur.fp
            wut = parent.cur
            sleep = {q: fp for q, fp in parent.sleep.items() if not dependent(fp, last)}
        node = _Node(wut, wut, sleep, runnable)
        stack.append(node)
        if d < self.eager and not wut.children:
            wut.children.extend(_WNode(r, None) for r in runnable if r not in sleep)
        t = self._pick(node, runnable)
        if t is not None:
            return t
        # A leaf (or only branches that cannot run): continue freely.
        cands = [r for r in runnable if r not in sleep and self._allowed(r, runnable)]
        if not cands:
            stack.pop()
            self.pruned += 1
            return None  # sleep-set (or bound) blocked: continuations are covered elsewhere
        c = info.current
        node.cur = _WNode(c if c in cands else cands[0], None)
        wut.children.append(node.cur)
        return node.cur.tid

    def _pick(self, node: _Node, runnable: Sequence[int]) -> Optional[int]:
        """Follow the leftmost branch whose thread can run here; drop those that cannot
        (their race was not reversible)."""
        ch = node.wut.children
        while ch and (ch[0].tid not in runnable or ch[0].tid in node.sleep
                      or not self._allowed(ch[0].tid, runnable)):
            ch.pop(0)
        if not ch:
            return None
        node.cur = ch[0]
        return ch[0].tid

    def done(self, result: ExecutionResult) -> None:
        events = result.events
        n = len(events)
        stack = self.stack
        if n and n <= len(stack):
            stack[n - 1].cur.fp = normalise(events[-1][1], self._memo)[0]
        del stack[n:]
        self._races(events, len(result.thread_names))

    # ---------------------------------------------------------------- internals
    def _backtrack(self) -> bool:
        stack = self.stack
        k = len(self.prefix)
        while len(stack) > k:
            node = stack[-1]
            c = node.cur
            ch = node.wut.children
            if ch and ch[0] is c:
                ch.pop(0)
                if c.fp is not None:
                    node.sleep[c.tid] = c.fp
            if ch:
                node.cur = ch[0]
                self.fresh = len(stack) - 1
                return True
            stack.pop()
        return False

    def _races(self, events: list[tuple[int, frozenset, str]], nthreads: int) -> None:
        memo = self._memo
        fresh = self.fresh
        low = max(len(self.prefix), self.eager)  # no insertion above the split
        vcs: list[list[int]] = []
        norm: list[frozenset] = []
        released: list[Optional[tuple]] = []
        thread_vc: dict[int, list[int]] = {}
        last_write: dict = {}
        reads: dict = {}
        acquired: dict = {}  # (tid, lock) -> that thread's latest acquisition
        # release step -> the acquisition it ended.  Not acquired[...] at the race: the
        # releasing thread may have taken the lock again since, and reversing that later
        # acquisition instead loses the trace where the other thread went first.
        ended: dict[int, int] = {}
        writes: dict = {}  # key -> [(step, tid)]
        attempt: dict[int, dict] = {}  # tid -> data key -> first step of this retry attempt
        for j, (p, raw, kind) in enumerate(events):
            fp, rel = normalise(raw, memo)
            norm.append(fp)
            released.append(rel)
            if rel is not None and (p, rel) in acquired:
                ended[j] = acquired[(p, rel)]
            waited = None
            if kind == RETRY_WAIT:
                # The keys the failed attempt read, as the engine's RETRY_WAIT wait uses them.
                waited = attempt.get(p, {})
                attempt[p] = {}
            first = attempt.setdefault(p, {})
            for k, _ in fp:
                if k[0] not in _NOT_DATA and k not in first:
                    first[k] = j
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
                if j >= fresh:
                    lock = released[i]
                    if lock is not None and rel != lock and (
                            (lock, True) in fp or (lock, False) in fp):
                        # Reverse the two acquisitions instead (see the module docstring),
                        # and the release step's other accesses if they conflict too.
                        e = ended.get(i)
                        if e is not None and e >= low and vc[pi] < e:
                            self._reverse(e, j, events, norm, vcs)
                        rest = frozenset(kw for kw in norm[i] if kw[0] != lock)
                        if i >= low and vc[pi] < i and dependent(rest, fp):
                            self._reverse(i, j, events, norm, vcs)
                    elif i >= low and vc[pi] < i and (
                            waited is None or _can_wake(waited, writes, p, i, pi, vcs)):
                        self._reverse(i, j, events, norm, vcs)
                other = vcs[i]
                for r in range(nthreads):
                    if other[r] > vc[r]:
                        vc[r] = other[r]
            vc[p] = j
            vcs.append(vc)
            thread_vc[p] = vc
            for k, w in fp:
                if w:
                    last_write[k] = j
                    reads[k] = []
                    writes.setdefault(k, []).append((j, p))
                else:
                    reads.setdefault(k, []).append(j)
                if k[0] == "lock" and rel is None:
                    acquired[(p, k)] = j
        self.fresh = len(events)

    def _reverse(self, e: int, j: int, events: list, norm: list, vcs: list) -> None:
        """Schedule v = notdep(e, E).e' at pre(E, e) unless it is covered."""
        pe = events[e][0]
        v = [(events[k][0], norm[k]) for k in range(e + 1, j) if vcs[k][pe] < e]
        v.append((events[j][0], norm[j]))
        node = self.stack[e]
        for q, qfp in node.sleep.items():
            if _weak_initial(v, q, qfp):
                return
        if self.optimal:
            _insert(node.wut, v, node.enabled)
            return
        # Source-DPOR: one initial of v in the backtrack set is enough.
        covered = {c.tid for c in node.wut.children}
        inits = [t for t, _ in v if _weak_initial(v, t, None)]
        if not any(t in covered for t in inits):
            t = min(inits)
            node.wut.children.append(_WNode(t, next(fp for q, fp in v if q == t)))


def trace_of(events: Sequence[tuple[int, frozenset, str]]) -> tuple:
    """The Mazurkiewicz trace of an execution's events, as a value: every dependent pair
    of events of different threads, each event named by (thread, its index in that
    thread), earlier first.  Two executions are the same trace exactly when these are equal,
    whatever strategy ran them — which is how a bounded DFS run checks that DPOR reached
    every trace it reached (``benchmarks/bench_dpor.py --sound``)."""
    memo: dict = {}
    seen: dict[int, int] = {}
    names = []
    fps = []
    for tid, raw, _ in events:
        n = seen.get(tid, 0)
        seen[tid] = n + 1
        names.append((tid, n))
        fps.append(normalise(raw, memo)[0])
    pairs = []
    for j, fp in enumerate(fps):
        for i in range(j):
            if names[i][0] != names[j][0] and dependent(fps[i], fp):
                pairs.append((names[i], names[j]))
    return tuple(sorted(pairs))  # the order of independent events is not the trace's


def _can_wake(waited: dict, writes: dict, p: int, e: int, pe: int, vcs: list) -> bool:
    """Could thread p's parked retry still run if e and what happens after it were moved
    behind it: is it woken by some other thread's write to a key its failed attempt read
    (after that read) that is neither e nor ordered after e?  Otherwise the race is not
    reversible (e is what woke it)."""
    for k, first in waited.items():
        for w, tw in writes.get(k, ()):
            if tw != p and w >= first and w != e and (w < e or vcs[w][pe] < e):
                return True
    return False


def _weak_initial(v: list, q: int, qfp: Optional[frozenset]) -> bool:
    """Is thread q a weak initial of v: its first event in v depends on nothing before it,
    or it has no event in v and its next event ``qfp`` commutes with all of v."""
    for pos, (t, fp) in enumerate(v):
        if t == q:
            for m in range(pos):
                if dependent(v[m][1], fp):
                    return False
            return True
    if qfp is None:
        return False
    for _, fp in v:
        if dependent(qfp, fp):
            return False
    return True


def _insert(root: _WNode, v: list, enabled: Sequence[int]) -> None:
    """Insert v into the wakeup tree rooted at ``root`` (POPL 2014 §6.2).  A new branch of
    the root itself whose thread cannot run there (``enabled``: a race only a blocking wait
    forbids reversing) is not added: replaying to it would only drop it and waste the
    execution."""
    node = root
    while True:
        for c in node.children:
            t = c.tid
            pos = next((i for i, (q, _) in enumerate(v) if q == t), -1)
            if pos >= 0:
                fp = v[pos][1]
                if all(not dependent(v[m][1], fp) for m in range(pos)):
                    v = v[:pos] + v[pos + 1:]
                    break
            elif c.fp is not None and all(not dependent(c.fp, fp) for _, fp in v):
                break
        else:
            if node is root and v[0][0] not in enabled:
                return
            for t, fp in v:
                n = _WNode(t, fp)
                node.children.append(n)
                node = n
            return
        node = c
        if not node.children or not v:
            return  # an equivalent continuation is already scheduled
