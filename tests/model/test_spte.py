"""SPTE predicates and constructors against values worked out by hand from spte.h/spte.c."""

from tdpsim.model import spte as S
from tdpsim.model.profile import DEFAULT_PROFILE

EPT = S.kvm_mmu_set_ept_masks(DEFAULT_PROFILE)  # the masks kvm_intel installs


def test_special_values():
    assert DEFAULT_PROFILE.SHADOW_NONPRESENT_VALUE == 0x8000000000000000
    assert DEFAULT_PROFILE.FROZEN_SPTE == 0x80000000000005A0
    assert not S.is_shadow_present_pte(DEFAULT_PROFILE.FROZEN_SPTE)
    assert not S.is_shadow_present_pte(DEFAULT_PROFILE.SHADOW_NONPRESENT_VALUE)
    assert S.is_frozen_spte(DEFAULT_PROFILE, DEFAULT_PROFILE.FROZEN_SPTE)
    # Neither special value may look like MMIO, on VMX (0b110) or TDX (0) VMs.
    for mmio_value in (S.VMX_EPT_MISCONFIG_WX_VALUE, 0):
        assert not S.is_mmio_spte(EPT, mmio_value, DEFAULT_PROFILE.FROZEN_SPTE)
        assert not S.is_mmio_spte(EPT, mmio_value, DEFAULT_PROFILE.SHADOW_NONPRESENT_VALUE)


def test_make_spte_4k_write_td():
    # present(0x800) | SVE | A(0x100) | X | R | WB<<3 (0x30) | host-W(57) | pfn | W | mmu-W(58) | D(0x200)
    spte = S.make_spte(EPT, level=1, ad_disabled=False, pte_access=S.ACC_ALL, pfn=0x1000,
                       old_spte=DEFAULT_PROFILE.SHADOW_NONPRESENT_VALUE, prefetch=False, host_writable=True,
                       nx_huge_page_enabled=False, mt_mask=0x30)
    assert spte == 0x8600000001000B37
    assert S.is_shadow_present_pte(spte) and S.is_last_spte(spte, 1)
    assert not S.is_large_pte(spte)
    assert S.spte_to_pfn(spte) == 0x1000
    assert S.is_writable_pte(spte) and S.is_mmu_writable_spte(EPT, spte)
    assert S.is_executable_pte(EPT, spte) and S.is_accessed_spte(EPT, spte) and S.is_dirty_spte(EPT, spte)
    assert S.check_spte_writable_invariants(EPT, spte)
    assert not S.spte_needs_atomic_update(EPT, spte)  # W and D both set: nothing volatile


def test_make_spte_2m_and_nx():
    spte = S.make_spte(EPT, level=2, ad_disabled=False, pte_access=S.ACC_ALL, pfn=0x200,
                       old_spte=DEFAULT_PROFILE.SHADOW_NONPRESENT_VALUE, prefetch=False, host_writable=True,
                       nx_huge_page_enabled=False, mt_mask=0x70)
    assert spte == 0x8600000000200BF7  # + PS (0x80) + IPAT (0x40)
    assert S.is_large_pte(spte) and S.is_last_spte(spte, 2)
    nx = S.make_spte(EPT, level=2, ad_disabled=False, pte_access=S.ACC_ALL, pfn=0x200,
                     old_spte=DEFAULT_PROFILE.SHADOW_NONPRESENT_VALUE, prefetch=False, host_writable=True,
                     nx_huge_page_enabled=True, mt_mask=0x70)
    assert nx == spte & ~S.VMX_EPT_EXECUTABLE_MASK
    assert not S.is_executable_pte(EPT, nx)


def test_make_spte_prefetch_and_readonly():
    spte = S.make_spte(EPT, level=1, ad_disabled=False, pte_access=S.ACC_ALL, pfn=0x5,
                       old_spte=DEFAULT_PROFILE.SHADOW_NONPRESENT_VALUE, prefetch=True, host_writable=False,
                       nx_huge_page_enabled=False, mt_mask=0)
    # prefetch: no A; not host-writable: no W, no mmu-W, no D.
    assert spte == 0x8000000000005805
    assert not S.is_accessed_spte(EPT, spte)
    # 6.13+ (cc7ed3358e41): a writable SPTE always gets D, even over a writable leaf;
    # older kernels skipped D there (but not over a writable *table*, e.g. promotion).
    old = 0x8600000001000B37
    args = dict(level=1, ad_disabled=False, pte_access=S.ACC_ALL, pfn=0x1000, old_spte=old,
                prefetch=False, host_writable=True, nx_huge_page_enabled=False, mt_mask=0x30)
    assert S.make_spte(EPT, **args) == old
    assert S.make_spte(EPT, **args, always_dirty=False) == old & ~S.VMX_EPT_DIRTY_BIT
    table = S.make_nonleaf_spte(EPT, 0x1234, ad_disabled=False)
    args.update(level=2, pfn=0x200, old_spte=table)
    assert S.make_spte(EPT, **args, always_dirty=False) == S.make_spte(EPT, **args)
    assert S.make_spte(EPT, **args) == 0x8600000000200BB7


