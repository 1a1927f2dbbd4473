"""The execution engine: model threads as greenlets, one scheduling decision per step.

Mirrors no kernel file.  The model calls ``SchedPoints.point(kind, key, write)`` before each
atomic access (reference §7); the engine installs itself as that hook.  A *step* is what one
thread does from resuming at a point up to (not including) its next point: the access the
point names, then the thread-local code that follows it.  At every step boundary the engine

1. closes the step (footprint, SPTE value bookkeeping, checks),
2. asks the strategy (``Scheduler.choose``) which runnable thread goes next,
3. continues the same greenlet (no switch) or switches to the chosen one.

Strategies never see greenlets: they see thread ids, the pending point of each thread and,
after the execution, the list of executed steps with their footprints (for DPOR).

Runnability (why a thread may not be chosen):
- at LOCK_ACQUIRE / LOCK_WAIT: the lock's state (read from the lock object) must let it in;
  choosing it earlier would only make it spin, so the engine treats it as blocked;
- at an SPTE_XCHG that repeats its previous XCHG on the same SPTE while that SPTE is still
  FROZEN_SPTE (``handle_removed_pt`` waiting out a frozen owner): blocked until the value
  changes — a spin loop collapsed into one wait;
- at RETRY_WAIT (a vCPU's local RET_PF_RETRY loop, see ``ops.py``): blocked until another
  thread wrote something the failed attempt read.  Retrying earlier could only fail again.

No runnable thread while some are unfinished is a deadlock (locks) or a livelock (retry /
spin waits) and fails the execution.
"""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Optional, Sequence

import numpy as np
from greenlet import GreenletExit, greenlet

from tdpsim.model import sched as S
from tdpsim.model.kvm import KernelBUG
from tdpsim.model.spte import (
    is_last_spte, spte_to_pfn,
)

from .ops import RETRY_WAIT, WAIT_COND, RetryBoundExceeded
from .tracking import RACES, track_cpus

# Explorer-only point kinds (never emitted by the model itself).
THREAD_START = "start"

_LOCK_KINDS = (S.LOCK_ACQUIRE, S.LOCK_WAIT)
# Keys whose *values* no fault result depends on (lock state only blocks; RCU only delays
# frees): a parked vCPU does not wake up for them.
_NOT_DATA = frozenset(("lock", "rcu", "thread", "vcpu"))
_SPTE_KINDS = frozenset((S.SPTE_READ, S.SPTE_CMPXCHG, S.SPTE_XCHG, S.SPTE_WRITE))
# Point kinds at which ``Engine._runnable`` may say "blocked"; every other kind is runnable.
_MAY_BLOCK = frozenset((S.LOCK_ACQUIRE, S.LOCK_WAIT, S.SPTE_XCHG, RETRY_WAIT, WAIT_COND))


class ExplorerError(Exception):
    """A usage error of the explorer (bad scenario, bad schedule)."""


class _Abort(BaseException):
    """Raised inside model threads to tear them down after the execution ended."""


@dataclass(frozen=True)
class Failure:
    """Why an execution failed: ``kind`` is one of KVM_BUG, KERNEL_BUG, WARN, LOST_UPDATE,
    RETRY_BOUND, LIVELOCK, DEADLOCK, TDX_FATAL, INVARIANT, TLB, DATA_RACE, DIRTY_LOG,
    EXCEPTION, STEP_BOUND."""

    kind: str
    message: str
    step: int
    thread: str

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "message": self.message, "step": self.step,
                "thread": self.thread}


@dataclass
class TraceStep:
    """One executed step, recorded only when the engine runs with ``record=True``."""

    index: int
    tid: int
    kind: str
    key: Hashable
    write: bool
    funcs: tuple[str, ...]
    detail: str = ""


@dataclass
class ExecutionResult:
    """Outcome of one execution."""

    failure: Optional[Failure]
    steps: int
    decisions: list[int]  # chosen tid at every step with >= 2 runnable threads
    thread_names: list[str]
    pruned: bool = False  # the strategy stopped it early (e.g. DPOR sleep-set blocked)
    events: list[tuple[int, frozenset, str]] = field(default_factory=list)  # (tid, footprint, kind)
    trace: list[TraceStep] = field(default_factory=list)
    state_hash: str = ""
    trace_hash: str = ""
    results: dict[str, Any] = field(default_factory=dict)


