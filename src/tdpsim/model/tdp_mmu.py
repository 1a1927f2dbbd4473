"""The TDP MMU — mirrors ``arch/x86/kvm/mmu/tdp_mmu.c``.

Every SPTE write goes through one choke point (``tdp_mmu_set_spte_atomic`` under the read
lock, ``tdp_mmu_set_spte`` under the write lock) followed by ``handle_changed_spte``, so
stats, trace events and page-table teardown all happen in one place, as in the kernel.

The mirror-root paths follow UPSTREAM with the HP-v3 series on top (reference §0.1):
``set_external_spte_present`` also allows leaf → non-leaf (split, refused by TDX under the
shared lock), and ``tdp_mmu_set_spte`` forwards leaf → non-leaf to ``split_external_spte``.

Simplifications (one line each):
- ``need_resched()`` / ``rwlock_needbreak()`` are one deterministic knob,
  ``Policy.resched_every``; with 0 (the default) walkers never yield.
- Dirty-log walks use the direct roots only: slots that log dirty pages are never
  guest_memfd slots, so mirror roots hold nothing there.
- Page allocation never fails (no -ENOMEM from the vCPU caches or the split path).
- ``for_each_*_tdp_mmu_root_yield_safe`` take and drop root references like the kernel but
  iterate a snapshot of the root list.
"""

from __future__ import annotations

from array import array
from typing import TYPE_CHECKING, Final, Iterator, Optional

from .events import (
    KvmMmuGetPage,
    KvmMmuPage as KvmMmuPageFields,
    KvmMmuPrepareZapPage,
    KvmMmuSetSpte,
    KvmMmuSplitHugePage,
    KvmMmuSpteRequested,
    KvmTdpMmuSpteChanged,
    MarkMmioSpte,
    traces,
)
from .mmu_internal import (
    EBUSY,
    RET_PF_EMULATE,
    RET_PF_FIXED,
    RET_PF_RETRY,
    RET_PF_SPURIOUS,
    KvmMmuPage,
    KvmMmuPageRole,
    KvmPageFault,
    POISON_FREE_SPTE,
    SP_FREED,
    SP_RCU_PENDING,
    is_mirror_sp,
)
from .mmu import (
    KVM_TDP_MMU,
    disallowed_hugepage_adjust,
    kvm_mmu_hugepage_adjust,
    kvm_mmu_max_mapping_level,
    track_possible_nx_huge_page,
    untrack_possible_nx_huge_page,
)
from .sched import RCU, RCU_FREE, ROOTS, ROOTS_KEY, SPTE_CMPXCHG, SPTE_WRITE, SPTE_XCHG
from .spte import (
    ACC_ALL,
    KVM_MAX_HUGEPAGE_LEVEL,
    KVM_PAGES_PER_HPAGE,
    PAGE_SHIFT,
    PG_LEVEL_2M,
    PG_LEVEL_4K,
    PT64_ROOT_MAX_LEVEL,
    PT_WRITABLE_MASK,
    SPTE_ENT_PER_PAGE,
    PT_PRESENT_MASK,
    SpteMasks,
    check_spte_writable_invariants,
    get_mmio_spte_generation,
    is_executable_pte,
    is_frozen_spte,
    is_large_pte,
    is_last_spte,
    is_mmio_spte,
    is_shadow_present_pte,
    is_writable_pte,
    kvm_tdp_mmu_spte_need_atomic_write,
    leaf_spte_change_needs_tlb_flush,
    make_huge_spte,
    make_mmio_spte,
    make_nonleaf_spte,
    make_small_spte,
    make_spte,
    spte_to_pfn,
)
from .tdp_iter import (
    TdpIter,
    for_each_tdp_pte,
    for_each_tdp_pte_min_level,
    kvm_tdp_mmu_read_spte,
    rcu_check_sptep,
    spte_to_child_pt,
    spte_to_child_sp,
    sptep_address,
)

from .kvm import KernelBUG

_POISONED_TABLE = array("Q", [POISON_FREE_SPTE]) * SPTE_ENT_PER_PAGE

if TYPE_CHECKING:  # pragma: no cover
    from .kvm import Kvm, KvmVcpu
    from .memslot import KvmMemorySlot

# enum kvm_tdp_mmu_root_types
KVM_INVALID_ROOTS: Final = 1 << 0
KVM_DIRECT_ROOTS: Final = 1 << 1
KVM_MIRROR_ROOTS: Final = 1 << 2
KVM_VALID_ROOTS: Final = KVM_DIRECT_ROOTS | KVM_MIRROR_ROOTS
KVM_ALL_ROOTS: Final = KVM_VALID_ROOTS | KVM_INVALID_ROOTS

# enum kvm_gfn_range_filter
KVM_FILTER_SHARED: Final = 1 << 0
KVM_FILTER_PRIVATE: Final = 1 << 1


# --- raw SPTE accessors (tdp_iter.h), each one scheduling point --------------------------

def kvm_tdp_mmu_write_spte_atomic(kvm: "Kvm", sp: KvmMmuPage, index: int, new_spte: int) -> int:
    """``kvm_tdp_mmu_write_spte_atomic``: ``xchg``, returns the old value."""
    if kvm.sched.hook is not None:
        kvm.sched.hook(SPTE_XCHG, ("spte", sp.spt_pfn, index), True)
        if sp.rcu_state or not kvm.rcu.rcu_read_lock_held():
            rcu_check_sptep(kvm, sp, index, "xchg")
    old = sp.spt[index]
    sp.spt[index] = new_spte
    return old


def __kvm_tdp_mmu_write_spte(kvm: "Kvm", sp: KvmMmuPage, index: int, new_spte: int) -> None:
    """``__kvm_tdp_mmu_write_spte``: a plain ``WRITE_ONCE``."""
    if kvm.sched.hook is not None:
        kvm.sched.hook(SPTE_WRITE, ("spte", sp.spt_pfn, index), True)
        if sp.rcu_state or not kvm.rcu.rcu_read_lock_held():
            rcu_check_sptep(kvm, sp, index, "write")
    sp.spt[index] = new_spte


def kvm_tdp_mmu_write_spte(kvm: "Kvm", sp: KvmMmuPage, index: int, old_spte: int,
                           new_spte: int, level: int) -> int:
    """``kvm_tdp_mmu_write_spte``: ``xchg`` only when the old leaf has volatile bits (the
    returned value then carries what the CPU or fast-PF set meanwhile)."""
    if kvm_tdp_mmu_spte_need_atomic_write(kvm.masks, old_spte, level):
        return kvm_tdp_mmu_write_spte_atomic(kvm, sp, index, new_spte)
    __kvm_tdp_mmu_write_spte(kvm, sp, index, new_spte)
    return old_spte


def try_cmpxchg64(kvm: "Kvm", sp: KvmMmuPage, index: int, old_spte: int,
                  new_spte: int) -> tuple[bool, int]:
    """``try_cmpxchg64(sptep, &old, new)``: (success, current value)."""
    if kvm.sched.hook is not None:
        kvm.sched.hook(SPTE_CMPXCHG, ("spte", sp.spt_pfn, index), True)
        if sp.rcu_state or not kvm.rcu.rcu_read_lock_held():
            rcu_check_sptep(kvm, sp, index, "cmpxchg")
    cur = sp.spt[index]
    if cur != old_spte:
        return False, cur
    sp.spt[index] = new_spte
    return True, old_spte


# --- shadow pages and roots ----------------------------------------------------------------

def _page_fields(sp: KvmMmuPage) -> KvmMmuPageFields:
    return KvmMmuPageFields(int(sp.tdp_mmu_scheduled_root_to_zap), sp.gfn, sp.role.word,
                            sp.tdp_mmu_root_count, False)


def tdp_mmu_alloc_sp(kvm: "Kvm") -> KvmMmuPage:
    """``tdp_mmu_alloc_sp``: a header and a table page from the vCPU caches."""
    return KvmMmuPage(kvm.alloc_pt_pfn(), kvm.profile.SHADOW_NONPRESENT_VALUE)


def kvm_mmu_alloc_external_spt(kvm: "Kvm", sp: KvmMmuPage) -> None:
    """``kvm_mmu_alloc_external_spt``: the page the TDX module will own as S-EPT."""
    sp.external_spt = kvm.alloc_pt_pfn()


def tdp_mmu_init_sp(kvm: "Kvm", sp: KvmMmuPage, parent: Optional[KvmMmuPage],
                    parent_index: int, gfn: int, role: KvmMmuPageRole) -> None:
    """``tdp_mmu_init_sp``: ``set_page_private`` makes the table findable from SPTEs."""
    kvm.sp_by_pfn[sp.spt_pfn] = sp
    sp.role = role
    sp.gfn = gfn
    sp.parent = parent
    sp.parent_index = parent_index
    if kvm.tracer is not None:
        kvm.tracer(KvmMmuGetPage(_page_fields(sp), True))


def tdp_mmu_init_child_sp(kvm: "Kvm", child_sp: KvmMmuPage, iter: TdpIter) -> None:
    """``tdp_mmu_init_child_sp``: the child inherits the parent's role (so ``is_mirror``)
    one level down."""
    tdp_mmu_init_sp(kvm, child_sp, iter.sp, iter.index, iter.gfn, iter.sp.role.child())


