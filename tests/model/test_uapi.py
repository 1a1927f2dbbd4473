"""The uAPI with the kernel's return codes (model/ioctl.py): VM types and memory
attributes, KVM_PRE_FAULT_MEMORY, KVM_CAP_VM_DISABLE_NX_HUGE_PAGES and the NX recovery
worker's period."""

from __future__ import annotations

import pytest

from tdpsim.model import spte as S
from tdpsim.model.ioctl import (
    KVM_CAP_VM_DISABLE_NX_HUGE_PAGES,
    KvmPreFaultMemory,
    kvm_vcpu_pre_fault_memory,
    kvm_vm_ioctl_create_vcpu,
    kvm_vm_ioctl_enable_cap,
    kvm_vm_ioctl_set_mem_attributes,
)
from tdpsim.model.kvm import KVM_X86_SW_PROTECTED_VM
from tdpsim.model.kvm_main import (
    calc_nx_huge_pages_recovery_period,
    hugepage_test_guest_inhibit,
    hugepage_test_mixed,
    kvm_mmu_start_lpage_recovery,
    kvm_nx_huge_page_recovery_worker,
)
from tdpsim.model.memslot import KVM_MEMORY_ATTRIBUTE_PRIVATE
from tdpsim.model.mmu_fault import kvm_mmu_load
from tdpsim.model.mmu_internal import (
    EFAULT,
    EINVAL,
    ENOENT,
    EOPNOTSUPP,
    EPERM,
    RET_PF_FIXED,
)
from tdpsim.model.policy import Policy
from tdpsim.model.tdx import TDX_PS_4K, TdGuest, create_td
from tdpsim.model.tdx_module import MAPPED, PENDING
from tdpsim.model.vmm import GMEM_PFN_BASE, RAM_HVA_BASE, VmConfig, create_vm

from kvm_helpers import fault, leaf_at

M2 = 2 << 20
PRIVATE = KVM_MEMORY_ATTRIBUTE_PRIVATE


# ---------------------------------------------------------------------- VM types, attributes
def test_default_vm_rejects_private_attribute_without_touching_anything(make_vm):
    """kvm_vm_ioctl_set_mem_attributes: ``attributes & ~kvm_supported_mem_attributes``
    is -EINVAL on a VM without private memory; no invalidation, no MIXED."""
    kvm = make_vm()
    slot = kvm.memslots[0]
    fault(kvm, 0x400)
    assert kvm_vm_ioctl_set_mem_attributes(kvm, 0x401 << 12, 4096, PRIVATE) == -EINVAL
    assert kvm.mmu_invalidate_seq == 0 and not kvm.mem_attr_private.starts
    assert not hugepage_test_mixed(slot, 0x400, 2) and kvm.stat.pages == [0, 1, 0]
    # Attributes 0 are supported everywhere: nothing to change, so success.
    assert kvm_vm_ioctl_set_mem_attributes(kvm, 0x401 << 12, 4096, 0) == 0
    assert kvm.mmu_invalidate_seq == 0


@pytest.mark.parametrize("address,size,flags", [
    (0x1000, 0, 0), (0x1001, 4096, 0), (0x1000, 100, 0), (0x1000, 4096, 1),
    ((1 << 64) - 4096, 8192, 0),
])
def test_set_mem_attributes_argument_checks(make_vm, address, size, flags):
    kvm = make_vm(sw_protected=True)
    assert kvm_vm_ioctl_set_mem_attributes(kvm, address, size, PRIVATE, flags) == -EINVAL
    assert kvm.mmu_invalidate_seq == 0


