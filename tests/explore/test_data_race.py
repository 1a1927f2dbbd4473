"""Issue 14, session 4: the data-race check (``tracking.RaceDetector``, KCSAN's job): the
fields tdp_mmu_pages_lock protects, touched by two threads without a common exclusion, one
access a write; and the scenario where a zap yields mmu_lock (``tlb_zap_yield``).  Each
fires on a bug planted with monkeypatch and stays silent on the unmodified model."""

from __future__ import annotations

from tdpsim.explore import DporScheduler, PctScheduler, explore, load_scenario
from tdpsim.explore import tracking
from tdpsim.explore.tracking import RACES, TrackedNxList
from tdpsim.model import mmu, tdp_mmu
from tdpsim.model.mmu_internal import KvmMmuPageRole
from tdpsim.model.sched import ROOTS, ROOTS_KEY


# Not a built-in: one execution is ~10,000 steps (the zap of a whole root), ~12 per second.
# Under PCT (seed 0, execution 310) it once reported a false LIVELOCK: vCPU 1 parked in its
# RET_PF_RETRY wait although its next attempt reloads the invalidated root, because
# ``role.invalid`` had no footprint key (now ``tracking.KEY_ROOTS_INVALID``; 1,000 PCT
# executions clean).
NX_ZAP_ROOTS = '''name = "nx_zap_roots"
summary = "Invalidated roots are zapped under the read lock while a vCPU tracks a new NX huge page"
description = """
The NX huge page workaround on a direct root (kvm.nx_huge_pages = on).  Setup takes an exec
fault at gfn 0: the 2M-eligible frame is mapped at 4K and its page table is tracked as a
possible NX huge page.  kvm_mmu_zap_all_fast invalidates the root and zaps it under the
*read* mmu_lock (kvm_tdp_mmu_zap_invalidated_roots): handle_removed_pt(shared) unlinks the
tracked table, tdp_mmu_unlink_sp untracking it under tdp_mmu_pages_lock.  Concurrently vCPU 1
takes an exec fault in the next 2M frame (gfn 0x209), also under the read lock, whose new 4K
table is tracked under tdp_mmu_pages_lock (kvm_tdp_mmu_map).  Only tdp_mmu_pages_lock keeps
the two from editing possible_nx_huge_pages at once: the data-race check sees a list touched
without it.
"""

[vm]
nr_vcpus = 2
mem_bytes = 4194304

[policy]
nx_huge_pages = true

[explore]
retry_bound = 64

[[setup]]
op = "fault"
vcpu = 0
gfn = 0
exec = true
write = false

[[threads]]
name = "zap_all_fast"
ops = [{ op = "invalidate_roots" }]

[[threads]]
name = "vcpu1"
ops = [{ op = "fault", vcpu = 1, gfn = 521, exec = true, write = false }]
'''


def _first_failure(name, executions=50):
    rep = explore(load_scenario(name), DporScheduler(max_executions=executions))
    assert rep.failure is not None
    return rep.failure_index, rep.failure.failure


def _nx_zap_roots(tmp_path):
    path = tmp_path / "nx_zap_roots.toml"
    path.write_text(NX_ZAP_ROOTS)
    return str(path)


def _unlink_untracking_outside_pages_lock(kvm, sp):
    tdp_mmu.tdp_unaccount_mmu_page(kvm, sp)
    if not sp.nx_huge_page_disallowed:
        return
    kvm.tdp_mmu_pages_lock.lock()
    sp.nx_huge_page_disallowed = False
    kvm.tdp_mmu_pages_lock.unlock()
    mmu.untrack_possible_nx_huge_page(kvm, sp, mmu.KVM_TDP_MMU)


def test_untrack_outside_pages_lock_is_a_data_race(monkeypatch, tmp_path):
    # tdp_mmu_unlink_sp untracking the NX page after dropping tdp_mmu_pages_lock (the
    # kernel has no lockdep assert there): the zapper's list_del races vCPU 1's list_add.
    monkeypatch.setattr(tdp_mmu, "tdp_mmu_unlink_sp", _unlink_untracking_outside_pages_lock)
    index, f = _first_failure(_nx_zap_roots(tmp_path))
    assert (index, f.kind, f.thread) == (0, "DATA_RACE", "vcpu1")
    assert f.message == (
        "data race on kvm->arch.possible_nx_huge_pages: write by vcpu1 in "
        "track_possible_nx_huge_page <- _install_child_sp <- kvm_tdp_mmu_map (holding "
        "tdp_mmu_pages_lock, mmu_lock read) vs write by zap_all_fast in "
        "untrack_possible_nx_huge_page <- handle_removed_pt <- handle_changed_spte "
        "(holding mmu_lock read)")


def test_recovery_untracking_outside_pages_lock_is_a_data_race(monkeypatch):
    # The built-in nx_recover_track (session 5): the same planted bug, reached by huge-page
    # recovery replacing the tracked table (~1,100 steps an execution, not ~10,000).
    monkeypatch.setattr(tdp_mmu, "tdp_mmu_unlink_sp", _unlink_untracking_outside_pages_lock)
    index, f = _first_failure("nx_recover_track")
    assert (index, f.kind, f.thread) == (0, "DATA_RACE", "vcpu1")
    assert f.message == (
        "data race on kvm->arch.possible_nx_huge_pages: write by vcpu1 in "
        "track_possible_nx_huge_page <- _install_child_sp <- kvm_tdp_mmu_map (holding "
        "tdp_mmu_pages_lock, mmu_lock read) vs write by recover in "
        "untrack_possible_nx_huge_page <- handle_removed_pt <- handle_changed_spte "
        "(holding mmu_lock read)")


