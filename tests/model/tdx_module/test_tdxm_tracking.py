"""TLB tracking: TD_EPOCH, REFCOUNT, TRACK, VP.ENTER flushes, zero-step filter (§5)."""

from tdxm_helpers import Td

from tdpsim.model.tdx_module import STEPPING_EPF_THRESHOLD


def test_track_busy_while_vcpu_in_previous_epoch(td):
    td.enter(0)  # vCPU 0 holds REFCOUNT[epoch 1]
    assert td.m.tdh_mem_track().ok  # epoch 1 -> 2; previous epoch 0 empty
    r = td.m.tdh_mem_track()  # epoch 2 -> 3 needs epoch 1 drained
    assert r.status == 0x8000020100000000
    td.m.td_exit(0)
    assert td.m.tdh_mem_track().ok
    assert td.m.track_count == 2 and td.m.td_epoch == 3


def test_tracked_predicate_needs_exit_of_old_epoch(td):
    td.aug4k(0)
    td.enter(0)
    assert td.m.tdh_mem_range_block(0, 0).ok  # BEPOCH = 1
    assert td.m.tdh_mem_track().ok  # E = 2, vCPU 0 still counted at epoch 1
    assert td.m.tdh_mem_page_remove(0, 0).status == 0xC0000B0800000001
    td.m.td_exit(0)
    assert td.m.tdh_mem_page_remove(0, 0).ok


def test_second_track_also_tracks(td):
    td.aug4k(0)
    assert td.m.tdh_mem_range_block(0, 0).ok
    assert td.m.tdh_mem_track().ok
    assert td.m.tdh_mem_track().ok
    assert td.m.is_tlb_tracked(1)


def test_no_track_never_tracked(td):
    td.aug4k(0)
    assert td.m.tdh_mem_range_block(0, 0).ok
    assert td.m.tdh_mem_page_remove(0, 0).status == 0xC0000B0800000001


def test_enter_flushes_on_stale_epoch(td):
    td.aug4k(0)
    td.enter(0)
    td.m.tdg_mem_page_accept(0, 0, 0)
    td.m.guest_access(0, 0)
    assert td.m.vcpus[0].tlb
    td.m.td_exit(0)
    td.enter(0)  # same epoch: no flush, TLB survives
    assert td.m.vcpus[0].flushes == 0 and td.m.vcpus[0].tlb
    td.m.td_exit(0)
    assert td.m.tdh_mem_range_block(0, 0).ok
    # still in the old epoch: a running vCPU keeps using its stale translation
    td.enter(0)
    assert td.m.guest_access(0, 0).from_tlb
    td.m.td_exit(0)
    assert td.m.tdh_mem_track().ok
    td.enter(0)
    assert td.m.vcpus[0].flushes == 1 and not td.m.vcpus[0].tlb
    a = td.m.guest_access(0, 0)
    assert a.exit is not None  # now sees the BLOCKED entry
    assert td.m.tlb_flush_count == 1


def test_zero_step_filter_refuses_entry(td):
    td.tables(0, 1)
    for _ in range(STEPPING_EPF_THRESHOLD):
        td.enter(0)
        assert td.m.guest_access(0, 0x1000, rip=0x1234).exit is not None
    r = td.m.tdh_vp_enter(0)
    assert r.ok and r.exit is not None and not td.m.vcpus[0].in_guest
    td.aug4k(0x1000)
    td.enter(0)
    td.m.tdg_mem_page_accept(0, 0x1000, 0)
    td.m.td_exit(0)
    r = td.m.tdh_vp_enter(0)
    assert r.ok and r.exit is None
    assert td.m.violations() == []


def test_refcount_invariant_tracks_vcpus():
    t = Td()
    for v in range(3):
        t.enter(v)
    assert t.m.refcount == [0, 3]
    assert t.m.violations() == []