class StepInfo:
    """What a strategy may look at when choosing.  Mutated in place by the engine (no
    allocation per step); strategies must copy what they keep."""

    __slots__ = ("step", "current", "pending", "last_tid", "last_footprint", "engine")

    def __init__(self, engine: "Engine") -> None:
        self.step = 0
        self.current = -1  # thread that ran the last step (-1 before the first)
        self.pending: list[tuple[str, Hashable, bool]] = []
        self.last_tid = -1
        self.last_footprint: frozenset = frozenset()
        self.engine = engine


class ModelThread:
    """One model thread: a function of the model API run in its own greenlet."""

    __slots__ = ("tid", "name", "fn", "glet", "kind", "key", "write", "done", "prev_kind",
                 "prev_key", "wait_step", "wait_keys", "attempt_keys", "observed",
                 "retries", "result", "funcs", "tags", "cond_keys")

    def __init__(self, tid: int, name: str, fn: Callable[[], Any]) -> None:
        self.tid = tid
        self.name = name
        self.fn = fn
        self.glet: Optional[greenlet] = None
        self.kind = THREAD_START
        self.key: Hashable = ("thread", name)
        self.write = False
        self.done = False
        self.prev_kind = ""
        self.prev_key: Hashable = None
        self.wait_step = -1
        self.wait_keys: dict = {}
        self.attempt_keys: dict = {}  # key -> first step of this attempt touching it
        self.observed: dict = {}
        self.retries = 0
        self.result: Any = None
        self.funcs: tuple[str, ...] = ("<start>",)
        self.tags: dict[str, bytes] = {}  # kind -> this thread's trace-digest record
        self.cond_keys: list = []  # what the last look at its WAIT_COND condition read


class Scheduler:
    """The three-method strategy interface (Shuttle's ``Scheduler``).

    ``new_execution()`` → False when there is nothing left to explore;
    ``choose(runnable, info)`` → a tid from ``runnable`` (sorted ascending), or None to
    prune the execution;
    ``done(result)`` → the execution ended (DPOR analyses ``result.events`` here).
    """

    needs_footprints = False

    def new_execution(self) -> bool:  # pragma: no cover - interface
        raise NotImplementedError

    def choose(self, runnable: Sequence[int], info: StepInfo) -> Optional[int]:  # pragma: no cover
        raise NotImplementedError

    def done(self, result: ExecutionResult) -> None:
        pass


@dataclass
class World:
    """What a scenario instantiates for one execution: the VM, the optional TDX module,
    the thread bodies and the checks to run."""

    kvm: Any
    threads: list[tuple[str, Callable[[], Any]]]
    tdx: Any = None
    locks: dict = field(default_factory=dict)  # key -> RwLock/SpinLock
    tracker: Any = None
    end_checks: list[Callable[[], Optional[tuple[str, str]]]] = field(default_factory=list)
    step_checks: list[Callable[[], Optional[tuple[str, str]]]] = field(default_factory=list)
    fail_on_warn: bool = True
    retry_bound: int = 16
    conditions: dict = field(default_factory=dict)  # WAIT_COND key -> predicate
    # Per-execution values computed once and shared between the engine and the checks
    # ("digests": ``table_digests`` of the final state, set before the end checks run).
    cache: dict = field(default_factory=dict)


# Functions that only *perform* the access a point names; the diagram shows their callers.
_PLUMBING = frozenset((
    "point", "_call", "close", "hook", "_hook", "kvm_tdp_mmu_read_spte",
    "kvm_tdp_mmu_write_spte_atomic", "__kvm_tdp_mmu_write_spte", "kvm_tdp_mmu_write_spte",
    "try_cmpxchg64", "read_lock", "read_unlock", "write_lock", "write_unlock", "lock",
    "unlock", "rcu_read_lock", "rcu_read_unlock", "_block", "tdp_iter_refresh_sptep",
    "try_step_down", "try_step_side", "try_step_up", "tdp_iter_next", "tdp_iter_start",
    "tdp_iter_restart", "__iter__", "__init__", "at", "_mmu_lock", "_mmu_unlock",
    "for_each_tdp_mmu_root_yield_safe", "retry_wait",
))