def test_sw_protected_vm_private_and_shared_in_one_root(make_vm):
    """KVM_X86_SW_PROTECTED_VM: private memory and attributes without TDX.  One direct
    root holds both; the fault is private when the gfn's attribute says so
    (kvm_mmu_page_fault sets PFERR_PRIVATE_ACCESS), and private pfns come from
    guest_memfd."""
    kvm = make_vm(sw_protected=True, private=False)
    assert kvm.vm_type == KVM_X86_SW_PROTECTED_VM and kvm.kvm_arch_has_private_mem()
    assert not kvm.kvm_has_mirrored_tdp() and kvm.vcpus[0].mirror_root is None
    slot, root = kvm.memslots[0], kvm.vcpus[0].root
    assert fault(kvm, 0x400, private=False) == RET_PF_FIXED
    level, spte = leaf_at(kvm, root, 0x400)
    assert level == 2 and S.spte_to_pfn(spte) == (RAM_HVA_BASE >> 12) + 0x400
    # Convert one page of the frame to private: the shared 2M leaf is zapped, the frame
    # becomes MIXED, and the private page maps 4K from guest_memfd.
    assert kvm_vm_ioctl_set_mem_attributes(kvm, 0x401 << 12, 4096, PRIVATE) == 0
    assert kvm.mmu_invalidate_seq == 1 and hugepage_test_mixed(slot, 0x400, 2)
    assert kvm.stat.pages == [0, 0, 0]
    assert fault(kvm, 0x401, private=False) == RET_PF_FIXED  # attribute decides
    level, spte = leaf_at(kvm, root, 0x401)
    assert level == 1 and S.spte_to_pfn(spte) == GMEM_PFN_BASE + 0x401
    assert fault(kvm, 0x402, private=False) == RET_PF_FIXED
    level, spte = leaf_at(kvm, root, 0x402)
    assert level == 1 and S.spte_to_pfn(spte) == (RAM_HVA_BASE >> 12) + 0x402
    # A fault that claims private on a shared gfn exits to userspace.
    assert fault(kvm, 0x403, private=True) == -EFAULT


def test_sw_protected_private_frame_maps_2m_from_guest_memfd(make_vm):
    kvm = make_vm(sw_protected=True)
    assert fault(kvm, 0x600, private=False) == RET_PF_FIXED
    level, spte = leaf_at(kvm, kvm.vcpus[0].root, 0x600)
    assert level == 2 and S.spte_to_pfn(spte) == GMEM_PFN_BASE + 0x600


# ---------------------------------------------------------------------- KVM_PRE_FAULT_MEMORY
def test_pre_fault_maps_huge_and_advances_the_range(make_vm):
    """kvm_arch_vcpu_pre_fault_memory returns the bytes the mapping covers; a huge
    mapping ends the chunk at the frame's end.  Pre-faults count no fault stats: since
    f5e7f00cf195 (v6.11, the same release as the ioctl) only kvm_mmu_page_fault counts."""
    kvm = make_vm()
    vcpu = kvm.vcpus[0]
    rng = KvmPreFaultMemory(gpa=M2 + 0x3000, size=M2 + 0x1000)
    assert kvm_vcpu_pre_fault_memory(vcpu, rng) == 0
    assert (rng.gpa, rng.size) == (2 * M2 + 0x4000, 0)
    assert kvm.stat.pages == [0, 2, 0]
    assert (vcpu.stat.pf_taken, vcpu.stat.pf_fixed) == (0, 0)
    level, spte = leaf_at(kvm, vcpu.root, 0x400)
    assert level == 2 and S.is_writable_pte(spte) and S.is_large_pte(spte)
    assert not spte & S.VMX_EPT_ACCESS_BIT  # prefetch: A left clear
    # Again: already mapped → RET_PF_SPURIOUS, still success.
    rng = KvmPreFaultMemory(gpa=M2, size=4096)
    assert kvm_vcpu_pre_fault_memory(vcpu, rng) == 0 and rng.size == 0
    assert vcpu.stat.pf_fixed == 0


def test_pre_fault_outside_memslots_is_enoent(make_vm):
    """No memslot: an MMIO SPTE, RET_PF_EMULATE → -ENOENT, nothing consumed."""
    kvm = make_vm()
    rng = KvmPreFaultMemory(gpa=1 << 30, size=8192)
    assert kvm_vcpu_pre_fault_memory(kvm.vcpus[0], rng) == -ENOENT
    assert (rng.gpa, rng.size) == (1 << 30, 8192)
    assert kvm.vcpus[0].stat.pf_mmio_spte_created == 1


