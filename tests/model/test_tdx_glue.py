"""KVM's TDX glue (model/tdx.py): TD build, vCPU entry/exit vs the module's epochs, the
S-EPT hooks with BUSY handling, HP-v3 accept-level handling, the guest side, teardown."""

from __future__ import annotations

from collections import Counter

import pytest

from tdpsim.model.invariants import check_invariants
from tdpsim.model.kvm import IN_GUEST_MODE, OUTSIDE_GUEST_MODE
from tdpsim.model.kvm_main import hugepage_test_guest_inhibit
from tdpsim.model.mmu_internal import EINVAL, EIO, EOPNOTSUPP
from tdpsim.model.policy import Policy
from tdpsim.model.tdx import (
    EXIT_FASTPATH_EXIT_HANDLED,
    EXIT_FASTPATH_NONE,
    TD_STATE_INITIALIZED,
    TD_STATE_RUNNABLE,
    TDX_PS_4K,
    TdGuest,
    create_td,
    run_counters,
)
from tdpsim.model.tdx_module import FREE, MAPPED, NL_MAPPED, PENDING, TdxResult
from tdpsim.model.tdx_module.status import (
    TDX_OPERAND_BUSY,
    TDX_OPERAND_ID_SEPT,
    TDX_PAGE_ALREADY_ACCEPTED,
    with_operand,
)
from tdpsim.model.vmm import VmConfig

M2 = 2 << 20
GMEM_PFN = 128 << 30 >> 12
BUSY_SEPT = with_operand(TDX_OPERAND_BUSY, TDX_OPERAND_ID_SEPT)


def td(policy: Policy | None = None, finalize: bool = True, nr_vcpus: int = 2,
       mem: int = 16 << 20, folio_order: int = 9, **kw):
    kvm, tdx = create_td(VmConfig(tdx=True, mem_bytes=mem, nr_vcpus=nr_vcpus,
                                  gmem_folio_order=folio_order), policy, **kw)
    if finalize:
        assert tdx.tdx_td_finalize(kvm) == 0
    return kvm, tdx, TdGuest(kvm, tdx)


# ------------------------------------------------------------------------------ TD build
def test_td_build_page_add_4k_only_then_finalize():
    kvm, tdx, g = td(finalize=False)
    assert tdx.state == TD_STATE_INITIALIZED and tdx.module.op_state == 1
    assert tdx.tdx_gmem_max_mapping_level(kvm, 0, True) == 1  # 4K before RUNNABLE
    assert tdx.tdx_vcpu_init_mem_region(kvm.vcpus[0], M2, 600) == 0
    adds = tdx.seamcalls("TDH.MEM.PAGE.ADD")
    assert len(adds) == 600 and {r.level for r in adds} == {1} and all(r.status == 0 for r in adds)
    assert tdx.seamcalls("TDH.MEM.PAGE.AUG") == []
    assert list(kvm.stat.pages) == [600, 0, 0]
    assert tdx.module.entry(M2, 1)[0] == NL_MAPPED  # no 2M mapping of the image
    assert tdx.module.entry(M2 + 4096 * 599, 0) == (MAPPED, GMEM_PFN + 512 + 599)
    assert tdx.module.mrtd_log[:2] == [M2, M2 + 4096]
    assert tdx.page_add_src is None
    # KVM_RUN before finalization is refused; so is adding after it.
    assert tdx.tdx_vcpu_run(kvm.vcpus[0]) == -EINVAL
    assert tdx.tdx_td_finalize(kvm) == 0 and tdx.state == TD_STATE_RUNNABLE
    assert tdx.tdx_td_finalize(kvm) == -EINVAL
    assert tdx.tdx_vcpu_init_mem_region(kvm.vcpus[0], 8 * M2, 1) == -EINVAL
    assert tdx.tdx_gmem_max_mapping_level(kvm, 0, True) == 2
    assert check_invariants(kvm, tdx, quiescent=True) == []


