"""Scheduling points: the one place where a model thread may be preempted.

Mirrors no kernel file: it marks the kernel's atomic steps (reference §7 "Atomic steps to
model individually").  Every SPTE read, cmpxchg, xchg and freeze, every SEAMCALL / TDCALL,
every mmu_lock / tdp_mmu_pages_lock acquire and release and every RCU read-side section
boundary calls ``SchedPoints.point(kind, key, write)`` *before* the access happens.  Lock
releases (and ``rcu_read_unlock``) also have a point right *after* the release
(``LOCK_RELEASED``), so code just outside a critical section is a step of its own; so do the
barriers the kernel relies on (``BARRIER``: the ``smp_mb`` of vCPU mode changes, the
``smp_rmb`` after reading ``mmu_invalidate_seq``).

In sequential runs ``hook`` is None and a point costs one attribute load and a test.  The
concurrency explorer installs a hook that switches between model threads (greenlets), and
uses ``key``/``write`` to derive its dependency relation: two steps conflict when they touch
the same key and at least one writes.

Keys are plain tuples of ints/strings, deterministic across runs (never ``id()``):
  ("spte", table_pfn, index)     one SPTE slot of a page-table page
  ("lock", name)                 mmu_lock, tdp_mmu_pages_lock, ...
  ("sept", level, gfn)           one S-EPT entry inside the TDX module
  ("tdx", resource)              a TDX-module-wide resource (epoch, op_state, sept_tree)
  ("rcu",)                       RCU grace-period state
  ("kvm", "mmu_invalidate")      mmu_invalidate_seq / _in_progress / _range_start/end
  ("lock", name, "after")        the point just after a release (touches nothing)
  ("pt", table_pfn)              a whole page-table page (its RCU free)
  ("vcpu", id, field)            vcpu->mode / vcpu->requests of one vCPU
  ("kvm", "tdp_mmu_roots")       the RCU list of roots (looked up, added to, removed from)

``cpu`` is the context the model is running on (``smp_processor_id()``): 0 in sequential
runs; the explorer sets it to the running model thread so per-CPU state (RCU read-side
nesting) is per thread.
"""

from __future__ import annotations

from typing import Callable, Hashable

# Kinds of scheduling point.  Strings so that schedules and traces stay readable.
SPTE_READ = "spte_read"
SPTE_CMPXCHG = "spte_cmpxchg"
SPTE_XCHG = "spte_xchg"
SPTE_WRITE = "spte_write"
LOCK_ACQUIRE = "lock_acquire"
LOCK_WAIT = "lock_wait"
LOCK_RELEASE = "lock_release"
SEAMCALL = "seamcall"
TDCALL = "tdcall"
RCU = "rcu"
VCPU = "vcpu"
MMU_INVALIDATE = "mmu_invalidate"

MMU_INVALIDATE_KEY = ("kvm", "mmu_invalidate")
LOCK_RELEASED = "lock_released"
BARRIER = "barrier"
RCU_FREE = "rcu_free"
ROOTS = "roots"  # an access to kvm->arch.tdp_mmu_roots
ROOTS_KEY = ("kvm", "tdp_mmu_roots")
WAIT_COND = "wait_cond"  # wait until a condition on ``key`` holds (the explorer evaluates it)
# A vCPU that got RET_PF_RETRY waits before its next attempt (``cond_resched()`` in
# tdx_handle_ept_violation's local retry loop, the KVM_RUN loop's re-entry): the explorer
# parks it until another thread wrote something the attempt read.
RETRY_WAIT = "retry_wait"

SchedHook = Callable[[str, Hashable, bool], None]


def _detached(kind: str, key: Hashable, write: bool) -> None:
    """``SchedPoints.point`` while no hook is attached: nothing to switch to."""


class SchedPoints:
    """Holder of the scheduling hook shared by every model object of one VM/TD.

    ``hook(kind, key, write)`` is called before the access it names.  A hook may switch to
    another model thread and come back later; the model re-reads whatever it needs after
    the point, exactly as kernel code re-reads memory after a preemption.

    ``point(kind, key, write)`` is bound when ``hook`` is set: the hook itself, or a no-op
    while detached, so sequential runs (millions of points) pay one empty call.  ``write``
    has no default: the explorer's hook takes three arguments, so the detached no-op does
    too, and a call missing it fails in every run, not only under the explorer.
    """

    __slots__ = ("hook", "cpu", "point")

    def __init__(self, hook: SchedHook | None = None) -> None:
        self.hook = hook
        self.cpu = 0
        # Bound here too: compiled (``tdpsim.accel``), __init__'s stores skip __setattr__.
        self.point: SchedHook = _detached if hook is None else hook

    def __setattr__(self, name: str, value: object) -> None:
        object.__setattr__(self, name, value)
        if name == "hook":
            object.__setattr__(self, "point", _detached if value is None else value)