def tdp_mmu_free_sp(kvm: "Kvm", sp: KvmMmuPage) -> None:
    """``tdp_mmu_free_sp``: ``free_page(sp->spt)``.  The table reads as slab poison from now
    on and its frame may back the next table allocated (``Kvm.pt_frame_reuse``)."""
    pfn = sp.spt_pfn
    kvm.sched.point(RCU_FREE, ("pt", pfn), True)
    if kvm.sp_by_pfn.get(pfn) is sp:
        del kvm.sp_by_pfn[pfn]
        if kvm.pt_frame_reuse:
            kvm.free_pt_pfns.append(pfn)
    sp.rcu_state = SP_FREED
    sp.spt = _POISONED_TABLE[:]


def tdp_mmu_free_sp_rcu_callback(kvm: "Kvm", sp: KvmMmuPage) -> None:
    """``tdp_mmu_free_sp_rcu_callback``."""
    tdp_mmu_free_sp(kvm, sp)


def tdp_mmu_free_sp_rcu(kvm: "Kvm", sp: KvmMmuPage) -> None:
    """``call_rcu(&sp->rcu_head, tdp_mmu_free_sp_rcu_callback)``: concurrent RCU walkers
    may still read the (frozen) table until the grace period ends."""
    kvm.sched.point(RCU, ("pt", sp.spt_pfn), True)  # every later access races with this
    sp.rcu_state = SP_RCU_PENDING
    kvm.rcu.call_rcu(lambda: tdp_mmu_free_sp_rcu_callback(kvm, sp))


def kvm_tdp_mmu_get_root(root: KvmMmuPage) -> bool:
    """``kvm_tdp_mmu_get_root``: ``refcount_inc_not_zero``."""
    if root.tdp_mmu_root_count == 0:
        return False
    root.tdp_mmu_root_count += 1
    return True


def kvm_tdp_mmu_put_root(kvm: "Kvm", root: KvmMmuPage) -> None:
    """``kvm_tdp_mmu_put_root``: the TDP MMU holds a reference until invalidation, so the
    last put of a valid root is a bug."""
    root.tdp_mmu_root_count -= 1
    if root.tdp_mmu_root_count:
        return
    kvm.KVM_BUG_ON(not root.role.invalid, "kvm_tdp_mmu_put_root", "last reference of a valid root")
    kvm.tdp_mmu_pages_lock.lock()
    kvm.sched.point(ROOTS, ROOTS_KEY, True)  # list_del_rcu
    kvm.tdp_mmu_roots.remove(root)
    kvm.tdp_mmu_pages_lock.unlock()
    tdp_mmu_free_sp_rcu(kvm, root)


def tdp_mmu_root_match(kvm: "Kvm", root: KvmMmuPage, types: int) -> bool:
    """``tdp_mmu_root_match``: an invalid root matches only if invalid roots are asked
    for *and* its type (direct or mirror) is."""
    if kvm.WARN_ON_ONCE(not types & KVM_VALID_ROOTS, "tdp_mmu_root_match",
                        f"no valid root type in {types:#x}"):
        return False
    if root.role.invalid and not types & KVM_INVALID_ROOTS:
        return False
    if not root.role.is_mirror:
        return bool(types & KVM_DIRECT_ROOTS)
    return bool(types & KVM_MIRROR_ROOTS)


def for_each_tdp_mmu_root_yield_safe(kvm: "Kvm", types: int) -> Iterator[KvmMmuPage]:
    """``__for_each_tdp_mmu_root_yield_safe``: hold a reference to each root visited."""
    kvm.mmu_lock.lockdep_assert_held()
    for root in list(kvm.tdp_mmu_roots):
        if not tdp_mmu_root_match(kvm, root, types) or not kvm_tdp_mmu_get_root(root):
            continue
        try:
            yield root
        finally:
            kvm_tdp_mmu_put_root(kvm, root)


def kvm_tdp_mmu_alloc_root(vcpu: "KvmVcpu", mirror: bool) -> KvmMmuPage:
    """``kvm_tdp_mmu_alloc_root``: reuse a valid root with the same role word, else make
    one with refcount 2 (the vCPU's and the TDP MMU's own)."""
    kvm = vcpu.kvm
    role = KvmMmuPageRole(kvm.root_level, is_mirror=mirror, ad_disabled=not kvm.kvm_ad_enabled())
    kvm.mmu_lock.read_lock()
    root = _find_root(kvm, role.word)
    if root is None:
        kvm.tdp_mmu_pages_lock.lock()
        root = _find_root(kvm, role.word)
        if root is None:
            root = tdp_mmu_alloc_sp(kvm)
            tdp_mmu_init_sp(kvm, root, None, 0, 0, role)
            root.tdp_mmu_root_count = 2
            kvm.sched.point(ROOTS, ROOTS_KEY, True)
            kvm.tdp_mmu_roots.insert(0, root)  # list_add_rcu adds at the head
        kvm.tdp_mmu_pages_lock.unlock()
    kvm.mmu_lock.read_unlock()
    if mirror:
        vcpu.mirror_root = root
    else:
        vcpu.root = root
    return root


def _find_root(kvm: "Kvm", word: int) -> Optional[KvmMmuPage]:
    """The lookup loops of ``kvm_tdp_mmu_alloc_root``: a valid root with this role word
    that is not going away (``kvm_tdp_mmu_get_root``)."""
    kvm.sched.point(ROOTS, ROOTS_KEY, False)
    for root in kvm.tdp_mmu_roots:
        if not root.role.invalid and root.role.word == word and kvm_tdp_mmu_get_root(root):
            return root
    return None


def tdp_account_mmu_page(kvm: "Kvm", sp: KvmMmuPage) -> None:
    kvm.tdp_mmu_pages += 1


def tdp_unaccount_mmu_page(kvm: "Kvm", sp: KvmMmuPage) -> None:
    kvm.tdp_mmu_pages -= 1


def tdp_mmu_unlink_sp(kvm: "Kvm", sp: KvmMmuPage) -> None:
    """``tdp_mmu_unlink_sp``."""
    tdp_unaccount_mmu_page(kvm, sp)
    if not sp.nx_huge_page_disallowed:
        return
    kvm.tdp_mmu_pages_lock.lock()
    sp.nx_huge_page_disallowed = False
    untrack_possible_nx_huge_page(kvm, sp, KVM_TDP_MMU)
    kvm.tdp_mmu_pages_lock.unlock()


# --- the choke point: handle_changed_spte and friends ----------------------------------------

def handle_removed_pt(kvm: "Kvm", sp: KvmMmuPage, shared: bool) -> None:
    """``handle_removed_pt``: a table left the paging structure (zap or promotion).  Every
    child is frozen and accounted; mirror leaves go to the TDX side one by one."""
    level = sp.role.level
    base_gfn = sp.gfn
    if kvm.tracer is not None:
        kvm.tracer(KvmMmuPrepareZapPage(_page_fields(sp)))
    tdp_mmu_unlink_sp(kvm, sp)
    step = KVM_PAGES_PER_HPAGE(level)
    frozen = kvm.profile.FROZEN_SPTE
    for i in range(SPTE_ENT_PER_PAGE):
        gfn = base_gfn + i * step
        if shared:
            # Freeze every entry, waiting out a concurrent owner of a frozen one: a fault
            # that froze it will write its value back and that must not be lost.
            while True:
                old_spte = kvm_tdp_mmu_write_spte_atomic(kvm, sp, i, frozen)
                if old_spte != frozen:  # is_frozen_spte
                    break
                if kvm.sched.hook is None:
                    raise RuntimeError("handle_removed_pt: frozen SPTE in a sequential run")
        else:
            old_spte = kvm_tdp_mmu_read_spte(kvm, sp, i)
            if not is_shadow_present_pte(old_spte):
                continue
            old_spte = kvm_tdp_mmu_write_spte(kvm, sp, i, old_spte, frozen, level)
        handle_changed_spte(kvm, sp.role.smm, gfn, old_spte, frozen, level, shared)
        if is_mirror_sp(sp):
            kvm.KVM_BUG_ON(shared, "handle_removed_pt",
                           "mirror page table removed under the shared mmu_lock")
            remove_external_spte(kvm, gfn, old_spte, level)
    if is_mirror_sp(sp) and kvm.WARN_ON_ONCE(
            bool(kvm.x86_ops.free_external_spt(kvm, base_gfn, level, sp.external_spt)),
            "handle_removed_pt", "free_external_spt failed; page leaked"):
        sp.external_spt = None  # leak it: the kernel must never touch an encrypted page
    tdp_mmu_free_sp_rcu(kvm, sp)


