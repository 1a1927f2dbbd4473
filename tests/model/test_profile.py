"""Kernel profiles: each field is read where the kernel decides, and changes the outcome."""

from __future__ import annotations

import dataclasses
import io

import pytest

from tdpsim.model.mmu_internal import POISON_FREE_SPTE
from kvm_helpers import fault, force_4k, leaf_at, table_4k_of, unforce_4k

from tdpsim.model import spte as S
from tdpsim.model.profile import DEFAULT_PROFILE
from tdpsim.model.profile import (
    DEFAULT_PROFILE,
    KERNEL_6_1,
    KERNEL_6_12,
    KERNEL_6_18_HP_V3,
    PROFILES,
    UnknownKernelProfile,
    get_profile,
)
from tdpsim.model.vmm import VmConfig, create_vm
from tdpsim.trace.emit import TraceEmitter
from tdpsim.trace.replay import ReplayOptions, replay_trace

EPT = S.kvm_mmu_set_ept_masks(DEFAULT_PROFILE)  # the masks kvm_intel installs


def test_named_profiles():
    assert list(PROFILES) == ["6.1", "6.12", "6.18+hp-v3"]
    assert DEFAULT_PROFILE is KERNEL_6_18_HP_V3 is get_profile("6.18+hp-v3")
    assert KERNEL_6_1.SHADOW_NONPRESENT_VALUE == 0 and KERNEL_6_1.FROZEN_SPTE == 0x5A0
    assert KERNEL_6_12.SHADOW_NONPRESENT_VALUE == 1 << 63
    assert KERNEL_6_12.FROZEN_SPTE == 0x80000000000005A0
    with pytest.raises(UnknownKernelProfile, match=r"'5\.4'; valid: 6\.1, 6\.12, 6\.18\+hp-v3"):
        get_profile("5.4")
    with pytest.raises(dataclasses.FrozenInstanceError):
        KERNEL_6_1.FROZEN_SPTE = 0  # type: ignore[misc]


@pytest.mark.parametrize("profile", [KERNEL_6_1, KERNEL_6_12])
def test_special_values_are_never_present_nor_mmio(profile):
    for value in (profile.SHADOW_NONPRESENT_VALUE, profile.FROZEN_SPTE):
        assert not S.is_shadow_present_pte(value)
        assert not S.is_mmio_spte(EPT, S.VMX_EPT_MISCONFIG_WX_VALUE, value)
    assert S.is_frozen_spte(profile, profile.FROZEN_SPTE)
    assert not S.is_frozen_spte(profile, profile.SHADOW_NONPRESENT_VALUE)
    assert S.decode_spte(profile, EPT, profile.FROZEN_SPTE, 1) == "FROZEN_SPTE"
    assert S.decode_spte(profile, EPT, profile.SHADOW_NONPRESENT_VALUE, 1) == \
        "SHADOW_NONPRESENT_VALUE"


def _promote_over_4k_table(profile):
    """Four 4K leaves in a 2M frame, then a 2M fault replaces their table (the freeze)."""
    kvm = create_vm(VmConfig(mem_bytes=16 << 20, profile=profile))
    root = kvm.vcpus[0].root
    force_4k(kvm, 0x200)
    for gfn in (0x200, 0x201, 0x202, 0x203):
        fault(kvm, gfn)
    pt = table_4k_of(kvm, root, 0x200)
    unforce_4k(kvm, 0x200)
    kvm.rcu.rcu_read_lock()  # a concurrent RCU reader keeps the removed table unfreed
    fault(kvm, 0x207)
    return kvm, root, pt


