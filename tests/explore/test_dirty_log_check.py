"""Issue 14, session 6: dirty logging's promise to userspace (``scenario.check_dirty_log``)
and the built-ins that race it: ``dirty_log_harvest`` (KVM_GET_DIRTY_LOG's xchg,
write-protect and flush against a guest that keeps writing; the fast page fault logs the
page lockless) and ``dirty_log_clear`` (QEMU's manual protect with INITIALLY_SET: the first
KVM_CLEAR_DIRTY_LOG splits the huge page the guest writes through).  Each planted bug is a
real one: the write escapes the migration, or a writable translation outlives the harvest."""

from __future__ import annotations

import inspect

import pytest

from tdpsim.explore import DporScheduler, PctScheduler, explore, load_scenario
from tdpsim.explore import ops
from tdpsim.explore.ops import OpContext, op_get_dirty_log
from tdpsim.explore.scenario import check_dirty_log
from tdpsim.model import dirty_log, mmu_fault
from tdpsim.model.kvm import Kvm
from tdpsim.model.policy import Policy
from tdpsim.model.vmm import VmConfig, create_vm

NAME = "dirty_log_harvest"


def _first_failure(executions=1000, name=NAME):
    rep = explore(load_scenario(name), DporScheduler(max_executions=executions))
    assert rep.failure is not None
    return rep.failure_index, rep.failure.failure


@pytest.mark.parametrize("name,executions", [(NAME, 174), ("dirty_log_clear", 104)])
def test_clean_under_exhaustive_dpor_and_pct(name, executions):
    sched = DporScheduler(max_executions=1000)
    rep = explore(load_scenario(name), sched)
    assert rep.failure is None and sched.exhausted
    assert rep.executions == executions
    assert explore(load_scenario(name), PctScheduler(seed=0, executions=300)).failure is None


def test_fast_page_fault_that_does_not_log_loses_the_write(monkeypatch):
    def unlogged(vcpu, fault, sp, index, old_spte, new_spte):
        return mmu_fault.try_cmpxchg64(vcpu.kvm, sp, index, old_spte, new_spte)[0]

    monkeypatch.setattr(mmu_fault, "fast_pf_fix_direct_spte", unlogged)
    index, f = _first_failure()
    assert (index, f.kind) == (0, "DIRTY_LOG")
    assert f.message == ("vCPU 0's write to gfn 0x5 after dirty logging was enabled is in no "
                         "dirty log harvested after it nor in the bitmap: a live migration "
                         "loses it")


def test_harvest_that_does_not_write_protect_loses_the_write(monkeypatch):
    monkeypatch.setattr(dirty_log, "kvm_arch_mmu_enable_log_dirty_pt_masked",
                        lambda *args: None)
    index, f = _first_failure()
    assert (index, f.kind) == (0, "DIRTY_LOG")


def test_harvest_that_does_not_flush_leaves_a_writable_translation(monkeypatch):
    monkeypatch.setattr(Kvm, "kvm_flush_remote_tlbs_memslot", lambda self, slot: None)
    index, f = _first_failure()
    assert (index, f.kind, f.thread) == (7, "TLB", "migrate")
    assert f.message.startswith("get_dirty_log() returned while vCPU 0 (in guest mode) still "
                                "caches gfn 0x5 -> pfn 0x1000005 writable")


def test_harvest_clearing_the_bitmap_after_write_protecting_loses_the_write(monkeypatch):
    # The order kvm_get_dirty_log_protect keeps on purpose: xchg the word, then protect.
    # Clearing it only after mmu_lock is dropped drops the bit a fast page fault set in
    # between (it made the SPTE writable again), so later writes go unlogged.
    src = inspect.getsource(dirty_log.kvm_get_dirty_log_protect)
    xchg = "            _set_word(dirty_bitmap, i, 0)  # xchg(&dirty_bitmap[i], 0)\n"
    unlock = "        kvm.mmu_lock.write_unlock()\n"
    assert src.count(xchg) == 1 and src.count(unlock) == 1
    src = src.replace(xchg, "").replace(unlock, unlock + (
        "        for i in range(n // 8):\n"
        "            if _word(buffer, i):\n"
        "                _set_word(dirty_bitmap, i, 0)\n"))
    ns = dict(vars(dirty_log))
    exec(src, ns)  # noqa: S102 - the model's own source, one statement moved
    monkeypatch.setattr(ops, "kvm_get_dirty_log_protect", ns["kvm_get_dirty_log_protect"])
    index, f = _first_failure()
    assert (index, f.kind) == (99, "DIRTY_LOG")
    # PCT reaches the same order (the fast page fault between the protect and the clear).
    rep = explore(load_scenario(NAME), PctScheduler(seed=0, executions=300))
    # 47 -> 91: the point after srcu_read_lock moved PCT's schedules (session 9).
    assert (rep.failure_index, rep.failure.failure.kind) == (91, "DIRTY_LOG")


