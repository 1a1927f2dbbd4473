"""The shadow MMU's huge-page rules, exact counts (tdpsim.model.shadow_mmu).

Every test builds a VM with a 2 MiB system slot at GPA 0 (4K host pages, holding the
guest's identity page tables at 0x3000) and a data slot at 1 GiB, then touches guest
virtual (= physical) addresses through ``ShadowMmu.guest_access``.
"""

import pytest

from tdpsim.kvmcheck.guest import PAGE_2M, PAGE_4K, IdentityPageTables
from tdpsim.model.kvm import Kvm
from tdpsim.model.kvm_main import kvm_set_memory_region
from tdpsim.model.memslot import KVM_MEM_LOG_DIRTY_PAGES, HostBacking, KvmMemorySlot
from tdpsim.model.mmu_internal import (PFERR_PRESENT_MASK, PFERR_WRITE_MASK, RET_PF_FIXED,
                                       RET_PF_WRITE_PROTECTED)
from tdpsim.model.policy import Policy
from tdpsim.model.shadow_mmu import (PTE_PREFETCH_NUM, GuestPageFault, ShadowMmu,
                                     FNAME_walk_addr)
from tdpsim.model.spte import PG_LEVEL_2M, PG_LEVEL_4K, is_large_pte, is_writable_pte

MiB = 1 << 20
GiB = 1 << 30
SYS_HVA = 0x7F00_0000_0000
DATA_HVA = 0x7F40_0000_0000
DATA_GPA = GiB
NPAGES_2M = 512


