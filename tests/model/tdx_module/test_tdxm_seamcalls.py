"""Each SEAMCALL: success and every precondition failure with its exact 64-bit status."""

import pytest
from tdxm_helpers import M2, Td

from tdpsim.model.tdx_module import (
    FEATURE_ENHANCED_DEMOTE_INTERRUPTIBILITY, FREE, MAPPED, NL_BLOCKED, NL_MAPPED,
    PENDING, PENDING_BLOCKED, PT_EPT, PT_NDA, PT_REG, TdxModule, sept_leaves,
)

WALK_FAILED_RCX = 0xC0000B0000000001
STATE_INCORRECT_RCX = 0xC0000B0D00000001
NOT_BLOCKED_RCX = 0xC0000B0600000001
NOT_TRACKED_RCX = 0xC0000B0800000001
INVALID_RCX = 0xC000010000000001
INVALID_R8 = 0xC000010000000008
METADATA_R8 = 0xC000030000000008
OP_STATE_INCORRECT = 0xC000060800000000
PROMOTE_COND_RCX = 0xC0000B0900000001
ALREADY_BLOCKED_RCX = 0x00000B0700000001


def no_violations(t: Td):
    assert t.m.violations() == []


# ---------------------------------------------------------------- SEPT.ADD
def test_sept_add_success_and_levels(td):
    td.tables(0, 1)
    assert td.m.entry(0, 1)[0] == NL_MAPPED
    assert td.m.entry(0, 0) == (FREE, 0)
    assert td.m.child_count == 3
    assert td.m.pamt.page_type(td.m.entry(0, 1)[1]) == PT_EPT
    no_violations(td)


def test_sept_add_errors(td):
    pfn = td.pfns.page()
    r = td.m.tdh_mem_sept_add(0, 1, pfn)  # L3/L2 missing
    assert r.status == WALK_FAILED_RCX
    assert r.rdx == 3  # stopped at level 3, FREE (arch state 0)
    assert td.m.tdh_mem_sept_add(0, 0, pfn).status == INVALID_RCX  # level 0 not allowed
    assert td.m.tdh_mem_sept_add(0x1000, 1, pfn).status == INVALID_RCX  # misaligned
    assert td.m.tdh_mem_sept_add(1 << 47, 3, pfn).status == INVALID_RCX  # shared GPA
    td.tables(0, 1)
    r = td.m.tdh_mem_sept_add(0, 1, td.pfns.page())
    assert r.status == STATE_INCORRECT_RCX
    assert r.rdx == (0x84 << 8) | 1 and r.rcx & 7 == 7
    used = td.m.entry(0, 1)[1]
    assert td.m.tdh_mem_sept_add(M2, 1, used).status == METADATA_R8
    assert td.m.tdh_mem_sept_add(M2, 1, -1).status == INVALID_R8
    no_violations(td)


# ---------------------------------------------------------------- PAGE.ADD / FINALIZE
def test_page_add_only_initialized(td_build, td):
    t = td_build
    t.tables(0, 1)
    assert t.m.tdh_mem_page_add(0, t.pfns.page()).ok
    assert t.m.entry(0, 0)[0] == MAPPED  # not PENDING: no ACCEPT needed
    assert t.m.mrtd_log == [0]
    r = t.m.tdh_mem_page_add(0, t.pfns.page())
    assert r.status == STATE_INCORRECT_RCX
    assert t.m.tdh_mem_page_add(M2 * 10, t.pfns.page()).status == WALK_FAILED_RCX
    td.tables(0, 1)
    assert td.m.tdh_mem_page_add(0, td.pfns.page()).status == OP_STATE_INCORRECT
    no_violations(t)


def test_finalize_and_uninitialized_gating():
    m = TdxModule(op_state=0)
    assert m.tdh_mem_sept_add(0, 3, 5).status == OP_STATE_INCORRECT
    assert m.tdh_mem_track().status == OP_STATE_INCORRECT
    assert m.tdh_mr_finalize().status == OP_STATE_INCORRECT
    assert m.tdh_mng_init().ok
    assert m.tdh_mem_sept_add(0, 3, 5).ok
    assert m.tdh_mr_finalize().ok
    assert m.tdh_mr_finalize().status == OP_STATE_INCORRECT
    assert m.tdh_vp_enter(0).ok


