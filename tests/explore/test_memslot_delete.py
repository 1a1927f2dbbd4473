"""Memslot DELETE/MOVE raced against vCPUs (``set_memory_region``, ``memslot_delete``,
``memslot_move``): the ioctl goes through ``kvm_set_memslot`` with an SRCU wait at each
memslot swap; the TLB check sees a zap without its flush and the memslot invariant a leaf
left on a deleted slot."""

from __future__ import annotations

import pytest

from tdpsim.explore import DporScheduler, PctScheduler, explore, load_scenario
from tdpsim.explore.ops import OpContext, op_guest_access, op_set_memory_region
from tdpsim.explore.scenario import ScenarioError, parse_scenario
from tdpsim.model import kvm_main
from tdpsim.model.invariants import check_mmu_invariants
from tdpsim.model.kvm_main import (
    KVM_FILTER_PRIVATE, KVM_FILTER_SHARED, KVM_MEMSLOT_INVALID, kvm_replace_memslot,
    kvm_swap_active_memslots, kvm_tdp_mmu_unmap_gfn_range,
)
from tdpsim.model.vmm import VmConfig, create_vm

SLOT1 = [{"op": "disable_quirks", "quirks": 0x80},
         {"op": "set_memory_region", "slot": 1, "gfn": 0x400, "npages": 0x200}]


def _scenario(setup, threads):
    raw = {"name": "t", "vm": {"nr_vcpus": 2, "mem_bytes": 4 << 20}, "setup": setup,
           "threads": [{"name": "t0", "ops": threads}]}
    return parse_scenario(raw, "t.toml", {})


@pytest.mark.parametrize("name, executions", [("memslot_delete", 226), ("memslot_move", 511)])
def test_memslot_scenarios_are_clean_under_exhaustive_dpor_and_pct(name, executions):
    sched = DporScheduler(max_executions=5000)
    rep = explore(load_scenario(name), sched)
    assert rep.failure is None and sched.exhausted
    assert rep.executions == executions
    rep = explore(load_scenario(name), PctScheduler(seed=0, depth=3, executions=500))
    assert rep.failure is None and rep.executions == 500


def test_zap_without_flush_leaves_the_guest_a_translation(monkeypatch):
    def no_flush(kvm, slot):
        kvm.mmu_lock.write_lock()
        kvm_tdp_mmu_unmap_gfn_range(kvm, slot.base_gfn, slot.end_gfn,
                                    KVM_FILTER_SHARED | KVM_FILTER_PRIVATE, True, False)
        kvm.mmu_lock.write_unlock()

    monkeypatch.setattr(kvm_main, "kvm_arch_flush_shadow_memslot", no_flush)
    rep = explore(load_scenario("memslot_delete"), DporScheduler(max_executions=10))
    f = rep.failure.failure
    assert (rep.failure_index, f.kind, f.thread) == (0, "TLB", "delete")
    assert f.message.startswith("set_memory_region(slot=1) returned while vCPU 0 (in guest "
                                "mode) still caches gfn 0x400 -> pfn 0x1000400")


def test_zap_before_invalid_leaves_a_leaf_on_the_deleted_slot(monkeypatch):
    def invalidate_late(kvm, old):
        kvm_main.kvm_arch_flush_shadow_memslot(kvm, old)
        invalid_slot = kvm_main.copy.copy(old)
        invalid_slot.flags |= KVM_MEMSLOT_INVALID
        kvm_replace_memslot(kvm, old, invalid_slot)
        kvm_swap_active_memslots(kvm)
        return invalid_slot

    monkeypatch.setattr(kvm_main, "kvm_invalidate_memslot", invalidate_late)
    rep = explore(load_scenario("memslot_delete"), DporScheduler(max_executions=50))
    f = rep.failure.failure
    assert (rep.failure_index, f.kind) == (1, "INVARIANT")
    assert f.message == ("direct L2 gfn 0x400: maps pfn 0x1000400, but no memslot holds the "
                         "gfn (left behind by a memslot DELETE/MOVE: use after free)")


