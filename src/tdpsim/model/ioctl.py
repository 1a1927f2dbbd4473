"""The uAPI the MMU sees, with the kernel's return codes: ``kvm_vm_ioctl`` /
``kvm_vcpu_ioctl`` (``virt/kvm/kvm_main.c``) and the x86 ``kvm_vm_ioctl_enable_cap``
(``arch/x86/kvm/x86.c``) for KVM_CREATE_VCPU, KVM_ENABLE_CAP
(MANUAL_DIRTY_LOG_PROTECT2, VM_DISABLE_NX_HUGE_PAGES, DISABLE_QUIRKS2), KVM_SET_MEMORY_ATTRIBUTES,
KVM_GET_DIRTY_LOG, KVM_CLEAR_DIRTY_LOG and KVM_PRE_FAULT_MEMORY.

Every function returns what the syscall returns: 0 (or a vCPU id) or a negative errno.

Simplifications (one line each):
- ``capable(CAP_SYS_BOOT)`` is a parameter.
- ``slots_lock``, ``kvm->lock`` and the vCPU mutex are not modelled (one caller thread).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .dirty_log import (
    KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2,
    kvm_clear_dirty_log_protect,
    kvm_enable_manual_dirty_log_protect,
    kvm_get_dirty_log_protect,
)
from .kvm import KvmVcpu
from .kvm_main import kvm_vm_set_mem_attributes
from .memslot import KVM_MEMORY_ATTRIBUTE_PRIVATE
from .mmu_fault import kvm_arch_vcpu_pre_fault_memory
from .mmu_internal import EINVAL, EIO, ENOTTY, EPERM
from .spte import PAGE_SHIFT

if TYPE_CHECKING:  # pragma: no cover
    from .kvm import Kvm

KVM_CAP_VM_DISABLE_NX_HUGE_PAGES = 220
KVM_CAP_DISABLE_QUIRKS2 = 213
#: KVM_X86_QUIRK_* bits 0-10 (6.12.117); the hardware-conditional ones count as supported
KVM_X86_VALID_QUIRKS = (1 << 11) - 1
PAGE_SIZE = 1 << PAGE_SHIFT


def kvm_vm_ioctl_create_vcpu(kvm: "Kvm") -> int:
    """KVM_CREATE_VCPU: the new vCPU's id (its MMU loads on the first KVM_RUN)."""
    vcpu = KvmVcpu(kvm, len(kvm.vcpus))
    kvm.vcpus.append(vcpu)
    return vcpu.vcpu_id


def kvm_vm_ioctl_enable_cap(kvm: "Kvm", cap: int, args0: int = 0, flags: int = 0, *,
                            capable_sys_boot: bool = True) -> int:
    """KVM_ENABLE_CAP for the capabilities the MMU honours; anything else is -EINVAL."""
    if cap == KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2:
        return kvm_enable_manual_dirty_log_protect(kvm, flags, args0)
    if cap == KVM_CAP_VM_DISABLE_NX_HUGE_PAGES:
        return kvm_vm_disable_nx_huge_pages(kvm, args0, capable_sys_boot)
    if cap == KVM_CAP_DISABLE_QUIRKS2:
        if args0 & ~KVM_X86_VALID_QUIRKS:
            return -EINVAL
        kvm.disabled_quirks |= args0
        return 0
    return -EINVAL


def kvm_vm_disable_nx_huge_pages(kvm: "Kvm", args0: int, capable_sys_boot: bool) -> int:
    """``KVM_CAP_VM_DISABLE_NX_HUGE_PAGES``: the iTLB-multihit risk is the host's, so the
    process must be able to reboot it (-EPERM); no arguments, and only before the first
    vCPU exists (-EINVAL)."""
    if not capable_sys_boot:
        return -EPERM
    if args0 or kvm.vcpus:
        return -EINVAL
    kvm.disable_nx_huge_pages = True
    return 0


def kvm_supported_mem_attributes(kvm: "Kvm") -> int:
    """``kvm_supported_mem_attributes``: PRIVATE only for VMs with private memory."""
    return KVM_MEMORY_ATTRIBUTE_PRIVATE if kvm.kvm_arch_has_private_mem() else 0


def kvm_vm_ioctl_set_mem_attributes(kvm: "Kvm", address: int, size: int, attributes: int,
                                    flags: int = 0) -> int:
    """``kvm_vm_ioctl_set_mem_attributes``: validate, then ``kvm_vm_set_mem_attributes``
    on the gfns of [address, address + size).  A default VM supports no attribute, so
    PRIVATE there is -EINVAL and nothing is touched."""
    if not kvm.profile.KVM_SET_MEMORY_ATTRIBUTES:
        return -ENOTTY
    if flags:
        return -EINVAL
    if attributes & ~kvm_supported_mem_attributes(kvm):
        return -EINVAL
    if size == 0 or (address + size) & ((1 << 64) - 1) < address:  # u64 overflow
        return -EINVAL
    if address % PAGE_SIZE or size % PAGE_SIZE:
        return -EINVAL
    kvm_vm_set_mem_attributes(kvm, address >> PAGE_SHIFT, (address + size) >> PAGE_SHIFT,
                              attributes)
    return 0


def kvm_vm_ioctl_get_dirty_log(kvm: "Kvm", slot: int, dirty_bitmap: bytearray) -> int:
    """KVM_GET_DIRTY_LOG (``struct kvm_dirty_log``)."""
    return kvm_get_dirty_log_protect(kvm, slot, dirty_bitmap)


def kvm_vm_ioctl_clear_dirty_log(kvm: "Kvm", slot: int, first_page: int, num_pages: int,
                                 dirty_bitmap: bytes) -> int:
    """KVM_CLEAR_DIRTY_LOG (``struct kvm_clear_dirty_log``)."""
    return kvm_clear_dirty_log_protect(kvm, slot, first_page, num_pages, dirty_bitmap)


@dataclass
class KvmPreFaultMemory:
    """``struct kvm_pre_fault_memory``: KVM advances ``gpa`` and shrinks ``size`` as it
    maps, so userspace can restart after -EINTR/-EAGAIN."""

    gpa: int
    size: int
    flags: int = 0


def kvm_vcpu_pre_fault_memory(vcpu: KvmVcpu, range: KvmPreFaultMemory) -> int:
    """KVM_PRE_FAULT_MEMORY → ``kvm_vcpu_pre_fault_memory``: map the range chunk by chunk
    (``kvm_arch_vcpu_pre_fault_memory``).  Success if at least one chunk was mapped,
    else the first error."""
    if not vcpu.kvm.profile.KVM_PRE_FAULT_MEMORY:
        return -EINVAL
    if range.flags:
        return -EINVAL
    if range.gpa % PAGE_SIZE or range.size % PAGE_SIZE or range.gpa + range.size <= range.gpa:
        return -EINVAL
    full_size = range.size
    r = 0
    while range.size:
        r = kvm_arch_vcpu_pre_fault_memory(vcpu, range.gpa, range.size)
        if vcpu.kvm.WARN_ON_ONCE(r == 0 or r == -EIO, "kvm_vcpu_pre_fault_memory",
                                 f"kvm_arch_vcpu_pre_fault_memory returned {r}"):
            break
        if r < 0:
            break
        range.size -= r
        range.gpa += r
    return r if full_size == range.size else 0
