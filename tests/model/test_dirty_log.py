"""Dirty logging on the TDP MMU (model/dirty_log.py): KVM_GET/CLEAR_DIRTY_LOG,
KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 with KVM_DIRTY_LOG_INITIALLY_SET, PML, the D-bit and
write-protect paths, and KVM's own dirty_log_page_splitting_test."""

from __future__ import annotations

import pytest

from tdpsim.model import spte as S
from tdpsim.model.dirty_log import (
    KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2,
    KVM_DIRTY_LOG_INITIALLY_SET,
    KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE,
    kvm_dirty_bitmap_bytes,
)
from tdpsim.model.ioctl import (
    kvm_vm_ioctl_clear_dirty_log,
    kvm_vm_ioctl_enable_cap,
    kvm_vm_ioctl_get_dirty_log,
)
from tdpsim.model.kvm import Kvm
from tdpsim.model.kvm_main import kvm_mmu_slot_apply_flags, kvm_set_memory_region
from tdpsim.model.memslot import KVM_MEM_LOG_DIRTY_PAGES, HostBacking, KvmMemorySlot
from tdpsim.model.mmu_fault import kvm_mmu_load
from tdpsim.model.mmu_internal import EINVAL, ENOENT
from tdpsim.model.policy import Policy
from tdpsim.model.spte import PG_LEVEL_2M
from tdpsim.model.vmx import ept_hw_access, handle_ept_violation

from kvm_helpers import leaf_at

MANUAL = KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE | KVM_DIRTY_LOG_INITIALLY_SET
W, D, MMU_W = S.PT_WRITABLE_MASK, S.VMX_EPT_DIRTY_BIT, S.EPT_SPTE_MMU_WRITABLE

VCPUS, SLOTS, ITERATIONS = 2, 2, 2
PER_VCPU_PAGES = 2048            # 8 MiB per vCPU (the selftest's -b 8M)
HOST_NUM_PAGES = VCPUS * PER_VCPU_PAGES
PAGES_PER_SLOT = HOST_NUM_PAGES // SLOTS
BASE_GFN = 0x40000               # test memory above 1 GiB, 2M-aligned


class Memstress:
    """The selftest's VM: ``memstress_create_vm`` with 2 vCPUs and 2 data slots backed
    by 2M hugetlb pages; each vCPU writes every page of its share per iteration."""

    def __init__(self, policy: Policy, caps: int = 0) -> None:
        self.kvm = kvm = Kvm(policy=policy, nr_vcpus=VCPUS)
        if caps:
            assert kvm_vm_ioctl_enable_cap(kvm, KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2, caps) == 0
        self.slots = []
        for i in range(SLOTS):
            gfn = BASE_GFN + i * PAGES_PER_SLOT
            hva = (64 << 30) + (gfn << 12)
            slot = KvmMemorySlot(1 + i, gfn, PAGES_PER_SLOT, hva,
                                 HostBacking(hva, PAGES_PER_SLOT << 12, PG_LEVEL_2M))
            kvm_set_memory_region(kvm, slot)
            self.slots.append(slot)
        for vcpu in kvm.vcpus:
            kvm_mmu_load(vcpu)

    def run_vcpu_iteration(self) -> None:
        for v, vcpu in enumerate(self.kvm.vcpus):
            for gfn in range(BASE_GFN + v * PER_VCPU_PAGES, BASE_GFN + (v + 1) * PER_VCPU_PAGES):
                guest_write(vcpu, gfn)

    def stats(self) -> tuple[int, int]:
        """(pages_4k, hugepages)."""
        p = self.kvm.stat
        return p.pages_4k, p.pages_2m + p.pages_1g

    def set_dirty_logging(self, on: bool) -> None:
        for slot in self.slots:
            kvm_mmu_slot_apply_flags(self.kvm, slot, KVM_MEM_LOG_DIRTY_PAGES if on else 0)

    def get_dirty_log(self) -> list[bytearray]:
        bitmaps = []
        for slot in self.slots:
            bm = bytearray(kvm_dirty_bitmap_bytes(slot))
            assert kvm_vm_ioctl_get_dirty_log(self.kvm, slot.id, bm) == 0
            bitmaps.append(bm)
        return bitmaps

    def clear_dirty_log(self, bitmaps: list[bytearray]) -> None:
        for slot, bm in zip(self.slots, bitmaps):
            assert kvm_vm_ioctl_clear_dirty_log(self.kvm, slot.id, 0, PAGES_PER_SLOT, bm) == 0


def guest_write(vcpu, gfn: int) -> None:
    """A guest store: the CPU completes it or takes an EPT violation KVM handles."""
    for _ in range(4):
        qual = ept_hw_access(vcpu, gfn << 12, write=True)
        if not qual:
            return
        handle_ept_violation(vcpu, gfn << 12, qual)
    raise AssertionError(f"no forward progress writing gfn {gfn:#x}")