def test_init_mem_region_rejects_shared_and_misaligned():
    kvm, tdx, g = td(finalize=False)
    assert tdx.tdx_vcpu_init_mem_region(kvm.vcpus[0], 0x800, 1) == -EINVAL
    shared = M2 | (1 << 47)
    assert tdx.tdx_vcpu_init_mem_region(kvm.vcpus[0], shared, 1) == -EINVAL
    assert tdx.log[-1].leaf == "TDH.MNG.INIT"  # nothing issued


@pytest.mark.parametrize("policy,expected", [
    (Policy(), 2), (Policy(tdx_huge_page=False), 1), (Policy(tdx_private_max_level=3), 2),
    (Policy(tdx_private_max_level=1), 1)])
def test_gmem_max_mapping_level(policy, expected):
    kvm, tdx, g = td(policy)
    assert tdx.tdx_gmem_max_mapping_level(kvm, 0, False) == 0
    assert tdx.tdx_gmem_max_mapping_level(kvm, 0, True) == expected


# ------------------------------------------------------------------------- vCPU vs epochs
def test_vcpu_mode_matches_module_and_kick_drains_epochs():
    kvm, tdx, g = td()
    m = tdx.module
    for v in kvm.vcpus:
        assert tdx.tdx_vcpu_run(v) == EXIT_FASTPATH_NONE
        assert v.mode == IN_GUEST_MODE and m.vcpus[v.vcpu_id].in_guest
    assert m.refcount[m.td_epoch & 1] == 2
    kvm.mmu_lock.write_lock()
    tdx.tdx_track(kvm)
    kvm.mmu_lock.write_unlock()
    assert all(v.mode == OUTSIDE_GUEST_MODE for v in kvm.vcpus)
    assert m.refcount == [0, 0] and m.track_count == 1 and m.td_epoch == 2
    assert tdx.stats.kicks == 1 and tdx.stats.kick_exits == 2
    # A second TRACK succeeds at once: nobody is left in the previous epoch.
    kvm.mmu_lock.write_lock()
    tdx.tdx_track(kvm)
    kvm.mmu_lock.write_unlock()
    assert m.td_epoch == 3 and not kvm.bugs
    assert check_invariants(kvm, tdx, quiescent=True) == []


def test_vcpu_run_refused_while_waiting_for_sept_zap():
    kvm, tdx, g = td()
    tdx.wait_for_sept_zap = True
    assert tdx.tdx_vcpu_run(kvm.vcpus[0]) == EXIT_FASTPATH_EXIT_HANDLED
    assert kvm.vcpus[0].mode == OUTSIDE_GUEST_MODE and tdx.stats.vcpu_enter_refused == 1
    tdx.wait_for_sept_zap = False
    assert tdx.tdx_vcpu_run(kvm.vcpus[0]) == EXIT_FASTPATH_NONE


def test_track_is_noop_before_finalize():
    kvm, tdx, g = td(finalize=False)
    kvm.mmu_lock.write_lock()
    tdx.tdx_track(kvm)
    kvm.mmu_lock.write_unlock()
    assert tdx.module.track_count == 0 and tdx.stats.kicks == 0


# --------------------------------------------------------------------------- BUSY handling
class BusyFirst:
    """Wrap a module SEAMCALL: the first ``n`` calls return BUSY|SEPT; records what the
    retried call observed about vCPUs and ``wait_for_sept_zap``."""

    def __init__(self, kvm, tdx, name, n=1):
        self.kvm, self.tdx, self.n = kvm, tdx, n
        self.real = getattr(tdx.module, name)
        self.seen = []
        setattr(tdx.module, name, self)

    def __call__(self, *a, **k):
        self.seen.append((self.tdx.wait_for_sept_zap,
                          [v.mode for v in self.kvm.vcpus]))
        if self.n:
            self.n -= 1
            return TdxResult(BUSY_SEPT)
        return self.real(*a, **k)


def map_4k_page(kvm, tdx, g, gpa):
    assert g.accept_memory(gpa, gpa + 4096)
    assert tdx.module.entry(gpa, 0)[0] == MAPPED