def test_vp_enter_requires_runnable(td_build):
    assert td_build.m.tdh_vp_enter(0).status == OP_STATE_INCORRECT


# ---------------------------------------------------------------- AUG
def test_aug_4k_and_2m(td):
    pfn = td.aug4k(0)
    assert td.m.entry(0, 0) == (PENDING, pfn)
    hp = td.aug2m(M2)
    assert td.m.entry(M2, 1) == (PENDING, hp)
    assert td.m.pamt.find(hp).size == 1
    assert td.m.child_count == 3 + 1 + 512
    no_violations(td)


def test_aug_errors(td):
    td.tables(0, 1)
    r = td.m.tdh_mem_page_aug(0, 1, td.pfns.huge())  # 2M on an NL_MAPPED PDE
    assert r.status == 0xC0000B0D00000001
    assert td.m.tdh_mem_page_aug(0, 2, td.pfns.huge()).status == INVALID_RCX  # no 1G AUG
    hp = td.pfns.huge()
    assert td.m.tdh_mem_page_aug(M2, 1, hp + 1).status == INVALID_R8  # misaligned 2M
    pfn = td.aug4k(0)
    assert td.m.tdh_mem_page_aug(0x1000, 0, pfn).status == METADATA_R8  # page in use
    # 2M range overlapping a used 4K page is not free
    assert td.m.tdh_mem_page_aug(M2, 1, pfn & ~511).status == METADATA_R8
    td.aug2m(M2)
    r = td.m.tdh_mem_page_aug(M2, 0, td.pfns.page())  # 2M leaf covers the 4K request
    assert r.status == WALK_FAILED_RCX and r.rdx == (2 << 8) | 1
    no_violations(td)


def test_aug_allowed_in_initialized(td_build):
    td_build.aug4k(0)


# ---------------------------------------------------------------- BLOCK / UNBLOCK
def test_block_states_and_bepoch(td):
    pfn = td.aug4k(0)
    assert td.m.tdh_mem_range_block(0, 0).ok
    assert td.m.entry(0, 0)[0] == PENDING_BLOCKED
    assert td.m.pamt.find(pfn).bepoch == td.m.td_epoch
    assert td.m.tdh_mem_range_block(0, 0).status == ALREADY_BLOCKED_RCX
    assert td.m.tdh_mem_range_block(0, 1).ok
    assert td.m.entry(0, 1)[0] == NL_BLOCKED
    # the walk now stops at the blocked PDE
    r = td.m.tdh_mem_range_block(0, 0)
    assert r.status == WALK_FAILED_RCX and r.rdx == (0x81 << 8) | 1
    assert td.m.tdh_mem_range_block(M2, 1).status == STATE_INCORRECT_RCX  # FREE
    no_violations(td)


def test_unblock_needs_tracking_when_runnable(td):
    td.aug4k(0)
    assert td.m.tdh_mem_range_unblock(0, 0).status == STATE_INCORRECT_RCX
    assert td.m.tdh_mem_range_block(0, 0).ok
    assert td.m.tdh_mem_range_unblock(0, 0).status == 0xC0000B0800000092  # 1.5: |SEPT_TREE
    assert td.m.tdh_mem_track().ok
    assert td.m.tdh_mem_range_unblock(0, 0).ok
    assert td.m.entry(0, 0)[0] == PENDING


def test_unblock_tracking_operand_v20():
    t = Td(version="2.0")
    t.aug4k(0)
    assert t.m.tdh_mem_range_block(0, 0).ok
    assert t.m.tdh_mem_range_unblock(0, 0).status == NOT_TRACKED_RCX