def test_memslot_invariant_on_a_hand_built_stale_leaf():
    ctx = OpContext(create_vm(VmConfig(nr_vcpus=1, mem_bytes=4 << 20)))
    op_set_memory_region(ctx, 1, 0x400, 0x200)
    kvm = ctx.kvm
    assert op_guest_access(ctx, 0, 0x401) == 0x1000401
    assert check_mmu_invariants(kvm) == []
    kvm_replace_memslot(kvm, kvm.memslots[1], None)  # dropped without its zap
    assert check_mmu_invariants(kvm) == [
        "direct L2 gfn 0x400: maps pfn 0x1000400, but no memslot holds the gfn (left behind "
        "by a memslot DELETE/MOVE: use after free)"]
    kvm.vcpus[0].root.role.invalid = True  # an invalid root takes no new entries
    assert check_mmu_invariants(kvm) == []


def test_delete_then_access_is_mmio_and_move_maps_the_new_gfns():
    ctx = OpContext(create_vm(VmConfig(nr_vcpus=1, mem_bytes=4 << 20)))
    kvm = ctx.kvm
    op_set_memory_region(ctx, 1, 0x400, 0x200)
    assert op_guest_access(ctx, 0, 0x400) == 0x1000400
    op_set_memory_region(ctx, 1, 0x800, 0x200)  # MOVE: the same host memory at 0x800
    assert [(s.id, s.base_gfn, s.flags) for s in kvm.memslots] == [(0, 0, 0), (1, 0x800, 0)]
    assert check_mmu_invariants(kvm) == []
    assert op_guest_access(ctx, 0, 0x800) == 0x1000400
    op_set_memory_region(ctx, 1)  # DELETE
    assert [s.id for s in kvm.memslots] == [0] and 1 not in kvm.memslot_id_hash
    assert op_guest_access(ctx, 0, 0x800) == -2  # -ENOENT: emulated MMIO
    assert check_mmu_invariants(kvm) == []


@pytest.mark.parametrize("spec, msg", [
    ({"op": "set_memory_region", "slot": 2},
     "setup[2] (set_memory_region): slot: no memslot 2 to delete"),
    ({"op": "set_memory_region", "slot": 2, "gfn": 0x500, "npages": 0x10},
     "setup[2] (set_memory_region): KVM_SET_USER_MEMORY_REGION2 on slot 2 (gfn 0x500, "
     "npages 0x10) failed: -EEXIST: overlaps another memslot"),
    ({"op": "set_memory_region", "slot": 1, "gfn": 0x400, "npages": 0x10},
     "setup[2] (set_memory_region): KVM_SET_USER_MEMORY_REGION2 on slot 1 (gfn 0x400, "
     "npages 0x10) failed: -EINVAL: KVM refused the region (misaligned, a new size for an "
     "existing slot, or beyond the guest's physical address width)"),
    ({"op": "set_memory_region", "slot": 3, "gfn": 0x800, "npages": 1, "host_page_level": 4},
     "setup[2] (set_memory_region): host_page_level: expected 1 (4K), 2 (THP) or 3 (hugetlb "
     "1G), got 4"),
    ({"op": "disable_quirks", "quirks": 1 << 20},
     "setup[2] (disable_quirks): quirks: 0x100000 has bits KVM_CAP_DISABLE_QUIRKS2 does not "
     "know (-EINVAL)"),
])
def test_bad_memslot_ops_are_clear_errors(spec, msg):
    sc = _scenario(SLOT1 + [spec], [{"op": "guest_access", "vcpu": 0, "gfn": 5}])
    with pytest.raises(ScenarioError) as e:
        sc.build()
    assert str(e.value) == f"t.toml: {msg}"


def test_bad_slot_in_a_thread_is_a_finding_naming_it():
    sc = _scenario(SLOT1, [{"op": "set_memory_region", "slot": 7}])
    rep = explore(sc, DporScheduler(max_executions=5))
    f = rep.failure.failure
    assert (f.kind, f.thread) == ("EXCEPTION", "t0")
    assert f.message == "ValueError: slot: no memslot 7 to delete"


def test_private_memory_vms_can_only_delete():
    raw = {"name": "t", "vm": {"sw_protected": True, "mem_bytes": 4 << 20},
           "setup": [{"op": "set_memory_region", "slot": 1, "gfn": 0x400, "npages": 0x10}],
           "threads": [{"name": "t0", "ops": [{"op": "flush"}]}]}
    with pytest.raises(ScenarioError, match="can only delete a memslot here"):
        parse_scenario(raw, "t.toml", {}).build()
