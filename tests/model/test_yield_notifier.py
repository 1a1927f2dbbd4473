"""tdp_mmu_iter_cond_resched (Policy.resched_every) and the mmu_notifier's two halves
(kvm_mmu_notifier_invalidate_range_start/_end with mmu_invalidate_* and the fault's
mmu_invalidate_retry_gfn / is_page_fault_stale)."""

from __future__ import annotations

import pytest

from tdpsim.model import spte as S
from tdpsim.model.invariants import check_mmu_invariants
from tdpsim.model.kvm_main import (
    kvm_mmu_notifier_invalidate_range,
    kvm_mmu_notifier_invalidate_range_end,
    kvm_mmu_notifier_invalidate_range_start,
    kvm_mmu_slot_apply_flags,
    kvm_mmu_zap_all_fast,
)
from tdpsim.model.memslot import KVM_MEM_LOG_DIRTY_PAGES
from tdpsim.model.mmu_internal import RET_PF_FIXED, RET_PF_RETRY
from tdpsim.model.policy import Policy
from tdpsim.model.sched import LOCK_ACQUIRE
from tdpsim.model.spte import PG_LEVEL_2M, PG_LEVEL_4K
from tdpsim.model.vmm import RAM_HVA_BASE

from kvm_helpers import fault, leaf_at


# ---------------------------------------------------------------------------------- yielding
@pytest.mark.parametrize("every,flushes,write_locks", [(0, 1, 2), (1, 8, 9), (4, 2, 3)])
def test_zap_leafs_flushes_before_each_yield(make_vm, every, flushes, write_locks):
    """tdp_mmu_zap_leafs yields (may_block) with a pending flush: kvm_flush_remote_tlbs
    first, then cond_resched_rwlock_write.  Eight 4K leaves, need_resched every N checks
    after progress: N=1 yields at gfns 1..7 (7 flushes + the caller's), N=4 once."""
    kvm = make_vm(policy=Policy(resched_every=every), host_page_level=PG_LEVEL_4K)
    for gfn in range(8):
        assert fault(kvm, gfn) == RET_PF_FIXED
    assert kvm.stat.pages == [8, 0, 0]
    f0, w0 = kvm.stat.remote_tlb_flush_requests, kvm.mmu_lock.write_acquisitions
    kvm_mmu_notifier_invalidate_range(kvm, 0, 8)
    assert kvm.stat.pages == [0, 0, 0]
    assert kvm.stat.remote_tlb_flush_requests - f0 == flushes
    assert kvm.mmu_lock.write_acquisitions - w0 == write_locks


@pytest.mark.parametrize("every,flushes", [(0, 1), (1, 4)])
def test_split_wrprot_and_recovery_under_yielding(make_vm, every, flushes):
    """Eager split and write-protect restart from the last gfn after each yield and end
    in the same state; recovery flushes its pending promotions before every yield."""
    kvm = make_vm(policy=Policy(resched_every=every), mem_bytes=8 << 20)
    slot, root = kvm.memslots[0], kvm.vcpus[0].root
    for frame in range(4):
        fault(kvm, frame * 512)
    kvm_mmu_slot_apply_flags(kvm, slot, KVM_MEM_LOG_DIRTY_PAGES)
    assert kvm.stat.pages == [2048, 0, 0]
    for gfn in (0, 511, 1536, 2047):
        level, spte = leaf_at(kvm, root, gfn)
        assert level == PG_LEVEL_4K and not S.is_writable_pte(spte)
    f0 = kvm.stat.remote_tlb_flush_requests
    kvm_mmu_slot_apply_flags(kvm, slot, 0)
    assert kvm.stat.pages == [0, 4, 0]
    assert kvm.stat.remote_tlb_flush_requests - f0 == flushes
    assert check_mmu_invariants(kvm) == []


def test_zap_root_yields_and_still_zaps_everything(make_vm):
    kvm = make_vm(policy=Policy(resched_every=1), host_page_level=PG_LEVEL_4K)
    for gfn in (0, 1, 0x200, 0x3000):
        fault(kvm, gfn)
    r0 = kvm.mmu_lock.read_acquisitions
    kvm_mmu_zap_all_fast(kvm)
    assert kvm.stat.pages == [0, 0, 0] and kvm.tdp_mmu_pages == 0
    assert kvm.mmu_lock.read_acquisitions - r0 > 1  # the zap dropped the lock to yield


# --------------------------------------------------------------------------- mmu_notifier
def _hva(gfn):
    return RAM_HVA_BASE + (gfn << 12)


