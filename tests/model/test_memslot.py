"""lpage_info, dirty logging and memory attributes decide the mapping level."""

import itertools

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from kvm_helpers import fault, leaf_at

from tdpsim.model import spte as S
from tdpsim.model.profile import DEFAULT_PROFILE
from tdpsim.model.kvm_main import (
    KvmUserError,
    hugepage_has_attrs,
    hugepage_test_mixed,
    kvm_mmu_slot_apply_flags,
    kvm_vm_set_mem_attributes,
)
from tdpsim.model.memslot import (
    KVM_LPAGE_MIXED_FLAG,
    KVM_MEM_LOG_DIRTY_PAGES,
    KVM_MEMORY_ATTRIBUTE_PRIVATE,
    GuestMemfd,
    HostBacking,
    RangeSet,
)
from tdpsim.model.mmu_internal import RET_PF_FIXED
from tdpsim.model.policy import Policy
from tdpsim.model.vmm import VmConfig, create_vm

EPT = S.kvm_mmu_set_ept_masks(DEFAULT_PROFILE)  # the masks kvm_intel installs


def test_misaligned_slot_disallows_head_and_tail_only(make_vm):
    # Slot [0x100, 0x900): head frame 0x0 and tail frame 0x800 stick out of it.
    kvm = make_vm(base_gfn=0x100, mem_bytes=0x800 << 12)
    slot = kvm.memslots[0]
    assert list(slot.lpage_info[2]) == [1, 0, 0, 0, 1]
    assert list(slot.lpage_info[3]) == [1]  # the only 1G frame sticks out on both ends
    root = kvm.vcpus[0].root
    for gfn, level in ((0x150, 1), (0x300, 2), (0x650, 2), (0x850, 1)):
        assert fault(kvm, gfn) == RET_PF_FIXED
        assert leaf_at(kvm, root, gfn)[0] == level, hex(gfn)
    assert kvm.stat.pages == [2, 2, 0]


def test_hva_misalignment_disallows_every_frame(make_vm):
    kvm = make_vm(hva_skew=0x1000)
    assert all(kvm.memslots[0].lpage_info[2])
    fault(kvm, 0x200)
    assert kvm.stat.pages == [1, 0, 0]


def test_host_backing_limits_level(make_vm):
    kvm = make_vm(host_page_level=1)  # THP off
    fault(kvm, 0x200)
    assert kvm.stat.pages == [1, 0, 0]
    kvm = make_vm(host_page_level=3, mem_bytes=2 << 30)  # hugetlb 1G
    fault(kvm, 0x12345)
    assert kvm.stat.pages == [0, 0, 1]
    # A host THP split of one 2M frame keeps that frame at 4K.
    kvm = make_vm()
    kvm.memslots[0].backing.split_frames.add(kvm.memslots[0].gfn_to_hva(0x400) >> 21)
    fault(kvm, 0x400)
    fault(kvm, 0x600)
    assert kvm.stat.pages == [1, 1, 0]


def test_dirty_logging_forces_4k_eager_split_and_recovery(make_vm):
    kvm = make_vm()
    slot = kvm.memslots[0]
    root = kvm.vcpus[0].root
    fault(kvm, 0x200)
    assert kvm.stat.pages == [0, 1, 0]
    flushes = kvm.stat.remote_tlb_flush_requests
    kvm_mmu_slot_apply_flags(kvm, slot, KVM_MEM_LOG_DIRTY_PAGES)
    # Eager split: the 2M leaf became 512 4K leaves, all write-protected.
    assert kvm.stat.pages == [512, 0, 0]
    level, spte = leaf_at(kvm, root, 0x3FF)
    assert level == 1 and not S.is_writable_pte(spte) and S.is_mmu_writable_spte(EPT, spte)
    assert kvm.stat.remote_tlb_flush_requests == flushes + 1
    # New faults in a logged slot map 4K and mark the page dirty.
    fault(kvm, 0x800)
    assert leaf_at(kvm, root, 0x800)[0] == 1
    assert slot.dirty_bitmap[0x800 >> 3] & 1
    # A write to a write-protected page is fixed by the fast path and logged.
    assert fault(kvm, 0x201, present=True) == RET_PF_FIXED
    assert kvm.vcpus[0].stat.pf_fast == 1 and slot.dirty_bitmap[0x201 >> 3] & 2
    # Disabling dirty logging recovers huge pages in place — also the 0x800 frame, built
    # from its only present leaf (make_huge_spte aligns the pfn down).
    kvm_mmu_slot_apply_flags(kvm, slot, 0)
    for gfn in (0x200, 0x800):
        level, spte = leaf_at(kvm, root, gfn)
        assert level == 2 and S.spte_to_pfn(spte) == slot.gfn_to_hva(gfn) >> 12
    assert kvm.stat.pages == [0, 2, 0]


def test_dirty_logging_refused_on_guest_memfd_slot(make_vm):
    kvm = make_vm(tdx=True)
    with pytest.raises(KvmUserError, match="guest_memfd"):
        kvm_mmu_slot_apply_flags(kvm, kvm.memslots[0], KVM_MEM_LOG_DIRTY_PAGES)