def handle_changed_spte(kvm: "Kvm", as_id: int, gfn: int, old_spte: int, new_spte: int,
                        level: int, shared: bool) -> None:
    """``handle_changed_spte``: bookkeeping of one SPTE change — trace, page stats, and the
    teardown of a table that was replaced (zap or promotion)."""
    was_present = is_shadow_present_pte(old_spte)
    is_present = is_shadow_present_pte(new_spte)
    was_leaf = was_present and is_last_spte(old_spte, level)
    is_leaf = is_present and is_last_spte(new_spte, level)
    pfn_changed = spte_to_pfn(old_spte) != spte_to_pfn(new_spte)

    if level > PT64_ROOT_MAX_LEVEL or level < PG_LEVEL_4K:
        kvm.WARN_ON_ONCE(True, "handle_changed_spte", f"bad level {level}")
    if gfn & (KVM_PAGES_PER_HPAGE(level) - 1):
        kvm.WARN_ON_ONCE(True, "handle_changed_spte", f"gfn {gfn:#x} not aligned to level {level}")
    if was_leaf and is_leaf and pfn_changed:
        raise KernelBUG(f"Invalid SPTE change: cannot replace a present leaf SPTE with "
                        f"another present leaf SPTE mapping a different PFN! gfn: {gfn:#x} "
                        f"old_spte: {old_spte:#x} new_spte: {new_spte:#x} level: {level}")
    if old_spte == new_spte:
        return
    if kvm.tracer is not None:
        kvm.tracer(KvmTdpMmuSpteChanged(as_id, gfn, level, old_spte, new_spte))
    if is_leaf and not check_spte_writable_invariants(kvm.masks, new_spte):
        kvm.WARN_ON_ONCE(True, "check_spte_writable_invariants", f"spte {new_spte:#x}")
    if not was_present and not is_present:
        # Only MMIO and frozen placeholders may change between non-present values.
        kvm.WARN_ON_ONCE(not is_mmio_spte(kvm.masks, kvm.shadow_mmio_value, old_spte)
                         and not is_mmio_spte(kvm.masks, kvm.shadow_mmio_value, new_spte)
                         and not is_frozen_spte(kvm.profile, new_spte),
                         "handle_changed_spte", "unexpected non-present change")
        return
    if is_leaf != was_leaf:
        kvm.kvm_update_page_stats(level, 1 if is_leaf else -1)
    if was_present and not was_leaf and (
            is_leaf or not is_present
            or kvm.WARN_ON_ONCE(pfn_changed, "handle_changed_spte", "table replaced by table")):
        handle_removed_pt(kvm, spte_to_child_pt(kvm, old_spte, level), shared)


def get_external_spt(kvm: "Kvm", gfn: int, new_spte: int, level: int) -> Optional[int]:
    """``get_external_spt``: the child SP's external page when linking a table."""
    if is_shadow_present_pte(new_spte) and not is_last_spte(new_spte, level):
        sp = spte_to_child_sp(kvm, new_spte)
        kvm.WARN_ON_ONCE(sp.role.level + 1 != level or sp.gfn != gfn,
                         "get_external_spt", "child SP does not match")
        return sp.external_spt
    return None


def set_external_spte_present(kvm: "Kvm", sp: KvmMmuPage, index: int, gfn: int,
                              old_spte: int, new_spte: int, level: int) -> int:
    """HP-v3 (09/24) ``set_external_spte_present``: freeze the mirror SPTE, call the TDX
    hook for the transition, then commit the new value or restore the old one.

    Valid transitions: non-present → leaf (``set_external_spte``), non-present → table
    (``link_external_spt``), leaf → table (``split_external_spte``, refused by TDX under
    the shared lock).  Anything else — a table → huge leaf promotion — trips the
    ``KVM_BUG_ON``, which does not return: the SPTE is frozen, *no* hook runs (``ret``
    stays 0) and the new value is written, so the caller goes on to tear the old table
    down under the shared lock (``handle_removed_pt``).
    """
    was_present = is_shadow_present_pte(old_spte)
    is_present = is_shadow_present_pte(new_spte)
    was_leaf = was_present and is_last_spte(old_spte, level)
    is_leaf = is_present and is_last_spte(new_spte, level)
    kvm.KVM_BUG_ON(not (not was_present or (was_leaf and not is_leaf)),
                   "set_external_spte_present",
                   f"invalid mirror SPTE transition (old {old_spte:#x} new {new_spte:#x} "
                   f"level {level})")
    kvm.mmu_lock.lockdep_assert_held()
    ok, _ = try_cmpxchg64(kvm, sp, index, old_spte, kvm.profile.FROZEN_SPTE)
    if not ok:
        return -EBUSY  # iter->old_spte is not refreshed: old_spte was passed by value
    ret = 0
    if not was_present:
        if is_leaf:
            ret = kvm.x86_ops.set_external_spte(kvm, gfn, level, new_spte)
        else:
            external_spt = get_external_spt(kvm, gfn, new_spte, level)
            kvm.KVM_BUG_ON(external_spt is None, "set_external_spte_present",
                           "no external_spt")
            ret = kvm.x86_ops.link_external_spt(kvm, gfn, level, external_spt)
    elif was_leaf and not is_leaf:
        ret = split_external_spte(kvm, gfn, old_spte, new_spte, level, True)
    __kvm_tdp_mmu_write_spte(kvm, sp, index, old_spte if ret else new_spte)
    return ret


def split_external_spte(kvm: "Kvm", gfn: int, old_spte: int, new_spte: int, level: int,
                        shared: bool) -> int:
    """HP-v3 ``split_external_spte``: hand the new child's external page to the TDX hook.
    The hook's error is returned, not checked: TDX bugs the VM itself where it must."""
    new_external_spt = get_external_spt(kvm, gfn, new_spte, level)
    kvm.KVM_BUG_ON(new_external_spt is None, "split_external_spte", "no new external_spt")
    return kvm.x86_ops.split_external_spte(kvm, gfn, level, old_spte, new_external_spt,
                                           shared)


def __tdp_mmu_set_spte_atomic(kvm: "Kvm", iter: TdpIter, new_spte: int) -> int:
    """``__tdp_mmu_set_spte_atomic``: a cmpxchg that refreshes ``iter.old_spte`` on failure;
    mirror SPTEs go through the freeze protocol instead."""
    if iter.yielded or iter.old_spte == kvm.profile.FROZEN_SPTE:
        kvm.WARN_ON_ONCE(True, "__tdp_mmu_set_spte_atomic", "yielded iterator or frozen old SPTE")
    if is_mirror_sp(iter.sp) and not is_frozen_spte(kvm.profile, new_spte):
        # Atomic zapping of mirror SPTEs is not supported.
        if kvm.KVM_BUG_ON(not is_shadow_present_pte(new_spte), "__tdp_mmu_set_spte_atomic",
                          "atomic zap of a mirror SPTE"):
            return -EBUSY
        return set_external_spte_present(kvm, iter.sp, iter.index, iter.gfn, iter.old_spte,
                                         new_spte, iter.level)
    ok, cur = try_cmpxchg64(kvm, iter.sp, iter.index, iter.old_spte, new_spte)
    if not ok:
        iter.old_spte = cur
        return -EBUSY
    return 0


def tdp_mmu_set_spte_atomic(kvm: "Kvm", iter: TdpIter, new_spte: int) -> int:
    """``tdp_mmu_set_spte_atomic``: the read-lock choke point.  Returns 0 or -EBUSY."""
    kvm.mmu_lock.lockdep_assert_held_read()
    ret = __tdp_mmu_set_spte_atomic(kvm, iter, new_spte)
    if ret:
        return ret
    handle_changed_spte(kvm, iter.as_id, iter.gfn, iter.old_spte, new_spte, iter.level, True)
    return 0


def tdp_mmu_zap_spte_atomic(kvm: "Kvm", iter: TdpIter) -> int:
    """``tdp_mmu_zap_spte_atomic`` (up to v6.12; 6.13 zaps without freezing): freeze the
    SPTE so no thread installs a present entry before the TLB flush, flush, then write
    SHADOW_NONPRESENT_VALUE.  Where the bookkeeping happens depends on the kernel
    (``KernelProfile.zap_spte_atomic_handles_after_write``)."""
    kvm.mmu_lock.lockdep_assert_held_read()
    frozen, nonpresent = kvm.profile.FROZEN_SPTE, kvm.profile.SHADOW_NONPRESENT_VALUE
    after_write = kvm.profile.zap_spte_atomic_handles_after_write
    # Before v6.10 the freeze is an ordinary traced change (old -> REMOVED_SPTE).
    ret = (__tdp_mmu_set_spte_atomic if after_write else tdp_mmu_set_spte_atomic)(
        kvm, iter, frozen)
    if ret:
        return ret
    kvm.kvm_flush_remote_tlbs_gfn(iter.gfn, iter.level)
    # Nobody overwrites a frozen SPTE: the raw write skips the volatile-bits check.
    __kvm_tdp_mmu_write_spte(kvm, iter.sp, iter.index, nonpresent)
    if after_write:
        handle_changed_spte(kvm, iter.as_id, iter.gfn, iter.old_spte, nonpresent, iter.level,
                            True)
    return 0


def remove_external_spte(kvm: "Kvm", gfn: int, old_spte: int, level: int) -> None:
    """``remove_external_spte``: only non-leaf values are filtered (page tables go via
    ``free_external_spt``).  At 4K every entry is a "leaf", so a non-present child that
    the shared teardown of a mirror table froze is passed to the TDX hook as well."""
    if not is_last_spte(old_spte, level):
        return
    kvm.mmu_lock.lockdep_assert_held_write()
    kvm.x86_ops.remove_external_spte(kvm, gfn, level, old_spte)


