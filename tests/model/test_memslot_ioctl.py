"""KVM_SET_USER_MEMORY_REGION(2) as ``__kvm_set_memory_region`` decides it (6.12), the
memslot-zap quirk, MMIO SPTEs across memslot generations and the zero page."""

from __future__ import annotations

import pytest

from tdpsim.model import spte as S
from tdpsim.model.ioctl import KVM_CAP_DISABLE_QUIRKS2, kvm_vm_ioctl_enable_cap
from tdpsim.model.kvm import KVM_X86_SW_PROTECTED_VM, Kvm
from tdpsim.model.kvm_main import (KVM_USER_MEM_SLOTS, KVM_X86_QUIRK_SLOT_ZAP_ALL,
                                   KvmUserspaceMemoryRegion2 as Region,
                                   kvm_vm_ioctl_set_memory_region as set_region)
from tdpsim.model.memslot import (KVM_MEM_GUEST_MEMFD, KVM_MEM_LOG_DIRTY_PAGES,
                                  KVM_MEM_READONLY, KVM_MEMSLOT_INVALID, GuestMemfd,
                                  HostBacking)
from tdpsim.model.mmu_fault import kvm_mmu_reload
from tdpsim.model.mmu_internal import EEXIST, EINVAL, RET_PF_EMULATE, RET_PF_RETRY
from tdpsim.model.profile import KERNEL_6_12
from tdpsim.model.svm import leaf_spte, npf_error_code, npf_interception, npt_access_outcome

MiB = 1 << 20
GPA, HVA = 1 << 30, 0x7F00_0000_0000


def _vm(**kw) -> Kvm:
    kvm = Kvm(profile=KERNEL_6_12, vendor="amd", **kw)
    kvm_mmu_reload(kvm.vcpus[0])
    return kvm


def _region(slot=1, gpa=GPA, size=2 * MiB, hva=HVA, flags=0, **kw) -> Region:
    return Region(slot, flags, gpa, size, hva, backing=HostBacking(hva, size, S.PG_LEVEL_2M),
                  **kw)


def test_create_overlap_move_flags_delete_return_the_kernels_codes():
    kvm = _vm()
    assert set_region(kvm, _region()) == 0
    assert set_region(kvm, _region(slot=2, gpa=GPA + MiB)) == -EEXIST      # overlaps slot 1
    assert set_region(kvm, _region(slot=2, gpa=GPA + 2 * MiB, hva=HVA + 4 * MiB)) == 0
    assert set_region(kvm, _region(gpa=GPA + 3 * MiB)) == -EEXIST          # MOVE onto slot 2
    assert set_region(kvm, _region(hva=HVA + 8 * MiB)) == -EINVAL          # new hva
    assert set_region(kvm, _region(size=4 * MiB)) == -EINVAL               # new size
    assert set_region(kvm, _region(flags=KVM_MEM_READONLY)) == -EINVAL     # READONLY flips
    assert set_region(kvm, _region()) == 0                                 # nothing to change
    gen = kvm.memslots_generation
    assert set_region(kvm, _region(flags=KVM_MEM_LOG_DIRTY_PAGES)) == 0    # FLAGS_ONLY
    assert kvm.memslots_generation == gen + 2
    assert set_region(kvm, _region(gpa=GPA + 16 * MiB)) == 0               # MOVE: two swaps
    assert kvm.memslots_generation == gen + 6 and kvm.memslots[-1].base_gfn == (GPA >> 12) + 4096
    assert set_region(kvm, Region(1, 0, 0, 0, 0)) == 0                     # DELETE
    assert set_region(kvm, Region(1, 0, 0, 0, 0)) == -EINVAL               # no such slot
    assert [s.id for s in kvm.memslots] == [2] and kvm.memslots_generation == gen + 10


@pytest.mark.parametrize("mem,v1", [
    (_region(flags=1 << 3), False),                     # no such flag
    (_region(flags=KVM_MEM_GUEST_MEMFD), True),         # a v2-only flag through v1
    (_region(flags=KVM_MEM_GUEST_MEMFD), False),        # no private memory on this VM
    (_region(size=2 * MiB + 1), False),                 # not page-aligned
    (_region(gpa=GPA + 8), False),
    (_region(slot=KVM_USER_MEM_SLOTS), False),          # beyond the user slots
    (_region(gpa=1 << 52), False),                      # beyond kvm_mmu_max_gfn
])
def test_invalid_regions_are_einval(mem, v1):
    kvm = _vm()
    assert set_region(kvm, mem, v1=v1) == -EINVAL and not kvm.memslots