def test_unblock_without_tracking_before_finalize(td_build):
    t = td_build
    t.aug4k(0)
    assert t.m.tdh_mem_range_block(0, 0).ok
    assert t.m.tdh_mem_range_unblock(0, 0).ok


# ---------------------------------------------------------------- REMOVE
def test_remove_break_before_make(td):
    pfn = td.aug4k(0)
    assert td.m.tdh_mem_page_remove(0, 0).status == 0xC0000B0600000001
    assert td.m.tdh_mem_range_block(0, 0).ok
    assert td.m.tdh_mem_page_remove(0, 0).status == 0xC0000B0800000001
    assert td.m.tdh_mem_track().ok
    r = td.m.tdh_mem_page_remove(0, 0)
    assert r.ok and r.rcx == pfn << 12
    assert td.m.entry(0, 0) == (FREE, 0)
    assert td.m.pamt.page_type(pfn) == PT_NDA
    assert pfn in td.m.unflushed
    assert td.m.tdh_phymem_page_wbinvd(pfn).ok
    assert pfn not in td.m.unflushed
    no_violations(td)


def test_remove_errors(td):
    td.tables(0, 1)
    assert td.m.tdh_mem_page_remove(0, 0).status == STATE_INCORRECT_RCX  # FREE
    assert td.m.tdh_mem_page_remove(0, 1).status == STATE_INCORRECT_RCX  # non-leaf
    assert td.m.tdh_mem_page_remove(0, 3).status == INVALID_RCX


def test_remove_2m_and_before_finalize(td_build):
    t = td_build
    hp = t.aug2m(M2)
    r = t.m.tdh_mem_page_remove(M2, 1)  # INITIALIZED: no BLOCK/TRACK needed
    assert r.ok and r.rcx == hp << 12
    assert len([p for p in t.m.unflushed if hp <= p < hp + 512]) == 512
    no_violations(t)


# ---------------------------------------------------------------- SEPT.REMOVE
def test_sept_remove(td):
    td.aug4k(0)
    assert td.m.tdh_mem_sept_remove(0, 1).status == NOT_BLOCKED_RCX
    td.block_track(0, 1)
    assert td.m.tdh_mem_sept_remove(0, 1).status == 0xC0000B0E00000001  # child not empty
    assert td.m.tdh_mem_sept_remove(0, 0).status == INVALID_RCX
    t2 = Td()
    t2.tables(0, 1)
    assert t2.m.tdh_mem_range_block(0, 1).ok
    assert t2.m.tdh_mem_sept_remove(0, 1).status == NOT_TRACKED_RCX
    assert t2.m.tdh_mem_track().ok
    child = t2.m.entry(0, 1)[1]
    r = t2.m.tdh_mem_sept_remove(0, 1)
    assert r.ok and r.rcx == child << 12
    assert t2.m.entry(0, 1) == (FREE, 0)
    assert t2.m.child_count == 2
    no_violations(t2)


# ---------------------------------------------------------------- DEMOTE
@pytest.mark.parametrize("accept_first", [False, True])
def test_demote_children_inherit_state(td, accept_first):
    hp = td.aug2m(M2)
    if accept_first:
        td.enter()
        assert td.m.tdg_mem_page_accept(0, M2, 1).status == 0
        td.m.td_exit(0)
    parent = td.m.entry(M2, 1)[0]
    new = td.pfns.page()
    assert td.m.tdh_mem_page_demote(M2, 1, new).status == NOT_BLOCKED_RCX
    assert td.m.tdh_mem_range_block(M2, 1).ok
    assert td.m.tdh_mem_page_demote(M2, 1, new).status == NOT_TRACKED_RCX
    assert td.m.tdh_mem_track().ok
    assert td.m.tdh_mem_page_demote(M2, 1, new).ok
    assert td.m.entry(M2, 1) == (NL_MAPPED, new)
    for i in (0, 1, 511):
        assert td.m.entry(M2 + i * 4096, 0) == (parent, hp + i)
    assert td.m.pamt.find(hp + 5).size == 0
    no_violations(td)


