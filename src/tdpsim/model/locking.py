"""mmu_lock, tdp_mmu_pages_lock and RCU, with scheduling points.

Mirrors the locking of ``arch/x86/kvm/mmu/tdp_mmu.c`` (``kvm->mmu_lock`` is an rwlock on
x86, ``KVM_HAVE_MMU_RWLOCK``; ``kvm->arch.tdp_mmu_pages_lock`` a spinlock) and the RCU
protection of page-table pages (``call_rcu(tdp_mmu_free_sp_rcu_callback)``).

RCU is per CPU as in the kernel: ``call_rcu`` waits for the CPUs (``SchedPoints.cpu``) that
were inside a read-side section when it was called, and the callback runs as soon as the
last of them leaves it (the earliest moment the kernel may run it).

Simplifications (one line each):
- Callbacks run at the end of the grace period on the CPU that ended it, not from softirq.
- ``lockdep_assert_held*`` are real checks; a failure is reported through
  ``lockdep_report`` (the owning ``Kvm`` records it as a warning, like a lockdep splat that
  lets the kernel carry on) or, with no reporter, raises ``LockingError``.  As lockdep's,
  they ask whether *this* CPU (``SchedPoints.cpu``) holds the lock; owners are recorded
  only while an explorer is attached (a sequential run has one CPU, where "held" is "held
  by me").
"""

from __future__ import annotations

from typing import Callable

from .native import mypyc_attr
from .sched import LOCK_ACQUIRE, LOCK_RELEASE, LOCK_RELEASED, LOCK_WAIT, RCU, SchedPoints


@mypyc_attr(native_class=False)  # mypyc cannot derive native classes from AssertionError
class LockingError(AssertionError):
    """A lock was used wrongly (the model's lockdep splat), or a sequential run would
    block forever."""


def _block(sched: SchedPoints, name: str, key: tuple, write: bool) -> None:
    """Wait for a held lock: only another model thread can release it, so a sequential
    run that gets here is deadlocked."""
    if sched.hook is None:
        raise LockingError(f"{name}: would block forever in a sequential run")
    sched.point(LOCK_WAIT, key, write)


class RwLock:
    """``rwlock_t`` with acquisition counters (the metrics read them)."""

    __slots__ = ("name", "key", "after", "readers", "writer", "read_acquisitions",
                 "write_acquisitions", "_sp", "lockdep_report", "read_owners", "write_owner")

    def __init__(self, name: str, sched: SchedPoints) -> None:
        self.name = name
        self.key = ("lock", name)
        self.after = ("lock", name, "after")
        self.readers = 0
        self.writer = False
        self.read_acquisitions = 0
        self.write_acquisitions = 0
        self._sp = sched
        self.lockdep_report: Callable[[str], None] | None = None
        self.read_owners: dict[int, int] = {}  # cpu -> read depth (explorer runs only)
        self.write_owner = -1

    def read_lock(self) -> None:
        sp = self._sp
        sp.point(LOCK_ACQUIRE, self.key, False)
        while self.writer:
            _block(sp, self.name, self.key, False)
        self.readers += 1
        self.read_acquisitions += 1
        if sp.hook is not None:
            owners = self.read_owners
            owners[sp.cpu] = owners.get(sp.cpu, 0) + 1

    def read_unlock(self) -> None:
        if self.readers <= 0:
            raise LockingError(f"read_unlock({self.name}) without read_lock")
        sp = self._sp
        sp.point(LOCK_RELEASE, self.key, False)
        self.readers -= 1
        if sp.hook is not None:
            self.read_owners[sp.cpu] = self.read_owners.get(sp.cpu, 0) - 1
        sp.point(LOCK_RELEASED, self.after, False)

    def write_lock(self) -> None:
        sp = self._sp
        sp.point(LOCK_ACQUIRE, self.key, True)
        while self.writer or self.readers > 0:
            _block(sp, self.name, self.key, True)
        self.writer = True
        self.write_acquisitions += 1
        if sp.hook is not None:
            self.write_owner = sp.cpu

    def write_unlock(self) -> None:
        if not self.writer:
            raise LockingError(f"write_unlock({self.name}) without write_lock")
        self._sp.point(LOCK_RELEASE, self.key, True)
        self.writer = False
        self.write_owner = -1
        self._sp.point(LOCK_RELEASED, self.after, False)

    def _lockdep(self, ok: bool, what: str) -> None:
        if ok:
            return
        message = f"{self.name} not held{what}"
        if self.lockdep_report is None:
            raise LockingError(message)
        self.lockdep_report(message)

    def _held_read(self) -> bool:
        sp = self._sp
        return self.readers > 0 and (sp.hook is None or self.read_owners.get(sp.cpu, 0) > 0)

    def _held_write(self) -> bool:
        sp = self._sp
        return self.writer and (sp.hook is None or self.write_owner == sp.cpu)

    def lockdep_assert_held_read(self) -> None:
        self._lockdep(self._held_read(), " for read")

    def lockdep_assert_held_write(self) -> None:
        self._lockdep(self._held_write(), " for write")

    def lockdep_assert_held(self) -> None:
        self._lockdep(self._held_write() or self._held_read(), "")

    def assert_held(self, shared: bool) -> None:
        """``kvm_lockdep_assert_mmu_lock_held(kvm, shared)``."""
        if shared:
            self.lockdep_assert_held_read()
        else:
            self.lockdep_assert_held_write()