@pytest.mark.parametrize("gpa,size,flags", [(0x1001, 4096, 0), (0, 0, 0), (0, 4096, 1)])
def test_pre_fault_argument_checks(make_vm, gpa, size, flags):
    kvm = make_vm()
    rng = KvmPreFaultMemory(gpa, size, flags)
    assert kvm_vcpu_pre_fault_memory(kvm.vcpus[0], rng) == -EINVAL


def test_pre_fault_td_only_after_finalize_then_4k_accept_splits():
    """HP-v3: a TD may pre-fault once finalized (-EOPNOTSUPP before, -EINVAL for the
    shared alias).  Pre-fault maps 2M (AUG, PENDING); the guest's 4K ACCEPT then exits
    with the ACCEPT level and the fault path splits it (BLOCK, TRACK, DEMOTE) and sets
    GUEST_INHIBIT at 2M and 1G."""
    kvm, tdx = create_td(VmConfig(tdx=True, mem_bytes=16 << 20, nr_vcpus=1),
                         sept_ve_disable=False)
    vcpu = kvm.vcpus[0]
    assert kvm_vcpu_pre_fault_memory(vcpu, KvmPreFaultMemory(M2, M2)) == -EOPNOTSUPP
    assert tdx.tdx_td_finalize(kvm) == 0
    alias = M2 | kvm.gfn_direct_bits << 12
    assert kvm_vcpu_pre_fault_memory(vcpu, KvmPreFaultMemory(alias, M2)) == -EINVAL
    rng = KvmPreFaultMemory(M2, M2)
    assert kvm_vcpu_pre_fault_memory(vcpu, rng) == 0 and rng.size == 0
    assert kvm.stat.pages == [0, 1, 0]
    assert tdx.leaf_sequence()[-1] == "AUG"
    assert tdx.module.entry(M2, 1) == (PENDING, GMEM_PFN_BASE + 512)
    guest = TdGuest(kvm, tdx)
    n = len(tdx.log)
    gpa = M2 + 5 * 4096
    assert guest.tdcall_accept(gpa, TDX_PS_4K) == 0
    assert tdx.leaf_sequence(n) == ["ENTER", "BLOCK", "TRACK", "DEMOTE", "ENTER"]
    slot = kvm.memslots[0]
    assert hugepage_test_guest_inhibit(slot, 512, 2) and hugepage_test_guest_inhibit(slot, 512, 3)
    assert tdx.module.entry(gpa, 0) == (MAPPED, GMEM_PFN_BASE + 512 + 5)
    assert kvm.stat.pages == [512, 0, 0]


# --------------------------------------------------------- NX: per-VM disable, recovery period
def test_disable_nx_huge_pages_cap():
    """KVM_CAP_VM_DISABLE_NX_HUGE_PAGES: -EPERM without CAP_SYS_BOOT, -EINVAL with an
    argument or once a vCPU exists; then exec faults map huge (and executable) with the
    module parameter on, and nothing is tracked."""
    policy = Policy(nx_huge_pages=True)
    kvm = create_vm(VmConfig(nr_vcpus=0), policy)
    cap = KVM_CAP_VM_DISABLE_NX_HUGE_PAGES
    assert kvm_vm_ioctl_enable_cap(kvm, cap, capable_sys_boot=False) == -EPERM
    assert kvm_vm_ioctl_enable_cap(kvm, cap, 1) == -EINVAL
    assert kvm.is_nx_huge_page_enabled()
    assert kvm_vm_ioctl_enable_cap(kvm, cap) == 0
    assert not kvm.is_nx_huge_page_enabled()
    kvm_mmu_load(kvm.vcpus[kvm_vm_ioctl_create_vcpu(kvm)])
    assert fault(kvm, 0x600, exec=True, write=False) == RET_PF_FIXED
    level, spte = leaf_at(kvm, kvm.vcpus[0].root, 0x600)
    assert level == 2 and spte & S.VMX_EPT_EXECUTABLE_MASK
    assert kvm.stat.nx_lpage_splits == 0 and kvm.stat.pages == [0, 1, 0]
    other = create_vm(VmConfig(nr_vcpus=1), policy)
    assert kvm_vm_ioctl_enable_cap(other, cap) == -EINVAL
    assert kvm_vm_ioctl_enable_cap(other, 12345) == -EINVAL