def _model_funcs(depth: int = 2) -> tuple[str, ...]:
    """The innermost ``depth`` model functions on the current stack, skipping the raw
    accessors and lock primitives.  Explorer-only (costly): used when recording."""
    f = sys._getframe(2)
    out: list[str] = []
    while f is not None and len(out) < depth:
        mod = f.f_globals.get("__name__", "")
        name = f.f_code.co_name
        if (mod.startswith("tdpsim.model") or mod.startswith("tdpsim.explore.ops")) \
                and name not in _PLUMBING and not name.startswith("<"):
            if not out or out[-1] != name:
                out.append(name)
        f = f.f_back
    return tuple(out)


class Engine:
    """Runs one execution of a ``World`` under a ``Scheduler``."""

    def __init__(self, world: World, scheduler: Scheduler, *, record: bool = False,
                 max_steps: int = 20000) -> None:
        self.world = world
        self.kvm = world.kvm
        self.scheduler = scheduler
        self.record = record
        self.footprints = scheduler.needs_footprints
        self.max_steps = max_steps
        self.threads = [ModelThread(i, name, fn) for i, (name, fn) in enumerate(world.threads)]
        self.info = StepInfo(self)
        self.info.pending = [(t.kind, t.key, t.write) for t in self.threads]
        self.step = 0
        self.decisions: list[int] = []
        self.events: list[tuple[int, frozenset]] = []
        self.trace: list[TraceStep] = []
        self.failure: Optional[Failure] = None
        self.pruned = False
        self.current: Optional[ModelThread] = None
        self.key_write_step: dict[Hashable, int] = {}
        self.extras: list = []  # (key, write) accesses recorded by the tracker this step
        self.tearing_down = False
        self._nwarn = len(self.kvm.warnings)
        self._nbugs = len(self.kvm.bugs)
        self._sp_by_pfn = self.kvm.sp_by_pfn
        self._sched = self.kvm.sched
        # Trace digest input, one record per step, hashed once at the end (the same bytes
        # the per-step ``update`` calls used to feed: the digest is unchanged).
        self._trace_parts: list[bytes] = []
        self._before = 0
        self._digests: Optional[tuple[str, str]] = None
        world.cache.pop("digests", None)
        if world.tracker is not None:
            world.tracker.sink = self.extras
            track_cpus(self.kvm, len(self.threads))
        self._races = world.tracker is not None

    # ------------------------------------------------------------------ public entry
    def run(self) -> ExecutionResult:
        kvm = self.kvm
        hooks = [kvm.sched]
        module = getattr(self.world.tdx, "module", None)
        if module is not None and module.sched is not kvm.sched:
            hooks.append(module.sched)
        for sp in hooks:
            sp.hook = self._hook
        self.main = greenlet.getcurrent()
        for t in self.threads:
            t.glet = greenlet(self._make_body(t), parent=self.main)
        if self._races:
            RACES.start(kvm, [t.name for t in self.threads])
        try:
            nxt = self._pick(None)
            while nxt is not None:
                self.current = nxt
                nxt.glet.switch()
                if self.failure is not None or self.pruned:
                    break
                cur = self.current
                if cur.done:
                    self._end_step(cur)
                    if self.failure is not None:
                        break
                    nxt = self._pick(None)
                else:  # a hook handed control back: deadlock or prune, already recorded
                    break
            if self.failure is None and not self.pruned:
                self._final_checks()
        finally:
            self._teardown()
            for sp in hooks:
                sp.hook = None
            if self.world.tracker is not None:
                self.world.tracker.sink = None
            if self._races:
                RACES.stop()
        result = ExecutionResult(
            failure=self.failure, steps=self.step, decisions=self.decisions,
            thread_names=[t.name for t in self.threads], pruned=self.pruned,
            events=self.events, trace=self.trace, state_hash=self._state_hash(),
            trace_hash=hashlib.blake2b(b"".join(self._trace_parts),
                                       digest_size=8).hexdigest(),
            results={t.name: t.result for t in self.threads})
        return result

    # ------------------------------------------------------------------ threads
    def _make_body(self, t: ModelThread) -> Callable[[], None]:
        def body() -> None:
            self._sched.cpu = t.tid
            try:
                t.result = t.fn()
            except _Abort:
                return
            except RetryBoundExceeded as e:
                self._fail("RETRY_BOUND", f"unbounded RET_PF_RETRY loop: {e}", t)
            except KernelBUG as e:  # BUG(), or a KASAN / PROVE_RCU report (its own kind)
                self._fail(e.kind, str(e), t)
            except Exception as e:  # a model exception is a finding, not an engine crash
                self._fail("EXCEPTION", f"{type(e).__name__}: {e}", t)
            t.done = True
        return body

    def _teardown(self) -> None:
        self.tearing_down = True
        for t in self.threads:
            g = t.glet
            if g is not None and g and not g.dead:
                try:
                    g.throw(_Abort)
                except (_Abort, GreenletExit):
                    pass
            t.glet = None

    # ------------------------------------------------------------------ the hook
    def _hook(self, kind: str, key: Hashable, write: bool) -> None:
        if self.tearing_down:
            raise _Abort
        t = self.current
        self._end_step(t)
        t.kind, t.key, t.write = kind, key, write
        self.info.pending[t.tid] = (kind, key, write)
        if self.record:
            t.funcs = _model_funcs()
        if kind == RETRY_WAIT:
            # Park until another thread writes something this attempt read after (or
            # while) reading it; the next attempt starts now.
            t.wait_keys = t.attempt_keys
            t.attempt_keys = {}
        if self.failure is not None:
            self.main.switch()
            raise _Abort
        nxt = self._pick(t)
        if nxt is None:
            self.main.switch()
            raise _Abort
        if nxt is not t:
            self.current = nxt
            # An unstarted thread starts here; it returns to main when it finishes.
            nxt.glet.switch()
            if self.tearing_down:
                raise _Abort
        self._begin_step(t)

    def _begin_step(self, t: ModelThread) -> None:
        """Just before ``t`` performs the access its point named."""
        self._sched.cpu = t.tid  # smp_processor_id() of the code that resumes
        if t.kind in _SPTE_KINDS:
            key = t.key
            sp = self._sp_by_pfn.get(key[1])
            before = sp.spt[key[2]] if sp is not None else None
            self._before = before
            if t.kind == S.SPTE_WRITE and before is not None:
                seen = t.observed.get(key)
                if seen is not None and seen != before:
                    self._fail("LOST_UPDATE",
                               f"plain write to spte[{key[1]:#x}][{key[2]}] overwrites "
                               f"{before:#x}; the writer last saw {seen:#x}", t)

    # ------------------------------------------------------------------ step bookkeeping
    def _end_step(self, t: ModelThread) -> None:
        kind, key, write = t.kind, t.key, t.write
        idx = self.step
        self.step = idx + 1
        tid = t.tid
        tag = t.tags.get(kind)
        if tag is None:
            tag = t.tags[kind] = b"%d:%s;" % (tid, kind.encode())
        self._trace_parts.append(tag)
        extras = self.extras
        kws = self.key_write_step
        if write:
            d = kws.get(key)
            if d is None:
                kws[key] = {tid: idx}
            else:
                d[tid] = idx
        ak = t.attempt_keys
        if key not in ak and key[0] not in _NOT_DATA:
            ak[key] = idx
        if extras:
            for k, w in extras:
                if w:
                    d = kws.get(k)
                    if d is None:
                        kws[k] = {tid: idx}
                    else:
                        d[tid] = idx
                if k not in ak and k[0] not in _NOT_DATA:
                    ak[k] = idx
        if self.footprints:
            # Releases are not dependent with acquisitions (classic DPOR's treatment of
            # locks): the race to reverse is acquisition vs acquisition, and a path
            # through the release would hide it.
            fp = {(("release", key[1]) if kind == S.LOCK_RELEASE else key, write)}
            if kind in _SPTE_KINDS:
                # Every access to a table depends on its RCU free (("pt", pfn) written).
                fp.add((("pt", key[1]), False))
            fp.update(extras)
            if kind == RETRY_WAIT:
                # The retry was enabled by a write to something the failed attempt read:
                # make that enabling write dependent with this step.
                fp.update((k, False) for k in t.wait_keys)
            elif kind == WAIT_COND:
                fp.update((k, False) for k, _ in t.cond_keys)
            fp = frozenset(fp)
            self.events.append((tid, fp, kind))
            self.info.last_footprint = fp
        self.info.last_tid = tid
        if self.record:
            detail = ""
            if kind in _SPTE_KINDS:
                sp = self._sp_by_pfn.get(key[1])
                if sp is not None:
                    after = sp.spt[key[2]]
                    t.observed[key] = after
                    detail = self._spte_detail(sp, key[2], self._before, after)
            self.trace.append(TraceStep(idx, tid, kind, key, write, t.funcs,
                                        detail or self._detail(kind, key)))
        elif kind in _SPTE_KINDS:
            sp = self._sp_by_pfn.get(key[1])
            if sp is not None:
                t.observed[key] = sp.spt[key[2]]
        t.prev_kind, t.prev_key = kind, key
        self._step_checks(t)
        if extras:  # after the checks: what they read is no thread's access
            extras.clear()
        if self.step >= self.max_steps and self.failure is None:
            self._fail("STEP_BOUND", f"execution exceeded {self.max_steps} steps", t)

    def _spte_detail(self, sp: Any, index: int, before: Any, after: int) -> str:
        from tdpsim.model.spte import KVM_PAGES_PER_HPAGE

        level = sp.role.level if sp.role is not None else 0
        gfn = sp.gfn + index * KVM_PAGES_PER_HPAGE(level) if level else 0
        mirror = "mirror" if sp.role is not None and sp.role.is_mirror else "direct"
        b = f"{before:#x}" if isinstance(before, int) else "?"
        return f"{mirror} L{level} gfn {gfn:#x}: {b} -> {after:#x}"

    @staticmethod
    def _detail(kind: str, key: Hashable) -> str:
        return " ".join(str(k) for k in key) if isinstance(key, tuple) else str(key)

    # ------------------------------------------------------------------ checks
    def _fail(self, kind: str, message: str, t: Optional[ModelThread]) -> None:
        if self.failure is None:
            self.failure = Failure(kind, message, self.step, t.name if t else "")

    def _step_checks(self, t: ModelThread) -> None:
        kvm = self.kvm
        if len(kvm.bugs) != self._nbugs or (kvm.vm_bugged and not self._nbugs):
            # The first KVM_BUG_ON of the step is the cause; later ones are consequences.
            bug = kvm.bugs[self._nbugs] if len(kvm.bugs) > self._nbugs else None
            self._nbugs = len(kvm.bugs)
            self._fail("KVM_BUG", f"KVM_BUG_ON in {bug.function}: {bug.message}" if bug
                       else "VM bugged", t)
        if self.world.fail_on_warn and len(kvm.warnings) != self._nwarn:
            w = kvm.warnings[self._nwarn]
            self._nwarn = len(kvm.warnings)
            self._fail("WARN", f"WARN_ON_ONCE in {w.function}: {w.message}", t)
        tdx = self.world.tdx
        if tdx is not None:
            if tdx.module.fatal:
                self._fail("TDX_FATAL", "TDX module marked the TD fatal", t)
            elif tdx.fatal_errors:
                fn, leaf, status = tdx.fatal_errors[0]
                self._fail("TDX_FATAL", f"TDX_BUG_ON in {fn}: {leaf} returned {status:#x}", t)
        if self._races and RACES.found is not None:
            self._fail("DATA_RACE", RACES.found, t)
        for check in self.world.step_checks:
            r = check()
            if r is not None:
                self._fail(r[0], r[1], t)

    def _final_checks(self) -> None:
        # Every thread finished: the state is final (teardown has nothing left to unwind),
        # so its digests serve both the checks' memo key and ``state_hash``.
        self._digests = self.world.cache["digests"] = table_digests(self.kvm)
        for check in self.world.end_checks:
            r = check()
            if r is not None:
                self._fail(r[0], r[1], None)
                return

    # ------------------------------------------------------------------ scheduling
    def _runnable(self, t: ModelThread) -> bool:
        if t.done:
            return False
        kind = t.kind
        if kind in _LOCK_KINDS:
            lock = self.world.locks.get(t.key)
            if lock is None:
                return True
            if hasattr(lock, "readers"):
                return not lock.writer and (not t.write or lock.readers == 0)
            return not lock.held
        if kind == S.SPTE_XCHG and t.prev_kind == S.SPTE_XCHG and t.prev_key == t.key:
            sp = self._sp_by_pfn.get(t.key[1])
            return sp is None or sp.spt[t.key[2]] != self.kvm.profile.FROZEN_SPTE
        if kind == RETRY_WAIT:
            kws = self.key_write_step
            tid = t.tid
            for k, first in t.wait_keys.items():
                d = kws.get(k)
                if d:
                    for writer, at in d.items():
                        if writer != tid and at >= first:
                            return True
            return False
        if kind == WAIT_COND:
            extras = self.extras
            n = len(extras)
            ok = self.world.conditions[t.key]()
            # What the condition read is what the wait reads (the step it ends on): the
            # write that let it through is then dependent with it.  No thread's access now.
            t.cond_keys = extras[n:]
            del extras[n:]
            return ok
        return True

    def _pick(self, cur: Optional[ModelThread]) -> Optional[ModelThread]:
        threads = self.threads
        runnable = []
        for t in threads:
            if t.done:
                continue
            # Only waits can block; a plain access point is always runnable.
            if t.kind in _MAY_BLOCK and not self._runnable(t):
                continue
            runnable.append(t.tid)
        if not runnable:
            left = [t for t in threads if not t.done]
            if left:
                self._no_runnable(left, cur)
            return None
        info = self.info
        info.step = self.step
        info.current = cur.tid if cur is not None else info.last_tid
        choice = self.scheduler.choose(runnable, info)
        if choice is None:
            self.pruned = True
            return None
        if len(runnable) > 1:
            self.decisions.append(choice)
        return threads[choice]

    def _no_runnable(self, left: list[ModelThread], cur: Optional[ModelThread]) -> None:
        waits = []
        for t in left:
            if t.kind == RETRY_WAIT:
                waits.append(f"{t.name} retrying (RET_PF_RETRY) with nothing left to change")
            elif t.kind == WAIT_COND:
                what = "an IPI acknowledgement from vCPU %s" % t.key[1] \
                    if t.key[0] == "vcpu" else t.key[1]
                waits.append(f"{t.name} waiting for {what}")
            elif t.kind in _LOCK_KINDS:
                waits.append(f"{t.name} waiting for {t.key[1]}")
            else:
                waits.append(f"{t.name} spinning on frozen spte {t.key}")
        kind = "DEADLOCK" if all(t.kind in _LOCK_KINDS or t.kind == WAIT_COND
                                 for t in left) else "LIVELOCK"
        self._fail(kind, "no runnable thread: " + "; ".join(waits), left[0])

    def _state_hash(self) -> str:
        if self._digests is not None:
            return self._digests[0]
        return state_digest(self.kvm)