def tdp_mmu_set_spte(kvm: "Kvm", as_id: int, sp: KvmMmuPage, index: int, old_spte: int,
                     new_spte: int, gfn: int, level: int) -> int:
    """``tdp_mmu_set_spte``: the write-lock choke point; returns the old value actually
    replaced.  Mirror SPTEs: non-present → ``remove_external_spte``; HP-v3 leaf → table →
    ``split_external_spte`` (its error is ignored here); anything else is a bug."""
    kvm.mmu_lock.lockdep_assert_held_write()
    kvm.WARN_ON_ONCE(is_frozen_spte(kvm.profile, old_spte)
                     or is_frozen_spte(kvm.profile, new_spte),
                     "tdp_mmu_set_spte", "frozen SPTE under the write lock")
    old_spte = kvm_tdp_mmu_write_spte(kvm, sp, index, old_spte, new_spte, level)
    handle_changed_spte(kvm, as_id, gfn, old_spte, new_spte, level, False)
    if is_mirror_sp(sp):
        if not is_shadow_present_pte(new_spte):
            remove_external_spte(kvm, gfn, old_spte, level)
        elif is_last_spte(old_spte, level) and not is_last_spte(new_spte, level):
            split_external_spte(kvm, gfn, old_spte, new_spte, level, False)
        else:
            kvm.KVM_BUG_ON(True, "tdp_mmu_set_spte",
                           f"unsupported mirror change {old_spte:#x} -> {new_spte:#x}")
    return old_spte


def tdp_mmu_iter_set_spte(kvm: "Kvm", iter: TdpIter, new_spte: int) -> None:
    """``tdp_mmu_iter_set_spte``."""
    kvm.WARN_ON_ONCE(iter.yielded, "tdp_mmu_iter_set_spte", "yielded iterator")
    iter.old_spte = tdp_mmu_set_spte(kvm, iter.as_id, iter.sp, iter.index, iter.old_spte,
                                     new_spte, iter.gfn, iter.level)


def tdp_mmu_clear_spte_bits(kvm: "Kvm", iter: TdpIter, mask: int) -> int:
    """``tdp_mmu_clear_spte_bits``: atomic fetch-and when the CPU may set A/D meanwhile,
    else a plain write; returns the old value."""
    if kvm_tdp_mmu_spte_need_atomic_write(kvm.masks, iter.old_spte, iter.level):
        if kvm.sched.hook is not None:
            kvm.sched.hook(SPTE_XCHG, ("spte", iter.sp.spt_pfn, iter.index), True)
        old = iter.sp.spt[iter.index]
        iter.sp.spt[iter.index] = old & ~mask
        return old
    __kvm_tdp_mmu_write_spte(kvm, iter.sp, iter.index, iter.old_spte & ~mask)
    return iter.old_spte


# --- yielding --------------------------------------------------------------------------------

def need_resched(kvm: "Kvm") -> bool:
    """``need_resched() || rwlock_needbreak(&kvm->mmu_lock)``: true every
    ``Policy.resched_every``-th time it is asked (never with 0), standing in for the
    scheduler tick and mmu_lock contention."""
    every = kvm.policy.resched_every
    if not every:
        return False
    kvm.resched_checks += 1
    return kvm.resched_checks % every == 0


def tdp_mmu_iter_need_resched(kvm: "Kvm", iter: TdpIter) -> bool:
    """``tdp_mmu_iter_need_resched``: only after progress, so a walk that keeps yielding
    still moves."""
    if iter.next_last_level_gfn == iter.yielded_gfn:
        return False
    return need_resched(kvm)


def tdp_mmu_iter_cond_resched(kvm: "Kvm", iter: TdpIter, flush: bool, shared: bool) -> bool:
    """``tdp_mmu_iter_cond_resched``: flush first if the caller has a pending flush, drop
    RCU and mmu_lock (``cond_resched_rwlock_read/write``), take them back, and mark the
    iterator yielded so the next step restarts from the root at the last gfn."""
    if not tdp_mmu_iter_need_resched(kvm, iter):
        return False
    if flush:
        kvm.kvm_flush_remote_tlbs()
    kvm.rcu.rcu_read_unlock()
    _mmu_unlock(kvm, shared)
    _mmu_lock(kvm, shared)
    kvm.rcu.rcu_read_lock()
    kvm.WARN_ON_ONCE(iter.gfn > iter.next_last_level_gfn, "tdp_mmu_iter_cond_resched",
                     "iterator ahead of next_last_level_gfn")
    iter.yielded = True
    return True


# --- zapping -------------------------------------------------------------------------------

def kvm_mmu_max_gfn(kvm: "Kvm") -> int:
    """``kvm_mmu_max_gfn`` (mmu.h): the host MAXPHYADDR bounds every GPA a TDP SPTE can
    map (with TDP enabled; not the walk width)."""
    return (1 << (kvm.host_maxphyaddr - PAGE_SHIFT)) - 1


def tdp_mmu_max_gfn_exclusive(kvm: "Kvm") -> int:
    """``tdp_mmu_max_gfn_exclusive``: TDP MMU walks are bounded at host.MAXPHYADDR."""
    return kvm_mmu_max_gfn(kvm) + 1


def tdp_mmu_zap_leafs(kvm: "Kvm", root: KvmMmuPage, start: int, end: int, can_yield: bool,
                      flush: bool) -> bool:
    """``tdp_mmu_zap_leafs``: zap leaf SPTEs in [start, end); frees no page tables."""
    kvm.mmu_lock.lockdep_assert_held_write()
    end = min(end, tdp_mmu_max_gfn_exclusive(kvm))
    kvm.rcu.rcu_read_lock()
    for iter in for_each_tdp_pte_min_level(kvm, root, PG_LEVEL_4K, start, end):
        if can_yield and tdp_mmu_iter_cond_resched(kvm, iter, flush, False):
            flush = False
            continue
        if not is_shadow_present_pte(iter.old_spte) or not is_last_spte(iter.old_spte, iter.level):
            continue
        tdp_mmu_iter_set_spte(kvm, iter, kvm.profile.SHADOW_NONPRESENT_VALUE)
        # Zaps in invalid roots need no flush: a new root load flushes locally.
        if not root.role.invalid:
            flush = True
    kvm.rcu.rcu_read_unlock()
    return flush


def kvm_tdp_mmu_zap_leafs(kvm: "Kvm", start: int, end: int, flush: bool) -> bool:
    """``kvm_tdp_mmu_zap_leafs``: every valid root."""
    kvm.mmu_lock.lockdep_assert_held_write()
    for root in for_each_tdp_mmu_root_yield_safe(kvm, KVM_VALID_ROOTS):
        flush = tdp_mmu_zap_leafs(kvm, root, start, end, True, flush)
    return flush


def kvm_gfn_range_filter_to_root_types(kvm: "Kvm", attr_filter: int) -> int:
    """``kvm_gfn_range_filter_to_root_types``: non-TDX VMs only have direct roots."""
    if not kvm.kvm_has_mirrored_tdp():
        return KVM_DIRECT_ROOTS
    types = 0
    if attr_filter & KVM_FILTER_PRIVATE:
        types |= KVM_MIRROR_ROOTS
    if attr_filter & KVM_FILTER_SHARED:
        types |= KVM_DIRECT_ROOTS
    return types


def kvm_tdp_mmu_unmap_gfn_range(kvm: "Kvm", start: int, end: int, attr_filter: int,
                                may_block: bool, flush: bool) -> bool:
    """``kvm_tdp_mmu_unmap_gfn_range``: roots chosen by the attribute filter, plus invalid
    roots (which may still hold mappings until they are zapped)."""
    types = kvm_gfn_range_filter_to_root_types(kvm, attr_filter) | KVM_INVALID_ROOTS
    for root in for_each_tdp_mmu_root_yield_safe(kvm, types):
        flush = tdp_mmu_zap_leafs(kvm, root, start, end, may_block, flush)
    return flush


def __tdp_mmu_zap_root(kvm: "Kvm", root: KvmMmuPage, shared: bool, zap_level: int) -> None:
    """``__tdp_mmu_zap_root``: zap every present SPTE at exactly ``zap_level``."""
    for iter in for_each_tdp_pte_min_level(kvm, root, zap_level, 0,
                                           tdp_mmu_max_gfn_exclusive(kvm)):
        if tdp_mmu_iter_cond_resched(kvm, iter, False, shared):
            continue
        if not is_shadow_present_pte(iter.old_spte) or iter.level > zap_level:
            continue
        if not shared:
            tdp_mmu_iter_set_spte(kvm, iter, kvm.profile.SHADOW_NONPRESENT_VALUE)
            continue
        while tdp_mmu_set_spte_atomic(kvm, iter, kvm.profile.SHADOW_NONPRESENT_VALUE):
            if not is_shadow_present_pte(iter.old_spte):
                break  # someone else zapped it


def tdp_mmu_zap_root(kvm: "Kvm", root: KvmMmuPage, shared: bool) -> None:
    """``tdp_mmu_zap_root``: leaves first in passes of increasing level, so that tearing
    down a table never has to walk a huge subtree at once."""
    kvm.mmu_lock.assert_held(shared)
    kvm.rcu.rcu_read_lock()
    levels = ((PG_LEVEL_4K, PG_LEVEL_2M, PG_LEVEL_2M + 1) if kvm.profile.tdp_mmu_zap_root_4k_first
              else (PG_LEVEL_2M + 1,))
    for level in levels + (root.role.level,):
        __tdp_mmu_zap_root(kvm, root, shared, level)
    kvm.rcu.rcu_read_unlock()