def test_demote_errors(td):
    td.tables(0, 1)
    assert td.m.tdh_mem_page_demote(0, 1, td.pfns.page()).status == STATE_INCORRECT_RCX
    assert td.m.tdh_mem_page_demote(0, 0, td.pfns.page()).status == INVALID_RCX
    td.aug2m(M2)
    td.block_track(M2, 1)
    used = td.m.entry(0, 1)[1]
    assert td.m.tdh_mem_page_demote(M2, 1, used).status == METADATA_R8


def test_demote_interrupt_feature_bit():
    t = Td(features=0)
    t.aug2m(M2)
    t.block_track(M2, 1)
    new = t.pfns.page()
    r = t.m.tdh_mem_page_demote(M2, 1, new, interrupt_pending=True)
    assert r.status == 0x8000000400000000 and r.rcx == M2 | 1
    assert t.m.entry(M2, 1)[0] == PENDING_BLOCKED  # nothing committed
    assert t.m.tdh_mem_page_demote(M2, 1, new).ok
    t2 = Td(features=FEATURE_ENHANCED_DEMOTE_INTERRUPTIBILITY)
    t2.aug2m(M2)
    t2.block_track(M2, 1)
    assert t2.m.tdh_mem_page_demote(M2, 1, t2.pfns.page(), interrupt_pending=True).ok


def test_demote_1g():
    t = Td(runnable=False)
    base = 1 << 30
    t.tables(base, 2)
    # build 512 x 2M PENDING leaves from one 1G-aligned range, then promote to 1G
    hp1g = 1 << 18
    for i in range(512):
        assert t.m.tdh_mem_page_aug(base + i * M2, 1, hp1g + i * 512).ok
    assert t.m.tdh_mem_page_promote(base, 2).ok
    assert t.m.entry(base, 2) == (PENDING, hp1g)
    assert t.m.tdh_mem_page_demote(base, 2, t.pfns.page()).ok
    assert t.m.entry(base + 3 * M2, 1) == (PENDING, hp1g + 3 * 512)
    no_violations(t)


def test_non_blocking_resize_switch():
    t = Td(non_blocking_resize=True)
    t.aug2m(M2)
    assert t.m.tdh_mem_page_demote(M2, 1, t.pfns.page()).ok


# ---------------------------------------------------------------- PROMOTE
def _fill_4k(t: Td, base: int, hp: int, accept: bool = True) -> None:
    t.tables(base, 1)
    for i in range(512):
        assert t.m.tdh_mem_page_aug(base + i * 4096, 0, hp + i).ok
    if accept:
        t.enter(9)
        for i in range(512):
            assert t.m.tdg_mem_page_accept(9, base + i * 4096, 0).status == 0
        t.m.td_exit(9)


def test_promote_511_mapped_1_pending(td):
    hp = td.pfns.huge()
    _fill_4k(td, M2, hp)
    td.block_track(M2 + 7 * 4096, 0)
    assert td.m.tdh_mem_page_remove(M2 + 7 * 4096, 0).ok
    assert td.m.tdh_phymem_page_wbinvd(hp + 7).ok
    assert td.m.tdh_mem_page_aug(M2 + 7 * 4096, 0, hp + 7).ok  # re-added: PENDING
    td.block_track(M2, 1)
    assert td.m.tdh_mem_page_promote(M2, 1).status == PROMOTE_COND_RCX
    assert td.m.tdh_mem_page_promote(M2, 1).status == 0xC0000B0900000001
    no_violations(td)


def test_promote_uniform_needs_block_and_track(td):
    hp = td.pfns.huge()
    _fill_4k(td, M2, hp)
    child = td.m.entry(M2, 1)[1]
    assert td.m.tdh_mem_page_promote(M2, 1).status == NOT_BLOCKED_RCX
    assert td.m.tdh_mem_range_block(M2, 1).ok
    assert td.m.tdh_mem_page_promote(M2, 1).status == NOT_TRACKED_RCX
    assert td.m.tdh_mem_track().ok
    assert td.m.tdh_mem_page_promote(M2, 1, interrupt_pending=True).status == 0x8000000400000000
    r = td.m.tdh_mem_page_promote(M2, 1)
    assert r.ok and r.rcx == child << 12
    assert td.m.entry(M2, 1) == (MAPPED, hp)  # unblocked leaf
    assert td.m.pamt.find(hp + 3).size == 1 and td.m.pamt.find(hp).pt == PT_REG
    assert td.m.pamt.page_type(child) == PT_NDA
    no_violations(td)