def test_make_nonleaf_spte():
    assert S.make_nonleaf_spte(EPT, 0x1234, ad_disabled=False) == 0x8000000001234907
    assert S.make_nonleaf_spte(EPT, 0x1234, ad_disabled=True) == 0x8010000001234807
    assert not S.is_last_spte(0x8000000001234907, 2)
    assert S.is_last_spte(0x8000000001234907, 1)  # level 1 is always last


def test_make_small_spte_children():
    huge = 0x8600000000200BB7  # 2M leaf at pfn 0x200, X set, nx off
    kids = [S.make_small_spte(EPT, huge, 1, i, S.ACC_ALL, False) for i in range(512)]
    assert kids[0] == huge & ~S.PT_PAGE_SIZE_MASK
    assert S.spte_to_pfn(kids[511]) == 0x200 + 511
    assert all(not S.is_large_pte(k) for k in kids)
    # With NX huge pages the huge leaf had no X; 4K children get it back.
    nx_huge = huge & ~S.VMX_EPT_EXECUTABLE_MASK
    assert S.is_executable_pte(EPT, S.make_small_spte(EPT, nx_huge, 1, 3, S.ACC_ALL, True))
    # Splitting 1G into 2M children keeps PS and steps by 512 pages.
    huge_1g = 0x8600000040000BB7
    child = S.make_small_spte(EPT, huge_1g, 2, 2, S.ACC_ALL, False)
    assert S.is_large_pte(child) and S.spte_to_pfn(child) == 0x40000 + 1024


def test_make_huge_spte_aligns_pfn():
    small = 0x8600000000203B37  # 4K leaf at pfn 0x203
    huge = S.make_huge_spte(EPT, small, 2, nx_huge_page_enabled=False)
    assert S.spte_to_pfn(huge) == 0x200 and S.is_large_pte(huge)
    assert huge & 0xFFF == small & 0xFFF | S.PT_PAGE_SIZE_MASK


def test_leaf_change_flush_and_volatile():
    w = 0x8600000001000B37
    assert S.leaf_spte_change_needs_tlb_flush(EPT, w, w & ~S.EPT_SPTE_MMU_WRITABLE & ~S.PT_WRITABLE_MASK)
    assert not S.leaf_spte_change_needs_tlb_flush(EPT, w, w & ~S.PT_WRITABLE_MASK)  # dirty logging
    assert not S.leaf_spte_change_needs_tlb_flush(EPT, w, w & ~S.VMX_EPT_ACCESS_BIT)
    wrprot = w & ~S.PT_WRITABLE_MASK
    assert S.spte_needs_atomic_update(EPT, wrprot)  # fast-PF may make it writable
    assert S.kvm_tdp_mmu_spte_need_atomic_write(EPT, wrprot, 1)
    assert not S.kvm_tdp_mmu_spte_need_atomic_write(EPT, S.make_nonleaf_spte(EPT, 1, False), 2)
    assert not S.check_spte_writable_invariants(EPT, w & ~S.EPT_SPTE_HOST_WRITABLE)


def test_mmio_spte_generation_roundtrip():
    for gen in (0, 1, 0xFF, 0x100, 0x7FFFF):
        spte = S.make_mmio_spte(EPT, gen, 0xFEE00, S.ACC_ALL, S.VMX_EPT_MISCONFIG_WX_VALUE)
        assert S.is_mmio_spte(EPT, S.VMX_EPT_MISCONFIG_WX_VALUE, spte)
        assert S.get_mmio_spte_generation(spte) == gen
        assert not S.is_shadow_present_pte(spte)
    td = S.make_mmio_spte(EPT, 2, 0x10, S.ACC_ALL, 0)
    assert S.is_mmio_spte(EPT, 0, td) and td & S.VMX_EPT_RWX_MASK == 0


def test_access_track():
    ad_off = 0x8610000001000B37 & ~S.VMX_EPT_ACCESS_BIT
    tracked = S.mark_spte_for_access_track(EPT, ad_off)
    assert S.is_access_track_spte(EPT, tracked)
    assert (tracked >> S.SHADOW_ACC_TRACK_SAVED_BITS_SHIFT) & S.SHADOW_ACC_TRACK_SAVED_BITS_MASK == 5
    assert S.mark_spte_for_access_track(EPT, 0x8600000001000B37) == 0x8600000001000A37


def test_levels():
    assert [S.KVM_PAGES_PER_HPAGE(l) for l in (1, 2, 3)] == [1, 512, 262144]
    assert S.gfn_round_for_level(0x3FF, 2) == 0x200
    assert S.SPTE_INDEX(0x201, 1) == 1 and S.SPTE_INDEX(0x201, 2) == 1
    assert S.decode_spte(DEFAULT_PROFILE, EPT, DEFAULT_PROFILE.FROZEN_SPTE, 1) == "FROZEN_SPTE"
    assert S.decode_spte(DEFAULT_PROFILE, EPT, 0x8600000000200BB7, 2).startswith("leaf pfn=0x200 rwx")