def kvm_tdp_mmu_invalidate_roots(kvm: "Kvm", root_types: int) -> None:
    """``kvm_tdp_mmu_invalidate_roots`` (write lock): mark roots invalid and schedule them
    for zapping; vCPUs must load new ones."""
    kvm.mmu_lock.lockdep_assert_held_write()
    for root in kvm.tdp_mmu_roots:
        if not tdp_mmu_root_match(kvm, root, root_types) or root.role.invalid:
            continue
        root.tdp_mmu_scheduled_root_to_zap = True
        root.role.invalid = True
    kvm.kvm_make_all_cpus_request("KVM_REQ_MMU_FREE_OBSOLETE_ROOTS")


def kvm_tdp_mmu_zap_invalidated_roots(kvm: "Kvm", shared: bool) -> None:
    """``kvm_tdp_mmu_zap_invalidated_roots``: zap each scheduled root and drop the TDP
    MMU's own reference."""
    kvm.mmu_lock.assert_held(shared)
    for root in list(kvm.tdp_mmu_roots):
        if not root.tdp_mmu_scheduled_root_to_zap:
            continue
        root.tdp_mmu_scheduled_root_to_zap = False
        tdp_mmu_zap_root(kvm, root, shared)
        kvm_tdp_mmu_put_root(kvm, root)


# --- the fault path --------------------------------------------------------------------------

def is_access_allowed(m: SpteMasks, fault: KvmPageFault, spte: int) -> bool:
    """``is_access_allowed`` (mmu.c): a read needs PT_PRESENT_MASK (bit 0, EPT's R)."""
    if fault.exec:
        return is_executable_pte(m, spte)
    if fault.write:
        return is_writable_pte(spte)
    return bool(spte & PT_PRESENT_MASK)


def tdp_mmu_link_sp(kvm: "Kvm", iter: TdpIter, sp: KvmMmuPage, shared: bool) -> int:
    """``tdp_mmu_link_sp``: install a non-leaf SPTE pointing to ``sp``."""
    spte = make_nonleaf_spte(kvm.masks, sp.spt_pfn, not kvm.kvm_ad_enabled())
    if shared:
        ret = tdp_mmu_set_spte_atomic(kvm, iter, spte)
        if ret:
            return ret
    else:
        tdp_mmu_iter_set_spte(kvm, iter, spte)
    tdp_account_mmu_page(kvm, sp)
    return 0


def tdp_mmu_split_huge_page(kvm: "Kvm", iter: TdpIter, sp: KvmMmuPage, shared: bool) -> int:
    """``tdp_mmu_split_huge_page``: fill the new table (not yet reachable, so no atomics)
    and link it; the translation is unchanged, so no TLB flush."""
    huge_spte = iter.old_spte
    level = iter.level
    nx = kvm.is_nx_huge_page_enabled()
    child_level = sp.role.level
    # make_small_spte() for index i differs from index 0 only by the pfn offset, which the
    # huge SPTE's aligned pfn leaves as zero bits: one call and an add per child.
    child0 = make_small_spte(kvm.masks, huge_spte, child_level, 0, sp.role.access, nx)
    stride = KVM_PAGES_PER_HPAGE(child_level) << PAGE_SHIFT
    sp.spt[:] = array("Q", range(child0, child0 + SPTE_ENT_PER_PAGE * stride, stride))
    ret = tdp_mmu_link_sp(kvm, iter, sp, shared)
    if not ret:
        # handle_changed_spte already removed the huge page from the stats.
        kvm.kvm_update_page_stats(level - 1, SPTE_ENT_PER_PAGE)
    if kvm.tracer is not None:
        kvm.tracer(KvmMmuSplitHugePage(iter.gfn, huge_spte, level, ret))
    return ret


def make_spte_mark_dirty(kvm: "Kvm", slot: "KvmMemorySlot", gfn: int, level: int,
                         new_spte: int) -> None:
    """The tail of ``make_spte()``: a writable SPTE in a dirty-logged slot is logged at
    creation — before the caller's cmpxchg, so also when that loses (RET_PF_RETRY) or
    the SPTE turns out unchanged (RET_PF_SPURIOUS).  kvm_mmu_hugepage_adjust keeps
    dirty-logged mappings 4K."""
    if is_writable_pte(new_spte) and slot.kvm_slot_dirty_track_enabled():
        kvm.WARN_ON_ONCE(level > PG_LEVEL_4K, "make_spte", "dirty-logged huge SPTE")
        slot.mark_page_dirty_in_slot(gfn)


def tdp_mmu_map_handle_target_level(vcpu: "KvmVcpu", fault: KvmPageFault, iter: TdpIter) -> int:
    """``tdp_mmu_map_handle_target_level`` (v6.18; up to v6.12 without the early spurious
    check and the MMU-writable flush, ``KernelProfile.tdp_mmu_map_*``)."""
    kvm = vcpu.kvm
    sp = iter.sp
    ret = RET_PF_FIXED
    if kvm.WARN_ON_ONCE(sp.role.level != fault.goal_level, "tdp_mmu_map_handle_target_level",
                        "SP level != goal level"):
        return RET_PF_RETRY
    if (kvm.profile.tdp_mmu_map_spurious_if_access_allowed
            and is_shadow_present_pte(iter.old_spte)
            and (fault.prefetch or is_access_allowed(kvm.masks, fault, iter.old_spte))
            and is_last_spte(iter.old_spte, iter.level)):
        kvm.WARN_ON_ONCE(fault.pfn != spte_to_pfn(iter.old_spte),
                         "tdp_mmu_map_handle_target_level", "spurious fault with another pfn")
        return RET_PF_SPURIOUS
    if fault.slot is None:
        new_spte = make_mmio_spte(kvm.masks, kvm.memslots_generation, iter.gfn, ACC_ALL,
                                  kvm.shadow_mmio_value)
    else:
        new_spte = make_spte(kvm.masks, level=iter.level, ad_disabled=sp.role.ad_disabled,
                             pte_access=ACC_ALL, pfn=fault.pfn, old_spte=iter.old_spte,
                             prefetch=fault.prefetch, host_writable=fault.map_writable,
                             nx_huge_page_enabled=kvm.is_nx_huge_page_enabled(),
                             mt_mask=kvm.mt_mask,
                             always_dirty=kvm.profile.make_spte_always_dirty)
        make_spte_mark_dirty(kvm, fault.slot, iter.gfn, iter.level, new_spte)
    if new_spte == iter.old_spte:
        ret = RET_PF_SPURIOUS
    elif tdp_mmu_set_spte_atomic(kvm, iter, new_spte):
        return RET_PF_RETRY
    elif is_shadow_present_pte(iter.old_spte) and (
            not is_last_spte(iter.old_spte, iter.level)
            or kvm.profile.tdp_mmu_map_warn_leaf_change_flush and kvm.WARN_ON_ONCE(
                leaf_spte_change_needs_tlb_flush(kvm.masks, iter.old_spte, new_spte),
                "tdp_mmu_map_handle_target_level", "leaf change needs flush")):
        # A table was replaced by a huge leaf (promotion): stale 4K translations must go.
        kvm.kvm_flush_remote_tlbs_gfn(iter.gfn, iter.level)
    if is_mmio_spte(kvm.masks, kvm.shadow_mmio_value, new_spte):
        vcpu.stat.pf_mmio_spte_created += 1
        if kvm.tracer is not None:
            kvm.tracer(MarkMmioSpte(sptep_address(sp, iter.index), iter.gfn,
                                    new_spte & ACC_ALL, get_mmio_spte_generation(new_spte)))
        ret = RET_PF_EMULATE
    elif kvm.tracer is not None and traces(kvm.tracer, KvmMmuSetSpte):
        kvm.tracer(KvmMmuSetSpte.assign(kvm.masks, iter.gfn, sp.spt[iter.index], iter.level,
                                        sptep_address(sp, iter.index)))
    return ret


def tdp_mmu_get_root_for_fault(vcpu: "KvmVcpu", fault: KvmPageFault) -> KvmMmuPage:
    """``tdp_mmu_get_root_for_fault``: private GPAs use the mirror root."""
    if not vcpu.kvm.kvm_is_addr_direct(fault.addr):
        return vcpu.mirror_root
    return vcpu.root


def hugepage_adjust_disallowed(kvm: "Kvm", fault: KvmPageFault, root: KvmMmuPage) -> bool:
    """Whether ``kvm_tdp_mmu_map`` consults ``disallowed_hugepage_adjust`` at each level:
    the NX workaround, joined by the seed patch's call-site test in the posted form
    ``policy.mirror_promotion`` names.

    RFC v1 (``rfc-v1``)::

        +	bool is_mirror = is_mirror_sp(root);
        -		if (fault->nx_huge_page_workaround_enabled)
        -			disallowed_hugepage_adjust(fault, iter.old_spte, iter.level);
        +		if (fault->nx_huge_page_workaround_enabled || is_mirror)
        +			disallowed_hugepage_adjust(fault, iter.old_spte, iter.level, is_mirror);

    RFC v2 07/23 and v3 06/24 as posted (``v3-posted``)::

        +	bool hugepage_adjust_disallowed = fault->nx_huge_page_workaround_enabled ||
        +					  kvm_has_mirrored_tdp(kvm);
        -		if (fault->nx_huge_page_workaround_enabled)
        +		if (hugepage_adjust_disallowed)
         			disallowed_hugepage_adjust(fault, iter.old_spte, iter.level);

    Sean's rewrite, the seed (``disallowed``)::

        -		if (fault->nx_huge_page_workaround_enabled)
        +		if (fault->nx_huge_page_workaround_enabled || is_mirror_sp(root))
         			disallowed_hugepage_adjust(fault, iter.old_spte, iter.level);
    """
    if fault.nx_huge_page_workaround_enabled:
        return True
    variant = kvm.policy.mirror_promotion
    if variant in ("disallowed", "rfc-v1"):
        return is_mirror_sp(root)
    if variant == "v3-posted":
        return kvm.kvm_has_mirrored_tdp()
    return False