def test_first_clear_that_leaves_the_huge_page_writable_loses_the_write(monkeypatch):
    # With INITIALLY_SET nothing was split or write-protected at enable: the first
    # KVM_CLEAR_DIRTY_LOG of a range must do it, or the guest keeps writing through the 2M
    # leaf (clearing W on 4K leaves finds none).
    monkeypatch.setattr(dirty_log, "kvm_mmu_try_split_huge_pages", lambda *args: None)
    monkeypatch.setattr(dirty_log, "kvm_mmu_slot_gfn_write_protect", lambda *args: False)
    index, f = _first_failure(name="dirty_log_clear")
    assert (index, f.kind) == (0, "DIRTY_LOG")


def test_manual_protect_harvest_clears_only_what_it_reported():
    ctx = _ctx()
    assert ops.op_manual_protect(ctx) == 0
    ops.op_dirty_log(ctx, enable=True)
    slot = ctx.kvm.memslots[0]
    assert slot.dirty_bitmap[:8] == b"\xff" * 8  # INITIALLY_SET
    assert op_get_dirty_log(ctx, clear_pages=64) == 64
    assert slot.dirty_bitmap[:8] == bytes(8) and slot.dirty_bitmap[8] == 0xFF
    assert op_get_dirty_log(ctx, clear_pages=64) == 0
    with pytest.raises(ValueError, match=r"clear_pages: 10 is not a multiple of 64"):
        op_get_dirty_log(ctx, clear_pages=10)


def _ctx(policy=None):
    return OpContext(create_vm(VmConfig(nr_vcpus=1, mem_bytes=4 << 20), policy))


def test_get_dirty_log_needs_logging_and_reports_what_it_harvests():
    ctx = _ctx()
    assert op_get_dirty_log(ctx) == -2  # -ENOENT: slot 0 does not log
    ops.op_dirty_log(ctx, enable=True)
    assert ctx.dirty_armed
    ctx.kvm.memslots[0].mark_page_dirty_in_slot(7)
    ctx.kvm.memslots[0].mark_page_dirty_in_slot(9)
    assert op_get_dirty_log(ctx) == 2
    assert ctx.dirty_harvests == [(2, frozenset({7, 9}))]
    assert op_get_dirty_log(ctx) == 0  # harvested: the bits were taken


def test_check_needs_a_harvest_after_the_write_or_the_bit():
    ctx = _ctx()
    ops.op_dirty_log(ctx, enable=True)
    ctx.dirty_writes.append((ctx.dirty_record(False), 0, 7))
    assert check_dirty_log(ctx)[0] == "DIRTY_LOG"  # neither harvested nor in the bitmap
    ctx.kvm.memslots[0].mark_page_dirty_in_slot(7)
    assert check_dirty_log(ctx) is None  # the final pass will report it
    assert op_get_dirty_log(ctx) == 1
    assert check_dirty_log(ctx) is None  # reported by a harvest that returned after it
    ctx.dirty_writes.append((ctx.dirty_record(False), 0, 7))
    assert check_dirty_log(ctx)[0] == "DIRTY_LOG"  # a later write nobody logged
    ops.op_dirty_log(ctx, enable=False)
    assert not ctx.dirty_armed and check_dirty_log(ctx) is None  # migration over


def test_pml_leaves_the_check_unarmed():
    # The explorer's guest accesses set no D bits, so PML would log nothing here.
    ctx = _ctx(Policy(enable_pml=True))
    ops.op_dirty_log(ctx, enable=True)
    assert not ctx.dirty_armed
