"""AMD NPT SPTEs (kvm_mmu_reset_all_pte_masks) and 5-level roots, against values worked
out by hand from spte.h/spte.c and the x86 PTE bits: P=0, W=1, U=2, A=5, D=6, PS=7,
host-writable=9, MMU-writable=10, MMU-present=11, NX=63."""

from __future__ import annotations

import io

import pytest
from kvm_helpers import fault, leaf_at

from tdpsim.model import spte as S
from tdpsim.model.kvm import KVM_X86_TDX_VM, Kvm
from tdpsim.model.profile import DEFAULT_PROFILE, KERNEL_6_1, KERNEL_6_12
from tdpsim.model.vmm import VmConfig, create_vm
from tdpsim.trace.emit import TraceEmitter
from tdpsim.trace.replay import ReplayOptions, replay_trace

NPT = S.kvm_mmu_reset_all_pte_masks()
EPT = S.kvm_mmu_set_ept_masks(DEFAULT_PROFILE)


def _leaf(m, level, pfn, **kw):
    args = dict(level=level, ad_disabled=False, pte_access=S.ACC_ALL, pfn=pfn,
                old_spte=DEFAULT_PROFILE.SHADOW_NONPRESENT_VALUE, prefetch=False,
                host_writable=True, nx_huge_page_enabled=False, mt_mask=0)
    args.update(kw)
    return S.make_spte(m, **args)


def test_npt_masks_are_the_x86_pte_bits():
    assert (NPT.shadow_present_mask, NPT.shadow_user_mask, NPT.shadow_accessed_mask,
            NPT.shadow_dirty_mask, NPT.shadow_nx_mask, NPT.shadow_x_mask) == \
        (1, 4, 0x20, 0x40, 1 << 63, 0)
    assert (NPT.shadow_host_writable_mask, NPT.shadow_mmu_writable_mask) == (1 << 9, 1 << 10)
    assert NPT.shadow_acc_track_mask == 0
    assert NPT.shadow_mmio_value == NPT.shadow_mmio_mask == (1 << 51) | 1
    assert NPT.shadow_mmio_access_mask == S.ACC_WRITE_MASK | S.ACC_USER_MASK
    # No reserved PA bit with a 52-bit MAXPHYADDR: MMIO caching is off.
    assert S.kvm_mmu_reset_all_pte_masks(maxphyaddr=52).shadow_mmio_value == 0


def test_npt_leaf_and_table_values():
    # MMU-present | P | A | U | host-W | W | MMU-W | D, pfn 0x1000; no X bit (NX clear).
    assert _leaf(NPT, 1, 0x1000) == 0x1000E67
    assert S.is_executable_pte(NPT, 0x1000E67)
    # A 2M leaf under the NX huge page workaround: PS, and NX (bit 63) instead of no X.
    nx = _leaf(NPT, 2, 0x200, nx_huge_page_enabled=True)
    assert nx == (1 << 63) | 0x200EE7 and not S.is_executable_pte(NPT, nx)
    assert S.make_small_spte(NPT, nx, 1, 3, S.ACC_ALL, True) == 0x203E67
    assert S.make_nonleaf_spte(NPT, 0x1234, ad_disabled=False) == 0x1234827
    # The same leaf in EPT form, for contrast: R=bit 0 via user, X=bit 2, A/D at 8/9, SVE.
    assert _leaf(EPT, 1, 0x1000) == (1 << 63) | (3 << 57) | 0x1000B07


def test_npt_mmio_spte_keeps_w_and_u():
    spte = S.make_mmio_spte(NPT, 0, 0xFEE00, S.ACC_ALL, NPT.shadow_mmio_value)
    assert spte == (1 << 51) | 0xFEE00007
    assert S.is_mmio_spte(NPT, NPT.shadow_mmio_value, spte)
    assert not S.is_shadow_present_pte(spte)
    for profile in (KERNEL_6_1, KERNEL_6_12):
        for value in (profile.FROZEN_SPTE, profile.SHADOW_NONPRESENT_VALUE):
            assert not S.is_mmio_spte(NPT, NPT.shadow_mmio_value, value)
    assert S.decode_spte(DEFAULT_PROFILE, NPT, spte, 1).startswith("MMIO gfn=0xfee00")


def test_npt_vm_faults_install_npt_sptes():
    kvm = create_vm(VmConfig(mem_bytes=16 << 20, host_page_level=1, vendor="amd",
                             profile=KERNEL_6_12))
    assert kvm.masks.vendor == "npt" and kvm.mt_mask == 0
    fault(kvm, 0x10)
    level, spte = leaf_at(kvm, kvm.vcpus[0].root, 0x10)
    pfn = (64 << 30 >> 12) + 0x10
    assert level == 1 and spte == (pfn << 12) | 0xE67
    decoded = S.decode_spte(kvm.profile, kvm.masks, spte, 1)
    assert decoded == f"leaf pfn={pfn:#x} pwu A D HW MW"
    assert S.decode_spte(kvm.profile, kvm.masks, kvm.vcpus[0].root.spt[0], 4) \
        .startswith("table ")


def test_a_td_needs_the_intel_vendor():
    with pytest.raises(ValueError, match="intel"):
        Kvm(vm_type=KVM_X86_TDX_VM, vendor="amd")
    with pytest.raises(ValueError, match="unknown vendor 'arm'; valid: intel, amd"):
        Kvm(vendor="arm")


@pytest.mark.parametrize("profile", [KERNEL_6_1, KERNEL_6_12])
def test_npt_5_level_trace_replays_bit_exact(profile):
    """A 5-level NPT host: root at level 5, NPT leaves; the replayer, told the vendor,
    follows every change (no anomaly) and ends with the model's page counts."""
    buf = io.StringIO()
    em = TraceEmitter(buf.write)
    kvm = create_vm(VmConfig(mem_bytes=8 << 20, root_level=5, vendor="amd",
                             profile=profile), tracer=em)
    assert kvm.vcpus[0].root.role.level == 5
    with em.task(vcpu=0):
        for gfn in (0x10, 0x11, 0x200, 0x400):
            fault(kvm, gfn)
    text = buf.getvalue()
    assert "l5 8-byte" in text
    res = replay_trace(io.StringIO(text), ReplayOptions(profile=profile, vendor="amd"))
    assert res.anomaly_counts == {}
    assert res.pages == kvm.stat.pages == [0, 3, 0]  # THP backing: 2M leaves
    assert res.roots[0].level == 5