class SpinLock:
    """``spinlock_t``."""

    __slots__ = ("name", "key", "after", "held", "_sp", "owner")

    def __init__(self, name: str, sched: SchedPoints) -> None:
        self.name = name
        self.key = ("lock", name)
        self.after = ("lock", name, "after")
        self.held = False
        self._sp = sched
        self.owner = -1  # the holding CPU (explorer runs only, as RwLock's owners)

    def lock(self) -> None:
        sp = self._sp
        sp.point(LOCK_ACQUIRE, self.key, True)
        while self.held:
            _block(sp, self.name, self.key, True)
        self.held = True
        if sp.hook is not None:
            self.owner = sp.cpu

    def unlock(self) -> None:
        if not self.held:
            raise LockingError(f"spin_unlock({self.name}) without spin_lock")
        self._sp.point(LOCK_RELEASE, self.key, True)
        self.held = False
        self.owner = -1
        self._sp.point(LOCK_RELEASED, self.after, False)


class Rcu:
    """RCU read-side sections (per CPU) and ``call_rcu`` callbacks with real grace periods:
    a callback waits only for the CPUs that were readers when it was queued."""

    __slots__ = ("nesting", "pending", "_sp")

    KEY = ("rcu",)
    AFTER = ("rcu", "after")

    def __init__(self, sched: SchedPoints) -> None:
        self.nesting: dict[int, int] = {}  # cpu -> rcu_read_lock depth
        # (callback, CPUs whose read-side section must end first), in call_rcu order.
        self.pending: list[tuple[Callable[[], None], set[int]]] = []
        self._sp = sched

    @property
    def readers(self) -> int:
        """CPUs inside a read-side section."""
        return sum(1 for n in self.nesting.values() if n)

    def rcu_read_lock_held(self) -> bool:
        """``rcu_read_lock_held()`` on the current CPU."""
        return self.nesting.get(self._sp.cpu, 0) > 0

    def rcu_read_lock(self) -> None:
        self._sp.point(RCU, self.KEY, False)
        cpu = self._sp.cpu
        self.nesting[cpu] = self.nesting.get(cpu, 0) + 1

    def rcu_read_unlock(self) -> None:
        self._sp.point(RCU, self.KEY, False)
        cpu = self._sp.cpu
        depth = self.nesting.get(cpu, 0) - 1
        if depth < 0:
            raise LockingError("rcu_read_unlock without rcu_read_lock")
        self.nesting[cpu] = depth
        if depth == 0 and self.pending:
            self._quiescent(cpu)
        self._sp.point(LOCK_RELEASED, self.AFTER, False)

    def call_rcu(self, callback: Callable[[], None]) -> None:
        waiting = {c for c, n in self.nesting.items() if n}
        if waiting:
            self.pending.append((callback, waiting))
        else:
            callback()

    def _quiescent(self, cpu: int) -> None:
        """``cpu`` left its read-side section: run every callback whose grace period ended
        (in queueing order)."""
        ready = []
        keep = []
        for callback, waiting in self.pending:
            waiting.discard(cpu)
            (keep if waiting else ready).append((callback, waiting))
        self.pending = keep
        for callback, _ in ready:
            callback()