def test_remove_busy_kicks_and_retries_once():
    kvm, tdx, g = td()
    map_4k_page(kvm, tdx, g, M2)
    for v in kvm.vcpus:
        tdx.tdx_vcpu_run(v)
    busy = BusyFirst(kvm, tdx, "tdh_mem_range_block")
    assert g.set_memory_decrypted(M2, 4096)
    # First BLOCK saw running vCPUs; the retry ran with wait_for_sept_zap and nobody inside.
    assert busy.seen[0][0] is False
    assert busy.seen[1] == (True, [OUTSIDE_GUEST_MODE, OUTSIDE_GUEST_MODE])
    assert tdx.wait_for_sept_zap is False and tdx.stats.busy_retries == 1
    assert [r.name for r in tdx.seamcalls("TDH.MEM.RANGE.BLOCK")] == [
        "TDX_OPERAND_BUSY|SEPT", "TDX_SUCCESS"]
    assert tdx.module.entry(M2, 0) == (FREE, 0)
    assert not kvm.bugs and check_invariants(kvm, tdx, quiescent=True) == []


def test_busy_twice_is_a_kvm_bug():
    kvm, tdx, g = td()
    map_4k_page(kvm, tdx, g, M2)
    BusyFirst(kvm, tdx, "tdh_mem_page_remove", n=2)
    g.set_memory_decrypted(M2, 4096)
    assert kvm.vm_bugged
    assert kvm.bugs[0].function == "tdx_sept_remove_private_spte"
    assert tdx.fatal_errors == [("tdx_sept_remove_private_spte", "TDH.MEM.PAGE.REMOVE",
                                 BUSY_SEPT)]
    inv = check_invariants(kvm, tdx)
    assert any("fatal TDX error" in s for s in inv)
    # The mirror was zapped but the page is still (blocked) in S-EPT: caught too.
    assert any("without a mirror leaf" in s for s in inv)


def test_aug_busy_becomes_fault_retry():
    kvm, tdx, g = td()
    BusyFirst(kvm, tdx, "tdh_mem_page_aug", n=3)
    map_4k_page(kvm, tdx, g, M2)
    assert tdx.stats.fault_busy == 3 and tdx.stats.local_retries == 3
    assert kvm.vcpus[0].stat.pf_retry == 3 and not kvm.bugs


# ---------------------------------------------------------------------------- hooks misc
def test_split_under_shared_lock_refused_and_free_spt_with_hkid_bugs():
    kvm, tdx, g = td()
    assert tdx.tdx_sept_split_private_spte(kvm, 0, 2, 0, 0x1234, True) == -EOPNOTSUPP
    assert kvm.warnings[0].function == "tdx_sept_split_private_spte" and not kvm.bugs
    assert tdx.tdx_sept_free_private_spt(kvm, 0, 1, 0x1234) == -EINVAL
    assert kvm.bugs[0].function == "tdx_sept_free_private_spt"


def test_set_private_spte_2m_before_runnable_is_a_bug():
    kvm, tdx, g = td(finalize=False)
    tdx.page_add_src = 1
    assert tdx.tdx_sept_set_private_spte(kvm, 512, 2, 0) == -EIO
    assert kvm.bugs[0].function == "tdx_sept_set_private_spte"


# -------------------------------------------------------------------- EPT violations
def test_guest_access_before_accept_kills_the_vm():
    kvm, tdx, g = td()  # SEPT_VE_DISABLE (the default)
    res = g.touch(M2)
    # The first touch faulted the page in (AUG 2M, PENDING); the re-executed access to a
    # PENDING page exits with PENDING_EPT_VIOLATION: kvm_vm_dead, not a bug.
    assert res.exit is not None and res.exit.eeq_type == 6
    assert kvm.vm_dead and not kvm.vm_bugged and not kvm.bugs
    assert g.enter() is False


def test_linux_accept_2m_sets_inhibit_at_1g_only():
    kvm, tdx, g = td()
    assert g.accept_memory(M2, 2 * M2)
    slot = kvm.memslots[0]
    assert hugepage_test_guest_inhibit(slot, 512, 3) and not hugepage_test_guest_inhibit(slot, 512, 2)
    assert tdx.module.entry(M2, 1) == (MAPPED, GMEM_PFN + 512)
    assert tdx.stats.accept_level_write_locks == 1
    assert tdx.stats.accept_4k_where_2m_possible == 0