def test_notifier_halves_fault_in_the_window_retries(make_vm):
    """Between start and end mmu_lock is free, but a fault on a gfn inside the range
    retries (the lockless pre-check sees the in-progress range); outside it proceeds.
    end bumps mmu_invalidate_seq; then the fault maps what the host now has."""
    kvm = make_vm()
    slot = kvm.memslots[0]
    fault(kvm, 0x200)
    kvm_mmu_notifier_invalidate_range_start(kvm, _hva(0x200), _hva(0x400))
    assert (kvm.mmu_invalidate_in_progress, kvm.mmu_invalidate_seq) == (1, 0)
    assert (kvm.mmu_invalidate_range_start, kvm.mmu_invalidate_range_end) == (0x200, 0x400)
    assert kvm.stat.pages == [0, 0, 0] and not kvm.mmu_lock.writer
    assert fault(kvm, 0x201) == RET_PF_RETRY
    assert fault(kvm, 0x400) == RET_PF_FIXED
    slot.backing.split_frames.add(_hva(0x200) >> 21)  # the host splits its THP
    kvm_mmu_notifier_invalidate_range_end(kvm, _hva(0x200), _hva(0x400))
    assert (kvm.mmu_invalidate_in_progress, kvm.mmu_invalidate_seq) == (0, 1)
    assert kvm.mn_active_invalidate_count == 0
    assert fault(kvm, 0x201) == RET_PF_FIXED
    assert leaf_at(kvm, kvm.vcpus[0].root, 0x201)[0] == PG_LEVEL_4K
    assert check_mmu_invariants(kvm) == []


def _run_at_fault_lock(kvm, action):
    """Run ``action`` once, when the fault is about to take mmu_lock for read — after it
    snapshotted mmu_invalidate_seq and passed both lockless checks."""
    fired = []

    def hook(kind, key, write):
        if kind == LOCK_ACQUIRE and key == kvm.mmu_lock.key and not write and not fired:
            fired.append(True)
            action()
    kvm.sched.hook = hook


def test_invalidation_started_after_the_snapshot_hits_the_range_check(make_vm):
    """mmu_invalidate_retry_gfn: in progress and gfn in [range_start, range_end) → retry,
    although mmu_invalidate_seq has not moved yet."""
    kvm = make_vm()
    _run_at_fault_lock(kvm, lambda: kvm_mmu_notifier_invalidate_range_start(
        kvm, _hva(0x200), _hva(0x400)))
    assert fault(kvm, 0x201) == RET_PF_RETRY
    assert kvm.mmu_invalidate_seq == 0 and kvm.stat.pages == [0, 0, 0]


def test_invalidation_finished_after_the_snapshot_hits_the_sequence_check(make_vm):
    """is_page_fault_stale: a whole invalidation between the snapshot and the lock leaves
    in_progress at 0, but mmu_invalidate_seq moved → retry, nothing mapped."""
    kvm = make_vm()
    _run_at_fault_lock(kvm, lambda: kvm_mmu_notifier_invalidate_range(kvm, 0x200, 0x400))
    assert fault(kvm, 0x201) == RET_PF_RETRY
    assert kvm.mmu_invalidate_seq == 1 and kvm.stat.pages == [0, 0, 0]
    kvm.sched.hook = None
    assert fault(kvm, 0x201) == RET_PF_FIXED


def test_notifier_outside_memslots_takes_no_lock(make_vm):
    """kvm_handle_hva_range: no memslot in the hva range → no mmu_lock, no begin/end."""
    kvm = make_vm()
    w0 = kvm.mmu_lock.write_acquisitions
    kvm_mmu_notifier_invalidate_range_start(kvm, 1 << 20, 2 << 20)
    kvm_mmu_notifier_invalidate_range_end(kvm, 1 << 20, 2 << 20)
    assert kvm.mmu_lock.write_acquisitions == w0 and kvm.mmu_invalidate_seq == 0
    assert kvm.warnings == []


def test_stale_huge_leaf_over_a_split_host_page_is_reported(make_vm):
    kvm = make_vm()
    fault(kvm, 0x200)
    kvm.memslots[0].backing.split_frames.add(_hva(0x200) >> 21)  # no notifier: a bug
    assert check_mmu_invariants(kvm) == [
        "direct L2 gfn 0x200: leaf above the host mapping level 1 (stale after a host split)"]
    assert leaf_at(kvm, kvm.vcpus[0].root, 0x200)[0] == PG_LEVEL_2M


@pytest.mark.parametrize("every,flushes,reads", [(0, 1, 1), (1, 3, 4)])
def test_nx_recovery_flushes_and_drops_the_lock_when_it_must_resched(every, flushes, reads):
    """kvm_recover_nx_huge_pages: on need_resched() it flushes what it zapped
    (kvm_mmu_remote_flush_or_zap) and cond_resched_rwlock_read()s; with a check after
    each of the three zaps, every zap is flushed on its own and the lock retaken 3 times."""
    from tdpsim.model.kvm_main import kvm_recover_nx_huge_pages
    from tdpsim.model.vmm import VmConfig, create_vm
    kvm = create_vm(VmConfig(), Policy(nx_huge_pages=True, resched_every=every))
    for frame in range(1, 4):
        fault(kvm, frame * 512, exec=True, write=False)
    f0, r0 = kvm.stat.remote_tlb_flush_requests, kvm.mmu_lock.read_acquisitions
    assert kvm_recover_nx_huge_pages(kvm, ratio=1) == 3
    assert kvm.stat.remote_tlb_flush_requests - f0 == flushes
    assert kvm.mmu_lock.read_acquisitions - r0 == reads