class Guest:
    """A VM, its guest page tables and the shadow MMU (see module doc)."""

    def __init__(self, size=16 * MiB, gpa_skew=0, hva_skew=0, host_level=PG_LEVEL_2M,
                 guest_page=PAGE_2M, flags=0, split_frames=(), policy=None, pt_pages=64):
        self.kvm = Kvm(policy=policy or Policy())
        self.pt = IdentityPageTables(0x3000, pt_pages)
        self.pt.map(0, PAGE_2M, PAGE_4K)
        self.gpa = DATA_GPA + gpa_skew
        self.pt.map(self.gpa, self.gpa + size, guest_page)
        self.extra = {}                       # gfn -> bytes: guest tables outside the area
        sys = KvmMemorySlot(0, 0, PAGE_2M // PAGE_4K, SYS_HVA,
                            HostBacking(SYS_HVA, PAGE_2M, PG_LEVEL_4K))
        frames = -(-(hva_skew + size) // PAGE_2M)
        self.backing = HostBacking(DATA_HVA, frames * PAGE_2M, host_level,
                                   {(DATA_HVA >> 21) + f for f in split_frames})
        self.slot = KvmMemorySlot(1, self.gpa >> 12, size // PAGE_4K, DATA_HVA + hva_skew,
                                  self.backing, flags=flags)
        kvm_set_memory_region(self.kvm, sys)
        kvm_set_memory_region(self.kvm, self.slot)
        self.image = None
        self.mmu = None

    def start(self):
        self.image = self.pt.image()
        self.mmu = ShadowMmu(self.kvm, self.read, self.pt.cr3)
        return self

    def read(self, gpa):
        off = gpa - self.pt.base_gpa
        if 0 <= off < len(self.image):
            return int.from_bytes(self.image[off:off + 8], "little")
        page = self.extra.get(gpa >> 12)
        return int.from_bytes(page[gpa & 0xFFF:(gpa & 0xFFF) + 8], "little") if page else 0

    def touch(self, start, n, access="write"):
        faults = 0
        for i in range(n):
            faults += self.mmu.guest_access(start + i * PAGE_4K, access)
        return faults

    @property
    def pages(self):
        return tuple(self.kvm.stat.pages)

    @property
    def stat(self):
        return self.kvm.vcpus[0].stat


def test_aligned_2m_guest_pages_map_2m_with_one_fault_per_frame():
    g = Guest().start()
    assert g.touch(g.gpa, 4096) == 8
    assert g.pages == (0, 8, 0)
    assert g.stat.pf_fixed == 8 == g.stat.pf_taken


def test_root_and_upper_guest_tables_are_write_tracked():
    g = Guest().start()
    g.touch(g.gpa, 1)
    # PML4 (0x3000), PDPT (0x4000), PD of the system slot (0x5000)...
    assert g.mmu.kvm_gfn_is_write_tracked(g.kvm.memslots[0], 0x3)
    # ...and the PD that maps the window with 2M leaves (walked by the fault)
    pd_gfn = FNAME_walk_addr(g.read, g.pt.cr3, g.gpa, True, False).table_gfn[1]
    assert g.mmu.kvm_gfn_is_write_tracked(g.kvm.memslots[0], pd_gfn)
    assert not g.mmu.kvm_gfn_is_write_tracked(g.slot, g.gpa >> 12)


def test_guest_page_size_caps_the_spte_and_4k_faults_prefetch_eight():
    g = Guest(guest_page=PAGE_4K).start()
    assert g.touch(g.gpa, 4096) == 4096 // PTE_PREFETCH_NUM
    assert g.pages == (4096, 0, 0)


def test_prefetched_spte_is_not_a_fault_and_has_no_accessed_bit():
    g = Guest(host_level=PG_LEVEL_4K).start()
    assert g.touch(g.gpa, 1) == 1
    assert g.pages == (PTE_PREFETCH_NUM, 0, 0)
    assert g.touch(g.gpa + PAGE_4K, PTE_PREFETCH_NUM - 1) == 0


@pytest.mark.parametrize("gpa_skew,hva_skew", [(PAGE_4K, 0), (0, PAGE_4K)])
def test_gfn_hva_misaligned_slot_is_all_4k(gpa_skew, hva_skew):
    g = Guest(gpa_skew=gpa_skew, hva_skew=hva_skew).start()
    faults = g.touch(g.gpa, 4096)
    assert g.pages == (4096, 0, 0)
    # gpa skew: the first prefetch block starts below the slot (no prefetch: 7 faults),
    # and the last page sits alone in a block past the slot end (1 fault)
    assert faults == (7 + 511 + 1 if gpa_skew else 512)


def test_head_and_tail_frames_outside_the_slot_are_4k():
    g = Guest(gpa_skew=PAGE_4K, hva_skew=PAGE_4K).start()
    assert g.touch(g.gpa, 4096) == 7 + (7 + 63) + 1
    assert g.pages == (511 + 1, 7, 0)
    assert g.slot.disallow_lpage(g.gpa >> 12, PG_LEVEL_2M) == 1


def test_tail_frame_half_in_slot_prefetch_stops_at_slot_end():
    g = Guest(size=17 * MiB).start()
    assert g.touch(g.gpa, 17 * 256) == 8 + 256 // 8
    assert g.pages == (256, 8, 0)


def test_host_4k_backing_and_split_frame():
    g = Guest(host_level=PG_LEVEL_4K).start()
    g.touch(g.gpa, 4096)
    assert g.pages == (4096, 0, 0)
    g = Guest(split_frames=(3,)).start()
    g.touch(g.gpa, 4096)
    assert g.pages == (512, 7, 0)


def test_dirty_logging_before_touch_maps_4k_without_prefetch_and_logs_every_page():
    g = Guest(flags=KVM_MEM_LOG_DIRTY_PAGES).start()
    assert g.touch(g.gpa, 4096) == 4096
    assert g.pages == (4096, 0, 0)
    assert g.mmu.kvm_get_dirty_log(g.slot) == 4096


def test_dirty_logging_reads_also_skip_prefetch():
    # a writable SPTE would let a later write go unlogged: gfn_to_memslot_dirty_bitmap
    g = Guest(flags=KVM_MEM_LOG_DIRTY_PAGES).start()
    assert g.touch(g.gpa, 16, "read") == 16


def test_enable_dirty_log_write_protects_2m_without_splitting_then_writes_go_4k():
    g = Guest().start()
    g.touch(g.gpa, 4096)
    g.mmu.kvm_mmu_slot_apply_flags(g.slot, KVM_MEM_LOG_DIRTY_PAGES)
    assert g.pages == (0, 8, 0)                     # no eager split for the shadow MMU
    spte, level = g.mmu.lookup(g.gpa)
    assert level == PG_LEVEL_2M and is_large_pte(spte) and not is_writable_pte(spte)
    assert g.touch(g.gpa, 4096, "read") == 0        # reads still hit the 2M SPTEs
    assert g.touch(g.gpa, 1) == 1
    assert g.pages == (1, 7, 0)                     # drop_large_spte + one 4K SPTE
    assert g.touch(g.gpa + PAGE_4K, 4095) == 4095
    assert g.pages == (4096, 0, 0)
    assert g.mmu.kvm_get_dirty_log(g.slot) == 4096
    # GET_DIRTY_LOG re-protected them: the next round faults again, page by page
    assert g.touch(g.gpa, 4096) == 4096


def test_disable_dirty_log_zaps_collapsible_then_next_touch_maps_2m():
    g = Guest().start()
    g.touch(g.gpa, 4096)
    g.mmu.kvm_mmu_slot_apply_flags(g.slot, KVM_MEM_LOG_DIRTY_PAGES)
    g.touch(g.gpa, 4096)
    g.mmu.kvm_mmu_slot_apply_flags(g.slot, 0)
    assert g.pages == (0, 0, 0)
    assert g.touch(g.gpa, 4096) == 8
    assert g.pages == (0, 8, 0)


def test_disable_dirty_log_keeps_4k_where_no_huge_page_is_possible():
    g = Guest(host_level=PG_LEVEL_4K, flags=KVM_MEM_LOG_DIRTY_PAGES).start()
    g.touch(g.gpa, 1024)
    g.mmu.kvm_mmu_slot_apply_flags(g.slot, 0)
    assert g.pages == (1024, 0, 0)


def test_indirect_4k_sptes_are_not_collapsible():
    g = Guest(guest_page=PAGE_4K, flags=KVM_MEM_LOG_DIRTY_PAGES).start()
    g.touch(g.gpa, 512)
    g.mmu.kvm_mmu_slot_apply_flags(g.slot, 0)
    assert g.pages == (512, 0, 0)


def test_thp_split_notifier_zaps_the_2m_spte_and_refault_maps_4k():
    g = Guest().start()
    g.touch(g.gpa, 4096)
    g.backing.split_frames.add(DATA_HVA >> 21)
    g.mmu.kvm_unmap_gfn_range(g.gpa >> 12, (g.gpa >> 12) + NPAGES_2M)
    assert g.pages == (0, 7, 0)
    assert g.touch(g.gpa, 4096) == NPAGES_2M // PTE_PREFETCH_NUM
    assert g.pages == (512, 7, 0)


def _pt_in_data_slot(g, pt_frame, mapped_frame):
    """Put a guest PT for data frame *mapped_frame* into data frame *pt_frame*."""
    va = g.gpa + mapped_frame * PAGE_2M
    pt_gpa = g.gpa + pt_frame * PAGE_2M
    pd = g.pt._table_for(2, va)
    g.pt._entry_set(pd, (va >> 21) & 0x1FF, pt_gpa | g.pt._table_flags)
    g.extra[pt_gpa >> 12] = b"".join(((va + i * PAGE_4K) | 0x67).to_bytes(8, "little")
                                     for i in range(512))
    return pt_gpa >> 12


def test_write_tracking_a_shadowed_guest_pt_keeps_its_frame_4k():
    g = Guest()
    pt_gfn = _pt_in_data_slot(g, pt_frame=2, mapped_frame=1)
    g.start()
    assert g.touch(g.gpa, 4096, "read") == 1 + 64 + 64 + 5
    assert g.pages == (1024, 6, 0)
    assert g.slot.disallow_lpage(pt_gfn, PG_LEVEL_2M) == 1     # account_shadowed


def test_shadowing_a_gfn_under_a_2m_spte_write_protects_it():
    g = Guest()
    pt_gfn = _pt_in_data_slot(g, pt_frame=0, mapped_frame=1)
    g.start()
    g.touch(g.gpa, 1, "read")                      # frame 0 mapped 2M first
    spte, level = g.mmu.lookup(g.gpa)
    assert level == PG_LEVEL_2M and is_writable_pte(spte)
    g.touch(g.gpa + PAGE_2M, 1, "read")            # walks (and shadows) the PT in frame 0
    spte, level = g.mmu.lookup(g.gpa)
    assert level == PG_LEVEL_2M and not is_writable_pte(spte)
    assert g.slot.disallow_lpage(pt_gfn, PG_LEVEL_2M) == 1
    # the next write to frame 0 replaces the 2M SPTE with 4K ones
    assert g.touch(g.gpa + 8 * PAGE_4K, 1) == 1
    assert g.pages == (8 + 8, 0, 0)                 # 8 for frame 1's PT, 8 in frame 0


def test_write_to_write_tracked_upper_table_is_emulated():
    g = Guest().start()
    g.touch(g.gpa, 1)
    g.touch(0x3000, 1, "read")                     # the PML4 page, via the 4K identity map
    spte, _ = g.mmu.lookup(0x3000)
    assert not is_writable_pte(spte)
    before = (g.stat.pf_taken, g.stat.pf_fixed, g.stat.pf_emulate)
    assert g.mmu.kvm_mmu_do_page_fault(0x3000, PFERR_PRESENT_MASK | PFERR_WRITE_MASK) \
        == RET_PF_WRITE_PROTECTED
    # Emulated, not fixed: the SPTE stays read-only.  Since 6.12 kvm_mmu_do_page_fault
    # counts only RET_PF_EMULATE as pf_emulate, not RET_PF_WRITE_PROTECTED.
    assert not is_writable_pte(g.mmu.lookup(0x3000)[0])
    assert (g.stat.pf_taken, g.stat.pf_fixed, g.stat.pf_emulate) == \
        (before[0] + 1, before[1], before[2])


def test_guest_not_present_raises_guest_page_fault():
    g = Guest().start()
    with pytest.raises(GuestPageFault):
        g.mmu.guest_access(DATA_GPA + 64 * MiB, "read")


def test_fault_result_counts_pf_fixed():
    g = Guest().start()
    assert g.mmu.kvm_mmu_do_page_fault(g.gpa, 0) == RET_PF_FIXED
    assert g.stat.pf_fixed == 1


def test_nx_huge_pages_keeps_exec_at_4k():
    g = Guest(policy=Policy(nx_huge_pages=True)).start()
    g.touch(g.gpa, 8, "exec")
    assert g.pages == (8, 0, 0)
    assert g.kvm.stat.nx_lpage_splits == 1