def kvm_tdp_mmu_map(vcpu: "KvmVcpu", fault: KvmPageFault) -> int:
    """``kvm_tdp_mmu_map``: walk to the goal level, linking new tables or splitting huge
    leaves on the way, then install the leaf."""
    kvm = vcpu.kvm
    root = tdp_mmu_get_root_for_fault(vcpu, fault)
    kvm_mmu_hugepage_adjust(vcpu, fault)
    if kvm.tracer is not None and traces(kvm.tracer, KvmMmuSpteRequested):
        # The tracepoint prints the exact 4K pfn: aligned pfn | offset within the goal.
        offset = fault.gfn & (KVM_PAGES_PER_HPAGE(fault.goal_level) - 1)
        kvm.tracer(KvmMmuSpteRequested(fault.gfn, fault.pfn | offset, fault.goal_level))
    if kvm.audit is not None:
        kvm.audit(("goal", fault.goal_level))
    guarded = hugepage_adjust_disallowed(kvm, fault, root)
    is_mirror = is_mirror_sp(root)
    goal = fault.goal_level
    lowered = False
    ret = RET_PF_RETRY
    kvm.rcu.rcu_read_lock()
    walk = for_each_tdp_pte(kvm, root, fault.gfn, fault.gfn + 1)
    for iter in walk:
        if iter.level == goal and is_mirror:
            _count_promotion_opportunity(kvm, iter)
        if guarded:
            lowered |= _adjust(kvm, fault, iter, is_mirror)
        # Another thread froze it: give up rather than allocate and free a table.
        if is_frozen_spte(kvm.profile, iter.old_spte):
            break
        if iter.level == fault.goal_level:
            ret = _map_target_level(vcpu, fault, iter, root)
            break
        if is_shadow_present_pte(iter.old_spte) and not is_large_pte(iter.old_spte):
            continue
        if not _install_child_sp(vcpu, fault, iter):
            break
    else:
        # The walk ended before the goal, e.g. an upper SPTE changed under it.
        kvm.WARN_ON_ONCE(walk.level == fault.goal_level, "kvm_tdp_mmu_map",
                         "walk ended at the goal level")
    kvm.rcu.rcu_read_unlock()
    if lowered:
        if is_mirror:
            kvm.hugepage_adjust.lowered_mirror += 1
        else:
            kvm.hugepage_adjust.lowered_direct += 1
    return ret


def _count_promotion_opportunity(kvm: "Kvm", iter: TdpIter) -> None:
    """Not in the kernel: the fault's goal level meets a present mirror page table, i.e.
    the fault path could promote it (the question the seed patch answers)."""
    if iter.level > PG_LEVEL_4K and is_shadow_present_pte(iter.old_spte) \
            and not is_large_pte(iter.old_spte):
        kvm.hugepage_adjust.opportunities += 1
        kvm.hugepage_adjust.frames.add((iter.level, iter.gfn))


def _adjust(kvm: "Kvm", fault: KvmPageFault, iter: TdpIter, is_mirror: bool) -> bool:
    """One ``disallowed_hugepage_adjust`` call of the walk, counted by root."""
    st = kvm.hugepage_adjust
    if is_mirror:
        st.calls_mirror += 1
    else:
        st.calls_direct += 1
    if not disallowed_hugepage_adjust(kvm, fault, iter.old_spte, iter.level, is_mirror):
        return False
    if kvm.audit is not None:
        kvm.audit(("lowered", iter.level, fault.goal_level))
    return True


def _map_target_level(vcpu: "KvmVcpu", fault: KvmPageFault, iter: TdpIter,
                      root: KvmMmuPage) -> int:
    """Where the goal level is reached.  With ``mirror_promotion="seamcall"`` a table
    standing where a huge mirror leaf is wanted is left for the write-lock promotion of
    the hypothetical promoting KVM (``kvm_tdp_mmu_page_fault`` runs it after the walk)."""
    if (vcpu.kvm.policy.mirror_promotion == "seamcall" and is_mirror_sp(root)
            and iter.level > PG_LEVEL_4K and is_shadow_present_pte(iter.old_spte)
            and not is_last_spte(iter.old_spte, iter.level)):
        fault.mirror_promotion_level = iter.level
        return RET_PF_RETRY
    return tdp_mmu_map_handle_target_level(vcpu, fault, iter)


def _install_child_sp(vcpu: "KvmVcpu", fault: KvmPageFault, iter: TdpIter) -> bool:
    """The body of ``kvm_tdp_mmu_map`` for a non-present SPTE or a huge leaf above the
    goal: allocate a table and link it, or split the huge leaf into it."""
    kvm = vcpu.kvm
    if is_shadow_present_pte(iter.old_spte) and not kvm.profile.tdp_mmu_split_huge_page_on_fault:
        # Before v6.2 the huge leaf is zapped and an empty table linked in its place.
        if tdp_mmu_zap_spte_atomic(kvm, iter):
            return False
        # The new value informs the !present path below.
        iter.old_spte = kvm_tdp_mmu_read_spte(kvm, iter.sp, iter.index)
        if is_frozen_spte(kvm.profile, iter.old_spte):
            return False
    sp = tdp_mmu_alloc_sp(kvm)
    tdp_mmu_init_child_sp(kvm, sp, iter)
    if is_mirror_sp(sp):
        kvm_mmu_alloc_external_spt(kvm, sp)
    sp.nx_huge_page_disallowed = fault.huge_page_disallowed
    if is_shadow_present_pte(iter.old_spte):
        # HP-v3 removed UPSTREAM's KVM_BUG_ON for mirror SPTEs: TDX refuses the split under
        # the shared lock (-EOPNOTSUPP) instead.
        r = tdp_mmu_split_huge_page(kvm, iter, sp, True)
    else:
        r = tdp_mmu_link_sp(kvm, iter, sp, True)
    if r:
        tdp_mmu_free_sp(kvm, sp)
        return False
    if fault.huge_page_disallowed and fault.req_level >= iter.level:
        kvm.tdp_mmu_pages_lock.lock()
        if sp.nx_huge_page_disallowed:
            track_possible_nx_huge_page(kvm, sp, KVM_TDP_MMU)
        kvm.tdp_mmu_pages_lock.unlock()
    return True


def kvm_tdp_mmu_promote_mirror_spte(vcpu: "KvmVcpu", fault: KvmPageFault) -> int:
    """Not in any kernel: what a KVM that promoted S-EPT would have to do (reference §3.11,
    the seed's three reasons).  Under the *write* lock, replace the mirror table at
    ``fault.mirror_promotion_level`` by a huge leaf, letting the TDX side run RANGE.BLOCK,
    TRACK + kick and PAGE.PROMOTE first.  Returns 0 or the hook's -errno; on failure the
    table stays and the caller maps at the lower level instead."""
    kvm = vcpu.kvm
    kvm.mmu_lock.lockdep_assert_held_write()
    level = fault.mirror_promotion_level
    for iter in for_each_tdp_pte_min_level(kvm, vcpu.mirror_root, level, fault.gfn,
                                           fault.gfn + 1):
        if iter.level != level:
            continue
        if not is_shadow_present_pte(iter.old_spte) or is_last_spte(iter.old_spte, level):
            return 0  # someone else changed it meanwhile: nothing to promote
        new_spte = make_spte(kvm.masks, level=level, ad_disabled=iter.sp.role.ad_disabled,
                             pte_access=ACC_ALL, pfn=fault.pfn, old_spte=iter.old_spte,
                             prefetch=fault.prefetch, host_writable=fault.map_writable,
                             nx_huge_page_enabled=kvm.is_nx_huge_page_enabled(),
                             mt_mask=kvm.mt_mask,
                             always_dirty=kvm.profile.make_spte_always_dirty)
        ret = kvm.x86_ops.promote_external_spte(kvm, iter.gfn, level, new_spte)
        if ret:
            return ret
        # The module already freed its child page; KVM tears down the mirror table.  The
        # children were removed from S-EPT by PROMOTE itself, so skip remove_external_spte.
        old = kvm_tdp_mmu_write_spte(kvm, iter.sp, iter.index, iter.old_spte, new_spte, level)
        child = spte_to_child_pt(kvm, old, level)
        kvm.kvm_update_page_stats(level, 1)
        _drop_promoted_mirror_table(kvm, child)
        if kvm.tracer is not None:
            kvm.tracer(KvmTdpMmuSpteChanged(iter.as_id, iter.gfn, level, old, new_spte))
        return 0
    return 0