def test_nx_recover_track_is_clean_under_exhaustive_dpor():
    sched = DporScheduler(max_executions=1000)
    rep = explore(load_scenario("nx_recover_track"), sched)
    assert rep.failure is None and sched.exhausted
    # 30 -> 31 with the point after srcu_read_lock in op_fault (session 9).
    assert (rep.executions, rep.pruned) == (31, 0)


def test_root_list_del_without_pages_lock_is_a_data_race(monkeypatch):
    # kvm_tdp_mmu_put_root's list_del_rcu without tdp_mmu_pages_lock, racing the vCPU's
    # list_add_rcu of its new root (both under the read mmu_lock).
    def put_root(kvm, root):
        root.tdp_mmu_root_count -= 1
        if root.tdp_mmu_root_count:
            return
        kvm.sched.point(ROOTS, ROOTS_KEY, True)
        kvm.tdp_mmu_roots.remove(root)
        tdp_mmu.tdp_mmu_free_sp_rcu(kvm, root)

    monkeypatch.setattr(tdp_mmu, "kvm_tdp_mmu_put_root", put_root)
    index, f = _first_failure("roots_invalidate")
    assert f.kind == "DATA_RACE"
    assert f.message.startswith("data race on kvm->arch.tdp_mmu_roots: ")
    assert "(holding tdp_mmu_pages_lock, mmu_lock read)" in f.message
    assert "(holding mmu_lock read)" in f.message


def test_unmodified_nx_scenarios_have_no_data_race(tmp_path):
    for name in (_nx_zap_roots(tmp_path), "nx_recovery", "tlb_nx_recovery", "roots_alloc_race",
                 "nx_recover_track"):
        sc = load_scenario(name)
        for sched in (DporScheduler(max_executions=60), PctScheduler(seed=0, executions=60)):
            rep = explore(sc, sched)
            assert rep.failure is None, (name, rep.failure and rep.failure.failure)


def test_detector_is_off_outside_the_explorer_and_ignores_marked_reads(tmp_path):
    sc = load_scenario(_nx_zap_roots(tmp_path))
    kvm = sc._setup().kvm  # tracked, as every explored world
    pages = mmu.possible_nx_huge_pages(kvm, mmu.KVM_TDP_MMU)
    assert type(pages) is TrackedNxList and len(pages) == 1
    assert RACES.kvm is None
    seen = {f: dict(d) for f, d in RACES.seen.items()}
    pages.remove(pages[0])  # a sequential run: no explorer, nothing recorded
    assert RACES.seen == seen
    RACES.start(kvm, ["a", "b"])
    try:
        kvm.sched.cpu = 0
        len(pages)  # READ_ONCE(nr_pages): marked, never a race
        kvm.sched.cpu = 1
        pages.append(None)
        assert RACES.found is None
        kvm.sched.cpu = 0
        bool(pages)  # list_empty, a plain read with no lock held, after b's plain write
        assert RACES.found == (
            "data race on kvm->arch.possible_nx_huge_pages: read by a in ? (holding no lock) "
            "vs write by b in ? (holding no lock)")  # no model function on the stack
    finally:
        RACES.stop()


def test_zap_yield_is_clean_and_yielding_without_the_flush_is_caught(monkeypatch):
    sched = DporScheduler(max_executions=100)
    rep = explore(load_scenario("tlb_zap_yield"), sched)
    # 5 executions, 1 sleep-blocked (6 before session 4's DPOR change: one more replayed to
    # a branch it could only drop); the 4 that run to the end are unchanged.
    assert (rep.failure, sched.exhausted, rep.executions, rep.pruned) == (None, True, 5, 1)
    real = tdp_mmu.tdp_mmu_iter_cond_resched
    # tdp_mmu_iter_cond_resched dropping mmu_lock without the caller's pending flush.
    monkeypatch.setattr(tdp_mmu, "tdp_mmu_iter_cond_resched",
                        lambda kvm, iter, flush, shared: real(kvm, iter, False, shared))
    index, f = _first_failure("tlb_zap_yield")
    assert (index, f.kind, f.thread) == (0, "TLB", "zap")
    assert f.message.startswith("zap_leafs(start=0x0, end=0x400) returned while vCPU 0 (in "
                                "guest mode) still caches gfn 0x5")


def test_root_invalid_is_a_footprint_key():
    # kvm_tdp_mmu_invalidate_roots' store and every later load of role.invalid (the fault's
    # kvm_mmu_reload / is_page_fault_stale) are one key, so a RET_PF_RETRY wait that read
    # the root valid is woken by the invalidation (the retry reloads the root).
    class Root:
        role = KvmMmuPageRole(4)

    root = Root()
    tracking._track_role(root)
    sink: list = []
    tracking.TRACKER.sink = sink
    try:
        assert not root.role.invalid
        root.role.invalid = True
        word = root.role.word
    finally:
        tracking.TRACKER.sink = None
    key = tracking.KEY_ROOTS_INVALID
    assert sink == [(key, False), (key, True), (key, False)]
    assert word & (1 << 11)  # role.invalid's bit in union kvm_mmu_page_role
