"""Module try-locks and the per-SEAMCALL lock/scheduling context.

Mirrors ``src/common/helpers/tdx_locks.h`` (sharex try-locks) and the EXIT-label release
sequence every ``src/vmm_dispatcher/api_calls/*.c`` handler ends with, of intel/tdx-module 1.5.01.

Simplifications:
- Host-priority sharex locks (OP_STATE) behave like plain sharex try-locks; the TDHP bit is
  modelled only on S-EPT entries.
- A lock never spins: every acquire is a single try (the module's locks are try-locks too).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Hashable

from .sept import LOCK_TDEL, LOCK_TDHP, SeptPage

if TYPE_CHECKING:
    from tdpsim.model.sched import SchedPoints

    from .pamt import Pamt


class SharexLock:
    """Shared/exclusive try-lock: ``held`` is -1 when exclusive, else the number of sharers."""

    __slots__ = ("name", "held")

    def __init__(self, name: str) -> None:
        self.name = name
        self.held = 0

    def try_acquire(self, exclusive: bool) -> bool:
        if exclusive:
            if self.held:
                return False
            self.held = -1
            return True
        if self.held < 0:
            return False
        self.held += 1
        return True

    def release(self) -> None:
        self.held = 0 if self.held < 0 else self.held - 1


def host_lock_entry(page: SeptPage, idx: int) -> bool:
    """``sept_lock_acquire_host``: on failure set TDHP so the guest backs off next time."""
    f = page.flags[idx]
    if f & LOCK_TDEL:
        page.flags[idx] = f | LOCK_TDHP
        return False
    page.flags[idx] = (f | LOCK_TDEL) & ~LOCK_TDHP
    return True


def guest_lock_entry(page: SeptPage, idx: int) -> bool:
    """``sept_lock_acquire_guest``: fails if locked *or* if the host asked for priority."""
    f = page.flags[idx]
    if f & (LOCK_TDEL | LOCK_TDHP):
        return False
    page.flags[idx] = f | LOCK_TDEL
    return True


class CallCtx:
    """Locks held by one SEAMCALL/TDCALL, and its single scheduling point.

    Handlers take locks through this object, call ``point()`` once all checks passed (holding
    every lock), mutate, and return.  ``close()`` runs the point if an early error return skipped
    it (as a read: an early error mutated nothing), so every call is exactly one scheduling
    point, taken while its locks are held, and then releases the locks in reverse order, like
    the handlers' EXIT label.
    """

    __slots__ = ("sched", "kind", "key", "write", "pointed", "_undo")

    def __init__(self, sched: "SchedPoints", kind: str, key: Hashable, write: bool) -> None:
        self.sched = sched
        self.kind = kind
        self.key = key
        self.write = write
        self.pointed = False
        self._undo: list[Callable[[], None]] = []

    def lock(self, lk: SharexLock, exclusive: bool) -> bool:
        if not lk.try_acquire(exclusive):
            return False
        self._undo.append(lk.release)
        return True

    def lock_entry_host(self, page: SeptPage, idx: int) -> bool:
        if not host_lock_entry(page, idx):
            return False
        self._undo.append(lambda: _unlock_entry(page, idx))
        return True

    def lock_entry_guest(self, page: SeptPage, idx: int) -> bool:
        if not guest_lock_entry(page, idx):
            return False
        self._undo.append(lambda: _unlock_entry(page, idx))
        return True

    def lock_pamt(self, pamt: "Pamt", pfn: int, exclusive: bool) -> bool:
        if not pamt.try_lock(pfn, exclusive):
            return False
        self._undo.append(lambda: pamt.unlock(pfn))
        return True

    def point(self) -> None:
        if not self.pointed:
            self.pointed = True
            self.sched.point(self.kind, self.key, self.write)

    def exit_point(self) -> None:
        """The point of a call that returned before it (an early error): it changed nothing
        its point names, so there it only read (a lock it failed to take is noted apart)."""
        if not self.pointed:
            self.write = False
            self.point()

    def close(self) -> None:
        self.exit_point()
        undo = self._undo
        for release in reversed(undo):
            release()
        undo.clear()


def _unlock_entry(page: SeptPage, idx: int) -> None:
    page.flags[idx] &= ~LOCK_TDEL