def _drop_promoted_mirror_table(kvm: "Kvm", sp: KvmMmuPage) -> None:
    """Account the mirror children a successful PAGE.PROMOTE merged and free the table."""
    tdp_mmu_unlink_sp(kvm, sp)
    for i in range(SPTE_ENT_PER_PAGE):
        old = sp.spt[i]
        sp.spt[i] = kvm.profile.FROZEN_SPTE
        if is_shadow_present_pte(old):
            kvm.kvm_update_page_stats(sp.role.level, -1)
    tdp_mmu_free_sp_rcu(kvm, sp)


# --- splitting huge pages ---------------------------------------------------------------------

def iter_cross_boundary(iter: TdpIter, start: int, end: int) -> bool:
    """HP-v3 ``iter_cross_boundary``: the huge SPTE is not wholly inside [start, end)."""
    return not (iter.gfn >= start and iter.gfn + KVM_PAGES_PER_HPAGE(iter.level) <= end)


def tdp_mmu_alloc_sp_for_split(kvm: "Kvm", iter: TdpIter) -> KvmMmuPage:
    """``tdp_mmu_alloc_sp_for_split``; HP-v3 also allocates the external page for mirror
    roots."""
    sp = tdp_mmu_alloc_sp(kvm)
    if is_mirror_sp(iter.sp):
        kvm_mmu_alloc_external_spt(kvm, sp)
    return sp


def tdp_mmu_split_huge_pages_root(kvm: "Kvm", root: KvmMmuPage, start: int, end: int,
                                  target_level: int, shared: bool,
                                  only_cross_boundary: bool = False) -> int:
    """``tdp_mmu_split_huge_pages_root``: pre-order, so 1G → 512×2M → 512×4K happens
    naturally.  Allocation drops and re-takes mmu_lock (``GFP_KERNEL_ACCOUNT`` may sleep),
    which the lock statistics see, as on a real host."""
    sp: Optional[KvmMmuPage] = None
    kvm.rcu.rcu_read_lock()
    for iter in for_each_tdp_pte_min_level(kvm, root, target_level + 1, start, end):
        while True:
            if tdp_mmu_iter_cond_resched(kvm, iter, False, shared):
                break
            if not is_shadow_present_pte(iter.old_spte) or not is_large_pte(iter.old_spte):
                break
            if only_cross_boundary and not iter_cross_boundary(iter, start, end):
                break
            if sp is None:
                kvm.rcu.rcu_read_unlock()
                _mmu_unlock(kvm, shared)
                sp = tdp_mmu_alloc_sp_for_split(kvm, iter)
                _mmu_lock(kvm, shared)
                kvm.rcu.rcu_read_lock()
                iter.yielded = True  # restart from the root at this gfn
                break
            tdp_mmu_init_child_sp(kvm, sp, iter)
            if tdp_mmu_split_huge_page(kvm, iter, sp, shared):
                if is_mirror_sp(root):
                    # The TDX hook refused (e.g. -EOPNOTSUPP under the shared lock);
                    # old_spte was not refreshed, so retrying would spin forever.
                    kvm.rcu.rcu_read_unlock()
                    tdp_mmu_free_sp(kvm, sp)
                    return -EBUSY
                continue  # cmpxchg lost: retry with the refreshed old_spte
            sp = None
            break
    kvm.rcu.rcu_read_unlock()
    if sp is not None:
        # A vCPU doing NX splitting may have won the race for the last huge page.
        tdp_mmu_free_sp(kvm, sp)
    return 0


def _mmu_lock(kvm: "Kvm", shared: bool) -> None:
    if shared:
        kvm.mmu_lock.read_lock()
    else:
        kvm.mmu_lock.write_lock()


def _mmu_unlock(kvm: "Kvm", shared: bool) -> None:
    if shared:
        kvm.mmu_lock.read_unlock()
    else:
        kvm.mmu_lock.write_unlock()


def kvm_tdp_mmu_try_split_huge_pages(kvm: "Kvm", slot: "KvmMemorySlot", start: int,
                                     end: int, target_level: int, shared: bool) -> None:
    """``kvm_tdp_mmu_try_split_huge_pages``: eager splitting for dirty logging."""
    kvm.mmu_lock.assert_held(shared)
    for root in for_each_tdp_mmu_root_yield_safe(kvm, KVM_VALID_ROOTS):
        if tdp_mmu_split_huge_pages_root(kvm, root, start, end, target_level, shared):
            break


def kvm_tdp_mmu_gfn_range_split_cross_boundary_leafs(kvm: "Kvm", start: int, end: int,
                                                     attr_filter: int, shared: bool) -> int:
    """HP-v3 ``kvm_tdp_mmu_gfn_range_split_cross_boundary_leafs``: split only the huge
    leaves that stick out of [start, end), so pages outside keep their mappings."""
    types = kvm_gfn_range_filter_to_root_types(kvm, attr_filter)
    for root in for_each_tdp_mmu_root_yield_safe(kvm, types):
        ret = tdp_mmu_split_huge_pages_root(kvm, root, start, end, PG_LEVEL_4K, shared,
                                            only_cross_boundary=True)
        if ret:
            return ret
    return 0


# --- dirty logging and huge-page recovery (direct roots only) ------------------------------

def wrprot_gfn_range(kvm: "Kvm", root: KvmMmuPage, start: int, end: int,
                     min_level: int) -> bool:
    """``wrprot_gfn_range``: clear W on leaves at or above ``min_level`` so writes fault
    (and get logged); may yield.  Returns whether a flush is needed."""
    spte_set = False
    kvm.rcu.rcu_read_lock()
    for iter in for_each_tdp_pte_min_level(kvm, root, min_level, start, end):
        while not tdp_mmu_iter_cond_resched(kvm, iter, False, True):
            if (not is_shadow_present_pte(iter.old_spte)
                    or not is_last_spte(iter.old_spte, iter.level)
                    or not is_writable_pte(iter.old_spte)):
                break
            if not tdp_mmu_set_spte_atomic(kvm, iter, iter.old_spte & ~PT_WRITABLE_MASK):
                spte_set = True
                break
    kvm.rcu.rcu_read_unlock()
    return spte_set


def kvm_tdp_mmu_wrprot_slot(kvm: "Kvm", slot: "KvmMemorySlot", min_level: int) -> bool:
    """``kvm_tdp_mmu_wrprot_slot``: every valid root (only direct roots can map a slot
    that logs dirty pages)."""
    kvm.mmu_lock.lockdep_assert_held_read()
    spte_set = False
    for root in for_each_tdp_mmu_root_yield_safe(kvm, KVM_DIRECT_ROOTS):
        spte_set |= wrprot_gfn_range(kvm, root, slot.base_gfn, slot.end_gfn, min_level)
    return spte_set


def tdp_mmu_need_write_protect(kvm: "Kvm", sp: KvmMmuPage) -> bool:
    """``tdp_mmu_need_write_protect``: without A/D bits dirty logging must clear W."""
    return sp.role.ad_disabled or not kvm.kvm_ad_enabled()


def clear_dirty_gfn_range(kvm: "Kvm", root: KvmMmuPage, start: int, end: int) -> bool:
    """``clear_dirty_gfn_range`` (read lock, PML): clear the D bit (W without A/D bits)
    of every leaf in [start, end) so the CPU logs the next write; may yield."""
    dbit = (PT_WRITABLE_MASK if tdp_mmu_need_write_protect(kvm, root)
            else kvm.masks.shadow_dirty_mask)
    spte_set = False
    kvm.rcu.rcu_read_lock()
    for iter in for_each_tdp_pte(kvm, root, start, end):
        while (is_shadow_present_pte(iter.old_spte) and is_last_spte(iter.old_spte, iter.level)
               and not tdp_mmu_iter_cond_resched(kvm, iter, False, True)):
            if not iter.old_spte & dbit:
                break
            if not tdp_mmu_set_spte_atomic(kvm, iter, iter.old_spte & ~dbit):
                spte_set = True
                break
    kvm.rcu.rcu_read_unlock()
    return spte_set


def kvm_tdp_mmu_clear_dirty_slot(kvm: "Kvm", slot: "KvmMemorySlot") -> bool:
    """``kvm_tdp_mmu_clear_dirty_slot``: returns whether a flush is needed."""
    kvm.mmu_lock.lockdep_assert_held_read()
    spte_set = False
    for root in for_each_tdp_mmu_root_yield_safe(kvm, KVM_DIRECT_ROOTS):
        spte_set |= clear_dirty_gfn_range(kvm, root, slot.base_gfn, slot.end_gfn)
    return spte_set


def clear_dirty_pt_masked(kvm: "Kvm", root: KvmMmuPage, gfn: int, mask: int,
                          wrprot: bool) -> None:
    """``clear_dirty_pt_masked`` (write lock): for each 4K leaf whose bit is set in the
    64-bit ``mask`` starting at ``gfn``, clear D — or W when ``wrprot`` (no PML) or
    without A/D bits.  Traced directly: the SPTE changes outside handle_changed_spte."""
    dbit = (PT_WRITABLE_MASK if wrprot or tdp_mmu_need_write_protect(kvm, root)
            else kvm.masks.shadow_dirty_mask)
    kvm.mmu_lock.lockdep_assert_held_write()
    kvm.rcu.rcu_read_lock()
    lowest = (mask & -mask).bit_length() - 1  # __ffs(mask)
    for iter in for_each_tdp_pte(kvm, root, gfn + lowest, gfn + 64):
        if not is_shadow_present_pte(iter.old_spte) or not is_last_spte(iter.old_spte, iter.level):
            continue
        if not mask:
            break
        bit = 1 << (iter.gfn - gfn)
        if iter.level > PG_LEVEL_4K or not mask & bit:
            continue
        mask &= ~bit
        if not iter.old_spte & dbit:
            continue
        iter.old_spte = tdp_mmu_clear_spte_bits(kvm, iter, dbit)
        if kvm.tracer is not None:
            kvm.tracer(KvmTdpMmuSpteChanged(iter.as_id, iter.gfn, iter.level, iter.old_spte,
                                            iter.old_spte & ~dbit))
    kvm.rcu.rcu_read_unlock()