def test_promote_rejects_noncontiguous_and_leaf(td):
    td.tables(M2, 1)
    for i in range(512):
        assert td.m.tdh_mem_page_aug(M2 + i * 4096, 0, td.pfns.page()).ok
    td.block_track(M2, 1)
    assert td.m.tdh_mem_page_promote(M2, 1).status == PROMOTE_COND_RCX
    hp2 = td.aug2m(2 * M2)
    assert hp2
    assert td.m.tdh_mem_page_promote(2 * M2, 1).status == STATE_INCORRECT_RCX


def test_promote_v20_takes_tree_exclusive():
    t = Td(version="2.0", runnable=False)
    _fill_4k(t, M2, t.pfns.huge(), accept=False)
    assert t.m.tdh_mem_page_promote(M2, 1).ok
    assert t.m.entry(M2, 1)[0] == PENDING


# ---------------------------------------------------------------- WBINVD / RECLAIM / teardown
def test_wbinvd_requires_removed_page(td):
    pfn = td.aug4k(0)
    assert td.m.tdh_phymem_page_wbinvd(pfn).status == 0xC000030000000001


def test_reclaim_only_after_hkid_release(td):
    pfn = td.aug4k(0)
    sept_pfn = td.m.entry(0, 1)[1]
    assert td.m.tdh_phymem_page_reclaim(pfn).status == 0xC000060700000000
    td.enter()
    assert td.m.tdh_mng_vpflushdone().status == 0x8000082400000000
    td.m.td_exit(0)
    td.m.release_hkid()
    assert td.m.tdh_mem_page_aug(0x1000, 0, td.pfns.page()).status == 0x8000081000000000
    r = td.m.tdh_phymem_page_reclaim(pfn)
    assert r.ok and (r.rcx, r.r8) == (PT_REG, 0)
    assert td.m.tdh_phymem_page_reclaim(sept_pfn).ok
    assert td.m.tdh_phymem_page_reclaim(pfn).status == 0xC000030000000001


# ---------------------------------------------------------------- DPAMT
def test_dpamt_requires_pamt_add():
    t = Td(dpamt=True)
    pfn = t.pfns.page()
    assert t.m.tdh_mem_sept_add(0, 3, pfn).status == 0x8000030800000000
    assert t.m.tdh_phymem_pamt_add(pfn & ~511, (1, 2)).ok
    assert t.m.tdh_mem_sept_add(0, 3, pfn).ok


# ---------------------------------------------------------------- inspection / counters
def test_sept_leaves_and_counters(td):
    pfn = td.aug4k(0)
    got = {(e.gfn, e.level, e.state, e.pfn) for e in sept_leaves(td.m)}
    assert (0, 0, PENDING, pfn) in got
    assert sum(1 for e in got if e[2] == NL_MAPPED) == 3
    assert td.m.results[("TDH.MEM.PAGE.AUG", "TDX_SUCCESS")] == 1
    assert td.m.seamcalls["TDH.MEM.SEPT.ADD"] == 3
    td.m.tdh_mem_page_remove(0, 0)
    assert td.m.results[("TDH.MEM.PAGE.REMOVE", "TDX_GPA_RANGE_NOT_BLOCKED|RCX")] == 1
    assert td.m.results_by_status()["TDX_SUCCESS"] >= 5


def test_tdhp_bit_released_no_locks_leak(td):
    td.aug4k(0)
    td.m.tdh_mem_page_remove(0, 0)
    td.m.tdh_mem_range_block(0, 1)
    no_violations(td)