def test_guest_memfd_slots_refuse_dirty_logging_and_readonly():
    kvm = _vm(vm_type=KVM_X86_SW_PROTECTED_VM)
    gmem = GuestMemfd(512, pfn_base=0x100000)
    for extra in (KVM_MEM_LOG_DIRTY_PAGES, KVM_MEM_READONLY):
        assert set_region(kvm, _region(flags=KVM_MEM_GUEST_MEMFD | extra, guest_memfd=gmem)) \
            == -EINVAL
    assert set_region(kvm, _region(flags=KVM_MEM_GUEST_MEMFD)) == -EINVAL   # fd is no gmem
    assert set_region(kvm, _region(flags=KVM_MEM_GUEST_MEMFD, guest_memfd=gmem)) == 0
    assert set_region(kvm, _region(flags=KVM_MEM_GUEST_MEMFD, guest_memfd=gmem,
                                   gpa=GPA + 4 * MiB)) == -EINVAL           # immutable
    # Nor by leaving the flag out: (mem->flags ^ old->flags) & KVM_MEM_GUEST_MEMFD.
    assert set_region(kvm, _region(gpa=GPA + 4 * MiB)) == -EINVAL
    assert set_region(kvm, _region(flags=KVM_MEM_LOG_DIRTY_PAGES)) == -EINVAL


def _mapped_2m_then_delete(quirk_off: bool):
    kvm = _vm()
    vcpu = kvm.vcpus[0]
    if quirk_off:
        assert kvm_vm_ioctl_enable_cap(kvm, KVM_CAP_DISABLE_QUIRKS2,
                                       KVM_X86_QUIRK_SLOT_ZAP_ALL) == 0
    assert set_region(kvm, _region()) == 0
    npt_access_outcome(vcpu, GPA, "read")
    root = vcpu.root
    seen = []

    def vcpu_faults_meanwhile():
        kvm_mmu_reload(vcpu)
        seen.append((kvm.memslots[0].flags & KVM_MEMSLOT_INVALID,
                     npf_interception(vcpu, GPA, npf_error_code())))
    assert set_region(kvm, Region(1, 0, 0, 0, 0), while_invalid=vcpu_faults_meanwhile) == 0
    return kvm, root, seen


@pytest.mark.parametrize("quirk_off", [False, True])
def test_delete_retries_faults_on_the_invalid_slot_and_zaps_per_the_quirk(quirk_off):
    """KVM_X86_QUIRK_SLOT_ZAP_ALL: the default zaps every root (the old one is
    invalid); disabled, only the slot's leaf goes and the root stays."""
    kvm, root, seen = _mapped_2m_then_delete(quirk_off)
    assert seen == [(KVM_MEMSLOT_INVALID, RET_PF_RETRY)]
    assert root.role.invalid is not quirk_off
    assert (kvm.vcpus[0].root is root) is quirk_off
    assert kvm.stat.pages == [0, 0, 0]


def test_mmio_sptes_go_stale_with_the_memslot_generation():
    """After a DELETE the gfn is MMIO (an MMIO SPTE, cached in the vCPU); the reserved-bit
    faults that follow are emulated without the fault path; once the slot is back the
    generation differs and the fault path maps memory again."""
    kvm = _vm()
    vcpu = kvm.vcpus[0]
    assert set_region(kvm, _region()) == 0
    assert set_region(kvm, Region(1, 0, 0, 0, 0)) == 0
    kvm_mmu_reload(vcpu)                   # the fast zap left the vCPU an obsolete root
    assert npt_access_outcome(vcpu, GPA, "read") == (1, RET_PF_EMULATE)
    assert S.is_mmio_spte(kvm.masks, kvm.shadow_mmio_value, leaf_spte(vcpu, GPA >> 12))
    taken = vcpu.stat.pf_taken
    rsvd = npf_error_code(rsvd=True)
    assert npf_interception(vcpu, GPA, rsvd) == RET_PF_EMULATE and vcpu.stat.pf_taken == taken
    vcpu.mmio_gfn = 0                  # without the vCPU's cache, the SPTE itself says MMIO
    assert npf_interception(vcpu, GPA, rsvd) == RET_PF_EMULATE and vcpu.stat.pf_taken == taken
    assert set_region(kvm, _region()) == 0
    assert npt_access_outcome(vcpu, GPA, "read") == (1, 0)          # stale: RET_PF_INVALID
    assert vcpu.stat.pf_taken == taken + 1 and kvm.stat.pages == [0, 1, 0]


def test_a_read_of_unpopulated_memory_maps_the_zero_page_read_only():
    kvm = _vm()
    backing = HostBacking(HVA, 2 * MiB, S.PG_LEVEL_2M, unpopulated_frames={HVA >> 21})
    assert set_region(kvm, Region(1, 0, GPA, 2 * MiB, HVA, backing=backing)) == 0
    vcpu = kvm.vcpus[0]
    npt_access_outcome(vcpu, GPA, "read")
    spte = leaf_spte(vcpu, GPA >> 12)
    assert S.is_last_spte(spte, 2) and not S.is_writable_pte(spte)
    assert not spte & kvm.masks.shadow_host_writable_mask
    npt_access_outcome(vcpu, GPA + 2 * MiB - 4096, "write")          # populates the frame
    assert not backing.unpopulated_frames
    assert S.is_writable_pte(leaf_spte(vcpu, GPA >> 12))