def kvm_tdp_mmu_clear_dirty_pt_masked(kvm: "Kvm", slot: "KvmMemorySlot", gfn: int, mask: int,
                                      wrprot: bool) -> None:
    """``kvm_tdp_mmu_clear_dirty_pt_masked``: every valid (direct) root."""
    for root in list(kvm.tdp_mmu_roots):
        if tdp_mmu_root_match(kvm, root, KVM_DIRECT_ROOTS):
            clear_dirty_pt_masked(kvm, root, gfn, mask, wrprot)


def write_protect_gfn(kvm: "Kvm", root: KvmMmuPage, gfn: int, min_level: int) -> bool:
    """``write_protect_gfn`` (write lock): clear W *and* MMU-writable on the leaf mapping
    gfn at or above ``min_level``, so the fast path cannot make it writable again."""
    spte_set = False
    kvm.rcu.rcu_read_lock()
    for iter in for_each_tdp_pte_min_level(kvm, root, min_level, gfn, gfn + 1):
        if not is_shadow_present_pte(iter.old_spte) or not is_last_spte(iter.old_spte, iter.level):
            continue
        new_spte = iter.old_spte & ~(PT_WRITABLE_MASK | kvm.masks.shadow_mmu_writable_mask)
        if new_spte == iter.old_spte:
            break
        tdp_mmu_iter_set_spte(kvm, iter, new_spte)
        spte_set = True
    kvm.rcu.rcu_read_unlock()
    return spte_set


def kvm_tdp_mmu_write_protect_gfn(kvm: "Kvm", slot: "KvmMemorySlot", gfn: int,
                                  min_level: int) -> bool:
    """``kvm_tdp_mmu_write_protect_gfn``: every valid (direct) root."""
    kvm.mmu_lock.lockdep_assert_held_write()
    spte_set = False
    for root in list(kvm.tdp_mmu_roots):
        if tdp_mmu_root_match(kvm, root, KVM_DIRECT_ROOTS):
            spte_set |= write_protect_gfn(kvm, root, gfn, min_level)
    return spte_set


def tdp_mmu_make_huge_spte(kvm: "Kvm", parent: TdpIter) -> Optional[int]:
    """``tdp_mmu_make_huge_spte``: build a huge SPTE at ``parent.level`` from the first
    present leaf anywhere below it (``tdp_root_for_each_leaf_pte`` over the parent's
    range, so an empty first sub-table does not stop the search); None (-ENOENT) when
    the table maps nothing."""
    root = spte_to_child_sp(kvm, parent.old_spte)
    start = parent.gfn
    end = start + KVM_PAGES_PER_HPAGE(parent.level)
    for iter in for_each_tdp_pte(kvm, root, start, end):
        if is_shadow_present_pte(iter.old_spte) and is_last_spte(iter.old_spte, iter.level):
            return make_huge_spte(kvm.masks, iter.old_spte, parent.level,
                                  kvm.is_nx_huge_page_enabled())
    return None


def kvm_tdp_mmu_recover_huge_pages(kvm: "Kvm", slot: "KvmMemorySlot") -> None:
    """``kvm_tdp_mmu_recover_huge_pages`` / ``recover_huge_pages_range`` (read lock):
    after dirty logging is disabled, replace tables by huge leaves where allowed.  Mirror
    roots never get here: guest_memfd slots cannot log dirty pages."""
    kvm.mmu_lock.lockdep_assert_held_read()
    if kvm.WARN_ON_ONCE(slot.kvm_slot_dirty_track_enabled(), "recover_huge_pages_range",
                        "slot is dirty-logged"):
        return
    flush = False
    for root in for_each_tdp_mmu_root_yield_safe(kvm, KVM_DIRECT_ROOTS):
        kvm.rcu.rcu_read_lock()
        for iter in for_each_tdp_pte_min_level(kvm, root, PG_LEVEL_2M, slot.base_gfn,
                                               slot.end_gfn):
            if tdp_mmu_iter_cond_resched(kvm, iter, flush, True):
                flush = False
                continue
            flush |= _recover_one(kvm, slot, iter)
        kvm.rcu.rcu_read_unlock()
    if flush:
        kvm.kvm_flush_remote_tlbs_memslot(slot)


def _recover_one(kvm: "Kvm", slot: "KvmMemorySlot", iter: TdpIter) -> bool:
    """One step of ``recover_huge_pages_range``; returns whether a table was replaced."""
    while True:
        if iter.level > KVM_MAX_HUGEPAGE_LEVEL or not is_shadow_present_pte(iter.old_spte):
            return False
        if is_last_spte(iter.old_spte, iter.level):
            return False
        if iter.gfn < slot.base_gfn or iter.gfn >= slot.end_gfn:
            return False
        if kvm_mmu_max_mapping_level(kvm, None, slot, iter.gfn) < iter.level:
            return False
        huge_spte = tdp_mmu_make_huge_spte(kvm, iter)
        if huge_spte is None:
            return False
        if not tdp_mmu_set_spte_atomic(kvm, iter, huge_spte):
            return True


def kvm_tdp_mmu_zap_collapsible_sptes(kvm: "Kvm", slot: "KvmMemorySlot") -> None:
    """``kvm_tdp_mmu_zap_collapsible_sptes`` / ``zap_collapsible_spte_range`` (read lock,
    up to v6.12): zap every table that a huge leaf could replace; the next faults map the
    huge page.  Leaves are never zapped: had a leaf been collapsible, its parent would
    have been zapped instead of stepping down."""
    kvm.mmu_lock.lockdep_assert_held_read()
    for root in for_each_tdp_mmu_root_yield_safe(kvm, KVM_DIRECT_ROOTS):
        kvm.rcu.rcu_read_lock()
        for iter in for_each_tdp_pte_min_level(kvm, root, PG_LEVEL_2M, slot.base_gfn,
                                               slot.end_gfn):
            if tdp_mmu_iter_cond_resched(kvm, iter, False, True):
                continue
            while (iter.level <= KVM_MAX_HUGEPAGE_LEVEL
                   and is_shadow_present_pte(iter.old_spte)
                   and not is_last_spte(iter.old_spte, iter.level)
                   and slot.base_gfn <= iter.gfn < slot.end_gfn
                   and kvm_mmu_max_mapping_level(kvm, None, slot, iter.gfn) >= iter.level):
                if not tdp_mmu_zap_spte_atomic(kvm, iter):  # it flushed the TLB itself
                    break
        kvm.rcu.rcu_read_unlock()


def kvm_tdp_mmu_zap_sp(kvm: "Kvm", sp: KvmMmuPage) -> bool:
    """``kvm_tdp_mmu_zap_sp`` (up to v6.17, write lock): zap the parent SPTE pointing to
    ``sp``'s table; tearing the table down untracks ``sp`` (``tdp_mmu_unlink_sp``)."""
    kvm.mmu_lock.lockdep_assert_held_write()
    if kvm.WARN_ON_ONCE(sp.parent is None, "kvm_tdp_mmu_zap_sp", "root SP"):
        return False
    old_spte = kvm_tdp_mmu_read_spte(kvm, sp.parent, sp.parent_index)
    if kvm.WARN_ON_ONCE(not is_shadow_present_pte(old_spte), "kvm_tdp_mmu_zap_sp",
                        "parent SPTE not present"):
        return False
    tdp_mmu_set_spte(kvm, sp.role.smm, sp.parent, sp.parent_index, old_spte,
                     kvm.profile.SHADOW_NONPRESENT_VALUE, sp.gfn, sp.role.level + 1)
    return True


def kvm_tdp_mmu_zap_possible_nx_huge_page(kvm: "Kvm", sp: KvmMmuPage) -> bool:
    """``kvm_tdp_mmu_zap_possible_nx_huge_page`` (v6.18+, read lock): zap the parent SPTE
    only if it still points to ``sp``'s table."""
    kvm.mmu_lock.lockdep_assert_held_read()
    if kvm.WARN_ON_ONCE(sp.parent is None, "kvm_tdp_mmu_zap_possible_nx_huge_page", "root SP"):
        return False
    iter = TdpIter.at(kvm, sp.parent, sp.parent_index, sp.role.level + 1, sp.gfn)
    if spte_to_child_pt(kvm, iter.old_spte, iter.level) is not sp:
        return False
    if tdp_mmu_set_spte_atomic(kvm, iter, kvm.profile.SHADOW_NONPRESENT_VALUE):
        kvm.WARN_ON_ONCE(spte_to_child_pt(kvm, iter.old_spte, iter.level) is sp,
                         "kvm_tdp_mmu_zap_possible_nx_huge_page", "zap failed")
        return False
    return True