def test_mismatch_kvm_2m_guest_accepts_4k_splits_and_inhibits():
    """§9.5(a): KVM AUGed 2M on a touch, the guest accepts 4K → EPT violation with ACCEPT
    type at 4K → write lock, split (BLOCK/TRACK/DEMOTE), GUEST_INHIBIT at 2M and 1G →
    the re-executed ACCEPT succeeds."""
    kvm, tdx, g = td(sept_ve_disable=False)
    gpa = M2 + 7 * 4096
    assert g.touch(gpa).ve
    assert tdx.module.entry(M2, 1) == (PENDING, GMEM_PFN + 512)
    writes = kvm.mmu_lock.write_acquisitions
    n = len(tdx.log)
    assert g.tdcall_accept(gpa, TDX_PS_4K) == 0
    assert tdx.leaf_sequence(n) == ["BLOCK", "TRACK", "DEMOTE", "ENTER"]
    assert kvm.mmu_lock.write_acquisitions - writes >= 1
    assert tdx.stats.accept_level_write_locks == 1 and tdx.stats.accept_exits == 1
    assert tdx.stats.accept_4k_where_2m_possible == 1
    slot = kvm.memslots[0]
    assert hugepage_test_guest_inhibit(slot, 512, 2) and hugepage_test_guest_inhibit(slot, 512, 3)
    assert tdx.module.entry(gpa, 0) == (MAPPED, GMEM_PFN + 512 + 7)
    assert tdx.module.entry(M2, 0) == (PENDING, GMEM_PFN + 512)
    assert list(kvm.stat.pages) == [512, 0, 0]
    # Accepting the rest at 2M now fails with PAGE_SIZE_MISMATCH; Linux falls back to 4K.
    assert g.accept_memory(M2, M2 + 7 * 4096)
    assert g.stats.accepts[("4K", "TDX_SUCCESS")] == 8
    assert check_invariants(kvm, tdx, quiescent=True) == []


@pytest.mark.parametrize("policy,folio", [(Policy(), 0), (Policy(tdx_huge_page=False), 9)])
def test_mismatch_kvm_4k_guest_accepts_2m_gets_size_mismatch(policy, folio):
    """§9.5(c): KVM can only map 4K (4K guest_memfd folios, or UPSTREAM); the guest's 2M
    ACCEPT exits once (KVM AUGs the first 4K page), is re-executed and fails with
    TDX_PAGE_SIZE_MISMATCH; Linux retries the range at 4K."""
    kvm, tdx, g = td(policy, folio_order=folio)
    assert g.accept_memory(M2, 2 * M2)
    assert g.stats.accepts[("2M", "TDX_PAGE_SIZE_MISMATCH|L1")] == 1
    assert g.stats.size_mismatch_fallbacks == 1
    assert g.stats.accepts[("4K", "TDX_SUCCESS")] == 512
    assert g.stats.accept_exits == 1 + 511
    assert tdx.stats.accept_4k_where_2m_possible == 0
    assert {r.level for r in tdx.seamcalls("TDH.MEM.PAGE.AUG")} == {1}
    assert list(kvm.stat.pages) == [512, 0, 0]
    assert check_invariants(kvm, tdx, quiescent=True) == []


@pytest.mark.parametrize("check_first,locks", [(True, 1), (False, 512)])
def test_lpage_check_first_write_lock_count(check_first, locks):
    """Yan's 17626 → 11: testing GUEST_INHIBIT before taking the write lock."""
    kvm, tdx, g = td(Policy(lpage_check_first=check_first))
    for i in range(512):
        assert g.try_accept_one(M2 + i * 4096, 4096, TDX_PS_4K) == 4096
    assert tdx.stats.accept_level_write_locks == locks
    assert tdx.stats.accept_4k_where_2m_possible == 1  # only the first could still be 2M


