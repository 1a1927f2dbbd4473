"""The hardware TLB of one vCPU and the CPU's EPT walk that fills it.

Mirrors no kernel file: it is what the hardware may still use after KVM changed an SPTE,
until the flush KVM owes (``kvm_flush_remote_tlbs*``: KVM_REQ_TLB_FLUSH, serviced by
``kvm_vcpu_flush_tlb_all`` on the next entry, or at once for a vCPU in guest mode through
the IPI the request sends).  Observation only: filling or flushing it never changes what
KVM does, so no golden count moves.

Each entry also stands for the paging-structure caches its walk filled (SDM 28.3.1: the
non-leaf EPT entries of the path, e.g. a PDE cached as "this 2M range's table is at pfn
P"): until an INVEPT the CPU may walk a later access through those tables, so replacing a
table on the path (a table → huge leaf recovery, a zapped parent) makes the entry stale
although its own 4K translation did not change.

Simplifications (one line each):
- A/D bits are not set by this walker (``vmx.ept_hw_access`` models them).
- Paging-structure caches are checked (stale when the op that replaced a table returns) but
  never used for a walk: an access walks from the root or hits a final translation.
- Ranged flushes (``kvm_flush_remote_tlbs_range``/``_gfn``/``_memslot``) flush everything, as
  on bare-metal VMX without a ranged-flush hook.
- Entries are tagged with the root they came from (EPTP tagging): after a root switch the
  old root's entries are unreachable.
- Private TD memory is not here: the TDX module keeps that TLB, flushed by TD epochs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from .mmu_internal import SP_FREED, KvmMmuPage
from .sched import SPTE_READ
from .spte import (
    PAGE_SHIFT,
    SPTE_BASE_ADDR_MASK,
    SPTE_LEVEL_BITS,
    is_executable_pte,
    is_last_spte,
    is_shadow_present_pte,
    is_writable_pte,
)

if TYPE_CHECKING:  # pragma: no cover
    from .kvm import Kvm, KvmVcpu


STALE_NONE = -1
STALE_RETURNED = -2


class TlbEntry:
    """One cached translation: host pfn, permissions, the root it was walked from and the
    SPTE slots of the walk (``("spte", table_pfn, index)``, root first)."""

    __slots__ = ("pfn", "writable", "executable", "root", "path", "stale_by")

    def __init__(self, pfn: int, writable: bool, executable: bool, root: KvmMmuPage,
                 path: tuple) -> None:
        self.pfn = pfn
        self.writable = writable
        self.executable = executable
        self.root = root
        self.path = path
        # The context whose SPTE change made it stale, or STALE_RETURNED once that
        # operation returned (set by the explorer's checks).
        self.stale_by = STALE_NONE


class Tlb:
    """gfn (as the guest uses it, shared bit included) → ``TlbEntry``."""

    __slots__ = ("entries", "flushes")

    def __init__(self) -> None:
        self.entries: dict[int, TlbEntry] = {}
        self.flushes = 0

    def flush(self) -> None:
        """``kvm_vcpu_flush_tlb_all`` / INVEPT all-context."""
        if self.entries:
            self.entries.clear()
        self.flushes += 1


def ept_translate(kvm: "Kvm", root: Optional[KvmMmuPage], gfn: int,
                  point: bool = False) -> Optional[tuple[int, bool, bool, tuple]]:
    """The CPU's EPT walk of ``root`` for ``gfn`` (shared bit included): (pfn, writable,
    executable, path) of the 4K page, or None (EPT violation).  With ``point`` every level
    is one scheduling point (the walker's loads race with KVM's stores); the walker is not
    an RCU reader, so it never triggers the explorer's RCU checks (a freed table it meets
    ends the walk as a violation)."""
    if root is None or root.role.invalid:
        return None
    sp = root
    level = root.role.level
    path = []
    hook = kvm.sched.hook if point else None
    by_pfn = kvm.sp_by_pfn
    while True:
        index = (gfn >> ((level - 1) * SPTE_LEVEL_BITS)) & 511
        key = ("spte", sp.spt_pfn, index)
        if hook is not None:
            hook(SPTE_READ, key, False)
        if sp.rcu_state == SP_FREED:
            return None
        spte = sp.spt[index]
        path.append(key)
        if not is_shadow_present_pte(spte):
            return None
        if is_last_spte(spte, level):
            pfn = ((spte & SPTE_BASE_ADDR_MASK) >> PAGE_SHIFT) + \
                (gfn & ((1 << ((level - 1) * SPTE_LEVEL_BITS)) - 1))
            return pfn, is_writable_pte(spte), is_executable_pte(kvm.masks, spte), tuple(path)
        child = by_pfn.get((spte & SPTE_BASE_ADDR_MASK) >> PAGE_SHIFT)
        if child is None:
            return None
        sp = child
        level -= 1


def tlb_translation_stale(kvm: "Kvm", e: TlbEntry, gfn: int) -> bool:
    """The paging structure no longer grants what ``e`` caches (gone, other pfn, or fewer
    permissions): a guest hitting ``e`` reaches memory KVM took away."""
    now = ept_translate(kvm, e.root, gfn)
    if now is None:
        return True
    pfn, writable, executable, _ = now
    return pfn != e.pfn or (e.writable and not writable) or (e.executable and not executable)


def tlb_entry_is_stale(kvm: "Kvm", e: TlbEntry, gfn: int) -> bool:
    """``e``'s translation is stale, or a table its walk went through (cached by the
    paging-structure caches) is no longer on the path: a walk through the cached entry
    would read a table KVM removed (and freed after the grace period)."""
    now = ept_translate(kvm, e.root, gfn)
    if now is None:
        return True
    pfn, writable, executable, path = now
    if pfn != e.pfn or (e.writable and not writable) or (e.executable and not executable):
        return True
    # ("spte", table_pfn, index) per level: a split below the old leaf only lengthens the
    # path (same translation, no flush owed); a table replaced or removed changes it.
    old = e.path
    return len(path) < len(old) or any(a[1] != b[1] for a, b in zip(old, path))


def guest_memory_access(vcpu: "KvmVcpu", gfn: int, write: bool = False,
                        exec: bool = False) -> Optional[int]:
    """One guest load/store/fetch of ``gfn`` through the direct root: a TLB hit, or a walk
    that fills the TLB.  Returns the host pfn reached, or None for an EPT violation (the
    caller exits to KVM)."""
    kvm = vcpu.kvm
    e = vcpu.tlb.entries.get(gfn)
    if e is not None and e.root is vcpu.root and (e.writable or not write) \
            and (e.executable or not exec):
        if e.stale_by == STALE_RETURNED and tlb_translation_stale(kvm, e, gfn):
            _stale_hit(vcpu, e, gfn, write)
        return e.pfn
    now = ept_translate(kvm, vcpu.root, gfn, point=True)
    if now is None:
        return None
    pfn, writable, executable, path = now
    if (write and not writable) or (exec and not executable):
        return None
    vcpu.tlb.entries[gfn] = TlbEntry(pfn, writable, executable, vcpu.root, path)
    return pfn


def _stale_hit(vcpu: "KvmVcpu", e: TlbEntry, gfn: int, write: bool) -> None:
    """The guest used a translation after the operation that took it away returned: the
    flush KVM owed did not reach this vCPU (the host may already have reused the page, or
    a write escapes dirty logging)."""
    from .kvm import MemorySafetyBUG

    raise MemorySafetyBUG(
        "TLB", f"vCPU {vcpu.vcpu_id}: guest {'write' if write else 'read'} of gfn {gfn:#x} "
               f"hit a stale TLB entry -> pfn {e.pfn:#x} after the operation that took it "
               "away had returned (no flush reached this vCPU)")
