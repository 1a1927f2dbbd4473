"""A TD's memslot deleted while a vCPU's private fault retries locally (``td_memslot_delete``):
tdx_handle_ept_violation keeps kvm->srcu across its retries, so it must give up on a
KVM_MEMSLOT_INVALID slot or the deletion's synchronize_srcu never returns."""

from __future__ import annotations

from tdpsim.explore import DporScheduler, PctScheduler, explore, load_scenario
from tdpsim.explore.ops import OpContext, op_set_memory_region
from tdpsim.model import tdx as tdx_mod
from tdpsim.model.tdx import create_td
from tdpsim.model.vmm import VmConfig

import pytest


def test_clean_under_exhaustive_dpor_and_pct():
    sched = DporScheduler(max_executions=2000)
    rep = explore(load_scenario("td_memslot_delete"), sched)
    assert rep.failure is None and sched.exhausted and rep.executions == 11
    rep = explore(load_scenario("td_memslot_delete"), PctScheduler(seed=0, depth=3,
                                                                   executions=300))
    assert rep.failure is None and rep.executions == 300


def test_local_retry_on_an_invalid_slot_hangs_the_deletion(monkeypatch):
    # The bail-out tests slot->flags & KVM_MEMSLOT_INVALID: with the flag read as 0 the
    # loop retries on, holding SRCU, while kvm_invalidate_memslot waits for it.
    monkeypatch.setattr(tdx_mod, "KVM_MEMSLOT_INVALID", 0)
    rep = explore(load_scenario("td_memslot_delete"), DporScheduler(max_executions=100))
    f = rep.failure.failure
    assert (rep.failure_index, f.kind) == (6, "LIVELOCK")
    assert f.message == ("no runnable thread: vcpu0 retrying (RET_PF_RETRY) with nothing "
                         "left to change; userspace waiting for srcu")


def test_a_td_can_only_delete_a_memslot():
    kvm, tdx = create_td(VmConfig(tdx=True, nr_vcpus=1, mem_bytes=4 << 20))
    ctx = OpContext(kvm, tdx)
    with pytest.raises(ValueError, match="can only delete a memslot here"):
        op_set_memory_region(ctx, slot=1, gfn=0x400, npages=0x200)
    op_set_memory_region(ctx, slot=0, npages=0)
    assert list(kvm.memslots) == []