@pytest.mark.parametrize("profile", [KERNEL_6_1, KERNEL_6_12])
def test_fresh_tables_hold_the_profiles_nonpresent_value(profile):
    """SHADOW_NONPRESENT_VALUE: tdp_mmu_alloc_sp's table and the zap both use it."""
    kvm, root, pt = _promote_over_4k_table(profile)
    assert leaf_at(kvm, root, 0x400) == (2, profile.SHADOW_NONPRESENT_VALUE)
    assert root.spt[1] == profile.SHADOW_NONPRESENT_VALUE
    # handle_removed_pt froze the 4K table with the profile's FROZEN_SPTE.
    assert set(pt.spt) == {profile.FROZEN_SPTE}
    kvm.rcu.rcu_read_unlock()  # the grace period ends: freed and poisoned
    assert set(pt.spt) == {POISON_FREE_SPTE}
    assert kvm.stat.pages == [0, 1, 0]
    assert not kvm.warnings and not kvm.bugs


def _traced_run(profile) -> str:
    buf = io.StringIO()
    em = TraceEmitter(buf.write)
    kvm = create_vm(VmConfig(mem_bytes=16 << 20, profile=profile), tracer=em)
    vcpu = kvm.vcpus[0]
    force_4k(kvm, 0x200)
    with em.task(vcpu=0):
        for gfn in (0x200, 0x201):
            fault(kvm, gfn)
    unforce_4k(kvm, 0x200)
    with em.task(vcpu=0):
        fault(kvm, 0x207)
    assert vcpu.stat.pf_fixed == 3
    return buf.getvalue()


def test_pre_6_10_trace_replays_clean_only_under_its_profile():
    """FROZEN_SPTE and SHADOW_NONPRESENT_VALUE as the replayer reads them: a 6.1 trace
    (installs over 0, freezes to 0x5a0) is clean under 6.1 and not under the default."""
    text = _traced_run(KERNEL_6_1)
    assert "old_spte 0 new_spte" in text and "new_spte 5a0" in text
    ok = replay_trace(io.StringIO(text), ReplayOptions(profile=KERNEL_6_1))
    assert ok.anomaly_counts == {} and ok.pages == [0, 1, 0]
    bad = replay_trace(io.StringIO(text), ReplayOptions(profile=KERNEL_6_18_HP_V3))
    assert bad.anomaly_counts.get("old_spte_mismatch", 0) > 0


@pytest.mark.parametrize("profile,sve", [(KERNEL_6_1, 0), (KERNEL_6_12, 1 << 63)])
def test_ept_suppress_ve_in_present_mask(profile, sve):
    """ept_suppress_ve_in_present_mask: bit 63 in every present EPT SPTE and in the MMIO
    mask from 6.10; a 6.1 EPT leaf and table have it clear."""
    kvm = create_vm(VmConfig(mem_bytes=16 << 20, host_page_level=1, profile=profile))
    fault(kvm, 0x10)
    root = kvm.vcpus[0].root
    level, spte = leaf_at(kvm, root, 0x10)
    assert level == 1 and spte & (1 << 63) == sve
    assert root.spt[0] & (1 << 63) == sve  # the table entry too (make_nonleaf_spte)
    assert kvm.masks.shadow_mmio_mask == S.VMX_EPT_RWX_MASK | sve


def _dirty_log_cycle(profile):
    """A 2M leaf, dirty logging on (eager split: 512 4K leaves) and off again."""
    from tdpsim.model.kvm_main import kvm_mmu_slot_apply_flags
    from tdpsim.model.memslot import KVM_MEM_LOG_DIRTY_PAGES
    buf = io.StringIO()
    kvm = create_vm(VmConfig(mem_bytes=16 << 20, profile=profile), tracer=TraceEmitter(buf.write))
    slot = kvm.memslots[0]
    fault(kvm, 0x200)
    kvm_mmu_slot_apply_flags(kvm, slot, KVM_MEM_LOG_DIRTY_PAGES)
    assert kvm.stat.pages == [512, 0, 0]
    flushes = kvm.stat.remote_tlb_flush_requests
    kvm_mmu_slot_apply_flags(kvm, slot, 0)
    return kvm, kvm.stat.remote_tlb_flush_requests - flushes, buf.getvalue()


