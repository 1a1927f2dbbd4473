"""What a VMM (QEMU, a selftest) does to set up a guest: create the VM, its vCPUs and a RAM
memslot backed by anonymous memory (and guest_memfd for a TD), set the initial memory
attributes, load the MMU.  Not a kernel file: the userspace side of the ioctls.

Host addresses and pfns are chosen deterministically: RAM's hva sits at 64 GiB (1 GiB
aligned, so THP/hugetlb alignment matches the gfn unless ``hva_skew`` says otherwise) and
guest_memfd pfns start at 128 GiB.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

from .kvm import KVM_X86_DEFAULT_VM, KVM_X86_SW_PROTECTED_VM, KVM_X86_TDX_VM, Kvm, KvmX86Ops
from .kvm_main import kvm_set_memory_region
from .memslot import GuestMemfd, HostBacking, KvmMemorySlot
from .mmu_fault import kvm_mmu_load
from .policy import Policy
from .profile import DEFAULT_PROFILE, KernelProfile
from .sched import SchedPoints
from .spte import PAGE_SHIFT, PG_LEVEL_2M

RAM_HVA_BASE = 64 << 30
GMEM_PFN_BASE = (128 << 30) >> PAGE_SHIFT


@dataclass(frozen=True)
class VmConfig:
    """One guest's shape.  ``mem_bytes`` of RAM at ``base_gfn``; ``host_page_level`` is
    the host's backing for shared memory (1 = 4K pages, 2 = THP, 3 = hugetlb 1G);
    ``gmem_folio_order`` the guest_memfd folio order (9 = 2M folios).  ``sw_protected``
    makes a KVM_X86_SW_PROTECTED_VM: private memory (guest_memfd) without TDX."""

    tdx: bool = False
    sw_protected: bool = False
    nr_vcpus: int = 1
    mem_bytes: int = 64 << 20
    base_gfn: int = 0
    hva_skew: int = 0
    host_page_level: int = PG_LEVEL_2M
    gmem_folio_order: int = 9
    root_level: int = 4
    private: bool = True  # RAM of a VM with private memory starts private, as QEMU sets it
    profile: KernelProfile = DEFAULT_PROFILE  # the kernel generation the VM runs under
    vendor: str = "intel"  # kvm_intel (EPT) or kvm_amd (NPT)
    host_maxphyaddr: int = 52  # kvm_host.maxphyaddr (CPUID 0x80000008): bounds TDP walks


def create_vm(config: VmConfig, policy: Optional[Policy] = None,
              x86_ops: Optional[KvmX86Ops] = None, sched: Optional[SchedPoints] = None,
              tracer: Optional[Callable[[object], None]] = None) -> Kvm:
    """KVM_CREATE_VM, KVM_CREATE_VCPU ×n, KVM_SET_USER_MEMORY_REGION2 for RAM,
    KVM_SET_MEMORY_ATTRIBUTES (TD), then load every vCPU's MMU roots."""
    if config.mem_bytes <= 0 or config.mem_bytes & 0xFFF:  # KVM_SET_USER_MEMORY_REGION: -EINVAL
        raise ValueError("mem_bytes must be a positive multiple of 4096")
    if config.tdx and config.sw_protected:
        raise ValueError("a VM is either a TD or software-protected, not both")
    vm_type = (KVM_X86_TDX_VM if config.tdx else
               KVM_X86_SW_PROTECTED_VM if config.sw_protected else KVM_X86_DEFAULT_VM)
    kvm = Kvm(vm_type=vm_type, policy=policy,
              nr_vcpus=config.nr_vcpus, root_level=config.root_level, x86_ops=x86_ops,
              sched=sched, tracer=tracer, profile=config.profile, vendor=config.vendor,
              host_maxphyaddr=config.host_maxphyaddr)
    npages = config.mem_bytes >> PAGE_SHIFT
    hva = RAM_HVA_BASE + (config.base_gfn << PAGE_SHIFT) + config.hva_skew
    backing = HostBacking(hva=hva, size=config.mem_bytes, page_level=config.host_page_level)
    gmem = None
    if kvm.kvm_arch_has_private_mem():
        gmem = GuestMemfd(npages=npages, pfn_base=GMEM_PFN_BASE,
                          folio_order=config.gmem_folio_order)
        if config.private:
            kvm.mem_attr_private.add(config.base_gfn, config.base_gfn + npages)
    slot = KvmMemorySlot(0, config.base_gfn, npages, hva, backing, gmem=gmem,
                         gmem_hva_fixup=kvm.policy.gmem_hva_fixup)
    kvm_set_memory_region(kvm, slot)
    for vcpu in kvm.vcpus:
        kvm_mmu_load(vcpu)
    return kvm