def popcount(bitmaps) -> int:
    return sum(bin(b).count("1") for bm in bitmaps for b in bm)


@pytest.mark.parametrize("pml", [False, True])
@pytest.mark.parametrize("caps", [0, MANUAL])
def test_dirty_log_page_splitting(caps, pml):
    """tools/testing/selftests/kvm/x86/dirty_log_page_splitting_test.c: splitting happens
    when logging is enabled without manual protect, and at the first clear with
    MANUAL_PROTECT_ENABLE | INITIALLY_SET; after logging is disabled and memory is
    touched again the huge-page counts are back.  The selftest asserts ``pages_4k >=
    host_num_pages``; the model has no code slot, so it is exact."""
    t = Memstress(Policy(eager_page_split=True, enable_pml=pml), caps)
    t.run_vcpu_iteration()
    populated = t.stats()
    assert populated == (0, HOST_NUM_PAGES // 512)  # all 2M
    t.set_dirty_logging(True)
    enabled = t.stats()
    clear_pass = []
    for _ in range(ITERATIONS):
        t.run_vcpu_iteration()
        bitmaps = t.get_dirty_log()
        assert popcount(bitmaps) == HOST_NUM_PAGES  # every page was written (or INIT_SET)
        if caps:
            t.clear_dirty_log(bitmaps)
            clear_pass.append(t.stats())
    t.set_dirty_logging(False)
    t.run_vcpu_iteration()
    repopulated = t.stats()
    if caps:
        assert clear_pass[0] == (HOST_NUM_PAGES, 0)
        assert enabled[1] == populated[1]
    else:
        assert enabled == (HOST_NUM_PAGES, 0)
    assert repopulated == populated


def test_initially_set_enable_touches_nothing():
    """INITIALLY_SET: no split, no write-protect, no flush at enable; the bitmap starts
    all set (bits past the slot's end stay clear)."""
    t = Memstress(Policy(), MANUAL)
    t.run_vcpu_iteration()
    kvm = t.kvm
    flushes = kvm.stat.remote_tlb_flush_requests
    reads = kvm.mmu_lock.read_acquisitions
    t.set_dirty_logging(True)
    assert kvm.stat.remote_tlb_flush_requests == flushes
    assert kvm.mmu_lock.read_acquisitions == reads
    level, spte = leaf_at(kvm, kvm.vcpus[0].root, BASE_GFN)
    assert level == 2 and spte & W
    assert t.slots[0].dirty_bitmap == bytearray(b"\xff" * (PAGES_PER_SLOT // 8))


def test_enable_without_pml_splits_and_write_protects_4k():
    """kvm_mmu_slot_apply_flags: eager split (read lock; each of the slot's 4 splits
    drops and retakes it to allocate with GFP_KERNEL_ACCOUNT), write-protect at 4K (its
    own read lock), one memslot flush."""
    t = Memstress(Policy())
    t.run_vcpu_iteration()
    kvm, slot = t.kvm, t.slots[0]
    flushes, reads = kvm.stat.remote_tlb_flush_requests, kvm.mmu_lock.read_acquisitions
    kvm_mmu_slot_apply_flags(kvm, slot, KVM_MEM_LOG_DIRTY_PAGES)
    assert kvm.stat.remote_tlb_flush_requests == flushes + 1
    assert kvm.mmu_lock.read_acquisitions == reads + 2 + 4
    level, spte = leaf_at(kvm, kvm.vcpus[0].root, BASE_GFN + 3)
    assert level == 1 and spte & (W | MMU_W) == MMU_W
    assert S.spte_to_pfn(spte) == slot.gfn_to_hva(BASE_GFN + 3) >> 12


def test_pml_clears_d_bits_and_logs_writes_without_faults():
    """PML: enabling clears D on the 4K leaves (clear_dirty_gfn_range) but keeps W; the
    CPU then logs writes, so GET_DIRTY_LOG finds them without a single fault, and
    re-arms by clearing D again (clear_dirty_pt_masked without wrprot)."""
    t = Memstress(Policy(enable_pml=True))
    t.run_vcpu_iteration()
    kvm, slot, vcpu = t.kvm, t.slots[0], t.kvm.vcpus[0]
    kvm_mmu_slot_apply_flags(kvm, slot, KVM_MEM_LOG_DIRTY_PAGES)
    root = vcpu.root
    level, spte = leaf_at(kvm, root, BASE_GFN + 7)
    assert level == 1 and spte & (W | D | MMU_W) == W | MMU_W
    taken = vcpu.stat.pf_taken
    for gfn in (BASE_GFN + 7, BASE_GFN + 600):
        guest_write(vcpu, gfn)
    assert vcpu.stat.pf_taken == taken and len(vcpu.pml_buffer) == 2
    assert leaf_at(kvm, root, BASE_GFN + 7)[1] & D
    bm = bytearray(kvm_dirty_bitmap_bytes(slot))
    flushes = kvm.stat.remote_tlb_flush_requests
    assert kvm_vm_ioctl_get_dirty_log(kvm, slot.id, bm) == 0
    assert popcount([bm]) == 2 and bm[0] == 0x80 and bm[600 // 8] == 1 << (600 % 8)
    assert vcpu.pml_buffer == [] and kvm.stat.remote_tlb_flush_requests == flushes + 1
    level, spte = leaf_at(kvm, root, BASE_GFN + 7)
    assert spte & (W | D) == W
    assert popcount([slot.dirty_bitmap]) == 0


def test_get_dirty_log_without_manual_protect_write_protects_dirty_pages():
    t = Memstress(Policy())
    t.run_vcpu_iteration()
    kvm, slot, vcpu = t.kvm, t.slots[0], t.kvm.vcpus[0]
    kvm_mmu_slot_apply_flags(kvm, slot, KVM_MEM_LOG_DIRTY_PAGES)
    guest_write(vcpu, BASE_GFN + 65)
    assert vcpu.stat.pf_fast == 1
    assert leaf_at(kvm, vcpu.root, BASE_GFN + 65)[1] & W
    bm = bytearray(kvm_dirty_bitmap_bytes(slot))
    assert kvm_vm_ioctl_get_dirty_log(kvm, slot.id, bm) == 0
    assert bm[65 // 8] == 1 << (65 % 8) and popcount([bm]) == 1
    assert not leaf_at(kvm, vcpu.root, BASE_GFN + 65)[1] & W
    # Nothing dirty: no flush.
    flushes = kvm.stat.remote_tlb_flush_requests
    assert kvm_vm_ioctl_get_dirty_log(kvm, slot.id, bm) == 0 and popcount([bm]) == 0
    assert kvm.stat.remote_tlb_flush_requests == flushes


def test_initially_set_without_eager_split_write_protects_huge_at_clear():
    """INITIALLY_SET with eager_page_split off: the clear write-protects the 2M leaf
    (write_protect_gfn also drops MMU-writable) and the next write splits it in the
    fault path (a dirty-logged slot maps 4K)."""
    t = Memstress(Policy(eager_page_split=False), MANUAL)
    t.run_vcpu_iteration()
    kvm, slot, vcpu = t.kvm, t.slots[0], t.kvm.vcpus[0]
    kvm_mmu_slot_apply_flags(kvm, slot, KVM_MEM_LOG_DIRTY_PAGES)
    mask = bytearray(8)
    mask[0] = 0b110  # pages 1 and 2 of the first 2M frame
    assert kvm_vm_ioctl_clear_dirty_log(kvm, slot.id, 0, 64, mask) == 0
    level, spte = leaf_at(kvm, vcpu.root, BASE_GFN)
    assert level == 2 and spte & (W | MMU_W) == 0
    assert kvm.stat.pages_2m == HOST_NUM_PAGES // 512
    assert slot.dirty_bitmap[0] == 0xF9
    guest_write(vcpu, BASE_GFN + 1)
    assert vcpu.stat.pf_fast == 0
    assert leaf_at(kvm, vcpu.root, BASE_GFN + 1)[0] == 1
    assert kvm.stat.pages_2m == HOST_NUM_PAGES // 512 - 1 and kvm.stat.pages_4k == 512


@pytest.mark.parametrize("first,num,expected", [
    (1, 64, -EINVAL),                        # first_page not 64-aligned
    (0, PAGES_PER_SLOT + 64, -EINVAL),       # past the slot
    (0, 65, -EINVAL),                        # partial length not a multiple of 64
])
def test_clear_dirty_log_argument_checks(first, num, expected):
    t = Memstress(Policy(), MANUAL)
    t.set_dirty_logging(True)
    bm = bytearray(kvm_dirty_bitmap_bytes(t.slots[0]) + 16)
    assert kvm_vm_ioctl_clear_dirty_log(t.kvm, t.slots[0].id, first, num, bm) == expected


def test_dirty_log_ioctls_need_logging_and_manual_cap_is_validated():
    t = Memstress(Policy())
    bm = bytearray(kvm_dirty_bitmap_bytes(t.slots[0]))
    assert kvm_vm_ioctl_get_dirty_log(t.kvm, t.slots[0].id, bm) == -ENOENT
    assert kvm_vm_ioctl_get_dirty_log(t.kvm, 99, bm) == -ENOENT
    assert kvm_vm_ioctl_clear_dirty_log(t.kvm, t.slots[0].id, 0, 64, bm) == -ENOENT
    cap = KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2
    assert kvm_vm_ioctl_enable_cap(t.kvm, cap, KVM_DIRTY_LOG_INITIALLY_SET) == -EINVAL
    assert kvm_vm_ioctl_enable_cap(t.kvm, cap, 1 << 5 | 1) == -EINVAL
    assert kvm_vm_ioctl_enable_cap(t.kvm, cap, MANUAL, flags=1) == -EINVAL
    assert kvm_vm_ioctl_enable_cap(t.kvm, cap, KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE) == 0