def test_recover_huge_pages_in_place():
    """recover_huge_pages_in_place: 6.13+ replaces the table by a 2M leaf (one batched
    flush); up to 6.12 the table is zapped (one flush per zap) and refaulted later."""
    kvm, flushes, _ = _dirty_log_cycle(KERNEL_6_18_HP_V3)
    assert kvm.stat.pages == [0, 1, 0] and flushes == 1
    assert leaf_at(kvm, kvm.vcpus[0].root, 0x200)[0] == 2
    kvm, flushes, text = _dirty_log_cycle(KERNEL_6_12)
    assert kvm.stat.pages == [0, 0, 0] and flushes == 1
    assert leaf_at(kvm, kvm.vcpus[0].root, 0x200) == (2, KERNEL_6_12.SHADOW_NONPRESENT_VALUE)
    fault(kvm, 0x234)  # the guest's next access maps the huge page again
    assert kvm.stat.pages == [0, 1, 0]
    assert not kvm.warnings and not kvm.bugs


@pytest.mark.parametrize("profile,zap_line", [
    # 6.10+: the table goes straight to non-present, after the write.
    (KERNEL_6_12, "level 2 old_spte {table:x} new_spte 8000000000000000"),
    # before: the freeze is what is traced; the write of 0 is silent.
    (KERNEL_6_1, "level 2 old_spte {table:x} new_spte 5a0"),
])
def test_zap_spte_atomic_handles_after_write(profile, zap_line):
    """zap_spte_atomic_handles_after_write: which value the zapped table is traced with,
    and the replayer (same profile) accepts either as a table zap."""
    kvm, _, text = _dirty_log_cycle(profile)
    lines = [ln for ln in text.splitlines() if "gfn 200 level 2 old_spte" in ln]
    table = int(lines[-1].split("old_spte ")[1].split()[0], 16)
    assert S.is_shadow_present_pte(table) and not S.is_last_spte(table, 2)
    assert lines[-1].endswith(zap_line.format(table=table))
    res = replay_trace(io.StringIO(text), ReplayOptions(profile=profile))
    assert res.anomaly_counts == {} and res.pages == kvm.stat.pages == [0, 0, 0]


@pytest.mark.parametrize("profile,changes", [
    (KERNEL_6_12, ["level 2 old_spte {huge:x} new_spte {table:x}"]),  # split in place
    (KERNEL_6_1, ["level 2 old_spte {huge:x} new_spte 5a0",           # zapped...
                  "level 2 old_spte 0 new_spte {table:x}"]),           # ...and relinked
])
def test_tdp_mmu_split_huge_page_on_fault(profile, changes):
    """tdp_mmu_split_huge_page_on_fault: a 4K write fault under a 2M leaf in a dirty-logged slot
    without eager splitting; 6.2+ splits it (512 leaves), 6.1 zaps it (one leaf)."""
    from tdpsim.model.kvm_main import kvm_mmu_slot_apply_flags
    from tdpsim.model.memslot import KVM_MEM_LOG_DIRTY_PAGES
    from tdpsim.model.policy import Policy
    buf = io.StringIO()
    kvm = create_vm(VmConfig(mem_bytes=16 << 20, profile=profile),
                    Policy(eager_page_split=False), tracer=TraceEmitter(buf.write))
    fault(kvm, 0x200)
    kvm_mmu_slot_apply_flags(kvm, kvm.memslots[0], KVM_MEM_LOG_DIRTY_PAGES)
    huge = leaf_at(kvm, kvm.vcpus[0].root, 0x200)[1]  # write-protected for logging
    mark = len(buf.getvalue())
    fault(kvm, 0x201)
    text = buf.getvalue()[mark:]
    l2 = [ln.split("level 2 ")[1] for ln in text.splitlines()
          if "kvm_tdp_mmu_spte_changed" in ln and " level 2 " in ln]
    pt = kvm.sp_by_pfn[S.spte_to_pfn(_l2_entry(kvm, 0x200))]
    want = [c.format(huge=huge, table=_l2_entry(kvm, 0x200)).split("level 2 ")[1] for c in changes]
    assert l2 == want
    assert kvm.stat.pages == [512 if profile.tdp_mmu_split_huge_page_on_fault else 1, 0, 0]
    assert sum(S.is_shadow_present_pte(s) for s in pt.spt) == kvm.stat.pages[0]
    res = replay_trace(io.StringIO(buf.getvalue()), ReplayOptions(profile=profile))
    assert res.anomaly_counts == {} and res.pages == kvm.stat.pages


