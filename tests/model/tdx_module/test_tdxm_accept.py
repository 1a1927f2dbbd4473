"""Guest TDG.MEM.PAGE.ACCEPT decision table (§4.1) and guest accesses."""

from tdxm_helpers import M2, Td

from tdpsim.model.tdx_module import (
    EEQ_TYPE_ACCEPT, EEQ_TYPE_NONE, EEQ_TYPE_PENDING_EPT_VIOLATION, MAPPED, PENDING,
)


def entered(t: Td, vcpu: int = 0) -> Td:
    t.enter(vcpu)
    return t


def test_accept_4k_pending(td):
    td.aug4k(0)
    entered(td)
    r = td.m.tdg_mem_page_accept(0, 0, 0)
    assert r.status == 0 and r.exit is None
    assert td.m.entry(0, 0)[0] == MAPPED
    assert td.m.pages_zeroed == 1
    r = td.m.tdg_mem_page_accept(0, 0, 0)
    assert r.status == 0x00000B0A00000000  # ALREADY_ACCEPTED | level 0


def test_accept_2m_whole_and_interrupted(td):
    td.aug2m(M2)
    entered(td)
    r = td.m.tdg_mem_page_accept(0, M2, 1, interrupt_after=100)
    assert r.status == 0 and r.interrupted
    assert td.m.entry(M2, 1)[0] == PENDING
    r = td.m.tdg_mem_page_accept(0, M2, 1)
    assert r.status == 0 and not r.interrupted
    assert td.m.entry(M2, 1)[0] == MAPPED
    assert td.m.pages_zeroed == 512
    assert td.m.violations() == []


def test_block_resets_accept_counter(td):
    td.aug2m(M2)
    entered(td)
    td.m.tdg_mem_page_accept(0, M2, 1, interrupt_after=10)
    td.m.td_exit(0)
    td.block_track(M2, 1)
    assert td.m.tdh_mem_range_unblock(M2, 1).ok
    entered(td)
    td.m.tdg_mem_page_accept(0, M2, 1)
    assert td.m.pages_zeroed == 10 + 512


def test_accept_4k_inside_mapped_2m_is_already_accepted(td):
    td.aug2m(M2)
    entered(td)
    assert td.m.tdg_mem_page_accept(0, M2, 1).status == 0
    r = td.m.tdg_mem_page_accept(0, M2 + 0x5000, 0)
    assert r.status == 0x00000B0A00000001  # ALREADY_ACCEPTED | W=1


def test_accept_4k_inside_pending_2m_exits_with_accept_level(td):
    td.aug2m(M2)
    entered(td)
    r = td.m.tdg_mem_page_accept(0, M2 + 0x5000, 0)
    assert r.status is None
    x = r.exit
    assert x.eeq_type == EEQ_TYPE_ACCEPT and x.req_level == 0
    assert x.err_level == 1 and x.err_state == 2 and x.is_leaf
    assert x.gpa == M2 + 0x5000
    assert not td.m.vcpus[0].in_guest and td.m.refcount == [0, 0]


def test_accept_2m_on_4k_mapping_is_size_mismatch(td):
    td.aug4k(M2)
    entered(td)
    r = td.m.tdg_mem_page_accept(0, M2, 1)
    assert r.status == 0xC0000B0B00000001


def test_accept_free_and_missing_table_exit(td):
    td.tables(0, 1)
    entered(td)
    r = td.m.tdg_mem_page_accept(0, 0x3000, 0)  # entry at R is FREE
    assert r.exit.eeq_type == EEQ_TYPE_ACCEPT and r.exit.err_level == 0
    entered(td)
    r = td.m.tdg_mem_page_accept(0, (4 << 30), 0)  # walk stops at a FREE PDE/PDPTE above R
    assert r.exit.req_level == 0 and r.exit.err_level == 2 and not r.exit.is_leaf
    entered(td)
    r = td.m.tdg_mem_page_accept(0, (4 << 30), 1)
    assert r.exit.req_level == 1


def test_accept_blocked_exits(td):
    td.aug4k(0)
    td.m.tdh_mem_range_block(0, 0)
    entered(td)
    r = td.m.tdg_mem_page_accept(0, 0, 0)
    assert r.exit is not None and r.exit.err_state == 3  # PENDING_BLOCKED


def test_accept_level_2_invalid(td):
    entered(td)
    assert td.m.tdg_mem_page_accept(0, 0, 2).status == 0xC000010000000001


def test_accept_busy_after_host_priority(td):
    td.aug4k(0)
    w = td.m.entry(0, 0)
    assert w is not None
    page = td.m.root
    while page.level:
        page = page.child[page.index(0)]
    page.flags[0] |= 0x2  # TDHP set by a host that lost the lock race
    entered(td)
    assert td.m.tdg_mem_page_accept(0, 0, 0).status == 0x8000020000000001


def test_guest_access(td):
    td.aug4k(0)
    entered(td)
    a = td.m.guest_access(0, 0)
    assert a.exit.eeq_type == EEQ_TYPE_PENDING_EPT_VIOLATION
    entered(td)
    td.m.tdg_mem_page_accept(0, 0, 0)
    pfn = td.m.entry(0, 0)[1]
    assert td.m.guest_access(0, 0x10) == (pfn, False, False, None)
    assert td.m.guest_access(0, 0).from_tlb
    a = td.m.guest_access(0, M2 * 100)
    assert a.exit.eeq_type == EEQ_TYPE_NONE


def test_guest_access_ve_when_not_sept_ve_disable():
    t = Td(sept_ve_disable=False)
    t.aug4k(0)
    t.enter()
    assert t.m.guest_access(0, 0).ve