@pytest.mark.parametrize("nx,ratio,period,expected", [
    (True, 60, 0, 60_000),          # 0: derived, one hour / ratio
    (True, 1, 0, 3_600_000),
    (True, 10_000, 0, 1_000),       # ratio capped at 3600: never below one second
    (True, 60, 250, 250),           # explicit period wins
    (True, 0, 250, None),           # ratio 0 disables recovery
    (False, 60, 0, None),           # so does nx_huge_pages=N
])
def test_calc_nx_huge_pages_recovery_period(nx, ratio, period, expected):
    kvm = create_vm(VmConfig(), Policy(nx_huge_pages=nx, nx_huge_pages_recovery_ratio=ratio,
                                       nx_huge_pages_recovery_period_ms=period))
    assert calc_nx_huge_pages_recovery_period(kvm) == expected


def _nx_split_frames(kvm, n):
    for i in range(n):
        assert fault(kvm, (i + 1) * 512, exec=True, write=False) == RET_PF_FIXED
    assert kvm.stat.nx_lpage_splits == n


def test_nx_recovery_worker_runs_once_per_period_and_zaps_by_ratio():
    """kvm_nx_huge_page_recovery_worker: sleeps until ``last + period``, then zaps
    DIV_ROUND_UP(tracked, ratio) pages (here ratio 4: 5 tracked → 2 zapped)."""
    kvm = create_vm(VmConfig(), Policy(nx_huge_pages=True, nx_huge_pages_recovery_ratio=4))
    _nx_split_frames(kvm, 5)
    kvm_mmu_start_lpage_recovery(kvm, 1000)
    assert kvm_nx_huge_page_recovery_worker(kvm, 1000 + 899_999)  # period 900 s: asleep
    assert kvm.stat.nx_lpage_splits == 5
    assert kvm_nx_huge_page_recovery_worker(kvm, 1000 + 900_000)
    assert kvm.stat.nx_lpage_splits == 3 and kvm.nx_huge_page_last == 901_000
    assert kvm_nx_huge_page_recovery_worker(kvm, 901_001)  # the next period starts now
    assert kvm.stat.nx_lpage_splits == 3


def test_nx_recovery_ratio_zero_disables_the_worker():
    kvm = create_vm(VmConfig(), Policy(nx_huge_pages=True, nx_huge_pages_recovery_ratio=0))
    _nx_split_frames(kvm, 2)
    assert not kvm_nx_huge_page_recovery_worker(kvm, 10 ** 9)
    assert kvm.stat.nx_lpage_splits == 2


# ------------------------------------------------------------------------- kernel profiles
def test_v6_1_has_neither_pre_fault_nor_attributes_nor_sw_protected_vms():
    """KVM_PRE_FAULT_MEMORY is v6.11, KVM_SET_MEMORY_ATTRIBUTES and
    KVM_X86_SW_PROTECTED_VM v6.8: on 6.1 the ioctls are unknown and the type refused."""
    from tdpsim.model.mmu_internal import ENOTTY
    from tdpsim.model.profile import KERNEL_6_1, KERNEL_6_12

    old = create_vm(VmConfig(profile=KERNEL_6_1))
    assert kvm_vcpu_pre_fault_memory(old.vcpus[0], KvmPreFaultMemory(M2, M2)) == -EINVAL
    assert kvm_vm_ioctl_set_mem_attributes(old, M2, 4096, 0) == -ENOTTY
    assert old.stat.pages == [0, 0, 0]
    with pytest.raises(ValueError, match="SW_PROTECTED_VM"):
        create_vm(VmConfig(sw_protected=True, profile=KERNEL_6_1))
    lts = create_vm(VmConfig(profile=KERNEL_6_12))
    assert kvm_vcpu_pre_fault_memory(lts.vcpus[0], KvmPreFaultMemory(M2, M2)) == 0
    assert lts.stat.pages == [0, 1, 0]