def _l2_entry(kvm, gfn):
    """The 2M-level SPTE above gfn in the direct root."""
    sp = kvm.vcpus[0].root
    for level in range(sp.role.level, 2, -1):
        sp = kvm.sp_by_pfn[S.spte_to_pfn(sp.spt[S.SPTE_INDEX(gfn, level)])]
    return sp.spt[S.SPTE_INDEX(gfn, 2)]


def test_tdx_vm_type():
    """tdx_vm_type: KVM_CREATE_VM(KVM_X86_TDX_VM) fails before v6.16."""
    from tdpsim.model.tdx import create_td
    create_td(VmConfig(tdx=True, mem_bytes=8 << 20, profile=KERNEL_6_18_HP_V3))
    for profile in (KERNEL_6_1, KERNEL_6_12):
        with pytest.raises(ValueError, match=f"kernel {profile.name} has no KVM_X86_TDX_VM"):
            create_td(VmConfig(tdx=True, mem_bytes=8 << 20, profile=profile))


@pytest.mark.parametrize("profile,first_level", [(KERNEL_6_12, 1), (KERNEL_6_1, 3)])
def test_tdp_mmu_zap_root_4k_first(profile, first_level):
    """tdp_mmu_zap_root_4k_first: a zapped root is torn down from 4K up since v6.9;
    6.1 zaps the 1G entries first and recurses into their tables."""
    from tdpsim.model.kvm_main import kvm_mmu_zap_all_fast
    buf = io.StringIO()
    kvm = create_vm(VmConfig(mem_bytes=16 << 20, host_page_level=1, profile=profile),
                    tracer=TraceEmitter(buf.write))
    fault(kvm, 0x10)
    mark = len(buf.getvalue())
    kvm_mmu_zap_all_fast(kvm)
    zaps = [ln for ln in buf.getvalue()[mark:].splitlines() if "kvm_tdp_mmu_spte_changed" in ln]
    assert f" level {first_level} old_spte " in zaps[0]
    assert kvm.stat.pages == [0, 0, 0]


@pytest.mark.parametrize("profile,leftover", [(KERNEL_6_12, True), (KERNEL_6_1, False)])
def test_fast_page_fault_error_code_bits(profile, leftover):
    """fast_page_fault_error_code_bits: 6.12 traces the u64 error code (the high
    PFERR_GUEST_FINAL_MASK bit prints as a hex leftover), 6.1 its low 32 bits."""
    from tdpsim.model.kvm_main import kvm_mmu_slot_apply_flags
    from tdpsim.model.memslot import KVM_MEM_LOG_DIRTY_PAGES
    buf = io.StringIO()
    kvm = create_vm(VmConfig(mem_bytes=16 << 20, host_page_level=1, profile=profile),
                    tracer=TraceEmitter(buf.write))
    fault(kvm, 0x10)
    kvm_mmu_slot_apply_flags(kvm, kvm.memslots[0], KVM_MEM_LOG_DIRTY_PAGES)
    fault(kvm, 0x10, present=True)  # the write-protected page: fast_page_fault fixes it
    (line,) = [ln for ln in buf.getvalue().splitlines() if "fast_page_fault:" in ln]
    assert ("|0x100000000 sptep" in line) is leftover and "fixed 1" in line


