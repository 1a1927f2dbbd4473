"""Kernel profiles: each field is read where the kernel decides, and changes the outcome."""

from __future__ import annotations

import dataclasses
import io

import pytest
from kvm_helpers import fault, leaf_at

from tdpsim.model import spte as S
from tdpsim.model.profile import DEFAULT_PROFILE
from tdpsim.model.profile import (
    DEFAULT_PROFILE,
    KERNEL_6_1,
    KERNEL_6_12,
    KERNEL_6_18_HP_V3,
    PROFILES,
    UnknownKernelProfile,
    get_profile,
)
from tdpsim.model.tdp_iter import spte_to_child_sp
from tdpsim.model.vmm import VmConfig, create_vm
from tdpsim.trace.emit import TraceEmitter
from tdpsim.trace.replay import ReplayOptions, replay_trace

EPT = S.kvm_mmu_set_ept_masks(DEFAULT_PROFILE)  # the masks kvm_intel installs


def table_4k_of(kvm, root, gfn):
    """The 4K page-table page under gfn's 2M entry."""
    sp = root
    for level in range(root.role.level, 1, -1):
        sp = spte_to_child_sp(kvm, sp.spt[S.SPTE_INDEX(gfn, level)])
    return sp


def force_4k(kvm, gfn, delta=1):
    """Pin gfn's 2M/1G frames to 4K with a disallow_lpage count (as write tracking does)."""
    slot = kvm.gfn_to_memslot(gfn)
    for level in (2, 3):
        slot.lpage_info[level][slot.lpage_index(gfn, level)] += delta


def unforce_4k(kvm, gfn):
    force_4k(kvm, gfn, -1)


def test_named_profiles():
    assert list(PROFILES) == ["6.1", "6.12", "6.18+hp-v3"]
    assert DEFAULT_PROFILE is KERNEL_6_18_HP_V3 is get_profile("6.18+hp-v3")
    assert KERNEL_6_1.SHADOW_NONPRESENT_VALUE == 0 and KERNEL_6_1.FROZEN_SPTE == 0x5A0
    assert KERNEL_6_12.SHADOW_NONPRESENT_VALUE == 1 << 63
    assert KERNEL_6_12.FROZEN_SPTE == 0x80000000000005A0
    with pytest.raises(UnknownKernelProfile, match=r"'5\.4'; valid: 6\.1, 6\.12, 6\.18\+hp-v3"):
        get_profile("5.4")
    with pytest.raises(dataclasses.FrozenInstanceError):
        KERNEL_6_1.FROZEN_SPTE = 0  # type: ignore[misc]


@pytest.mark.parametrize("profile", [KERNEL_6_1, KERNEL_6_12])
def test_special_values_are_never_present_nor_mmio(profile):
    for value in (profile.SHADOW_NONPRESENT_VALUE, profile.FROZEN_SPTE):
        assert not S.is_shadow_present_pte(value)
        assert not S.is_mmio_spte(EPT, S.VMX_EPT_MISCONFIG_WX_VALUE, value)
    assert S.is_frozen_spte(profile, profile.FROZEN_SPTE)
    assert not S.is_frozen_spte(profile, profile.SHADOW_NONPRESENT_VALUE)
    assert S.decode_spte(profile, EPT, profile.FROZEN_SPTE, 1) == "FROZEN_SPTE"
    assert S.decode_spte(profile, EPT, profile.SHADOW_NONPRESENT_VALUE, 1) == \
        "SHADOW_NONPRESENT_VALUE"


def _promote_over_4k_table(profile):
    """Four 4K leaves in a 2M frame, then a 2M fault replaces their table (the freeze)."""
    kvm = create_vm(VmConfig(mem_bytes=16 << 20, profile=profile))
    root = kvm.vcpus[0].root
    force_4k(kvm, 0x200)
    for gfn in (0x200, 0x201, 0x202, 0x203):
        fault(kvm, gfn)
    pt = table_4k_of(kvm, root, 0x200)
    unforce_4k(kvm, 0x200)
    fault(kvm, 0x207)
    return kvm, root, pt


@pytest.mark.parametrize("profile", [KERNEL_6_1, KERNEL_6_12])
def test_fresh_tables_hold_the_profiles_nonpresent_value(profile):
    """SHADOW_NONPRESENT_VALUE: tdp_mmu_alloc_sp's table and the zap both use it."""
    kvm, root, pt = _promote_over_4k_table(profile)
    assert leaf_at(kvm, root, 0x400) == (2, profile.SHADOW_NONPRESENT_VALUE)
    assert root.spt[1] == profile.SHADOW_NONPRESENT_VALUE
    # handle_removed_pt froze the 4K table with the profile's FROZEN_SPTE.
    assert set(pt.spt) == {profile.FROZEN_SPTE}
    assert kvm.stat.pages == [0, 1, 0]
    assert not kvm.warnings and not kvm.bugs


def _traced_run(profile) -> str:
    buf = io.StringIO()
    em = TraceEmitter(buf.write)
    kvm = create_vm(VmConfig(mem_bytes=16 << 20, profile=profile), tracer=em)
    vcpu = kvm.vcpus[0]
    force_4k(kvm, 0x200)
    with em.task(vcpu=0):
        for gfn in (0x200, 0x201):
            fault(kvm, gfn)
    unforce_4k(kvm, 0x200)
    with em.task(vcpu=0):
        fault(kvm, 0x207)
    assert vcpu.stat.pf_fixed == 3
    return buf.getvalue()


def test_pre_6_10_trace_replays_clean_only_under_its_profile():
    """FROZEN_SPTE and SHADOW_NONPRESENT_VALUE as the replayer reads them: a 6.1 trace
    (installs over 0, freezes to 0x5a0) is clean under 6.1 and not under the default."""
    text = _traced_run(KERNEL_6_1)
    assert "old_spte 0 new_spte" in text and "new_spte 5a0" in text
    ok = replay_trace(io.StringIO(text), ReplayOptions(profile=KERNEL_6_1))
    assert ok.anomaly_counts == {} and ok.pages == [0, 1, 0]
    bad = replay_trace(io.StringIO(text), ReplayOptions(profile=KERNEL_6_18_HP_V3))
    assert bad.anomaly_counts.get("old_spte_mismatch", 0) > 0


@pytest.mark.parametrize("profile,sve", [(KERNEL_6_1, 0), (KERNEL_6_12, 1 << 63)])
def test_ept_suppress_ve_in_present_mask(profile, sve):
    """ept_suppress_ve_in_present_mask: bit 63 in every present EPT SPTE and in the MMIO
    mask from 6.10; a 6.1 EPT leaf and table have it clear."""
    kvm = create_vm(VmConfig(mem_bytes=16 << 20, host_page_level=1, profile=profile))
    fault(kvm, 0x10)
    root = kvm.vcpus[0].root
    level, spte = leaf_at(kvm, root, 0x10)
    assert level == 1 and spte & (1 << 63) == sve
    assert root.spt[0] & (1 << 63) == sve  # the table entry too (make_nonleaf_spte)
    assert kvm.masks.shadow_mmio_mask == S.VMX_EPT_RWX_MASK | sve