def test_attribute_conversion_sets_and_clears_mixed(make_vm):
    kvm = make_vm(tdx=True)
    slot = kvm.memslots[0]
    root = kvm.vcpus[0].mirror_root
    fault(kvm, 0x400)
    assert kvm.stat.pages == [0, 1, 0]
    # Convert one 4K page of the 2M frame to shared: the private 2M leaf is split
    # (HP-v3), the converted 4K removed, and the frame becomes MIXED.
    kvm_vm_set_mem_attributes(kvm, 0x401, 0x402, 0)
    assert hugepage_test_mixed(slot, 0x400, 2)
    # The 1G frame is not wholly inside the 64 MiB slot: no MIXED tracking, the slot's
    # tail already disallows it.
    assert not hugepage_test_mixed(slot, 0x400, 3) and slot.disallow_lpage(0x400, 3) == 1
    assert kvm.stat.pages == [511, 0, 0]
    calls = [c[0] for c in kvm.x86_ops.calls]
    assert calls[-2:] == ["split_external_spte", "remove_external_spte"]
    assert leaf_at(kvm, root, 0x401)[1] == DEFAULT_PROFILE.SHADOW_NONPRESENT_VALUE
    # The shared page faults through the direct root at 4K (the frame is mixed).
    assert fault(kvm, 0x401, private=False) == RET_PF_FIXED
    assert leaf_at(kvm, kvm.vcpus[0].root, 0x401)[0] == 1
    # Converting back clears MIXED and zaps the shared mapping.
    kvm_vm_set_mem_attributes(kvm, 0x401, 0x402, KVM_MEMORY_ATTRIBUTE_PRIVATE)
    assert not hugepage_test_mixed(slot, 0x400, 2)
    assert kvm.stat.pages == [511, 0, 0]
    assert kvm.mmu_invalidate_seq == 2 and kvm.mmu_invalidate_in_progress == 0


def test_fault_with_wrong_attribute_exits_to_userspace(make_vm):
    kvm = make_vm(tdx=True)
    assert fault(kvm, 0x10, private=False) == -14  # -EFAULT: KVM_EXIT_MEMORY_FAULT
    assert kvm.stat.pages == [0, 0, 0]


def test_rangeset():
    r = RangeSet()
    r.add(0, 10)
    r.add(20, 30)
    r.add(10, 20)
    assert (r.starts, r.ends) == ([0], [30])
    r.remove(5, 6)
    assert (r.starts, r.ends) == ([0, 6], [5, 30])
    assert r.contains(4) and not r.contains(5) and r.covers(6, 30) and not r.covers(0, 6)
    assert r.intersects(4, 6) and not r.intersects(5, 6)


_INTERVALS = st.lists(st.tuples(st.integers(0, 200), st.integers(1, 40)), max_size=8)


@pytest.mark.parametrize("intervals", [[], [(3, 7), (8, 9), (12, 20)], [(0, 4), (5, 6), (7, 30)]])
def test_rangeset_holds_every_is_the_pointwise_test(intervals):
    """Every start, length and step over sets whose edges sit one gfn apart."""
    r = RangeSet()
    for s, e in intervals:
        r.add(s, e)
    for start, length, step, member in itertools.product(range(24), range(26), range(1, 7),
                                                         (False, True)):
        end = start + length
        pointwise = all(r.contains(g) == member for g in range(start, end, step))
        assert r.holds_every(start, end, step, member) == pointwise, (start, end, step)


@given(_INTERVALS, st.dictionaries(st.integers(0, 511), st.integers(-3, 1 << 34), max_size=4),
       st.sampled_from([0, KVM_MEMORY_ATTRIBUTE_PRIVATE, 1]))
@example([], {7: -1}, 0)  # a negative count has the MIXED bit
@example([(0, 512)], {511: KVM_LPAGE_MIXED_FLAG}, KVM_MEMORY_ATTRIBUTE_PRIVATE)
@example([(0, 512)], {3: 1 << 32, 9: KVM_LPAGE_MIXED_FLAG}, KVM_MEMORY_ATTRIBUTE_PRIVATE)
def test_1g_hugepage_has_attrs_is_the_kernels_loop(adds, marked, attrs):
    """Over arbitrary lpage_info values (MIXED or not, counts, GUEST_INHIBIT) and private
    ranges (in 2M units), the whole-frame answer is the kernel's per-sub-frame loop."""
    kvm = create_vm(VmConfig(mem_bytes=1 << 30), Policy())
    slot = kvm.memslots[0]
    private = RangeSet()
    for s, n in adds:
        (private.add if n % 3 else private.remove)(s << 9, (s + n) << 9)
    kvm.mem_attr_private = private
    info = slot.lpage_info[2]
    for k, value in marked.items():
        info[k] = value
    loop = attrs in (0, KVM_MEMORY_ATTRIBUTE_PRIVATE) and all(
        not info[k] & KVM_LPAGE_MIXED_FLAG
        and private.contains(k << 9) == (attrs == KVM_MEMORY_ATTRIBUTE_PRIVATE)
        for k in range(512))
    assert hugepage_has_attrs(kvm, slot, 0, 3, attrs) == loop


def test_host_backing_and_gmem_units():
    b = HostBacking(hva=0x200000 - 0x1000, size=4 << 20, page_level=2)
    assert b.host_pfn_mapping_level(0x200000 - 0x1000) == 1  # partial head frame
    assert b.host_pfn_mapping_level(0x200000) == 2
    g = GuestMemfd(npages=0x500, pfn_base=0x1000, folio_order=9)
    assert g.kvm_gmem_get_pfn(0x201) == (0x1201, 9)
    assert g.kvm_gmem_get_pfn(0x401) == (0x1401, 0)  # folio would run past the file
    g.punch_hole(0x210, 0x220)
    assert g.kvm_gmem_get_pfn(0x201) == (0x1201, 0)  # the folio was split by the punch
    assert KVM_LPAGE_MIXED_FLAG == 1 << 31