def _accept_level_scenario(policy: Policy):
    """A 2M accept of frame 2, then all 512 pages of frame 1 and 3 pages of frame 3 at 4K,
    then the 3 pages of frame 3 again after a private→shared→private round trip."""
    kvm, tdx, g = td(policy)
    assert g.accept_memory(2 * M2, 3 * M2)
    for i in range(512):
        assert g.try_accept_one(M2 + i * 4096, 4096, TDX_PS_4K) == 4096
    for _ in range(2):
        for i in range(3):
            assert g.try_accept_one(3 * M2 + i * 4096, 4096, TDX_PS_4K) == 4096
        assert g.set_memory_decrypted(3 * M2, 3 * 4096)
        assert g.map_gpa(3 * M2, 3 * 4096, False) == 0
    assert check_invariants(kvm, tdx, quiescent=True) == []
    return kvm, tdx, g


@pytest.mark.parametrize("handling,check_first,locks", [
    # v3: the 2M exit locks (inhibit at 1G was clear), then the first 4K exit of frames
    # 1 and 3; without the pre-check every ACCEPT exit: 1 + 512 + 6.
    ("v3", True, 3), ("v3", False, 519),
    # The measured draft: 2M exits never lock; one lock per frame with 4K exits (the
    # inhibit is one-way, conversions do not clear it); without the pre-check every 4K
    # ACCEPT exit: 512 + 6.
    ("draft-2025-06", True, 2), ("draft-2025-06", False, 518),
])
def test_accept_level_handling_write_lock_counts(handling, check_first, locks):
    kvm, tdx, g = _accept_level_scenario(
        Policy(accept_level_handling=handling, lpage_check_first=check_first))
    assert tdx.stats.accept_exits == 1 + 512 + 6
    assert tdx.stats.accept_level_write_locks == locks
    slot = kvm.memslots[0]
    assert hugepage_test_guest_inhibit(slot, 512, 2) and hugepage_test_guest_inhibit(slot, 1536, 2)
    assert not hugepage_test_guest_inhibit(slot, 1024, 2)  # the 2M-accepted frame
    # v3 also inhibits 1G (at the 2M and the 4K exits); the draft never does.
    assert hugepage_test_guest_inhibit(slot, 512, 3) == (handling == "v3")
    assert list(kvm.stat.pages) == [512, 1, 0]  # frame 3 ends private, not yet accepted


def test_draft_4k_accept_splits_only_the_leaf_holding_gfn():
    """Draft rule on a 2M mapping KVM made on a touch: the 4K ACCEPT exit splits the 2M
    leaf (kvm_split_boundary_leafs on [gfn, gfn + 1)) and inhibits 2M, not 1G."""
    kvm, tdx, g = td(Policy(accept_level_handling="draft-2025-06"), sept_ve_disable=False)
    gpa = M2 + 7 * 4096
    assert g.touch(gpa).ve
    assert tdx.module.entry(M2, 1) == (PENDING, GMEM_PFN + 512)
    n = len(tdx.log)
    assert g.tdcall_accept(gpa, TDX_PS_4K) == 0
    assert tdx.leaf_sequence(n) == ["BLOCK", "TRACK", "DEMOTE", "ENTER"]
    assert tdx.stats.accept_level_write_locks == 1
    slot = kvm.memslots[0]
    assert hugepage_test_guest_inhibit(slot, 512, 2) and not hugepage_test_guest_inhibit(slot, 512, 3)
    assert list(kvm.stat.pages) == [512, 0, 0]
    assert check_invariants(kvm, tdx, quiescent=True) == []


def test_accept_level_handling_is_validated():
    with pytest.raises(ValueError, match="accept_level_handling"):
        Policy(accept_level_handling="v2")


def test_accept_already_accepted_larger_mapping():
    kvm, tdx, g = td()
    assert g.accept_memory(M2, 2 * M2)
    assert g.tdcall_accept(M2 + 4096, TDX_PS_4K) == with_operand(TDX_PAGE_ALREADY_ACCEPTED, 1)
    assert g.try_accept_one(M2 + 4096, 4096, TDX_PS_4K) == 0