@pytest.mark.parametrize("profile,every,reads,writes", [
    (KERNEL_6_18_HP_V3, 0, 1, 0), (KERNEL_6_18_HP_V3, 1, 4, 0),
    (KERNEL_6_12, 0, 0, 1), (KERNEL_6_12, 1, 0, 4), (KERNEL_6_1, 1, 0, 4)])
def test_recover_nx_huge_pages_under_read_lock(profile, every, reads, writes):
    """recover_nx_huge_pages_under_read_lock: v6.18 recovers under mmu_lock for read
    (cond_resched_rwlock_read retakes it for read); before, for write
    (kvm_tdp_mmu_zap_sp, cond_resched_rwlock_write).  Same three tables zapped."""
    from tdpsim.model.kvm_main import kvm_recover_nx_huge_pages
    from tdpsim.model.policy import Policy
    kvm = create_vm(VmConfig(profile=profile), Policy(nx_huge_pages=True, resched_every=every))
    for frame in range(1, 4):
        fault(kvm, frame * 512, exec=True, write=False)
    assert kvm.stat.nx_lpage_splits == 3 and kvm.stat.pages == [3, 0, 0]
    r0, w0 = kvm.mmu_lock.read_acquisitions, kvm.mmu_lock.write_acquisitions
    assert kvm_recover_nx_huge_pages(kvm, ratio=1) == 3
    assert kvm.mmu_lock.read_acquisitions - r0 == reads
    assert kvm.mmu_lock.write_acquisitions - w0 == writes
    assert kvm.stat.nx_lpage_splits == 0 and kvm.stat.pages == [0, 0, 0]
    assert not any(kvm.possible_nx_huge_pages) and not kvm.warnings and not kvm.bugs


def _invalidate_begin(kvm, gfn):
    from tdpsim.model.kvm_main import kvm_mmu_invalidate_begin, kvm_mmu_invalidate_range_add
    kvm.mmu_lock.write_lock()
    kvm_mmu_invalidate_begin(kvm)
    kvm_mmu_invalidate_range_add(kvm, gfn, gfn + 1)
    kvm.mmu_lock.write_unlock()


@pytest.mark.parametrize("profile,locked_reads", [
    (KERNEL_6_18_HP_V3, 0), (KERNEL_6_12, 0), (KERNEL_6_1, 1)])
def test_faultin_pfn_retry_gfn_unsafe_before_the_pfn(profile, locked_reads):
    """faultin_pfn_retry_gfn_unsafe: since v6.8 a fault on a gfn under invalidation
    retries before taking mmu_lock; 6.1 takes it and is_page_fault_stale() retries."""
    from tdpsim.model.mmu_fault import RET_PF_RETRY
    kvm = create_vm(VmConfig(profile=profile))
    _invalidate_begin(kvm, 0x10)
    r0 = kvm.mmu_lock.read_acquisitions
    assert fault(kvm, 0x10) == RET_PF_RETRY
    assert kvm.mmu_lock.read_acquisitions - r0 == locked_reads
    assert kvm.stat.pages == [0, 0, 0]


@pytest.mark.parametrize("profile,locked_reads", [(KERNEL_6_12, 0), (KERNEL_6_1, 1)])
def test_faultin_pfn_retry_gfn_unsafe_after_the_pfn(monkeypatch, profile, locked_reads):
    """The second check: an invalidation that begins while the pfn is looked up is caught
    before mmu_lock since v6.8 (same commit); 6.1 only sees it under the lock."""
    from tdpsim.model.mmu_fault import RET_PF_RETRY
    from tdpsim.model.memslot import KvmMemorySlot
    kvm = create_vm(VmConfig(profile=profile))
    lookup = KvmMemorySlot.gfn_to_hva

    def gfn_to_hva_racing_an_invalidation(slot, gfn):
        _invalidate_begin(kvm, gfn)
        return lookup(slot, gfn)
    monkeypatch.setattr(KvmMemorySlot, "gfn_to_hva", gfn_to_hva_racing_an_invalidation)
    r0 = kvm.mmu_lock.read_acquisitions
    assert fault(kvm, 0x10) == RET_PF_RETRY
    assert kvm.mmu_lock.read_acquisitions - r0 == locked_reads
    assert kvm.stat.pages == [0, 0, 0]