def state_digest(kvm: Any) -> str:
    """Digest of the final page tables (by content, not by table pfn), attributes, page
    stats and bugs: the coverage metric and part of the memo key of end-of-run checks."""
    return table_digests(kvm)[0]


def table_digests(kvm: Any) -> tuple[str, str]:
    """``(state_digest, structure_digest)`` in one walk of the roots.

    The first is the coverage digest (content only; unchanged format).  The second covers
    what ``check_mmu_invariants`` / ``_mirror_maps`` read beyond the content: each root's
    role and, for every present non-leaf SPTE, the child SP's level, gfn, mirror bit, parent
    link, parent index and ``external_spt``, and whether the child exists at all."""
    h = hashlib.blake2b(digest_size=8)
    meta: list = []
    nonpresent = np.uint64(kvm.profile.SHADOW_NONPRESENT_VALUE)
    for root in kvm.tdp_mmu_roots:
        meta.append((root.role.level, root.role.is_mirror, root.role.invalid))
        _hash_table(h, kvm.sp_by_pfn, root, meta, nonpresent)
    h.update(repr((kvm.mem_attr_private.starts, kvm.mem_attr_private.ends,
                   kvm.stat.pages, [b.function for b in kvm.bugs])).encode())
    return h.hexdigest(), repr(meta)


def _hash_table(h: Any, by_pfn: dict, sp: Any, meta: list, nonpresent: Any) -> None:
    level = sp.role.level
    if level == 1:
        h.update(sp.spt.tobytes())  # only leaves: hash the page as is
        return
    h.update(b"L%d" % level)
    spt = sp.spt
    # numpy only finds the present slots; the bytes fed to the digest are the same as a
    # plain loop over all 512 entries would feed.
    for i in np.flatnonzero(np.frombuffer(spt, dtype=np.uint64) != nonpresent).tolist():
        spte = spt[i]
        # Non-leaf SPTEs hold allocation-order pfns: hash the child's content instead.
        child = None if is_last_spte(spte, level) else by_pfn.get(spte_to_pfn(spte))
        h.update(b"%d:" % i)
        if child is not None:
            role = child.role
            meta.append((level, i, role.level, child.gfn, role.is_mirror,
                         child.parent is sp, child.parent_index, child.external_spt))
            _hash_table(h, by_pfn, child, meta, nonpresent)
        else:
            if not is_last_spte(spte, level):
                meta.append((level, i, None))
            h.update(spte.to_bytes(8, "little"))