def test_shared_gpa_fault_uses_direct_root():
    kvm, tdx, g = td()
    assert g.set_memory_decrypted(M2, M2)  # never mapped: no SEAMCALL besides ENTER
    shared = M2 | (1 << 47)
    assert tdx.tdx_handle_ept_violation(kvm.vcpus[0], shared, exit_qual=0x2) == 5
    assert kvm.vcpus[0].root is not None and list(kvm.stat.pages) == [0, 1, 0]
    assert tdx.module.entry(M2, 1) is None or tdx.module.entry(M2, 1)[0] == FREE
    assert tdx.tdx_handle_ept_violation(kvm.vcpus[0], shared, exit_qual=0x4) == -EIO
    assert kvm.bugs[0].function == "tdx_handle_ept_violation"


# ----------------------------------------------------------------------------- MapGPA
def test_map_gpa_2mb_chunks_and_errors():
    kvm, tdx, g = td()
    assert g.map_gpa(M2 + 4096, 5 << 20, shared=True) == 0
    assert g.stats.mapgpa_chunks == 3
    assert not kvm.kvm_mem_is_private(513) and kvm.kvm_mem_is_private(512)
    assert g.map_gpa(0x800, 4096, shared=True) == 0x8000000000000002  # ALIGN_ERROR
    assert g.map_gpa(1 << 47, 4096, shared=True) == 0x8000000000000000  # INVALID_OPERAND
    assert g.set_memory_encrypted(M2 + 4096, 5 << 20)
    assert kvm.kvm_mem_is_private(513)
    assert check_invariants(kvm, tdx, quiescent=True) == []


# --------------------------------------------------------------------------- teardown
def test_teardown_removes_releases_hkid_and_reclaims():
    kvm, tdx, g = td(finalize=False)
    assert tdx.tdx_vcpu_init_mem_region(kvm.vcpus[0], 0, 16) == 0
    assert tdx.tdx_td_finalize(kvm) == 0
    assert g.accept_memory(M2, 2 * M2)
    tables = len(tdx.seamcalls("TDH.MEM.SEPT.ADD"))
    n = len(tdx.log)
    tdx.tdx_vm_destroy(kvm)
    seq = tdx.leaf_sequence(n)
    assert seq.count("REMOVE") == 17 and seq.count("WBINVD") == 16 + 512
    assert seq.count("VPFLUSHDONE") == 1 and seq.count("FREEID") == 1
    assert seq.count("RECLAIM") == tables
    assert seq.index("FREEID") < seq.index("RECLAIM")
    assert seq.index("REMOVE") < seq.index("FREEID")
    assert len(tdx.module.pamt) == 0 and tdx.hkid == -1 and tdx.torn_down
    assert kvm.tdp_mmu_roots == [] and list(kvm.stat.pages) == [0, 0, 0]
    assert not kvm.bugs and check_invariants(kvm, tdx, quiescent=True) == []


# --------------------------------------------------------------------------- counters
def test_run_counters():
    kvm, tdx, g = td(sept_ve_disable=False)
    assert g.accept_memory(M2, 2 * M2)
    assert g.set_memory_decrypted(M2, 4096)
    c = run_counters(kvm, tdx, g)
    assert c["module.seamcalls"]["TDH.MEM.RANGE.BLOCK"] == 2
    assert c["module.results"]["TDH.MEM.PAGE.DEMOTE TDX_SUCCESS"] == 1
    assert c["module.track_count"] == 2 and c["module.td_epoch"] == 3
    assert c["tdx.kicks"] == 2 and c["tdx.busy_retries"] == 0 and c["tdx.splits"] == 1
    assert c["guest.accepts"] == {"2M TDX_SUCCESS": 1}
    assert c["guest.mapgpa_chunks"] == 1
    assert c["kvm.pages_4k"] == 511
    assert isinstance(c["kvm.mmu_lock.write_acquisitions"], int)
    assert Counter(r.leaf for r in tdx.log)["TDH.MEM.TRACK"] == 2


def test_tracer_sees_seamcalls():
    events = []
    kvm, tdx = create_td(VmConfig(tdx=True, mem_bytes=8 << 20), tracer=events.append)
    assert tdx.tdx_td_finalize(kvm) == 0
    TdGuest(kvm, tdx).accept_memory(M2, M2 + 4096)
    names = [type(e).__name__ for e in events]
    assert "SeamcallRecord" in names and "KvmPageFault" in names