@pytest.mark.parametrize("profile,ret,dirty,set_sptes", [
    (KERNEL_6_18_HP_V3, "RET_PF_SPURIOUS", True, 0),   # returns before make_spte
    (KERNEL_6_12, "RET_PF_FIXED", False, 1)])          # rewrites the child, D dropped
def test_tdp_mmu_map_spurious_if_access_allowed(profile, ret, dirty, set_sptes):
    """tdp_mmu_map_spurious_if_access_allowed: with NX huge pages, an exec fault under a
    2M NX leaf splits it in place; the 4K child is already executable (make_small_spte).
    v6.13+ stops there; 6.12 runs make_spte over it and installs the result (over a
    writable leaf make_spte skips D, 2867eb782cf7), as the 6.12 oracle row
    nx-force-read-then-exec records."""
    from tdpsim.model import mmu_internal as MI
    from tdpsim.model.policy import Policy
    buf = io.StringIO()
    kvm = create_vm(VmConfig(mem_bytes=16 << 20, profile=profile), Policy(nx_huge_pages=True),
                    tracer=TraceEmitter(buf.write))
    fault(kvm, 0x200, write=False)
    assert kvm.stat.pages == [0, 1, 0]
    mark = len(buf.getvalue())
    assert fault(kvm, 0x200, write=False, exec=True, present=True) == getattr(MI, ret)
    level, child = leaf_at(kvm, kvm.vcpus[0].root, 0x200)
    assert level == 1 and S.is_executable_pte(kvm.masks, child)
    assert bool(child & kvm.masks.shadow_dirty_mask) is dirty
    assert buf.getvalue()[mark:].count("kvm_mmu_set_spte:") == set_sptes
    assert kvm.stat.pages == [512, 0, 0] and kvm.stat.nx_lpage_splits == 1
    assert (kvm.vcpus[0].stat.pf_spurious, kvm.vcpus[0].stat.pf_fixed) == (
        (1, 1) if ret == "RET_PF_SPURIOUS" else (0, 2))
    assert not kvm.warnings and not kvm.bugs


@pytest.mark.parametrize("profile,warned,flushes", [
    (KERNEL_6_18_HP_V3.with_(tdp_mmu_map_spurious_if_access_allowed=False), True, 1),
    (KERNEL_6_12, False, 0)])
def test_tdp_mmu_map_warn_leaf_change_flush(profile, warned, flushes):
    """tdp_mmu_map_warn_leaf_change_flush: a !map_writable read fault over a writable leaf
    (the race 386d69f9f29b describes: fast GUP fails to map the page writable; here the
    slot's READONLY flag stands in for it).  Without the early spurious check, v6.13's
    form WARNs and flushes as the leaf loses MMU-writable; 6.12 installs it silently."""
    from tdpsim.model.memslot import KVM_MEM_READONLY
    kvm = create_vm(VmConfig(mem_bytes=16 << 20, host_page_level=1, profile=profile))
    fault(kvm, 0x10)
    assert S.is_mmu_writable_spte(kvm.masks, leaf_at(kvm, kvm.vcpus[0].root, 0x10)[1])
    kvm.memslots[0].flags |= KVM_MEM_READONLY
    before = kvm.stat.remote_tlb_flush_requests
    fault(kvm, 0x10, write=False, present=True)
    assert not S.is_mmu_writable_spte(kvm.masks, leaf_at(kvm, kvm.vcpus[0].root, 0x10)[1])
    assert bool(kvm.warnings) is warned
    assert kvm.stat.remote_tlb_flush_requests - before == flushes
